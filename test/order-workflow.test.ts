// The order workflow's failure paths and races: each leaves no order without its stock and no
// stock held without an order, checked on the product side afterwards.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { openSqlDatabase } from '../lib/platform/sql.js';
import { ServiceClient } from '../lib/platform/service-client.js';
import { createProductsClient, type ProductsClient } from '../lib/products/client.js';
import { productReads, type ProductReads } from './support/product-reads.js';
import { openOrderDatabase, ORDER_MIGRATIONS } from '../lib/orders/db.js';
import { createOrderStore } from '../lib/orders/store.js';
import { assertNoLeak, http, tempDir, type TestResponse } from './helpers.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';
import { ENGINES, testStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { eventually } from './support/eventually.js';

// Short, so a timed-out reserve is old enough for the release worker after 2 x 300 ms.
const FAST_ENV = { UPSTREAM_TIMEOUT_MS: '300', RELEASE_RETRY_MS: '50' };

function post(sys: System, body: unknown, headers?: Record<string, string>): Promise<TestResponse> {
  return http(sys.orders.url, 'POST', '/orders', { body, headers }).then((r) => {
    assertNoLeak(r.text);
    return r;
  });
}

/** Reservations the order service still has to give back, read from its own /metrics. */
async function pendingReleases(sys: System): Promise<number> {
  const r = await http(sys.orders.url, 'GET', '/metrics');
  const m = /^orders_pending_releases(?:\{[^}]*\})? (\d+)$/m.exec(r.text);
  assert.ok(m, 'orders_pending_releases is exported');
  return Number(m[1]);
}

async function ordersOf(sys: System, userId: number): Promise<{ id: number; status: string; items: { productId: number; quantity: number }[] }[]> {
  const r = await http(sys.orders.url, 'GET', `/orders?userId=${userId}&limit=100`);
  assert.equal(r.status, 200);
  return r.body.data;
}

const productsClient = (sys: System): ProductsClient & ProductReads => {
  const service = new ServiceClient({ name: 'products', baseUrl: sys.products.url, timeoutMs: 2_000 });
  return { ...createProductsClient(service), ...productReads(service) };
};

describe('order workflow against live services', () => {
  let sys: System;
  before(async () => {
    sys = await startServices({ env: FAST_ENV });
  });
  after(async () => sys.stop());

  test('when the user service is down, then 503 DEPENDENCY_UNAVAILABLE and neither an order nor held stock', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    await sys.users.close();
    try {
      const r = await post(sys, { userId, items: [{ productId, quantity: 2 }] });
      assert.equal(r.status, 503);
      assert.equal(r.body.code, 'DEPENDENCY_UNAVAILABLE');
      assert.equal(r.headers.get('x-dependency-failure'), 'users');
    } finally {
      await sys.users.start();
    }
    assert.deepEqual(await ordersOf(sys, userId), []);
    assert.equal(await stockOf(sys, productId), 5);
    assert.equal(await pendingReleases(sys), 0);
    assert.equal((await post(sys, { userId, items: [{ productId, quantity: 2 }] })).status, 201, 'works again once it is back');
  });

  test('when the product service is down, then 503, and once it is back no stock is held', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    await sys.products.close();
    try {
      const r = await post(sys, { userId, items: [{ productId, quantity: 2 }] });
      assert.equal(r.status, 503);
      assert.equal(r.body.code, 'DEPENDENCY_UNAVAILABLE');
      assert.equal(r.headers.get('x-dependency-failure'), 'products');
      // The reserve may have landed before the connection broke: the outbox keeps it to release.
      assert.equal(await pendingReleases(sys), 1);
    } finally {
      await sys.products.start();
    }
    await eventually(async () => (await pendingReleases(sys)) === 0, 5_000, 'the release worker');
    assert.deepEqual(await ordersOf(sys, userId), []);
    assert.equal(await stockOf(sys, productId), 5);
  });

  test('when the second of three items is short, then 409 INSUFFICIENT_STOCK and every stock is untouched', async () => {
    const userId = await createUser(sys);
    const first = await createProduct(sys, { stock: 10 });
    const second = await createProduct(sys, { stock: 1 });
    const third = await createProduct(sys, { stock: 10 });
    const r = await post(sys, { userId, items: [{ productId: first, quantity: 3 }, { productId: second, quantity: 2 }, { productId: third, quantity: 3 }] });
    assert.equal(r.status, 409);
    assert.equal(r.body.code, 'INSUFFICIENT_STOCK');
    assert.deepEqual([await stockOf(sys, first), await stockOf(sys, second), await stockOf(sys, third)], [10, 1, 10]);
    assert.deepEqual(await ordersOf(sys, userId), []);
    assert.equal(await pendingReleases(sys), 0);
  });

  test('when the user or a product is unknown, then 422 and nothing is held', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const noUser = await post(sys, { userId: 987_654, items: [{ productId, quantity: 1 }] });
    assert.equal(noUser.body.code, 'UNKNOWN_USER');
    const noProduct = await post(sys, { userId, items: [{ productId, quantity: 1 }, { productId: 987_654, quantity: 1 }] });
    assert.equal(noProduct.status, 422);
    assert.equal(noProduct.body.code, 'UNKNOWN_PRODUCT');
    assert.equal(await stockOf(sys, productId), 10);
    assert.deepEqual(await ordersOf(sys, userId), []);
    assert.equal(await pendingReleases(sys), 0);
  });

  test('when one Idempotency-Key is sent 10 times at once, then one order, stock taken once, 9 replays', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const headers = { 'idempotency-key': `concurrent-${Date.now()}` };
    const results = await Promise.all(Array.from({ length: 10 }, () => post(sys, { userId, items: [{ productId, quantity: 3 }] }, headers)));
    assert.deepEqual(results.map((r) => r.status), Array(10).fill(201));
    assert.equal(new Set(results.map((r) => r.body.id)).size, 1);
    assert.equal(results.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 9);
    assert.equal(await stockOf(sys, productId), 7);
    assert.equal((await ordersOf(sys, userId)).length, 1);
  });

  test('when a keyed create failed, then a retry with the same key may still succeed', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 1 });
    const headers = { 'idempotency-key': `retry-${Date.now()}` };
    const body = { userId, items: [{ productId, quantity: 2 }] };
    assert.equal((await post(sys, body, headers)).status, 409);
    const patched = await http(sys.products.url, 'PATCH', `/products/${productId}/stock`, { body: { operation: 'add', quantity: 5 } });
    assert.equal(patched.status, 200);
    const retry = await post(sys, body, headers);
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get('idempotent-replayed'), null);
    assert.equal(await stockOf(sys, productId), 4);
  });

  test('when two cancels of one order race, then one 200 and one 409, and the stock comes back once', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const { body: order } = await post(sys, { userId, items: [{ productId, quantity: 4 }] });
    const cancel = () => http(sys.orders.url, 'PUT', `/orders/${order.id}/status`, { body: { status: 'cancelled' } });
    const results = await Promise.all([cancel(), cancel()]);
    assert.deepEqual(results.map((r) => r.status).sort(), [200, 409]);
    assert.equal(results.find((r) => r.status === 409)!.body.code, 'INVALID_TRANSITION');
    assert.equal(await stockOf(sys, productId), 10);
    assert.equal(await pendingReleases(sys), 0);
  });

  test('when a cancel and a delete of one pending order race, then one wins and the stock comes back once', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const { body: order } = await post(sys, { userId, items: [{ productId, quantity: 4 }] });
    const [cancel, remove] = await Promise.all([
      http(sys.orders.url, 'PUT', `/orders/${order.id}/status`, { body: { status: 'cancelled' } }),
      http(sys.orders.url, 'DELETE', `/orders/${order.id}`),
    ]);
    const winners = [cancel.status === 200, remove.status === 204].filter(Boolean).length;
    assert.equal(winners, 1, `${cancel.status} ${remove.status}`);
    assert.ok([404, 409].includes(cancel.status === 200 ? remove.status : cancel.status));
    assert.equal(await stockOf(sys, productId), 10);
  });

  test('when the product service is down during a cancel, then 200 and the stock comes back once it is up', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const { body: order } = await post(sys, { userId, items: [{ productId, quantity: 4 }] });
    await sys.products.close();
    try {
      const r = await http(sys.orders.url, 'PUT', `/orders/${order.id}/status`, { body: { status: 'cancelled' } });
      assert.equal(r.status, 200);
      assert.equal(r.body.status, 'cancelled');
      assert.equal(await pendingReleases(sys), 1);
    } finally {
      await sys.products.start();
    }
    await eventually(async () => (await pendingReleases(sys)) === 0, 5_000, 'the release worker');
    assert.equal(await stockOf(sys, productId), 10);
  });

  test('when the order service died between reserve and commit, then after a restart the worker gives the stock back', async () => {
    const productId = await createProduct(sys, { stock: 10 });
    const products = productsClient(sys);
    // What a create leaves behind when the process dies after the reserve: an outbox row and held
    // stock. The row is new, so the worker leaves it alone while the service drains (600 ms).
    const reservationId = `crashed-${Date.now()}`;
    await sys.orders.db.run('INSERT INTO pending_releases (reservation_id, created_at_ms) VALUES ($1, $2)', [reservationId, Date.now()]);
    await sys.orders.close();
    await products.reserve(reservationId, [{ productId, quantity: 6 }]);
    assert.equal(await stockOf(sys, productId), 4);
    await sys.orders.start();
    await eventually(async () => (await pendingReleases(sys)) === 0, 5_000, 'the release worker');
    assert.equal(await stockOf(sys, productId), 10);
    assert.equal((await products.getReservation(reservationId))?.status, 'released');
  });
});

describe('slow product service', () => {
  let sys: System;
  let proxy: DelayProxy;
  before(async () => {
    proxy = await startDelayProxy();
    sys = await startServices({ env: { ...FAST_ENV, PRODUCTS_URL: proxy.url } });
    proxy.target = sys.products.url;
  });
  after(async () => {
    await sys.stop();
    await proxy.close();
  });

  test('when a reserve outlasts UPSTREAM_TIMEOUT_MS, then 503, and the reservation that lands late is released', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    // Longer than the 300 ms timeout, shorter than the worker's 600 ms wait: the reserve lands
    // after we answered 503 and before the release, the worst order of events.
    proxy.delayMs = 450;
    const started = Date.now();
    const r = await post(sys, { userId, items: [{ productId, quantity: 3 }] });
    assert.equal(r.status, 503);
    assert.equal(r.body.code, 'DEPENDENCY_UNAVAILABLE');
    assert.ok(Date.now() - started < 2_000);
    const [row] = await sys.orders.db.all<{ reservation_id: string }>('SELECT reservation_id FROM pending_releases');
    assert.ok(row, 'the outbox keeps the reservation id');
    proxy.delayMs = 0;
    await proxy.idle();
    const products = productsClient(sys);
    // A release that came first would have left a tombstone without items.
    assert.equal((await products.getReservation(row.reservation_id))?.items.length, 1, 'the late reserve took the stock');
    await eventually(async () => (await pendingReleases(sys)) === 0, 5_000, 'the release worker');
    assert.equal((await products.getReservation(row.reservation_id))?.status, 'released');
    assert.equal(await stockOf(sys, productId), 10);
    assert.deepEqual(await ordersOf(sys, userId), []);
  });
});

for (const engine of ENGINES) {
  describe(`release claims (${engine})`, { skip: skipUnless(engine) }, () => {
    const storage = testStorage(engine);
    after(() => storage.remove());

    test('when the worker claimed a reservation first, then the create commits no order for it', async () => {
      const db = await openSqlDatabase({ ...storage.options('claims'), name: 'orders', migrations: ORDER_MIGRATIONS });
      try {
        const store = createOrderStore(db);
        const order = { userId: 1, status: 'pending' as const, items: [{ productId: 1, quantity: 1, unitPriceCents: 100 }], totalCents: 100 };
        await store.addPendingRelease('claimed');
        assert.equal(await store.claimRelease('claimed', 60_000), 'claimed');
        assert.equal(await store.claimRelease('claimed', 60_000), 'busy', 'leased: nobody else releases it meanwhile');
        assert.deepEqual(await store.finishCreate({ ...order, reservationId: 'claimed' }), { kind: 'release_claimed' });
        assert.equal((await store.stats()).totalOrders, 0);

        await store.addPendingRelease('owned');
        assert.equal((await store.finishCreate({ ...order, reservationId: 'owned' })).kind, 'created');
        await store.addPendingRelease('owned');
        assert.equal(await store.claimRelease('owned', 60_000), 'owned', 'a live order owns it: never released, only forgotten');
        assert.equal(await store.countPendingReleases(), 1, 'only the claimed row is left');
      } finally {
        await db.close();
      }
    });
  });
}

describe('order database upgrade', () => {
  test('when a SQLite file of the first schema is opened, then its keys belong to their orders\' users and its outbox rows are claimable', async () => {
    const dir = tempDir('msvc-order-upgrade-');
    try {
      const old = await openSqlDatabase({ dataDir: dir.dir, name: 'orders', migrations: { sqlite: ORDER_MIGRATIONS.sqlite.slice(0, 1), postgres: [] } });
      const response = JSON.stringify({ id: 9, userId: 7, items: [], status: 'pending', total: 0, createdAt: 'x', updatedAt: 'x' });
      await old.run("INSERT INTO idempotency_keys (key, body_hash, order_id, response, created_at) VALUES ('user:7:abc', 'h', 9, $1, 'x')", [response]);
      await old.run("INSERT INTO pending_releases (reservation_id, created_at_ms) VALUES ('old-row', 1)");
      await old.close();

      const db = await openOrderDatabase({ dataDir: dir.dir, seed: false });
      try {
        const store = createOrderStore(db);
        assert.equal((await store.findIdempotencyKey(7, 'user:7:abc'))?.orderId, 9);
        assert.equal(await store.findIdempotencyKey(8, 'user:7:abc'), undefined, "another user's key space");
        assert.deepEqual(await store.dueReleases(Date.now(), 10), ['old-row']);
        assert.equal(await store.claimRelease('old-row', 60_000), 'claimed');
      } finally {
        await db.close();
      }
    } finally {
      dir.remove();
    }
  });
});

interface DelayProxy {
  url: string;
  target: string;
  delayMs: number;
  /** Resolves once every request received so far was forwarded and answered. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

/** Forwards every request to `target` after `delayMs`, even when the caller gave up meanwhile. */
async function startDelayProxy(): Promise<DelayProxy> {
  let pending = 0;
  const server: Server = createServer((req, res) => {
    pending++;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      setTimeout(() => {
        const target = new URL(req.url ?? '/', proxy.target);
        const upstream = request(target, { method: req.method, headers: { ...req.headers, host: target.host } }, (up: IncomingMessage) => {
          if (!res.destroyed) res.writeHead(up.statusCode ?? 502, up.headers);
          up.on('data', (c: Buffer) => res.destroyed || res.write(c));
          up.on('end', () => {
            res.end();
            pending--;
          });
        });
        upstream.on('error', () => {
          res.destroy();
          pending--;
        });
        upstream.end(Buffer.concat(chunks));
      }, proxy.delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxy: DelayProxy = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    target: '',
    delayMs: 0,
    idle: () => eventually(() => pending === 0, 5_000, 'the proxy to drain'),
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return proxy;
}

// Its own system with the default upstream timeout: 40 racing writes, each fsynced, on a loaded
// 2-core CI machine can outlast the 300 ms the failure-path tests use, and a 503 is no answer here.
describe('orders racing for the last units', () => {
  let sys: System;
  before(async () => {
    sys = await startServices({ env: { RELEASE_RETRY_MS: '50' } });
  });
  after(async () => sys.stop());

  test('when 40 orders race for the last 10 units, then exactly 10 x 201 and 30 x 409, stock 0', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const results = await Promise.all(Array.from({ length: 40 }, () => post(sys, { userId, items: [{ productId, quantity: 1 }] })));
    const statuses = results.map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 201).length, 10, String(statuses));
    assert.equal(statuses.filter((s) => s === 409).length, 30, String(statuses));
    assert.ok(results.filter((r) => r.status === 409).every((r) => r.body.code === 'INSUFFICIENT_STOCK'));
    assert.equal(await stockOf(sys, productId), 0);
    // Each acknowledged order is there, once, holding its unit: none was lost or made twice.
    const created = results.filter((r) => r.status === 201).map((r) => r.body.id as number);
    assert.equal(new Set(created).size, 10);
    for (const id of created) {
      const order = await http(sys.orders.url, 'GET', `/orders/${id}`);
      assert.equal(order.status, 200);
      assert.deepEqual(order.body.items.map((i: { productId: number; quantity: number }) => [i.productId, i.quantity]), [[productId, 1]]);
    }
    const listed = await http(sys.orders.url, 'GET', `/orders?userId=${userId}&limit=100`);
    assert.equal(listed.body.meta.total, 10);
    assert.equal((await ordersOf(sys, userId)).length, 10);
    assert.equal(await pendingReleases(sys), 0);
  });
});
