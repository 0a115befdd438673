import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { assertNoLeak, http } from './helpers.js';
import { createProduct, createUser, startServices, type System } from './system.js';
import { deadUrl, eventually, rawRequest, startFakeUpstream, startGateway, startGatewayFor, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';

describe('proxy to the real services', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices();
    gw = await startGatewayFor(sys);
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });

  test('when a user is created, read, updated and deleted through /api/users, then each status and body passes through', async () => {
    const email = `proxy-${Date.now()}@example.com`;
    const created = await http(gw.url, 'POST', '/api/users', { body: { name: 'Proxy Person', email } });
    assert.equal(created.status, 201);
    assert.equal(created.body.email, email);
    assert.equal(created.headers.get('location'), `/api/users/${created.body.id}`, 'the gateway\'s path to it');
    const id = created.body.id as number;

    const read = await http(gw.url, 'GET', `/api/users/${id}`);
    assert.equal(read.status, 200);
    assert.deepEqual(read.body, created.body);

    const updated = await http(gw.url, 'PUT', `/api/users/${id}`, { body: { name: 'Proxy Renamed' } });
    assert.equal(updated.status, 200);
    assert.equal(updated.body.name, 'Proxy Renamed');

    const listed = await http(gw.url, 'GET', '/api/users?role=admin&limit=5');
    assert.equal(listed.status, 200);
    assert.equal(listed.body.meta.limit, 5, 'query string kept');
    assert.ok(listed.body.data.every((u: { role: string }) => u.role === 'admin'));

    const removed = await http(gw.url, 'DELETE', `/api/users/${id}`);
    assert.equal(removed.status, 204);
    assert.equal(removed.text, '');

    const gone = await http(gw.url, 'GET', `/api/users/${id}`);
    assert.equal(gone.status, 404);
    assert.equal(gone.body.code, 'NOT_FOUND');
    assert.ok(gone.body.traceId);
  });

  test('when the same product is asked for by the front door (/api/products/:id) and by the router (/API/Products/:id), then both answer alike and are counted, traced, timed and logged alike', async () => {
    const g = await startGatewayFor(sys, { LOG_LEVEL: 'info' });
    try {
      const product = await http(sys.products.url, 'POST', '/products', { body: { name: 'Two Doors', price: 2, stock: 2 } });
      const viaFront = await http(g.url, 'GET', `/api/products/${product.body.id}`);
      const viaRouter = await http(g.url, 'GET', `/API/Products/${product.body.id}`);
      for (const [name, r] of [['front door', viaFront], ['router', viaRouter]] as const) {
        assert.equal(r.status, 200, name);
        assert.equal(r.body.id, product.body.id, name);
        assert.match(r.headers.get('x-response-time') ?? '', /^\d+(\.\d)?ms$/, name);
        assert.equal(r.headers.get('ratelimit-policy'), '100;w=60', name);
        const traceId = r.headers.get('x-trace-id');
        assert.match(traceId ?? '', /^[0-9a-f]{32}$/, name);
        const traced = await http(g.url, 'GET', `/traces/${traceId}`);
        assert.equal(traced.status, 200, name);
        const names = (traced.body.spans as { name: string; service: string }[]).map((s) => `${s.service} ${s.name}`);
        assert.ok(names.includes('gateway GET /api/products/*'), `${name}: ${names.join(', ')}`);
        const line = g.logs().find((l) => l.msg === 'request' && l.traceId === traceId);
        assert.equal(line?.status, 200, `${name}: one request log line`);
      }
      assert.deepEqual(viaRouter.body, viaFront.body);
      const remaining = (r: { headers: Headers }) => Number(r.headers.get('x-ratelimit-remaining'));
      assert.equal(remaining(viaRouter), remaining(viaFront) - 1, 'one limiter, one count each');
      const metrics = await http(g.url, 'GET', '/metrics');
      assert.match(metrics.text, /gateway_requests_total\{service="products",method="GET",status="200"\} 2\n/);
    } finally {
      await g.close();
    }
  });

  test('when a route that takes no query gets one, then it is ignored; a list route refuses an unknown or repeated parameter', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const order = await http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] } });
    assert.equal(order.status, 201, order.text);
    for (const path of [`/api/users/${userId}?x=1`, `/api/products/${productId}?_=123`, `/api/orders/${order.body.id}?x=1`, `/api/users/${userId}/full?limit=5`, '/api/dashboard?x=1']) {
      const r = await http(gw.url, 'GET', path);
      assert.equal(r.status, 200, `${path}: ${r.text}`);
    }
    for (const path of ['/api/users?x=1', '/api/products?_=123', '/api/orders?limit=1&limit=2']) {
      const r = await http(gw.url, 'GET', path);
      assert.equal(r.status, 400, path);
      assert.equal(r.body.code, 'VALIDATION_ERROR', path);
    }
  });

  test('when PATCH /api/products/:id/stock is sent, then the service answers it', async () => {
    const product = await http(gw.url, 'POST', '/api/products', { body: { name: 'Patch Widget', price: 3.5, stock: 4 } });
    assert.equal(product.status, 201);
    const patched = await http(gw.url, 'PATCH', `/api/products/${product.body.id}/stock`, { body: { operation: 'add', quantity: 6 } });
    assert.equal(patched.status, 200);
    assert.deepEqual(patched.body, { id: product.body.id, stock: 10 });
  });

  test('when a 2 kB JSON body is posted, then it arrives intact', async () => {
    const description = 'ü-0123456789abcdef'.repeat(105).slice(0, 1900);
    const r = await http(gw.url, 'POST', '/api/products', { body: { name: 'Big Description', description, price: 1, stock: 1 } });
    assert.equal(r.status, 201);
    assert.equal(r.body.description, description);
  });

  test('when a 200 kB body is posted, then the service answers 413 with the contract body, without hanging', async () => {
    const started = Date.now();
    const raw = JSON.stringify({ name: 'Huge', description: 'x'.repeat(200_000), price: 1 });
    const r = await http(gw.url, 'POST', '/api/products', { raw, headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 413);
    assert.equal(r.body.code, 'PAYLOAD_TOO_LARGE');
    assert.ok(r.body.traceId);
    assert.ok(Date.now() - started < 5_000, 'answered promptly');
    // The connection and the pool still work afterwards.
    assert.equal((await http(gw.url, 'GET', '/api/products?limit=1')).status, 200);
  });

  test('when a form body is posted, then the service answers 415', async () => {
    const r = await http(gw.url, 'POST', '/api/users', { raw: 'name=x&email=y', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(r.status, 415);
    assert.equal(r.body.code, 'UNSUPPORTED_MEDIA_TYPE');
  });

  test('when the JSON is malformed, then the service answers 400 INVALID_JSON', async () => {
    const r = await http(gw.url, 'POST', '/api/orders', { raw: '{"userId":', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'INVALID_JSON');
  });

  test('when the JSON body is a bare value rather than an object or array, then it is 400 INVALID_JSON, at the gateway\'s login and at a service through it', async () => {
    for (const raw of ['null', '"str"', '5', 'true']) {
      for (const path of ['/api/orders', '/api/products', '/api/auth/login']) {
        const r = await http(gw.url, 'POST', path, { raw, headers: { 'content-type': 'application/json' } });
        assert.equal(r.status, 400, `${path} ${raw}`);
        assert.equal(r.body.code, 'INVALID_JSON', `${path} ${raw}`);
      }
    }
  });

  test('when a client sends X-Trace-Id, then the response echoes it with the gateway span id and timing', async () => {
    const r = await http(gw.url, 'GET', '/api/orders?limit=1', { headers: { 'x-trace-id': 'gateway-trace-1' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-trace-id'), 'gateway-trace-1');
    assert.match(r.headers.get('x-span-id') ?? '', /^[0-9a-f]{16}$/);
    assert.match(r.headers.get('x-response-time') ?? '', /^\d+(\.\d)?ms$/);
  });
});

describe('proxy behaviour (controllable upstream)', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, UPSTREAM_TIMEOUT_MS: '300', CB_FAILURE_THRESHOLD: '1000' });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when an answer comes just after UPSTREAM_TIMEOUT_MS, then a POST (it may have changed something) gets it and a GET is 504', async () => {
    // UPSTREAM_TIMEOUT_MS 800: a request that may change something waits 200 ms longer.
    const patient = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, UPSTREAM_TIMEOUT_MS: '800', CB_FAILURE_THRESHOLD: '1000' });
    try {
      up.behaviour = { kind: 'echo', delayMs: 850 };
      const [post, get] = await Promise.all([
        http(patient.url, 'POST', '/api/orders', { body: { userId: 1 } }),
        http(patient.url, 'GET', '/api/orders/1'),
      ]);
      assert.equal(post.status, 200, `${post.status} ${post.text}`);
      assert.equal(post.body.method, 'POST');
      assert.equal(get.status, 504);
      assert.equal(get.body.code, 'GATEWAY_TIMEOUT');
    } finally {
      await patient.close();
    }
  });

  test('when proxied, then the service sees its own path and query, our X-Forwarded-* and the trace, not the client\'s claims', async () => {
    up.behaviour = { kind: 'echo' };
    up.seen.length = 0;
    const r = await http(gw.url, 'GET', '/api/orders/7/items?a=1&b=%20x', {
      headers: { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil.example', forwarded: 'for=6.6.6.6', 'x-trace-id': 'fwd-trace-1', traceparent: 'garbage' },
    });
    assert.equal(r.status, 200);
    assert.equal(r.body.url, '/orders/7/items?a=1&b=%20x');
    const seen = up.seen[0];
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.match(String(seen.headers['x-forwarded-host']), /^127\.0\.0\.1:\d+$/);
    assert.equal(seen.headers.forwarded, undefined);
    assert.equal(seen.headers['x-trace-id'], 'fwd-trace-1');
    assert.match(String(seen.headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    assert.equal(seen.headers.host, `127.0.0.1:${up.port}`);
  });

  test('when /api/users has no sub-path, then the service gets /users with the query', async () => {
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(gw.url, 'GET', '/api/users?role=admin')).body.url, '/users?role=admin');
    assert.equal((await http(gw.url, 'GET', '/api/users')).body.url, '/users');
  });

  test('when HEAD and OPTIONS are sent, then they are proxied too', async () => {
    up.behaviour = { kind: 'echo' };
    up.seen.length = 0;
    assert.equal((await http(gw.url, 'HEAD', '/api/products/1')).status, 200);
    assert.equal((await http(gw.url, 'OPTIONS', '/api/products/1')).status, 200);
    assert.deepEqual(up.seen.map((s) => s.method), ['HEAD', 'OPTIONS']);
  });

  test('when the path climbs out of the service prefix in any encoding, then it is 400 and never proxied', async () => {
    up.seen.length = 0;
    const paths = [
      '/api/users/../stats',
      '/api/users/..%2f..%2fstats',
      '/api/users/%2e%2e/stats',
      '/api/users/%2E%2E%2Fstats',
      '/api/users/..%2Fstats',
      '/api/users/%252e%252e%252fstats',
      '/api/users/..%5cstats',
      '/api/users/..\\stats',
      '/api/users/1/%2e',
      '/api/users/%2e%2e/%zz',
      '/api/products/1%00',
    ];
    for (const path of paths) {
      const r = await rawRequest(gw.url, 'GET', path);
      assert.equal(r.status, 400, path);
      const body = JSON.parse(r.text);
      assert.equal(body.code, 'VALIDATION_ERROR', path);
    }
    assert.equal(up.seen.length, 0);
    assert.equal((await rawRequest(gw.url, 'GET', '/api/users/1?next=../x')).status, 200, 'dots in the query are the service\'s business');
  });

  test('when the path holds broken percent-encoding, then it is 400 BAD_REQUEST as at the service, and never proxied', async () => {
    up.seen.length = 0;
    for (const path of ['/api/users/%zz', '/api/products/%E0%A4%A', '/api/orders/1%', '/api/users/%C0%AF']) {
      const r = await rawRequest(gw.url, 'GET', path);
      assert.equal(r.status, 400, path);
      const body = JSON.parse(r.text);
      assert.equal(body.code, 'BAD_REQUEST', path);
      assert.equal(body.error, 'The request could not be read', path);
    }
    assert.equal(up.seen.length, 0);
  });

  test('when the service refuses connections, then the answer is a JSON 502 that does not name the host', async () => {
    const refusing = await deadUrl();
    const dead = await startGateway({ USERS_URL: refusing.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url });
    try {
      const r = await http(dead.url, 'GET', '/api/users/1');
      assert.equal(r.status, 502);
      assert.equal(r.body.code, 'BAD_GATEWAY');
      assert.match(r.body.error, /refused/);
      assert.ok(r.body.traceId);
      assert.match(r.headers.get('content-type') ?? '', /application\/json/);
      assert.ok(!r.text.includes(new URL(refusing.url).hostname), r.text);
      assertNoLeak(r.text);
      // Classified already: one warning line naming service, kind, time and trace, without a stack.
      const failed = dead.logs().filter((l) => l.msg === 'proxy failed');
      assert.equal(failed.length, 1);
      assert.equal(failed[0].failure, 'refused');
      assert.equal(failed[0].traceId, r.body.traceId);
      assert.equal(typeof failed[0].durationMs, 'number');
      assert.equal(failed[0].upstream, 'users');
      assert.equal(failed[0].err, undefined, 'no error object, so no stack');
    } finally {
      await dead.close();
      await refusing.close();
    }
  });

  test('when the service does not answer in time, then the answer is 504 and the upstream request is closed', async () => {
    up.behaviour = { kind: 'hang' };
    up.seen.length = 0;
    const r = await http(gw.url, 'GET', '/api/products/slow');
    assert.equal(r.status, 504);
    assert.equal(r.body.code, 'GATEWAY_TIMEOUT');
    await eventually(() => up.seen[0]?.closedEarly === true, 2_000, 'the gateway to close the request it gave up on');
  });

  test('when the service dies in the middle of a body, then the client connection is cut rather than left hanging', async () => {
    // Longer than an answer read whole before it is sent (that one is a 502: gateway-breaker.test.ts).
    up.behaviour = { kind: 'break', length: 100_000 };
    const started = Date.now();
    await assert.rejects(async () => {
      const res = await fetch(gw.url + '/api/products/broken', { signal: AbortSignal.timeout(5_000) });
      await res.text();
    }, (err: Error) => err.name !== 'TimeoutError');
    assert.ok(Date.now() - started < 3_000);
    up.behaviour = { kind: 'echo' };
  });

  test('when the service breaks off a small answer to a GET answered well before, then the client gets the last good copy (nothing of the cut one went out)', async () => {
    up.behaviour = { kind: 'echo' };
    const good = await http(gw.url, 'GET', '/api/products/stale-cut');
    assert.equal(good.status, 200);
    up.behaviour = { kind: 'break' };
    const cut = await http(gw.url, 'GET', '/api/products/stale-cut');
    up.behaviour = { kind: 'echo' };
    assert.equal(cut.status, 200);
    assert.equal(cut.headers.get('x-cache'), 'STALE');
    assert.deepEqual(cut.body, good.body);
  });

  test('when the stale cache is off (CACHE_MAX_ENTRIES=0), then a small answer cut short is a 502, never an earlier copy', async () => {
    const uncached = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, CB_FAILURE_THRESHOLD: '1000', CACHE_MAX_ENTRIES: '0' });
    try {
      up.behaviour = { kind: 'echo' };
      assert.equal((await http(uncached.url, 'GET', '/api/products/uncached-cut')).status, 200);
      up.behaviour = { kind: 'break' };
      const cut = await http(uncached.url, 'GET', '/api/products/uncached-cut');
      assert.equal(cut.status, 502);
      assert.equal(cut.body.code, 'BAD_GATEWAY');
      assert.equal(cut.headers.get('x-cache'), null);
    } finally {
      up.behaviour = { kind: 'echo' };
      await uncached.close();
    }
  });

  test('when the client leaves in the middle of a body the gateway is still reading, then the service is never called and the request is logged as aborted', async () => {
    let calls = 0;
    const service = createServer((req, res) => {
      calls++;
      req.resume().on('end', () => res.end('{}'));
    });
    await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
    const serviceUrl = `http://127.0.0.1:${(service.address() as AddressInfo).port}`;
    const leaving = await startGateway({ USERS_URL: serviceUrl, PRODUCTS_URL: serviceUrl, ORDERS_URL: serviceUrl, CB_FAILURE_THRESHOLD: '1000', LOG_LEVEL: 'info' });
    const client = connect(Number(new URL(leaving.url).port), '127.0.0.1');
    try {
      await once(client, 'connect');
      // An order's body is read whole before it is sent on (so that it can be sent again).
      await new Promise((sent) => client.write('POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"userId":1,', sent));
      client.destroy();
      const line = () => leaving.logs().find((l) => l.msg === 'request' && l.url === '/api/orders');
      await eventually(() => line() !== undefined, 2_000, 'the request line');
      assert.equal(line()!.aborted, true);
      assert.equal(calls, 0);
    } finally {
      client.destroy();
      await leaving.close();
      service.closeAllConnections();
      service.close();
    }
  });

  test('when the client leaves in the middle of a body streamed to the service, then the call is cut and nothing of the exchange is kept for the body\'s time limits', async () => {
    let called!: () => void;
    let cut!: () => void;
    const serviceCalled = new Promise<void>((r) => (called = r));
    const serviceCut = new Promise<void>((r) => (cut = r));
    const service = createServer((req) => {
      called();
      req.resume();
      req.once('close', () => cut());
    });
    await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
    const serviceUrl = `http://127.0.0.1:${(service.address() as AddressInfo).port}`;
    const leaving = await startGateway({ USERS_URL: serviceUrl, PRODUCTS_URL: serviceUrl, ORDERS_URL: serviceUrl, CB_FAILURE_THRESHOLD: '1000', LOG_LEVEL: 'info', CLIENT_BODY_TIMEOUT_MS: '60000', CLIENT_BODY_TOTAL_MS: '60000' });
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const client = connect(Number(new URL(leaving.url).port), '127.0.0.1');
    try {
      await once(client, 'connect');
      const before = timers();
      // A chunked body is streamed to the service as it comes, under the body's time limits.
      client.write('POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{"\r\n');
      await serviceCalled;
      client.destroy();
      await serviceCut;
      const line = () => leaving.logs().find((l) => l.msg === 'request' && l.url === '/api/users');
      await eventually(() => line() !== undefined, 2_000, 'the request line');
      assert.equal(line()!.aborted, true);
      await eventually(() => timers() <= before, 2_000, 'the body\'s timers gone');
    } finally {
      client.destroy();
      await leaving.close();
      service.closeAllConnections();
      service.close();
    }
  });

  test('when the service answers 500, then status and body pass through unchanged', async () => {
    up.behaviour = { kind: 'status', status: 500 };
    const r = await http(gw.url, 'GET', '/api/orders/1');
    assert.equal(r.status, 500);
    assert.deepEqual(r.body, { error: 'fake 500', code: 'INTERNAL_ERROR' });
    up.behaviour = { kind: 'echo' };
  });

  test('when an unknown /api route is asked, then it is a JSON 404', async () => {
    const r = await http(gw.url, 'GET', '/api/nothing-here');
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'NOT_FOUND');
  });
});
