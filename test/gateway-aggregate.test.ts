import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from './helpers.js';
import { createProduct, createUser, startServices, type System } from './system.js';
import { circuit, startFakeUpstream, startGateway, startGatewayFor, type StartedGateway } from './gateway-helpers.js';

describe('aggregation against the real services', () => {
  let sys: System;
  let gw: StartedGateway;
  let userId: number;
  let orderId: number;
  before(async () => {
    sys = await startServices();
    // Every dashboard asks the services: these tests stop one and look at the next answer.
    gw = await startGatewayFor(sys, { UPSTREAM_TIMEOUT_MS: '1000', STATS_TTL_MS: '0' });
    userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10, price: 2.5 });
    const order = await http(sys.orders.url, 'POST', '/orders', { body: { userId, items: [{ productId, quantity: 2 }] } });
    assert.equal(order.status, 201, order.text);
    orderId = order.body.id;
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });

  /** Runs `fn` with one service stopped, then starts it again and resets its circuit. */
  const withStopped = async (service: 'users' | 'orders', fn: () => Promise<void>) => {
    await sys[service].close();
    try {
      await fn();
    } finally {
      await sys[service].start();
      await circuit(gw.url, service, 'reset');
    }
  };

  test('when everything is up, then /api/users/:id/full has the user, their orders and a complete meta', async () => {
    const r = await http(gw.url, 'GET', `/api/users/${userId}/full`);
    assert.equal(r.status, 200);
    assert.equal(r.body.user.id, userId);
    assert.deepEqual(r.body.orders.map((o: { id: number }) => o.id), [orderId]);
    assert.equal(r.body.orders[0].total, 5);
    assert.deepEqual(r.body.meta, { complete: true, unavailable: [] });
  });

  test('when aggregates are answered, then /metrics counts each once under service "aggregate", not under the services it called', async () => {
    const count = async (service: string, status: number) => {
      const text = (await http(gw.url, 'GET', '/metrics')).text;
      const m = new RegExp(`gateway_requests_total\\{service="${service}",method="GET",status="${status}"\\} (\\d+)`).exec(text);
      return m ? Number(m[1]) : 0;
    };
    const [aggregates, users] = [await count('aggregate', 200), await count('users', 200)];
    assert.equal((await http(gw.url, 'GET', `/api/users/${userId}/full`)).status, 200);
    assert.equal((await http(gw.url, 'GET', '/api/dashboard')).status, 200);
    assert.equal(await count('aggregate', 200), aggregates + 2);
    assert.equal(await count('users', 200), users);
  });

  test('when the user does not exist, then it is 404; when the id is not one, then 400', async () => {
    const missing = await http(gw.url, 'GET', '/api/users/999999/full');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.code, 'NOT_FOUND');
    for (const id of ['1abc', '0', '-1', '1.5', '99999999999999999999']) {
      const r = await http(gw.url, 'GET', `/api/users/${id}/full`);
      assert.equal(r.status, 400, id);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
    }
  });

  test('when the order service is stopped, then /full is 200 with orders null and an incomplete meta', async () => {
    await withStopped('orders', async () => {
      const r = await http(gw.url, 'GET', `/api/users/${userId}/full`);
      assert.equal(r.status, 200);
      assert.equal(r.body.user.id, userId);
      assert.equal(r.body.orders, null);
      assert.deepEqual(r.body.meta, { complete: false, unavailable: ['orders'] });
    });
  });

  test('when the user service is stopped, then /full is 503', async () => {
    await withStopped('users', async () => {
      const r = await http(gw.url, 'GET', `/api/users/${userId}/full`);
      assert.equal(r.status, 503);
      assert.equal(r.body.code, 'SERVICE_UNAVAILABLE');
      assert.ok(r.body.traceId);
    });
  });

  test('when everything is up, then the dashboard has every service\'s stats and the gateway\'s own', async () => {
    const r = await http(gw.url, 'GET', '/api/dashboard');
    assert.equal(r.status, 200);
    assert.ok(!Number.isNaN(Date.parse(r.body.timestamp)));
    assert.equal(typeof r.body.gateway.uptime, 'number');
    assert.equal(typeof r.body.gateway.memoryUsage.rss, 'number');
    assert.equal(r.body.services.users.service, 'user-service');
    assert.equal(r.body.services.products.service, 'product-service');
    assert.equal(r.body.services.orders.service, 'order-service');
    assert.ok(r.body.services.orders.totalOrders >= 1);
    assert.deepEqual(r.body.meta, { complete: true, unavailable: [] });
  });

  test('when the order service answers JSON that is not a page of orders, then the user is shown with orders unavailable', async () => {
    const odd = await startFakeUpstream();
    const mixed = await startGateway({ USERS_URL: sys.users.url, PRODUCTS_URL: sys.products.url, ORDERS_URL: odd.url });
    try {
      const r = await http(mixed.url, 'GET', `/api/users/${userId}/full`);
      assert.equal(r.status, 200);
      assert.equal(odd.seen[0]?.url, `/orders?userId=${userId}&limit=100`);
      assert.equal(r.body.user.id, userId);
      assert.equal(r.body.orders, null);
      assert.deepEqual(r.body.meta, { complete: false, unavailable: ['orders'] });
    } finally {
      await mixed.close();
      await odd.stop();
    }
  });

  test('when the order service is stopped, then the dashboard shows orders unavailable with its circuit state', async () => {
    await withStopped('orders', async () => {
      const r = await http(gw.url, 'GET', '/api/dashboard');
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.services.orders, { status: 'unavailable', circuitState: 'CLOSED' });
      assert.equal(r.body.services.users.service, 'user-service');
      assert.deepEqual(r.body.meta, { complete: false, unavailable: ['orders'] });
      // Failures count against the same breaker as the proxy: after three it is open.
      await http(gw.url, 'GET', '/api/dashboard');
      await http(gw.url, 'GET', '/api/dashboard');
      const open = await http(gw.url, 'GET', '/api/dashboard');
      assert.deepEqual(open.body.services.orders, { status: 'unavailable', circuitState: 'OPEN' });
      assert.equal((await http(gw.url, 'GET', '/api/orders')).status, 503);
    });
  });
});
