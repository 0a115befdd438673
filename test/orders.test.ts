// The order service's routes and error codes, over real HTTP, wired to real user and product services.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { assertNoLeak, http, type TestResponse } from './helpers.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';

let sys: System;
before(async () => {
  sys = await startServices();
});
after(async () => sys.stop());

const orders = <T = any>(method: string, path: string, req?: Parameters<typeof http>[3]): Promise<TestResponse<T>> =>
  http<T>(sys.orders.url, method, path, req).then((r) => {
    assertNoLeak(r.text);
    return r;
  });

async function placeOrder(userId: number, items: { productId: number; quantity: number }[], headers?: Record<string, string>) {
  const r = await orders('POST', '/orders', { body: { userId, items }, headers });
  assert.equal(r.status, 201, r.text);
  return r.body as { id: number; status: string; total: number };
}

function assertError(r: TestResponse, status: number, code: string): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.body?.code, code, r.text);
  assert.equal(typeof r.body.error, 'string');
  assert.equal(r.body.traceId, r.headers.get('x-trace-id'));
}

describe('GET /health', () => {
  test('when the database answers, then 200 healthy order-service', async () => {
    const r = await orders('GET', '/health');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { status: 'healthy', service: 'order-service' });
  });
});

describe('POST /orders', () => {
  test('when user and stock exist, then 201 pending with catalog prices, total in cents and Location', async () => {
    const userId = await createUser(sys);
    const a = await createProduct(sys, { stock: 5, price: 19.99 });
    const b = await createProduct(sys, { stock: 5, price: 0.1 });
    const r = await orders('POST', '/orders', {
      body: { userId, items: [{ productId: a, quantity: 3, unitPrice: 0.01 }, { productId: b, quantity: 3 }] },
    });
    assert.equal(r.status, 201, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json; charset=utf-8/);
    assert.equal(r.headers.get('location'), `/orders/${r.body.id}`);
    assert.equal(r.headers.get('idempotent-replayed'), null);
    assert.equal(r.body.status, 'pending');
    assert.equal(r.body.userId, userId);
    assert.deepEqual(r.body.items, [
      { productId: a, quantity: 3, unitPrice: 19.99 },
      { productId: b, quantity: 3, unitPrice: 0.1 },
    ]);
    assert.equal(r.body.total, 60.27);
    assert.ok(!Number.isNaN(Date.parse(r.body.createdAt)));
    assert.equal(r.body.createdAt, r.body.updatedAt);
    assert.equal(await stockOf(sys, a), 2);
    assert.equal(await stockOf(sys, b), 2);
    assert.deepEqual((await orders('GET', `/orders/${r.body.id}`)).body, r.body);
  });

  test('when the body has the wrong shape, then 400 VALIDATION_ERROR naming the field', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const item = { productId, quantity: 1 };
    const cases: [unknown, string][] = [
      [{ items: [item] }, 'userId'],
      [{ userId: String(userId), items: [item] }, 'userId'],
      [{ userId: 0, items: [item] }, 'userId'],
      [{ userId, items: [] }, 'items'],
      [{ userId, items: Array.from({ length: 51 }, () => item) }, 'items'],
      [{ userId, items: [{ productId, quantity: 0 }] }, 'items.0.quantity'],
      [{ userId, items: [{ productId, quantity: 1001 }] }, 'items.0.quantity'],
      [{ userId, items: [{ productId, quantity: 1.5 }] }, 'items.0.quantity'],
      [{ userId, items: [{ productId: -1, quantity: 1 }] }, 'items.0.productId'],
      [{ userId, items: [item], status: 'delivered' }, 'status'],
      [{ userId, items: [{ ...item, discount: 5 }] }, 'items.0.discount'],
      [{ userId, items: [item], id: 1, createdAt: 'x' }, 'id, createdAt'],
      [[item], 'body'],
    ];
    for (const [body, field] of cases) {
      const r = await orders('POST', '/orders', { body });
      assertError(r, 400, 'VALIDATION_ERROR');
      assert.ok(r.body.details.some((d: { field: string }) => d.field === field), `${JSON.stringify(body).slice(0, 80)}: ${r.text}`);
    }
    assert.equal(await stockOf(sys, productId), 5);
  });

  test('when the body is missing, malformed, form-encoded or too large, then 400/415/413', async () => {
    assertError(await orders('POST', '/orders'), 400, 'VALIDATION_ERROR');
    assertError(await orders('POST', '/orders', { raw: '{"userId": 1,', headers: { 'content-type': 'application/json' } }), 400, 'INVALID_JSON');
    assertError(await orders('POST', '/orders', { raw: 'userId=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    const big = JSON.stringify({ userId: 1, items: [{ productId: 1, quantity: 1, unitPrice: 'x'.repeat(200 * 1024) }] });
    assertError(await orders('POST', '/orders', { raw: big, headers: { 'content-type': 'application/json' } }), 413, 'PAYLOAD_TOO_LARGE');
    const proto = '{"userId": 1, "items": [{"productId": 1, "quantity": 1}], "__proto__": {"admin": true}}';
    assertError(await orders('POST', '/orders', { raw: proto, headers: { 'content-type': 'application/json' } }), 400, 'VALIDATION_ERROR');
  });

  test('when the Idempotency-Key is empty, too long or not printable ASCII, then 400 VALIDATION_ERROR', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    for (const key of ['x'.repeat(256), 'tab\there', 'caf\u00e9']) {
      const r = await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, headers: { 'idempotency-key': key } });
      assertError(r, 400, 'VALIDATION_ERROR');
      assert.equal(r.body.details[0].field, 'Idempotency-Key');
    }
    const ok = await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, headers: { 'idempotency-key': 'x'.repeat(255) } });
    assert.equal(ok.status, 201, ok.text);
    assert.equal(await stockOf(sys, productId), 4);
  });

  test('when the user does not exist, then 422 UNKNOWN_USER', async () => {
    const productId = await createProduct(sys, { stock: 5 });
    assertError(await orders('POST', '/orders', { body: { userId: 999_999, items: [{ productId, quantity: 1 }] } }), 422, 'UNKNOWN_USER');
    assert.equal(await stockOf(sys, productId), 5);
  });

  test('when a product does not exist, then 422 UNKNOWN_PRODUCT', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const r = await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 1 }, { productId: 999_999, quantity: 1 }] } });
    assertError(r, 422, 'UNKNOWN_PRODUCT');
    assert.equal(await stockOf(sys, productId), 5);
  });

  test('when stock is short, then 409 INSUFFICIENT_STOCK', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 2 });
    assertError(await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 3 }] } }), 409, 'INSUFFICIENT_STOCK');
    assert.equal(await stockOf(sys, productId), 2);
  });

  test('when the same key comes with the same body, then the same order with Idempotent-Replayed; another body is 422', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const headers = { 'idempotency-key': `key-${Date.now()}` };
    const first = await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 2 }] }, headers });
    assert.equal(first.status, 201);
    // unitPrice is ignored, so it does not make the body another one.
    const again = await orders('POST', '/orders', { body: { items: [{ quantity: 2, productId, unitPrice: 1 }], userId }, headers });
    assert.equal(again.status, 201);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.headers.get('location'), `/orders/${first.body.id}`);
    assert.deepEqual(again.body, first.body);
    assert.equal(await stockOf(sys, productId), 3);
    const other = await orders('POST', '/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, headers });
    assertError(other, 422, 'IDEMPOTENCY_KEY_REUSED');
    assert.equal(await stockOf(sys, productId), 3);
  });

  test('when another user sends the same key, then it is that user\'s own key: a new order, no replay, no 422', async () => {
    const [first, second] = [await createUser(sys), await createUser(sys)];
    const productId = await createProduct(sys, { stock: 5 });
    const headers = { 'idempotency-key': `shared-${Date.now()}` };
    const a = await orders('POST', '/orders', { body: { userId: first, items: [{ productId, quantity: 1 }] }, headers });
    const b = await orders('POST', '/orders', { body: { userId: second, items: [{ productId, quantity: 2 }] }, headers });
    assert.equal(a.status, 201, a.text);
    assert.equal(b.status, 201, b.text);
    assert.equal(b.headers.get('idempotent-replayed'), null);
    assert.equal(b.body.userId, second);
    assert.notEqual(b.body.id, a.body.id);
    assert.equal(await stockOf(sys, productId), 2);
  });
});

describe('GET /orders', () => {
  let userId: number;
  const ids: number[] = [];
  before(async () => {
    userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 100 });
    for (let i = 0; i < 3; i++) ids.push((await placeOrder(userId, [{ productId, quantity: 1 }])).id);
    const r = await orders('PUT', `/orders/${ids[0]}/status`, { body: { status: 'confirmed' } });
    assert.equal(r.status, 200);
  });

  test('when filtered by user, then newest first with paging meta', async () => {
    const r = await orders('GET', `/orders?userId=${userId}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body.data.map((o: { id: number }) => o.id), [...ids].reverse());
    assert.deepEqual(r.body.meta, { page: 1, limit: 10, total: 3 });
    const page2 = await orders('GET', `/orders?userId=${userId}&limit=2&page=2`);
    assert.deepEqual(page2.body.data.map((o: { id: number }) => o.id), [ids[0]]);
    assert.deepEqual(page2.body.meta, { page: 2, limit: 2, total: 3 });
  });

  test('when filtered by status (and user), then only those', async () => {
    const r = await orders('GET', `/orders?userId=${userId}&status=confirmed`);
    assert.deepEqual(r.body.data.map((o: { id: number }) => o.id), [ids[0]]);
    assert.equal(r.body.meta.total, 1);
    const all = await orders('GET', '/orders?status=confirmed&limit=100');
    assert.ok(all.body.data.every((o: { status: string }) => o.status === 'confirmed'));
  });

  test('when a query parameter is out of range or unknown, then 400 VALIDATION_ERROR', async () => {
    for (const query of ['status=bogus', 'userId=abc', 'userId=0', 'limit=0', 'limit=101', 'page=0', 'page=x', 'sort=id', 'status=pending&status=confirmed']) {
      assertError(await orders('GET', `/orders?${query}`), 400, 'VALIDATION_ERROR');
    }
  });
});

describe('GET /orders/:id', () => {
  test('when the id is not a positive integer, then 400; when there is no such order, then 404', async () => {
    for (const id of ['abc', '1.5', '-1', '1abc', '99999999999999999999', '0']) {
      assertError(await orders('GET', `/orders/${id}`), 400, 'VALIDATION_ERROR');
    }
    assertError(await orders('GET', '/orders/999999'), 404, 'NOT_FOUND');
  });
});

describe('PUT /orders/:id/status', () => {
  let userId: number;
  let productId: number;
  before(async () => {
    userId = await createUser(sys);
    productId = await createProduct(sys, { stock: 100 });
  });
  const setStatus = (id: number | string, body: unknown) => orders('PUT', `/orders/${id}/status`, { body });

  test('when following the workflow, then pending -> confirmed -> shipped -> delivered, updatedAt moves', async () => {
    const order = await placeOrder(userId, [{ productId, quantity: 1 }]);
    let previous = (await orders('GET', `/orders/${order.id}`)).body;
    for (const status of ['confirmed', 'shipped', 'delivered']) {
      const r = await setStatus(order.id, { status });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.status, status);
      assert.ok(r.body.updatedAt >= previous.updatedAt);
      assert.equal(r.body.createdAt, previous.createdAt);
      previous = r.body;
    }
    assert.equal(await stockOf(sys, productId), 99);
  });

  test('when the transition is not in the workflow, then 409 INVALID_TRANSITION and nothing changes', async () => {
    const pending = await placeOrder(userId, [{ productId, quantity: 1 }]);
    for (const status of ['shipped', 'delivered', 'pending']) assertError(await setStatus(pending.id, { status }), 409, 'INVALID_TRANSITION');
    const shipped = await placeOrder(userId, [{ productId, quantity: 1 }]);
    await setStatus(shipped.id, { status: 'confirmed' });
    await setStatus(shipped.id, { status: 'shipped' });
    assertError(await setStatus(shipped.id, { status: 'cancelled' }), 409, 'INVALID_TRANSITION');
    await setStatus(shipped.id, { status: 'delivered' });
    for (const status of ['cancelled', 'shipped', 'pending']) assertError(await setStatus(shipped.id, { status }), 409, 'INVALID_TRANSITION');
    assert.equal((await orders('GET', `/orders/${pending.id}`)).body.status, 'pending');
  });

  test('when cancelled (from pending or confirmed), then 200 and the stock comes back; cancelled is final', async () => {
    const before = await stockOf(sys, productId);
    const a = await placeOrder(userId, [{ productId, quantity: 4 }]);
    const b = await placeOrder(userId, [{ productId, quantity: 2 }]);
    assert.equal((await setStatus(b.id, { status: 'confirmed' })).status, 200);
    assert.equal(await stockOf(sys, productId), before - 6);
    const ra = await setStatus(a.id, { status: 'cancelled' });
    assert.equal(ra.status, 200);
    assert.equal(ra.body.status, 'cancelled');
    assert.equal((await setStatus(b.id, { status: 'cancelled' })).status, 200);
    assert.equal(await stockOf(sys, productId), before);
    assertError(await setStatus(a.id, { status: 'confirmed' }), 409, 'INVALID_TRANSITION');
    assertError(await setStatus(a.id, { status: 'cancelled' }), 409, 'INVALID_TRANSITION');
    assert.equal(await stockOf(sys, productId), before);
  });

  test('when the body or id is wrong, then 400; when there is no such order, then 404', async () => {
    const order = await placeOrder(userId, [{ productId, quantity: 1 }]);
    assertError(await setStatus(order.id, { status: 'lost' }), 400, 'VALIDATION_ERROR');
    assertError(await setStatus(order.id, {}), 400, 'VALIDATION_ERROR');
    assertError(await setStatus(order.id, { status: 'confirmed', total: 0 }), 400, 'VALIDATION_ERROR');
    assertError(await orders('PUT', `/orders/${order.id}/status`), 400, 'VALIDATION_ERROR');
    assertError(await setStatus('1abc', { status: 'confirmed' }), 400, 'VALIDATION_ERROR');
    assertError(await setStatus(999_999, { status: 'confirmed' }), 404, 'NOT_FOUND');
  });
});

describe('DELETE /orders/:id', () => {
  test('when pending, then 204 with an empty body, the order is gone and its stock is back', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const order = await placeOrder(userId, [{ productId, quantity: 7 }]);
    assert.equal(await stockOf(sys, productId), 3);
    const r = await orders('DELETE', `/orders/${order.id}`);
    assert.equal(r.status, 204);
    assert.equal(r.text, '');
    assertError(await orders('GET', `/orders/${order.id}`), 404, 'NOT_FOUND');
    assert.equal(await stockOf(sys, productId), 10);
    assertError(await orders('DELETE', `/orders/${order.id}`), 404, 'NOT_FOUND');
    assert.equal(await stockOf(sys, productId), 10);
  });

  test('when not pending, then 409 ORDER_NOT_PENDING and the order stays', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const confirmed = await placeOrder(userId, [{ productId, quantity: 1 }]);
    await orders('PUT', `/orders/${confirmed.id}/status`, { body: { status: 'confirmed' } });
    const cancelled = await placeOrder(userId, [{ productId, quantity: 1 }]);
    await orders('PUT', `/orders/${cancelled.id}/status`, { body: { status: 'cancelled' } });
    for (const id of [confirmed.id, cancelled.id]) {
      assertError(await orders('DELETE', `/orders/${id}`), 409, 'ORDER_NOT_PENDING');
      assert.equal((await orders('GET', `/orders/${id}`)).status, 200);
    }
    assert.equal(await stockOf(sys, productId), 9);
  });

  test('when the id is not a positive integer, then 400', async () => {
    assertError(await orders('DELETE', '/orders/abc'), 400, 'VALIDATION_ERROR');
  });
});

describe('GET /stats', () => {
  test('when there are no orders, then zeros, and average 0 rather than NaN', async () => {
    const empty = await startServices();
    try {
      const r = await http(empty.orders.url, 'GET', '/stats');
      assert.equal(r.status, 200);
      assert.deepEqual(r.body, {
        service: 'order-service',
        totalOrders: 0,
        statusBreakdown: { pending: 0, confirmed: 0, shipped: 0, delivered: 0, cancelled: 0 },
        totalRevenue: 0,
        averageOrderValue: 0,
      });
    } finally {
      await empty.stop();
    }
  });

  test('when some orders are cancelled, then revenue and average leave them out, rounded to cents', async () => {
    const own = await startServices();
    try {
      const userId = await createUser(own);
      const cheap = await createProduct(own, { stock: 100, price: 0.1 });
      const dear = await createProduct(own, { stock: 100, price: 100 });
      const post = async (productId: number, quantity: number) =>
        (await http(own.orders.url, 'POST', '/orders', { body: { userId, items: [{ productId, quantity }] } })).body.id as number;
      await post(cheap, 1); // 0.10
      await post(cheap, 2); // 0.20
      const confirmed = await post(cheap, 3); // 0.30
      await http(own.orders.url, 'PUT', `/orders/${confirmed}/status`, { body: { status: 'confirmed' } });
      const cancelled = await post(dear, 1); // 100.00, not revenue
      await http(own.orders.url, 'PUT', `/orders/${cancelled}/status`, { body: { status: 'cancelled' } });
      const r = await http(own.orders.url, 'GET', '/stats');
      assert.deepEqual(r.body, {
        service: 'order-service',
        totalOrders: 4,
        statusBreakdown: { pending: 2, confirmed: 1, shipped: 0, delivered: 0, cancelled: 1 },
        totalRevenue: 0.6,
        averageOrderValue: 0.2,
      });
    } finally {
      await own.stop();
    }
  });
});

describe('demo data', () => {
  test('when seeded, then three orders for users 1 and 2 in different statuses', async () => {
    const demo = await startServices({ seed: true });
    try {
      const r = await http(demo.orders.url, 'GET', '/orders');
      assert.equal(r.body.meta.total, 3);
      assert.deepEqual(new Set(r.body.data.map((o: { userId: number }) => o.userId)), new Set([1, 2]));
      assert.equal(new Set(r.body.data.map((o: { status: string }) => o.status)).size, 3);
      // The demo pending order holds its stock like any other: deleting it gives the stock back.
      const pending = r.body.data.find((o: { status: string }) => o.status === 'pending');
      const [item] = pending.items;
      const before = await stockOf(demo, item.productId);
      assert.equal((await http(demo.orders.url, 'DELETE', `/orders/${pending.id}`)).status, 204);
      assert.equal(await stockOf(demo, item.productId), before + item.quantity);
    } finally {
      await demo.stop();
    }
  });
});
