// Tracing through the gateway: one trace per request, with the spans of every process it touched.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { toW3cTraceId } from '../lib/platform/trace-context.js';
import { assertOneTree, http } from './helpers.js';
import { circuit, startFakeUpstream, startGatewayFor, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';
import { createGateway } from '../lib/gateway/app.js';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { parseConfig } from '../lib/platform/config.js';
import { closeServer, listen } from '../lib/platform/server.js';
import { createTracingFromConfig } from '../lib/platform/span-recorder.js';
import { memoryLogger } from './helpers.js';
import { createProduct, createUser, startServices, type System } from './system.js';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  service: string;
  kind: string;
  durationMs: number;
  status: string;
}

describe('traces through the gateway', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices();
    gw = await startGatewayFor(sys);
  });
  after(async () => {
    await gw.close();
    await sys.stop();
  });

  const traceOf = async (id: string) => {
    const r = await http<{ traceId: string; spans: Span[]; meta: { complete: boolean } }>(gw.url, 'GET', `/traces/${id}`);
    assert.equal(r.status, 200, r.text);
    assertOneTree(r.body.spans);
    return r.body;
  };

  test('X-Trace-Id: my-trace-123 on /api/users gives gateway and user-service spans in one tree', async () => {
    const r = await http(gw.url, 'GET', '/api/users', { headers: { 'x-trace-id': 'my-trace-123' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-trace-id'), 'my-trace-123');
    assert.match(r.headers.get('x-span-id') ?? '', /^[0-9a-f]{16}$/);
    const t = await traceOf('my-trace-123');
    assert.equal(t.traceId, 'my-trace-123');
    assert.deepEqual(new Set(t.spans.map((s) => s.service)), new Set(['gateway', 'user-service']));
    const gatewayServer = t.spans.find((s) => s.service === 'gateway' && s.kind === 'server')!;
    assert.equal(gatewayServer.name, 'GET /api/users/*');
    assert.equal(gatewayServer.spanId, r.headers.get('x-span-id'));
    const client = t.spans.find((s) => s.kind === 'client')!;
    const userServer = t.spans.find((s) => s.service === 'user-service')!;
    assert.equal(client.parentSpanId, gatewayServer.spanId);
    assert.equal(userServer.parentSpanId, client.spanId);
    assert.equal(userServer.name, 'GET /users');
    for (const s of t.spans) assert.equal(s.traceId, toW3cTraceId('my-trace-123'));
  });

  test('/api/users/:id/full gives spans from gateway, users and orders', async () => {
    const userId = await createUser(sys);
    await http(gw.url, 'GET', `/api/users/${userId}/full`, { headers: { 'x-trace-id': 'full-trace-1' } });
    const t = await traceOf('full-trace-1');
    assert.deepEqual(new Set(t.spans.map((s) => s.service)), new Set(['gateway', 'user-service', 'order-service']));
  });

  test('POST /api/orders gives spans from all four processes', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 5 });
    const r = await http(gw.url, 'POST', '/api/orders', {
      body: { userId, items: [{ productId, quantity: 1 }] },
      headers: { 'x-trace-id': 'order-trace-1' },
    });
    assert.equal(r.status, 201, r.text);
    const t = await traceOf('order-trace-1');
    assert.deepEqual(new Set(t.spans.map((s) => s.service)), new Set(['gateway', 'order-service', 'user-service', 'product-service']));
    assert.ok(t.spans.some((s) => s.service === 'product-service' && s.name === 'POST /internal/reservations'));
  });

  test('a client traceparent is the trace the response names', async () => {
    const id = '0af7651916cd43dd8448eb211c80319c';
    const r = await http(gw.url, 'GET', '/api/products', { headers: { traceparent: `00-${id}-b7ad6b7169203331-01` } });
    assert.equal(r.headers.get('x-trace-id'), id);
    const t = await traceOf(id);
    assert.equal(t.spans.find((s) => s.service === 'gateway' && s.kind === 'server')!.parentSpanId, 'b7ad6b7169203331');
    assert.ok(t.spans.some((s) => s.service === 'product-service'));
  });

  test('invalid trace ids are replaced, never reflected', async () => {
    const r = await http(gw.url, 'GET', '/api/users', { headers: { 'x-trace-id': 'bad id<script>' } });
    assert.match(r.headers.get('x-trace-id') ?? '', /^[0-9a-f]{32}$/);
  });

  test('a failed upstream call is an error span, and /traces lists traces newest first', async () => {
    type Summary = { traceId: string; startTime: string; spanCount: number; services: string[]; status: string; durationMs: number };
    const before = await http<{ traces: Summary[] }>(gw.url, 'GET', '/traces?limit=50');
    const order = before.body.traces.find((t) => t.traceId === 'order-trace-1')!;
    assert.equal(order.services.length, 4);
    assert.ok(order.durationMs > 0);
    await sys.users.close();
    try {
      const r = await http(gw.url, 'GET', '/api/users/1', { headers: { 'x-trace-id': 'failing-trace' } });
      assert.equal(r.status, 502);
      const t = await http<{ spans: Span[]; meta: { complete: boolean; unavailable: string[] } }>(gw.url, 'GET', '/traces/failing-trace');
      assert.equal(t.status, 200);
      assert.deepEqual(t.body.meta, { complete: false, unavailable: ['users'] });
      assert.ok(t.body.spans.some((s) => s.kind === 'client' && s.status === 'error'));
    } finally {
      await sys.users.start();
    }
    const list = await http<{ traces: Summary[] }>(gw.url, 'GET', '/traces?limit=50');
    assert.equal(list.status, 200);
    const ids = list.body.traces.map((t) => t.traceId);
    assert.equal(ids[0], 'failing-trace');
    assert.equal(list.body.traces[0].status, 'error');
    assert.ok(ids.indexOf('order-trace-1') < ids.indexOf('my-trace-123'));
    const sorted = [...list.body.traces].sort((a, b) => b.startTime.localeCompare(a.startTime));
    assert.deepEqual(list.body.traces, sorted);
  });

  test('/traces filters by service, errors and duration, and each summary names the request', async () => {
    type Summary = { traceId: string; services: string[]; status: string; durationMs: number; method?: string; path?: string; httpStatus?: number };
    const list = async (query: string) => {
      const r = await http<{ traces: Summary[] }>(gw.url, 'GET', `/traces?limit=100&${query}`);
      assert.equal(r.status, 200, r.text);
      return r.body.traces;
    };
    const all = await list('');
    const order = all.find((t) => t.traceId === 'order-trace-1')!;
    assert.deepEqual({ method: order.method, path: order.path, httpStatus: order.httpStatus }, { method: 'POST', path: '/api/orders', httpStatus: 201 });
    const products = await list('service=product-service');
    assert.ok(products.length > 0 && products.every((t) => t.services.includes('product-service')));
    assert.ok(products.some((t) => t.traceId === 'order-trace-1'));
    assert.ok(!products.some((t) => t.traceId === 'my-trace-123'));
    const errors = await list('status=error');
    assert.ok(errors.length > 0 && errors.every((t) => t.status === 'error'));
    assert.ok(errors.some((t) => t.traceId === 'failing-trace'));
    const slowest = Math.max(...all.map((t) => t.durationMs));
    const slow = await list(`minDurationMs=${Math.floor(slowest)}`);
    assert.ok(slow.length >= 1 && slow.every((t) => t.durationMs >= Math.floor(slowest)));
    assert.ok(slow.length < all.length);
    for (const bad of ['status=bad', 'minDurationMs=-1', 'service=Not%20A%20Name', 'nope=1']) {
      const r = await http(gw.url, 'GET', `/traces?${bad}`);
      assert.equal(r.status, 400, bad);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
    }
  });

  test('when /traces is asked for a service that no process is named, then it is 400 VALIDATION_ERROR on service, at the gateway and at a service', async () => {
    for (const name of ['gateway', 'user-service', 'product-service', 'order-service']) assert.equal((await http(gw.url, 'GET', `/traces?service=${name}`)).status, 200, name);
    for (const base of [gw.url, sys.products.url]) {
      for (const name of ['bogus', 'users', 'Product-Service']) {
        const r = await http(base, 'GET', `/traces?service=${name}`);
        assert.equal(r.status, 400, `${base} ${name}: ${r.text}`);
        assert.equal(r.body.code, 'VALIDATION_ERROR');
        assert.equal(r.body.details[0].field, 'service');
      }
    }
  });

  test('each service answers /metrics with its requests by route', async () => {
    for (const [svc, path] of [[sys.users, '/users'], [sys.products, '/products'], [sys.orders, '/orders']] as const) {
      await http(svc.url, 'GET', path);
      const text = await fetch(`${svc.url}/metrics`).then((r) => r.text());
      assert.match(text, /http_request_duration_seconds_bucket\{/);
      assert.match(text, /http_requests_total\{[^}]*route="\/(users|products|orders|internal\/reservations)/);
    }
  });
});

describe('a gateway that samples no request', () => {
  let up: FakeUpstream;
  let url: string;
  let close: () => Promise<void>;
  before(async () => {
    up = await startFakeUpstream();
    const config = parseConfig(GatewayConfigSchema, { LOG_LEVEL: 'warn', USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, OTEL_TRACES_SAMPLER: 'always_off', TRACE_SLOW_MS: '60000', CB_RESET_TIMEOUT_MS: '60000' });
    const gateway = createGateway({ config, logger: memoryLogger('gateway', 'warn').logger, tracing: createTracingFromConfig('gateway', config) });
    const listening = await listen(gateway, 0, '127.0.0.1');
    url = listening.url;
    close = async () => {
      await closeServer(listening.server, 2_000);
      await gateway.close();
      await up.stop();
    };
  });
  after(() => close());

  test('when a request succeeds quickly, then its trace id and traceparent still reach the service, and /traces does not keep it', async () => {
    const r = await http(url, 'GET', '/api/products/1', { headers: { 'x-trace-id': 'quiet-ok' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-trace-id'), 'quiet-ok');
    const seen = up.seen.at(-1)!;
    assert.equal(seen.headers['x-trace-id'], 'quiet-ok');
    assert.match(String(seen.headers.traceparent), new RegExp(`^00-${toW3cTraceId('quiet-ok')}-[0-9a-f]{16}-00$`));
    assert.equal((await http(url, 'GET', '/traces/quiet-ok')).status, 404);
  });

  test('when the circuit refuses a request, then /traces keeps it as an error', async () => {
    assert.equal((await circuit(url, 'products', 'open')).status, 200);
    try {
      // A path never answered before: an open circuit may serve a stale copy of one that was.
      const r = await http(url, 'GET', '/api/products/77', { headers: { 'x-trace-id': 'refused-1' } });
      assert.equal(r.status, 503);
      const t = await http<{ spans: Span[] }>(url, 'GET', '/traces/refused-1');
      assert.equal(t.status, 200);
      assert.deepEqual(t.body.spans.map((s) => `${s.service} ${s.kind} ${s.status}`), ['gateway server error']);
    } finally {
      await circuit(url, 'products', 'reset');
    }
  });

  test('when the service answers 5xx, then /traces keeps the request with its call', async () => {
    up.behaviour = { kind: 'status', status: 500 };
    try {
      const r = await http(url, 'GET', '/api/products/1', { headers: { 'x-trace-id': 'upstream-500' } });
      assert.equal(r.status, 500);
      const t = await http<{ spans: Span[] }>(url, 'GET', '/traces/upstream-500');
      assert.equal(t.status, 200);
      assert.deepEqual(t.body.spans.map((s) => `${s.kind} ${s.status}`).sort(), ['client error', 'server error']);
    } finally {
      up.behaviour = { kind: 'echo' };
    }
  });
});
