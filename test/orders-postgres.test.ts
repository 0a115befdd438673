// The order service on PostgreSQL: its workflow, and what must hold when two instances share one
// schema (idempotency keys, the release outbox, status changes), when the process is killed, and
// while the database is unreachable. The user and product services run beside it on SQLite.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ServiceClient } from '../lib/platform/service-client.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import { createOrderStore } from '../lib/orders/store.js';
import pg from 'pg';
import { createProductsClient } from '../lib/products/client.js';
import { assertNoLeak, http, tempDir, type TestResponse } from './helpers.js';
import { spawnService } from './process.js';
import { databaseRelay, TEST_DATABASE_URL, testStorage, type DatabaseOutage, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';
import { startOrderInstance, type OrderInstance } from './support/order-instance.js';
import { eventually } from './support/eventually.js';


/** A forwarding proxy in front of the product service that counts the release calls per reservation. */
interface CountingProxy {
  url: string;
  releases: Map<string, number>;
  close(): Promise<void>;
}

async function startCountingProxy(target: string): Promise<CountingProxy> {
  const releases = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const m = /^\/internal\/reservations\/([^/?]+)$/.exec(req.url ?? '');
    if (req.method === 'DELETE' && m) {
      const id = decodeURIComponent(m[1]);
      releases.set(id, (releases.get(id) ?? 0) + 1);
    }
    const url = new URL(req.url ?? '/', target);
    const upstream = request(url, { method: req.method, headers: { ...req.headers, host: url.host } }, (up: IncomingMessage) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    releases,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

const call = async (base: string, method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<TestResponse> => {
  const r = await http(base, method, path, { body, headers });
  assertNoLeak(r.text);
  return r;
};

describe('orders on PostgreSQL, two instances on one schema', { skip: skipUnless('postgres') }, () => {
  let sys: System;
  let storage: TestStorage;
  let proxy: CountingProxy;
  let a: OrderInstance;
  let b: OrderInstance;
  let env: Record<string, string>;
  const dir = tempDir('msvc-orders-pg-');

  before(async () => {
    // Demo users and products, so the users made here are not the demo orders' users.
    sys = await startServices({ seed: true });
    storage = testStorage('postgres');
    proxy = await startCountingProxy(sys.products.url);
    env = { USERS_URL: sys.users.url, PRODUCTS_URL: proxy.url, RELEASE_RETRY_MS: '50', DATA_DIR: dir.dir };
    // Started together: the migration and the demo seed run once however many instances start.
    [a, b] = await Promise.all([startOrderInstance(storage.options('orders', true), env), startOrderInstance(storage.options('orders', true), env)]);
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await proxy?.close();
    await sys?.stop();
    await storage?.remove();
    dir.remove();
  });

  test('when an order or user id is above what a 32-bit column holds (the API takes up to 2^53), then it is not found, not a 500', async () => {
    assert.equal((await call(a.url, 'GET', '/orders/3000000000')).status, 404);
    const listed = await call(b.url, 'GET', `/orders?userId=${Number.MAX_SAFE_INTEGER}`);
    assert.equal(listed.status, 200, listed.text);
    assert.equal(listed.body.meta.total, 0);
  });

  test('when two instances start at once with SEED_DATA, then the demo orders are there once', async () => {
    const list = await call(a.url, 'GET', '/orders?limit=100');
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.data.map((o: { id: number }) => o.id), [3, 2, 1]);
    assert.deepEqual((await call(b.url, 'GET', '/orders?limit=100')).body, list.body);
  });

  test('when both engines hold the same orders, then the list and the stats are the same, item order and cents included', async () => {
    const sqlite = testStorage('sqlite');
    const lite = await startOrderInstance(sqlite.options('orders', true), env);
    try {
      const userId = await createUser(sys);
      const [p1, p2] = [await createProduct(sys, { stock: 10, price: 0.1 }), await createProduct(sys, { stock: 10, price: 0.2 })];
      const body = { userId, items: [{ productId: p2, quantity: 3 }, { productId: p1, quantity: 1 }] };
      // Runs right after the seed: both hold the demo orders only, then one more each.
      const stats = async (base: string) => (await call(base, 'GET', '/stats')).body;
      assert.deepEqual(await stats(a.url), await stats(lite.url));
      const onLite = await call(lite.url, 'POST', '/orders', body);
      const onPg = await call(a.url, 'POST', '/orders', body);
      assert.deepEqual(await stats(a.url), await stats(lite.url));
      assert.equal(onLite.body.total, 0.7);
      const shape = (o: Record<string, unknown>) => ({ ...o, id: undefined, createdAt: undefined, updatedAt: undefined });
      assert.deepEqual(shape(onPg.body), shape(onLite.body));
      const demo = async (base: string) => (await call(base, 'GET', '/orders?userId=1&limit=100')).body;
      assert.deepEqual((await demo(a.url)).data.map(shape), (await demo(lite.url)).data.map(shape));
      assert.deepEqual((await demo(a.url)).meta, (await demo(lite.url)).meta);
      const mine = async (base: string) => (await call(base, 'GET', `/orders?userId=${userId}`)).body.data.map(shape);
      assert.deepEqual(await mine(a.url), await mine(lite.url));
    } finally {
      await lite.close();
      await sqlite.remove();
    }
  });

  test('when an order is placed, replayed, moved along and cancelled, then each answer is as on SQLite and the stock comes back', async () => {
    const userId = await createUser(sys);
    const p1 = await createProduct(sys, { stock: 10, price: 19.99 });
    const p2 = await createProduct(sys, { stock: 10, price: 0.1 });
    const body = { userId, items: [{ productId: p2, quantity: 3 }, { productId: p1, quantity: 3 }] };
    const created = await call(a.url, 'POST', '/orders', body, { 'idempotency-key': 'flow-1' });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.headers.get('location'), `/orders/${created.body.id}`);
    // Items keep the order they were sent in; the total is summed in cents.
    assert.deepEqual(created.body.items, [
      { productId: p2, quantity: 3, unitPrice: 0.1 },
      { productId: p1, quantity: 3, unitPrice: 19.99 },
    ]);
    assert.equal(created.body.total, 60.27);
    assert.equal(created.body.createdAt, created.body.updatedAt);

    const replay = await call(b.url, 'POST', '/orders', body, { 'idempotency-key': 'flow-1' });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(replay.body, created.body);
    assert.deepEqual([await stockOf(sys, p1), await stockOf(sys, p2)], [7, 7], 'stock taken once');
    const reused = await call(b.url, 'POST', '/orders', { userId, items: [{ productId: p1, quantity: 1 }] }, { 'idempotency-key': 'flow-1' });
    assert.equal(reused.status, 422);
    assert.equal(reused.body.code, 'IDEMPOTENCY_KEY_REUSED');

    assert.deepEqual((await call(b.url, 'GET', `/orders/${created.body.id}`)).body, created.body);
    const listed = await call(b.url, 'GET', `/orders?userId=${userId}&status=pending`);
    assert.deepEqual(listed.body, { data: [created.body], meta: { page: 1, limit: 10, total: 1 } });

    const id = created.body.id as number;
    const confirmed = await call(a.url, 'PUT', `/orders/${id}/status`, { status: 'confirmed' });
    assert.equal(confirmed.status, 200);
    assert.equal(confirmed.body.status, 'confirmed');
    const backwards = await call(b.url, 'PUT', `/orders/${id}/status`, { status: 'pending' });
    assert.equal(backwards.status, 409);
    assert.equal(backwards.body.code, 'INVALID_TRANSITION');
    const notPending = await call(b.url, 'DELETE', `/orders/${id}`);
    assert.equal(notPending.status, 409);
    assert.equal(notPending.body.code, 'ORDER_NOT_PENDING');
    const cancelled = await call(b.url, 'PUT', `/orders/${id}/status`, { status: 'cancelled' });
    assert.equal(cancelled.status, 200);
    assert.deepEqual([await stockOf(sys, p1), await stockOf(sys, p2)], [10, 10]);
    assert.equal((await call(a.url, 'GET', `/orders/${id}`)).body.status, 'cancelled');

    const shipped = await call(a.url, 'POST', '/orders', { userId, items: [{ productId: p1, quantity: 1 }] });
    for (const status of ['confirmed', 'shipped', 'delivered']) {
      assert.equal((await call(b.url, 'PUT', `/orders/${shipped.body.id}/status`, { status })).body.status, status);
    }
    const stats = await call(a.url, 'GET', '/stats');
    assert.equal(stats.status, 200);
    assert.equal(stats.body.statusBreakdown.delivered >= 1, true);
    assert.equal(typeof stats.body.totalRevenue, 'number');
  });

  test('when a pending order is deleted, then 204, it is gone on both instances and its stock is back', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const { body: order } = await call(a.url, 'POST', '/orders', { userId, items: [{ productId, quantity: 4 }] });
    assert.equal(await stockOf(sys, productId), 1);
    assert.equal((await call(b.url, 'DELETE', `/orders/${order.id}`)).status, 204);
    assert.equal((await call(a.url, 'GET', `/orders/${order.id}`)).status, 404);
    assert.equal((await call(a.url, 'DELETE', `/orders/${order.id}`)).status, 404);
    assert.equal(await stockOf(sys, productId), 5);
  });

  test('when two users send the same Idempotency-Key, then each gets an order of its own', async () => {
    const [u1, u2] = [await createUser(sys), await createUser(sys)];
    const productId = await createProduct(sys, { stock: 10 });
    const key = { 'idempotency-key': 'shared-key' };
    const first = await call(a.url, 'POST', '/orders', { userId: u1, items: [{ productId, quantity: 1 }] }, key);
    const second = await call(b.url, 'POST', '/orders', { userId: u2, items: [{ productId, quantity: 1 }] }, key);
    assert.deepEqual([first.status, second.status], [201, 201], second.text);
    assert.equal(second.headers.get('idempotent-replayed'), null);
    assert.notEqual(first.body.id, second.body.id);
    assert.equal(second.body.userId, u2);
    assert.equal(await stockOf(sys, productId), 8);
  });

  test('when one user sends one key to both instances at once, then one order, every answer the same 201 body', async () => {
    const userId = await createUser(sys);
    // Rounds, because the racer that arrives just as the first commits is the one that goes wrong.
    for (let round = 0; round < 8; round++) {
      // Stock for one order only: a racer that reserved stock of its own would be refused.
      const productId = await createProduct(sys, { stock: 2 });
      const body = { userId, items: [{ productId, quantity: 2 }] };
      const key = { 'idempotency-key': `racing-key-${round}` };
      const results = await Promise.all(Array.from({ length: 8 }, (_, i) => call(i % 2 ? a.url : b.url, 'POST', '/orders', body, key)));
      assert.deepEqual(results.map((r) => r.status), Array(8).fill(201), `round ${round}: ${results.map((r) => r.text).join('\n')}`);
      for (const r of results) assert.deepEqual(r.body, results[0].body);
      assert.equal(await stockOf(sys, productId), 0);
    }
    assert.equal((await call(a.url, 'GET', `/orders?userId=${userId}`)).body.meta.total, 8);
  });

  test('when a key is held by a create that died, then a retry waits while its claim lasts and takes it over after', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const body = { userId, items: [{ productId, quantity: 1 }] };
    const claim = 'INSERT INTO idempotency_claims (user_id, key, holder, until_ms) VALUES ($1, $2, $3, $4)';
    // Ran out long ago: taken over at once.
    await a.db.run(claim, [userId, 'dead-holder', 'gone', 1]);
    const first = await call(b.url, 'POST', '/orders', body, { 'idempotency-key': 'dead-holder' });
    assert.equal(first.status, 201, first.text);
    // Still held: the retry waits as long as its caller listens, answers that the key is in use
    // (no order made, no stock taken), and goes on once the claim is gone.
    await a.db.run(claim, [userId, 'live-holder', 'other', Date.now() + 60_000]);
    const held = await call(b.url, 'POST', '/orders', body, { 'idempotency-key': 'live-holder', 'request-timeout': '600' });
    assert.equal(held.status, 409, held.text);
    assert.equal(held.body.code, 'IDEMPOTENCY_KEY_IN_USE');
    assert.match(held.headers.get('retry-after') ?? '', /^\d+$/);
    assert.equal(await stockOf(sys, productId), 9, 'the held key took no stock');
    await a.db.run('DELETE FROM idempotency_claims WHERE user_id = $1 AND key = $2', [userId, 'live-holder']);
    const second = await call(b.url, 'POST', '/orders', body, { 'idempotency-key': 'live-holder' });
    assert.equal(second.status, 201, second.text);
    assert.equal(second.headers.get('idempotent-replayed'), null);
    assert.equal(await stockOf(sys, productId), 8);
  });

  test('when both instances cancel one order at once, then one 200 and one 409, and the stock comes back once', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const { body: order } = await call(a.url, 'POST', '/orders', { userId, items: [{ productId, quantity: 4 }] });
    const results = await Promise.all([a, b].map((i) => call(i.url, 'PUT', `/orders/${order.id}/status`, { status: 'cancelled' })));
    assert.deepEqual(results.map((r) => r.status).sort(), [200, 409]);
    assert.equal(await stockOf(sys, productId), 10);
  });

  test('when the release workers of both instances race over one outbox, then every reservation is released exactly once', async () => {
    const productId = await createProduct(sys, { stock: 100 });
    const products = createProductsClient(new ServiceClient({ name: 'products', baseUrl: sys.products.url, timeoutMs: 5_000 }));
    const ids = Array.from({ length: 30 }, (_, i) => `left-behind-${Date.now()}-${i}`);
    for (const id of ids) await products.reserve(id, [{ productId, quantity: 2 }]);
    assert.equal(await stockOf(sys, productId), 40);
    // What creates that died after their reserve leave behind, old enough for the workers: all
    // appear at once, so both workers find the same rows on their next pass.
    await a.db.transaction(async (tx) => {
      for (const id of ids) await tx.run('INSERT INTO pending_releases (reservation_id, created_at_ms) VALUES ($1, $2)', [id, 1]);
    });
    await eventually(async () => (await a.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM pending_releases'))!.n === 0, 8_000, 'the outbox to empty');
    assert.deepEqual(ids.map((id) => proxy.releases.get(id) ?? 0), ids.map(() => 1));
    assert.equal(await stockOf(sys, productId), 100);
  });

  test('when the order service is killed with SIGKILL during creates, then every order it acknowledged is in PostgreSQL', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 100 });
    const options = storage.options('orders');
    const child = await spawnService('order-service.ts', {
      DATABASE_URL: options.databaseUrl!,
      DATABASE_SCHEMA: options.schema!,
      DATA_DIR: dir.dir,
      USERS_URL: sys.users.url,
      PRODUCTS_URL: sys.products.url,
    });
    try {
      const acknowledged: TestResponse[] = [];
      let killed: Promise<number | string> | undefined;
      await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const r = await http(child.url, 'POST', '/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, headers: { 'idempotency-key': `k9-${i}` } }).catch(() => undefined);
          if (r?.status === 201) acknowledged.push(r);
          // Killed as soon as a few were answered, with the rest in flight.
          if (acknowledged.length === 5) killed ??= child.stop('SIGKILL');
        }),
      );
      assert.equal(await (killed ?? child.stop('SIGKILL')), 'SIGKILL');
      assert.ok(acknowledged.length >= 5);
      for (const r of acknowledged) assert.deepEqual((await call(a.url, 'GET', `/orders/${r.body.id}`)).body, r.body);
    } finally {
      await child.stop('SIGKILL');
    }
  });
});

describe('orders on PostgreSQL while the database is unreachable', { skip: skipUnless('postgres') }, () => {
  let sys: System;
  let storage: TestStorage;
  let relay: DatabaseOutage;
  let svc: OrderInstance;
  const dir = tempDir('msvc-orders-pg-outage-');

  before(async () => {
    sys = await startServices();
    storage = testStorage('postgres');
    relay = await databaseRelay();
    svc = await startOrderInstance({ ...storage.options('orders'), databaseUrl: relay.url, timeoutMs: 500 }, { USERS_URL: sys.users.url, PRODUCTS_URL: sys.products.url, DATA_DIR: dir.dir });
  });
  after(async () => {
    await svc?.close();
    await relay?.close();
    await sys?.stop();
    await storage?.remove();
    dir.remove();
  });

  test('when PostgreSQL is down, then reads and writes get 503 STORAGE_UNAVAILABLE, and it heals by itself when it is back', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const body = { userId, items: [{ productId, quantity: 1 }] };
    const { body: order } = await call(svc.url, 'POST', '/orders', body);
    await relay.down();
    try {
      assert.equal((await call(svc.url, 'GET', '/health')).status, 503);
      for (const r of [await call(svc.url, 'GET', `/orders/${order.id}`), await call(svc.url, 'POST', '/orders', body), await call(svc.url, 'PUT', `/orders/${order.id}/status`, { status: 'confirmed' })]) {
        assert.equal(r.status, 503, r.text);
        assert.equal(r.body.code, 'STORAGE_UNAVAILABLE');
      }
    } finally {
      await relay.up();
    }
    await eventually(async () => (await call(svc.url, 'GET', '/health')).status === 200, 8_000, 'health');
    assert.equal((await call(svc.url, 'GET', `/orders/${order.id}`)).body.status, 'pending', 'the failed status change did not happen');
    assert.equal((await call(svc.url, 'POST', '/orders', body)).status, 201);
  });
});

describe('keyed creates on PostgreSQL, at the moment the first one commits', { skip: skipUnless('postgres') }, () => {
  test('when a create commits its key while another begins, then the other finds the order, not a free key', async () => {
    const storage = testStorage('postgres');
    const options = storage.options('orders');
    const db = await openOrderDatabase(options);
    const raw = new pg.Client({ connectionString: TEST_DATABASE_URL, options: `-c search_path=${options.schema}` });
    await raw.connect();
    try {
      const store = createOrderStore(db);
      const claimed = await store.beginKeyedCreate('r-first', 7, 'k', 60_000);
      assert.equal(claimed.kind, 'claimed');
      // The first create's commit, held open: its key written and its claim deleted, as finishCreate does.
      await raw.query('BEGIN');
      await raw.query('DELETE FROM idempotency_claims WHERE user_id = 7 AND key = $1', ['k']);
      const order = { id: 1, userId: 7, items: [], status: 'pending', total: 0, createdAt: 'x', updatedAt: 'x' };
      await raw.query('INSERT INTO idempotency_keys (user_id, key, body_hash, order_id, response, created_at) VALUES (7, $1, $2, 1, $3, $4)', ['k', 'h', JSON.stringify(order), 'x']);
      // The second begins now: its claim waits on the first's row until the commit below.
      const second = store.beginKeyedCreate('r-second', 7, 'k', 60_000);
      // The second's claim is queued behind the first's row lock: seen by the server, not guessed.
      // (Asked outside the open transaction, whose view of pg_stat_activity would stay as first read.)
      const waiting = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%idempotency_claims%'`;
      await eventually(async () => (await db.get<{ n: number }>(waiting))!.n > 0, 8_000, 'the second claim to wait on the first');
      await raw.query('COMMIT');
      const result = await second;
      assert.equal(result.kind, 'finished', 'the second sees the committed key instead of claiming it again');
      assert.equal((await db.get<{ n: number }>('SELECT count(*) AS n FROM idempotency_claims'))!.n, 0, 'no claim is left behind');
    } finally {
      await raw.end();
      await db.close();
      await storage.remove();
    }
  });
});
