// Deletes released reservations (and release tombstones) once no reserve with their id can still
// arrive; held reservations stay, each the record of stock an order holds.
import type { Logger } from 'pino';
import type { Db } from '../platform/sql.js';
import type { Periodic } from '../platform/periodic.js';
import { pruneInBatches, startPruner } from '../platform/pruning.js';
import { createProductStore } from './store.js';

export interface ProductRetention {
  /** RESERVATION_RETENTION_MS: kept this long after their release. */
  releasedTtlMs: number;
  batchRows?: number;
  maxBatches?: number;
}

/** One pass, as of `now` (Date.now() ms). */
export async function pruneProductRows(db: Db, { releasedTtlMs, ...batches }: ProductRetention, now = Date.now(), shouldStop?: () => boolean): Promise<{ releasedReservations: number }> {
  const store = createProductStore(db);
  const before = new Date(now - releasedTtlMs);
  return { releasedReservations: await pruneInBatches((limit) => store.pruneReleasedReservations(before, limit), { ...batches, shouldStop }) };
}

/** The product service's retention on a timer, every `intervalMs` (RETENTION_INTERVAL_MS). */
export function startProductRetention(db: Db, logger: Logger, intervalMs: number, retention: ProductRetention): Periodic {
  return startPruner(logger.child({ component: 'retention' }), intervalMs, (shouldStop) => pruneProductRows(db, retention, Date.now(), shouldStop));
}
