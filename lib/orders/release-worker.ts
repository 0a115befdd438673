// Gives back stock that no order owns, left behind by a crash, a timed-out reserve, or a cancel
// while the product service was down. Runs at start and then `intervalMs` after each pass ends,
// so passes never overlap; several instances may run one each over the same database.
import type { Logger } from 'pino';
import { startPeriodic, type Periodic } from '../platform/periodic.js';
import type { SqlDatabase } from '../platform/sql.js';
import type { ProductsClient } from '../products/client.js';
import { createOrderStore } from './store.js';
import { releasePending } from './workflow.js';

export interface ReleaseWorkerOptions {
  db: SqlDatabase;
  products: ProductsClient;
  logger: Logger;
  /** RELEASE_RETRY_MS */
  intervalMs: number;
  /**
   * Rows younger than this are left alone, so a create still waiting for its reserve is not
   * raced (it would then fail safely, but needlessly). The main passes 2 x UPSTREAM_TIMEOUT_MS.
   */
  minAgeMs: number;
  /** Rows per pass; the next pass takes the rest. */
  batchSize?: number;
}

export function startReleaseWorker({ db, products, logger, intervalMs, minAgeMs, batchSize = 100 }: ReleaseWorkerOptions): Periodic {
  const store = createOrderStore(db);
  const log = logger.child({ component: 'release-worker' });
  return startPeriodic(log, 'release', intervalMs, async (shouldStop) => {
    const { released, failed } = await releasePending({ store, products, logger: log }, minAgeMs, batchSize, shouldStop);
    if (released || failed) log.info({ released, failed, left: await store.countPendingReleases() }, 'release pass');
  });
}
