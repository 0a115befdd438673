// A short chaos run (one seed, a few seconds) of `npm run chaos`: faults between the order and
// product services, kill -9 and restarts of both, and the stock invariant checked at the end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runChaos } from './chaos/run.js';

test('when orders race through faults, kills and restarts, then stock + live orders = initial stock and every 201 is kept', async () => {
  const { counts, violations } = await runChaos({ seed: 1, durationMs: 2_000, concurrency: 8 });
  assert.deepEqual(violations, [], JSON.stringify(counts));
  assert.ok(counts.created > 0, 'orders were made');
  assert.ok(counts.faults + counts.ordersKilled + counts.productsKilled > 0, 'something was disturbed');
});
