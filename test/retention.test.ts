// Retention on both engines: finished idempotency keys, lapsed claims and released reservations
// are deleted once past their time, in batches, while held stock stays exactly accounted for.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pruneOrderRows } from '../lib/orders/retention.js';
import { pruneProductRows } from '../lib/products/retention.js';
import type { Db } from '../lib/platform/sql.js';
import { assertNoLeak, http, type TestResponse } from './helpers.js';
import { ENGINES, testStorage, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';
import { eventually } from './support/eventually.js';

const count = async (db: Db, sql: string, params: readonly unknown[] = []): Promise<number> => Number((await db.get<{ n: number | string }>(sql, params))!.n);

interface Rows {
  keys: number;
  claims: number;
  released: number;
  releasedItems: number;
  held: number;
  outbox: number;
}

async function rows(sys: System): Promise<Rows> {
  const [orders, products] = [sys.orders.db, sys.products.db];
  return {
    keys: await count(orders, 'SELECT count(*) AS n FROM idempotency_keys'),
    claims: await count(orders, 'SELECT count(*) AS n FROM idempotency_claims'),
    released: await count(products, "SELECT count(*) AS n FROM reservations WHERE status = 'released'"),
    releasedItems: await count(products, "SELECT count(*) AS n FROM reservation_items i JOIN reservations r ON r.id = i.reservation_id WHERE r.status = 'released'"),
    held: await count(products, "SELECT count(*) AS n FROM reservations WHERE status = 'held'"),
    outbox: await count(orders, 'SELECT count(*) AS n FROM pending_releases'),
  };
}

/** Stock + the quantities of the product's live orders; equals the initial stock when nothing leaked. */
async function accountedFor(sys: System, productId: number): Promise<number> {
  const live = await count(sys.orders.db, "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM order_items i JOIN orders o ON o.id = i.order_id WHERE i.product_id = $1 AND o.status <> 'cancelled'", [productId]);
  return (await stockOf(sys, productId)) + live;
}

const post = async (sys: System, body: unknown, key?: string): Promise<TestResponse> => {
  const r = await http(sys.orders.url, 'POST', '/orders', { body, headers: key === undefined ? {} : { 'idempotency-key': key } });
  assertNoLeak(r.text);
  return r;
};

for (const engine of ENGINES) {
  describe(`retention on ${engine}`, { skip: skipUnless(engine) }, () => {
    let sys: System;
    let storage: TestStorage;

    before(async () => {
      storage = testStorage(engine);
      // Passes at start only (then an hour apart): this test runs them itself, as of a time it picks.
      sys = await startServices({ storage, env: { RETENTION_INTERVAL_MS: '3600000' } });
    });
    after(async () => {
      await sys?.stop();
      await storage?.remove();
    });

    test('when keys, claims and released reservations pass their time, then each table shrinks back in batches and the stock stays accounted for', async () => {
      const initial = 40;
      const productId = await createProduct(sys, { stock: initial });
      const userId = await createUser(sys);
      const start = await rows(sys);
      const ids: number[] = [];
      for (let i = 0; i < 10; i++) {
        const r = await post(sys, { userId, items: [{ productId, quantity: 2 }] }, `keep-${i}`);
        assert.equal(r.status, 201, r.text);
        ids.push(r.body.id);
      }
      for (const id of ids.slice(0, 4)) {
        assert.equal((await http(sys.orders.url, 'PUT', `/orders/${id}/status`, { body: { status: 'cancelled' } })).status, 200);
      }
      assert.equal((await http(sys.orders.url, 'DELETE', `/orders/${ids[4]}`)).status, 204);
      // Refused creates: each leaves the tombstone of its release.
      for (let i = 0; i < 3; i++) assert.equal((await post(sys, { userId, items: [{ productId, quantity: 1000 }] }, `refused-${i}`)).status, 409);
      const claim = 'INSERT INTO idempotency_claims (user_id, key, holder, until_ms) VALUES ($1, $2, $3, $4)';
      // What a killed create leaves (no renewal since), and one whose holder is still renewing.
      await sys.orders.db.run(claim, [userId, 'dead-holder', 'gone', Date.now() - 1]);
      await sys.orders.db.run(claim, [userId, 'live-holder', 'here', Date.now() + 3_600_000]);

      const grown = await rows(sys);
      assert.deepEqual(
        { keys: grown.keys - start.keys, claims: grown.claims - start.claims, released: grown.released - start.released, releasedItems: grown.releasedItems - start.releasedItems, held: grown.held - start.held },
        { keys: 10, claims: 2, released: 8, releasedItems: 5, held: 5 },
      );
      assert.equal(await accountedFor(sys, productId), initial);

      // Nothing is past the defaults' time yet: only the lapsed claim goes.
      await pruneOrderRows(sys.orders.db, { keyTtlMs: 24 * 3_600_000 });
      await pruneProductRows(sys.products.db, { releasedTtlMs: 3_600_000 });
      const early = await rows(sys);
      assert.deepEqual(early, { ...grown, claims: grown.claims - 1 });

      // As of a moment past a short TTL, in batches smaller than the backlog, while new orders
      // are placed and cancelled beside the passes.
      const later = Date.now() + 1_000;
      const busy = (async () => {
        for (let i = 0; i < 4; i++) {
          const r = await post(sys, { userId, items: [{ productId, quantity: 1 }] });
          assert.equal(r.status, 201, r.text);
          if (i % 2) assert.equal((await http(sys.orders.url, 'PUT', `/orders/${r.body.id}/status`, { body: { status: 'cancelled' } })).status, 200);
        }
      })();
      const [orderPass, productPass] = await Promise.all([
        pruneOrderRows(sys.orders.db, { keyTtlMs: 500, batchRows: 3 }, later),
        pruneProductRows(sys.products.db, { releasedTtlMs: 500, batchRows: 2 }, later),
        busy,
      ]);
      assert.ok(orderPass.idempotencyKeys >= 10, JSON.stringify(orderPass));
      assert.ok(productPass.releasedReservations >= 8, JSON.stringify(productPass));
      // The passes may have run before some of the new cancels: one more, as of later still.
      await pruneProductRows(sys.products.db, { releasedTtlMs: 500, batchRows: 2 }, Date.now() + 1_000);

      const pruned = await rows(sys);
      assert.equal(pruned.keys, 0, 'every key past its TTL is gone');
      assert.equal(pruned.claims, 1, 'the live claim stays');
      assert.equal(pruned.released, 0, 'every released reservation past its time is gone');
      assert.equal(pruned.releasedItems, 0, 'with its items');
      assert.equal(pruned.held - start.held, 5 + 2, 'the reservations of live orders stay');
      assert.equal(pruned.outbox, 0);
      assert.equal(await accountedFor(sys, productId), initial);
      // Each live order can still give its stock back.
      assert.equal((await http(sys.orders.url, 'PUT', `/orders/${ids[5]}/status`, { body: { status: 'cancelled' } })).status, 200);
      assert.equal(await accountedFor(sys, productId), initial);

      // A key past its TTL is forgotten: the same key now makes a new order.
      const again = await post(sys, { userId, items: [{ productId, quantity: 2 }] }, 'keep-9');
      assert.equal(again.status, 201, again.text);
      assert.equal(again.headers.get('idempotent-replayed'), null);
      assert.notEqual(again.body.id, ids[9]);
      assert.equal(await accountedFor(sys, productId), initial);
    });
  });

  describe(`retention on ${engine}, on the services' timers`, { skip: skipUnless(engine) }, () => {
    let sys: System;
    let storage: TestStorage;

    before(async () => {
      storage = testStorage(engine);
      sys = await startServices({ storage, env: { RETENTION_INTERVAL_MS: '20', IDEMPOTENCY_KEY_TTL_MS: '200', RESERVATION_RETENTION_MS: '200' } });
    });
    after(async () => {
      await sys?.stop();
      await storage?.remove();
    });

    test('when RETENTION_INTERVAL_MS and the TTLs are short, then keys and released reservations go by themselves and the stock stays accounted for', async () => {
      const productId = await createProduct(sys, { stock: 10 });
      const userId = await createUser(sys);
      const kept = await post(sys, { userId, items: [{ productId, quantity: 3 }] }, 'timer-kept');
      const cancelled = await post(sys, { userId, items: [{ productId, quantity: 4 }] }, 'timer-cancelled');
      assert.deepEqual([kept.status, cancelled.status], [201, 201]);
      assert.equal((await http(sys.orders.url, 'PUT', `/orders/${cancelled.body.id}/status`, { body: { status: 'cancelled' } })).status, 200);
      await eventually(async () => {
        const r = await rows(sys);
        return r.keys === 0 && r.released === 0;
      }, 10_000, 'keys and released reservations to go');
      assert.equal((await rows(sys)).held, 1);
      assert.equal(await accountedFor(sys, productId), 10);
    });
  });
}
