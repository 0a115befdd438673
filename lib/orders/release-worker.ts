// Gives back stock that no order owns, left behind by a crash, a timed-out reserve, or a cancel
// while the product service was down. Runs at start and then `intervalMs` after each pass ends,
// so passes never overlap; several instances may run one each over the same database.
import type { Logger } from 'pino';
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

export interface ReleaseWorker {
  /** Stops the timer and waits for a pass in progress to finish. */
  stop(): Promise<void>;
}

export function startReleaseWorker({ db, products, logger, intervalMs, minAgeMs, batchSize = 100 }: ReleaseWorkerOptions): ReleaseWorker {
  const store = createOrderStore(db);
  const log = logger.child({ component: 'release-worker' });
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> = Promise.resolve();

  const pass = async () => {
    try {
      const { released, failed } = await releasePending({ store, products, logger: log }, minAgeMs, batchSize, () => stopped);
      if (released || failed) log.info({ released, failed, left: await store.countPendingReleases() }, 'release pass');
    } catch (err) {
      // The database could not be read or written (disk full, unreachable): try again next pass.
      log.error({ err }, 'release pass failed');
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      current = pass().then(schedule);
    }, intervalMs);
    // The server keeps the process alive; this timer alone should not.
    timer.unref();
  };
  current = pass().then(schedule);

  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
  };
}
