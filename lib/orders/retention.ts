// Deletes what the order service no longer needs: finished idempotency keys past their TTL, and
// claims on keys whose holder stopped renewing (its instance died). Orders and the release
// outbox are never pruned here: an outbox row leaves only once its stock is given back.
import type { Logger } from 'pino';
import type { Db } from '../platform/sql.js';
import type { Periodic } from '../platform/periodic.js';
import { pruneInBatches, startPruner } from '../platform/pruning.js';
import { createOrderStore } from './store.js';

export interface OrderRetention {
  /** IDEMPOTENCY_KEY_TTL_MS: a key is deleted this long after its order was made. */
  keyTtlMs: number;
  batchRows?: number;
  maxBatches?: number;
}

export interface OrderRowsPruned extends Record<string, number> {
  idempotencyKeys: number;
  idempotencyClaims: number;
}

/** One pass over both tables, as of `now` (Date.now() ms). */
export async function pruneOrderRows(db: Db, { keyTtlMs, ...batches }: OrderRetention, now = Date.now(), shouldStop?: () => boolean): Promise<OrderRowsPruned> {
  const store = createOrderStore(db);
  const options = { ...batches, shouldStop };
  const keysBefore = new Date(now - keyTtlMs);
  return {
    idempotencyKeys: await pruneInBatches((limit) => store.pruneIdempotencyKeys(keysBefore, limit), options),
    // A lapsed claim is free to take already; deleting it only saves its row. A holder still
    // alive past its lease finds its claim gone when it renews, and its create stays safe.
    idempotencyClaims: await pruneInBatches((limit) => store.pruneLapsedClaims(now, limit), options),
  };
}

/** The order service's retention on a timer, every `intervalMs` (RETENTION_INTERVAL_MS). */
export function startOrderRetention(db: Db, logger: Logger, intervalMs: number, retention: OrderRetention): Periodic {
  return startPruner(logger.child({ component: 'retention' }), intervalMs, (shouldStop) => pruneOrderRows(db, retention, Date.now(), shouldStop));
}
