// Deleting rows that have outlived their use, the same way in every service: small batches, each
// its own short statement, run on a timer that never overlaps itself and stops with the process.
import type { Logger } from 'pino';
import { startPeriodic, type Periodic } from './periodic.js';

// Rows one statement deletes: a few milliseconds of locks on either engine, so requests writing
// the same tables never wait long behind a pass.
const PRUNE_BATCH_ROWS = 500;
// Batches per table per pass: a backlog (the first start after an upgrade) is worked off over
// several passes rather than in one long one.
const PRUNE_MAX_BATCHES = 200;

/**
 * Runs `deleteBatch(limit)` until it deletes fewer than `limit` rows, `maxBatches` have run or
 * `shouldStop()`; yields to other work between batches. Resolves to the rows deleted.
 */
export async function pruneInBatches(
  deleteBatch: (limit: number) => Promise<number>,
  { batchRows = PRUNE_BATCH_ROWS, maxBatches = PRUNE_MAX_BATCHES, shouldStop = () => false }: { batchRows?: number; maxBatches?: number; shouldStop?: () => boolean } = {},
): Promise<number> {
  let total = 0;
  for (let batch = 0; batch < maxBatches && !shouldStop(); batch++) {
    const deleted = await deleteBatch(batchRows);
    total += deleted;
    if (deleted < batchRows) break;
    await new Promise((resolve) => setImmediate(resolve));
  }
  return total;
}

/**
 * Runs `pass` at start and then `intervalMs` after each pass ends. `pass` gets `shouldStop` and
 * resolves to the rows it deleted per table, logged when any were. A failed pass (database
 * unreachable) is logged and the next one tries again.
 */
export function startPruner(
  logger: Logger,
  intervalMs: number,
  pass: (shouldStop: () => boolean) => Promise<Record<string, number>>,
): Periodic {
  return startPeriodic(logger, 'retention', intervalMs, async (shouldStop) => {
    const deleted = await pass(shouldStop);
    if (Object.values(deleted).some((n) => n > 0)) logger.info({ deleted }, 'retention pass');
  });
}
