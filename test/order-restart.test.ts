// The order service as a child process, as users run it, over the user and product services (in
// this process, with their demo rows): what it acknowledged survives kill -9, and restarts never
// duplicate the demo orders.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openSqlDatabase } from '../lib/platform/sql.js';
import { ORDER_MIGRATIONS } from '../lib/orders/db.js';
import { http, tempDir } from './helpers.js';
import { spawnService, type ChildService } from './process.js';
import { startServices, type System } from './system.js';
import { startFaultProxy } from './support/fault-proxy.js';

describe('order service restarts', () => {
  const data = tempDir('msvc-order-restart-');
  const children: ChildService[] = [];
  let sys: System;
  let orders: ChildService;
  let ordersEnv: Record<string, string>;

  const startOrders = async () => {
    orders = await spawnService('order-service.ts', ordersEnv);
    children.push(orders);
  };

  before(async () => {
    // The in-process order service of `sys` (its own temp dir) is not used: the child is under test.
    sys = await startServices({ seed: true });
    ordersEnv = { DATA_DIR: data.dir, USERS_URL: sys.users.url, PRODUCTS_URL: sys.products.url, UPSTREAM_TIMEOUT_MS: '2000' };
    await startOrders();
  });

  after(async () => {
    await Promise.all(children.map((c) => c.stop('SIGKILL')));
    await sys?.stop();
    data.remove();
  });

  test('when the process dies while a cancel gives the stock back, then a restart gives it back within 2 x UPSTREAM_TIMEOUT_MS', async (t) => {
    // An order service of its own, whose calls to the product service can be held.
    const own = tempDir('msvc-order-release-');
    const toProducts = await startFaultProxy(sys.products.url);
    t.after(async () => {
      await toProducts.close();
      own.remove();
    });
    const env = { DATA_DIR: own.dir, USERS_URL: sys.users.url, PRODUCTS_URL: toProducts.url, UPSTREAM_TIMEOUT_MS: '500', RELEASE_RETRY_MS: '50' };
    let child = await spawnService('order-service.ts', env);
    children.push(child);
    const stockOf = async () => (await http(sys.products.url, 'GET', '/products/3')).body.stock as number;
    const before = await stockOf();
    const created = await http(child.url, 'POST', '/orders', { body: { userId: 2, items: [{ productId: 3, quantity: 2 }] } });
    assert.equal(created.status, 201, created.text);
    assert.equal(await stockOf(), before - 2);

    // The cancel commits, then its release call gets no answer; the process dies meanwhile.
    toProducts.fault = { kind: 'blackhole' };
    const seen = toProducts.requestsSeen;
    const cancel = http(child.url, 'PUT', `/orders/${created.body.id}/status`, { body: { status: 'cancelled' }, timeoutMs: 5_000 }).catch(() => undefined);
    while (toProducts.requestsSeen === seen) await new Promise((r) => setTimeout(r, 5));
    assert.equal(await child.stop('SIGKILL'), 'SIGKILL');
    await cancel;
    toProducts.fault = { kind: 'pass' };

    child = await spawnService('order-service.ts', env);
    children.push(child);
    assert.equal((await http(child.url, 'GET', `/orders/${created.body.id}`)).body.status, 'cancelled');
    // The dead process's claim on the release runs out after 2 x 500 ms; a worker then takes it
    // over. The stock comes back at the product service's answer, the outbox row goes just after.
    const pendingReleases = async () => /^orders_pending_releases(?:\{[^}]*\})? (\d+)$/m.exec((await http(child.url, 'GET', '/metrics')).text)?.[1];
    const giveUpAt = Date.now() + 5_000;
    while (((await stockOf()) !== before || (await pendingReleases()) !== '0') && Date.now() < giveUpAt) await new Promise((r) => setTimeout(r, 50));
    assert.equal(await stockOf(), before, 'the cancelled order\'s stock is back');
    assert.equal(await pendingReleases(), '0', 'no release left pending');
  });

  test('when the order service is killed with SIGKILL right after a 201, then the order is there after the restart', async () => {
    const r = await http(orders.url, 'POST', '/orders', {
      body: { userId: 2, items: [{ productId: 2, quantity: 1 }] },
      headers: { 'idempotency-key': 'kill-9' },
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(await orders.stop('SIGKILL'), 'SIGKILL');
    await startOrders();
    const after = await http(orders.url, 'GET', `/orders/${r.body.id}`);
    assert.equal(after.status, 200);
    assert.deepEqual(after.body, r.body);
    // The key survived too: a client retrying after the crash gets the same order, no new stock taken.
    const stock = (await http(sys.products.url, 'GET', '/products/2')).body.stock;
    const retry = await http(orders.url, 'POST', '/orders', {
      body: { userId: 2, items: [{ productId: 2, quantity: 1 }] },
      headers: { 'idempotency-key': 'kill-9' },
    });
    assert.equal(retry.status, 201);
    assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    assert.equal(retry.body.id, r.body.id);
    assert.equal((await http(sys.products.url, 'GET', '/products/2')).body.stock, stock);
  });

  test('when a keyed create died with the process, then a retry with its key after the restart is served at once', async () => {
    assert.equal(await orders.stop('SIGKILL'), 'SIGKILL');
    // What the killed process left behind: its claim on the key, valid for a while yet.
    const db = await openSqlDatabase({ dataDir: data.dir, name: 'orders', migrations: ORDER_MIGRATIONS });
    await db.run('INSERT INTO idempotency_claims (user_id, key, holder, until_ms) VALUES (2, $1, $2, $3)', ['died-with-it', 'dead', Date.now() + 60_000]);
    await db.close();
    await startOrders();
    const r = await http(orders.url, 'POST', '/orders', {
      body: { userId: 2, items: [{ productId: 2, quantity: 1 }] },
      headers: { 'idempotency-key': 'died-with-it' },
      timeoutMs: 4_000,
    });
    assert.equal(r.status, 201, r.text);
  });

  test('when restarted (SIGTERM and SIGKILL), then the demo orders are not duplicated', async () => {
    const list = async () => (await http(orders.url, 'GET', '/orders?limit=100')).body.data as { id: number }[];
    const before = await list();
    assert.equal(before.filter((o) => o.id <= 3).length, 3, 'the three demo orders');
    assert.equal(await orders.stop('SIGTERM'), 0);
    await startOrders();
    assert.equal(await orders.stop('SIGKILL'), 'SIGKILL');
    await startOrders();
    assert.deepEqual(await list(), before);
    const stats = (await http(orders.url, 'GET', '/stats')).body;
    assert.equal(stats.totalOrders, before.length);
  });
});
