// The product service's guarantees with several instances on one PostgreSQL schema (READ
// COMMITTED, one pool each), and while PostgreSQL is unreachable. Every route's single-instance
// behaviour on both engines is in products.test.ts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { demoOrders, demoProducts } from '../lib/demo/data.js';
import { createProductApp } from '../lib/products/app.js';
import { openProductDatabase } from '../lib/products/db.js';
import { MAX_STOCK } from '../lib/products/schema.js';
import { http, startCheckedService, type CheckedService, type TestResponse } from './helpers.js';
import { openServiceAuth } from './support/service-auth.js';
import { databaseRelay, testStorage, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

const start = (storage: Pick<TestStorage, 'options' | 'remove'>, seed = false): Promise<CheckedService> =>
  startCheckedService('product-service', openProductDatabase, (deps) => createProductApp(deps, openServiceAuth()), seed, storage);

let seq = 0;
const rid = (prefix = 'r') => `${prefix}-${process.pid}-${++seq}`;
const item = (productId: number, quantity = 1) => ({ productId, quantity });
const codes = (rs: TestResponse[]) => rs.map((r) => (r.status >= 400 ? `${r.status} ${r.body.code}` : String(r.status)));
const count = (rs: TestResponse[], what: string) => codes(rs).filter((c) => c === what).length;

describe('products: two instances on one PostgreSQL schema', { skip: skipUnless('postgres') }, () => {
  const storage = testStorage('postgres');
  let a: CheckedService;
  let b: CheckedService;
  /** Instance a for even requests, b for odd ones. */
  const on = (i: number) => (i % 2 === 0 ? a : b);

  before(async () => {
    // Started together with demo data: the schema is migrated and the demo written once.
    [a, b] = await Promise.all([start(storage, true), start(storage, true)]);
  });
  after(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await storage.remove();
  });

  const createProduct = async (body: Record<string, unknown>) => {
    const r = await a.call('POST', '/products', { body: { name: 'Raced Product', price: 10, ...body } });
    assert.equal(r.status, 201, r.text);
    return r.body as { id: number; stock: number };
  };
  const stockOf = async (id: number, via = b): Promise<number> => (await via.call('GET', `/products/${id}`)).body.stock;

  test('when both start at once with demo data, then the demo rows are written once', async () => {
    for (const svc of [a, b]) {
      const list = await svc.call('GET', '/products?limit=100');
      assert.deepEqual(list.body.data.map((p: { name: string; stock: number }) => [p.name, p.stock]), demoProducts.map((p) => [p.name, p.stock]));
    }
    for (const order of demoOrders) {
      const r = await b.call('GET', `/internal/reservations/${order.reservationId}`);
      assert.equal(r.body.status, 'held');
      assert.deepEqual(r.body.items, order.items);
    }
  });

  test('when 40 reservations of 1 unit race through both instances for a stock of 10, then exactly 10 succeed and the stock ends at 0', async () => {
    const p = await createProduct({ stock: 10 });
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) =>
      on(i).call('POST', '/internal/reservations', { body: { id: rid('race'), items: [item(p.id)] } })));
    assert.equal(count(results, '201'), 10, codes(results).join());
    assert.equal(count(results, '409 INSUFFICIENT_STOCK'), 30, codes(results).join());
    assert.equal(await stockOf(p.id, a), 0);
    assert.equal(await stockOf(p.id, b), 0);
  });

  test('when reservations name the same products in opposite orders, then none deadlocks and every unit is taken once', async () => {
    const p = await createProduct({ stock: 12 });
    const q = await createProduct({ stock: 12 });
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) => on(i).call('POST', '/internal/reservations', {
      body: { id: rid('cross'), items: i % 2 === 0 ? [item(p.id), item(q.id)] : [item(q.id), item(p.id)] },
    })));
    assert.equal(count(results, '201'), 12, codes(results).join());
    assert.equal(count(results, '409 INSUFFICIENT_STOCK'), 4, codes(results).join());
    assert.deepEqual([await stockOf(p.id), await stockOf(q.id)], [0, 0]);
    // And back, in opposite orders too: every unit returns once.
    const held = results.filter((r) => r.status === 201).map((r) => r.body.id as string);
    const released = await Promise.all(held.map((id, i) => on(i).call('DELETE', `/internal/reservations/${id}`)));
    assert.ok(released.every((r) => r.status === 200 && r.body.released === true), codes(released).join());
    assert.deepEqual([await stockOf(p.id), await stockOf(q.id)], [12, 12]);
  });

  test('when one reservation id is sent 10 times at once through both instances, then it takes the stock once, and the repeats return it', async () => {
    const p = await createProduct({ price: 2.5, stock: 10 });
    const body = { id: rid('same'), items: [item(p.id, 3)] };
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => on(i).call('POST', '/internal/reservations', { body })));
    assert.equal(count(results, '201'), 1, codes(results).join());
    assert.equal(count(results, '200'), 9, codes(results).join());
    const created = results.find((r) => r.status === 201)!.body;
    assert.deepEqual(created.items, [{ productId: p.id, quantity: 3, unitPrice: 2.5 }]);
    for (const r of results) assert.deepEqual(r.body, created);
    assert.equal(await stockOf(p.id), 7);
  });

  test('when one reservation id races with different items, then one takes its stock and every other is that one or 409 RESERVATION_MISMATCH', async () => {
    const p = await createProduct({ stock: 100 });
    const id = rid('mixed');
    const quantities = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2];
    const results = await Promise.all(quantities.map((quantity, i) =>
      on(i).call('POST', '/internal/reservations', { body: { id, items: [item(p.id, quantity)] } })));
    assert.equal(count(results, '201'), 1, codes(results).join());
    const winner = results.find((r) => r.status === 201)!.body;
    const won = winner.items[0].quantity as number;
    results.forEach((r, i) => {
      if (r.status === 201) return;
      if (quantities[i] === won) assert.deepEqual([r.status, r.body], [200, winner]);
      else assert.deepEqual([r.status, r.body.code], [409, 'RESERVATION_MISMATCH']);
    });
    assert.equal(await stockOf(p.id), 100 - won);
  });

  test('when both instances release one reservation at once, then its stock comes back exactly once', async () => {
    const p = await createProduct({ stock: 10 });
    const id = rid('release');
    assert.equal((await a.call('POST', '/internal/reservations', { body: { id, items: [item(p.id, 7)] } })).status, 201);
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => on(i).call('DELETE', `/internal/reservations/${id}`)));
    assert.deepEqual(results.map((r) => r.body.released).sort(), [false, false, false, false, false, false, false, true]);
    assert.equal(await stockOf(p.id), 10);
    // A released id stays released on both instances, even when retried at once.
    const again = await Promise.all([a, b, a, b].map((svc) => svc.call('POST', '/internal/reservations', { body: { id, items: [item(p.id, 7)] } })));
    assert.deepEqual(codes(again), Array(4).fill('409 RESERVATION_RELEASED'));
    assert.equal(await stockOf(p.id), 10);
  });

  test('when a release races the reserve of the same id, then either the release gives the stock back or the reserve takes nothing', async () => {
    const p = await createProduct({ stock: 50 });
    const ids = Array.from({ length: 10 }, () => rid('tomb'));
    const pairs = await Promise.all(ids.map((id, i) => Promise.all([
      on(i).call('POST', '/internal/reservations', { body: { id, items: [item(p.id, 2)] } }),
      on(i + 1).call('DELETE', `/internal/reservations/${id}`),
    ])));
    for (const [reserve, release] of pairs) {
      const outcome = `${codes([reserve])[0]} / released ${release.body.released}`;
      // Reserve first: taken, then given back. Release first: a tombstone, and the reserve is refused.
      assert.ok(['201 / released true', '409 RESERVATION_RELEASED / released false'].includes(outcome), outcome);
    }
    assert.equal(await stockOf(p.id), 50);
    for (const id of ids) assert.equal((await b.call('GET', `/internal/reservations/${id}`)).body.status, 'released');
  });

  test('when stock changes race through both instances, then the guards hold: never negative, never past the limit', async () => {
    const p = await createProduct({ stock: 10 });
    const path = `/products/${p.id}/stock`;
    const subtracts = await Promise.all(Array.from({ length: 20 }, (_, i) => on(i).call('PATCH', path, { body: { operation: 'subtract', quantity: 1 } })));
    assert.equal(count(subtracts, '200'), 10, codes(subtracts).join());
    assert.equal(count(subtracts, '409 INSUFFICIENT_STOCK'), 10);
    assert.equal(await stockOf(p.id), 0);
    assert.equal((await a.call('PATCH', path, { body: { operation: 'set', quantity: MAX_STOCK - 5 } })).status, 200);
    const adds = await Promise.all(Array.from({ length: 12 }, (_, i) => on(i).call('PATCH', path, { body: { operation: 'add', quantity: 1 } })));
    assert.equal(count(adds, '200'), 5, codes(adds).join());
    assert.equal(count(adds, '409 STOCK_LIMIT_EXCEEDED'), 7);
    assert.equal(await stockOf(p.id), MAX_STOCK);
    // A reservation taken at the limit and released gives back exactly what it took.
    const id = rid('limit');
    await b.call('POST', '/internal/reservations', { body: { id, items: [item(p.id, 4)] } });
    assert.equal(await stockOf(p.id), MAX_STOCK - 4);
    await Promise.all([a, b].map((svc) => svc.call('DELETE', `/internal/reservations/${id}`)));
    assert.equal(await stockOf(p.id), MAX_STOCK);
  });
});

describe('products while PostgreSQL is unreachable', { skip: skipUnless('postgres') }, () => {
  const storage = testStorage('postgres');
  after(() => storage.remove());

  test('when the database goes away, then reads and writes are 503 STORAGE_UNAVAILABLE and /health is 503; when it returns, all work again without a restart', async () => {
    const relay = await databaseRelay();
    const svc = await start({ options: (s, seed) => ({ ...storage.options(s, seed), databaseUrl: relay.url, timeoutMs: 500 }), remove: () => storage.remove() });
    try {
      const p = await svc.call('POST', '/products', { body: { name: 'Before Outage', price: 3, stock: 5 } });
      assert.equal(p.status, 201);
      await relay.down();
      const reads = [await svc.call('GET', `/products/${p.body.id}`), await svc.call('GET', '/products?search=outage')];
      const writes = [
        await svc.call('POST', '/products', { body: { name: 'During Outage', price: 1 } }),
        await svc.call('POST', '/internal/reservations', { body: { id: rid('outage'), items: [item(p.body.id)] } }),
        await svc.call('DELETE', `/internal/reservations/${rid('outage')}`),
      ];
      for (const r of [...reads, ...writes]) assert.deepEqual([r.status, r.body.code], [503, 'STORAGE_UNAVAILABLE'], r.text);
      // /health answers { status } (no error code), so it is asked without the error-shape check.
      assert.deepEqual((await http(svc.url, 'GET', '/health')).body, { status: 'unhealthy', service: 'product-service' });

      await relay.up();
      let health = await http(svc.url, 'GET', '/health');
      for (let i = 0; i < 50 && health.status !== 200; i++) health = await http(svc.url, 'GET', '/health');
      assert.equal(health.status, 200);
      assert.equal((await svc.call('GET', `/products/${p.body.id}`)).body.stock, 5, 'nothing was taken during the outage');
      assert.equal((await svc.call('POST', '/internal/reservations', { body: { id: rid('after'), items: [item(p.body.id)] } })).status, 201);
      assert.equal((await svc.call('GET', `/products/${p.body.id}`)).body.stock, 4);
    } finally {
      await svc.close();
      await relay.close();
    }
  });
});
