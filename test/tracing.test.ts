import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Router } from 'express';
import { createServiceApp } from '../lib/platform/service-app.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { openSqlDatabase } from '../lib/platform/sql.js';
import { ServiceClient } from '../lib/platform/service-client.js';
import { createTracing, type SpanRecord, type Tracing } from '../lib/platform/span-recorder.js';
import { createTraceRoutes } from '../lib/platform/trace-endpoints.js';
import { toW3cTraceId, traceFromHeaders } from '../lib/platform/trace-context.js';
import { createBaseApp, requestContext } from '../lib/platform/http.js';
import { errorHandler, notFoundHandler } from '../lib/platform/errors.js';
import { assertOneTree, http, memoryLogger, startApp } from './helpers.js';
import { rawRequest } from './gateway-helpers.js';

const db = () => openSqlDatabase({ dataDir: ':memory:', name: 't', migrations: { sqlite: [], postgres: [] } });

/** A back service with GET /thing, and a front service whose GET /proxy calls it. */
async function twoServices(otlpEndpoint?: string) {
  const back = memoryLogger('back');
  const backTracing = createTracing({ service: 'back-service', otlpEndpoint });
  const backRoutes = Router().get('/thing', (_req, res) => {
    res.json({ ok: true });
  });
  const backApp = await startApp(createServiceApp({ service: 'back-service', logger: back.logger, metrics: createMetrics('back'), db: await db(), routes: backRoutes, api: [], tracing: backTracing }));
  const client = new ServiceClient({ name: 'back', baseUrl: backApp.url, timeoutMs: 2000 });
  const front = memoryLogger('front');
  const frontTracing = createTracing({ service: 'front-service', otlpEndpoint });
  const frontRoutes = Router().get('/proxy', async (_req, res) => {
    const r = await client.get<{ ok: boolean }>('/thing');
    res.json({ fromBack: r.body });
  });
  // Built like the gateway: its /traces merges its own spans with the back service's.
  const app = createBaseApp();
  app.use(requestContext(front.logger, frontTracing));
  app.use(frontRoutes);
  app.use(createTraceRoutes({ tracing: frontTracing, remotes: [client] }));
  app.use(notFoundHandler);
  app.use(errorHandler(front.logger));
  const frontApp = await startApp(app);
  return {
    backApp,
    frontApp,
    backLines: back.lines,
    tracings: [backTracing, frontTracing],
    close: async () => {
      await frontApp.close();
      await backApp.close();
    },
  };
}

describe('traces across processes', async () => {
  const sys = await twoServices();
  after(() => sys.close());

  test('when a request comes in absolute form or with a fragment, then its span records the path alone and telemetry reads stay untraced', async () => {
    const front = sys.tracings[1];
    const before = front.buffer.size;
    for (const path of ['http://example.test/spans?limit=1', '/spans#x']) {
      const r = await rawRequest(sys.frontApp.url, 'GET', path);
      assert.equal(r.status, 200, path);
    }
    assert.equal(front.buffer.size, before, 'reading /spans adds no span');
    const r = await rawRequest(sys.frontApp.url, 'GET', 'http://example.test/proxy?x=1');
    assert.equal(r.status, 200);
    const traceId = String(r.headers['x-trace-id']);
    const server = front.buffer.query({ traceId: toW3cTraceId(traceId) }).find((s) => s.kind === 'server');
    assert.equal(server?.attributes['url.path'], '/proxy');
  });

  test('a client X-Trace-Id names one tree of spans from both services', async () => {
    const r = await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'my-trace-123' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-trace-id'), 'my-trace-123');
    const t = await http(sys.frontApp.url, 'GET', '/traces/my-trace-123');
    assert.equal(t.status, 200);
    assert.equal(t.body.traceId, 'my-trace-123');
    assert.equal(t.body.w3cTraceId, toW3cTraceId('my-trace-123'));
    const spans = t.body.spans as SpanRecord[];
    assert.deepEqual(new Set(spans.map((s) => s.service)), new Set(['front-service', 'back-service']));
    assert.deepEqual(spans.map((s) => s.kind).sort(), ['client', 'server', 'server']);
    assertOneTree(spans);
    for (const s of spans) {
      assert.equal(s.traceId, toW3cTraceId('my-trace-123'));
      assert.ok(s.durationMs >= 0);
    }
    const backServer = spans.find((s) => s.service === 'back-service')!;
    assert.equal(backServer.name, 'GET /thing');
    assert.equal(backServer.attributes['http.response.status_code'], 200);
  });

  test('the back service logs under the trace id the client chose', async () => {
    await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'log-trace-7' } });
    const line = sys.backLines().find((l) => l.msg === 'request' && l.traceId === 'log-trace-7');
    assert.ok(line, 'request log line in the back service carries the trace id');
  });

  test('a client traceparent is the trace that X-Trace-Id names', async () => {
    const id = '4bf92f3577b34da6a3ce929d0e0e4736';
    const r = await http(sys.frontApp.url, 'GET', '/proxy', { headers: { traceparent: `00-${id}-00f067aa0ba902b7-01` } });
    assert.equal(r.headers.get('x-trace-id'), id);
    const t = await http(sys.frontApp.url, 'GET', `/traces/${id}`);
    const root = (t.body.spans as SpanRecord[]).find((s) => s.service === 'front-service' && s.kind === 'server')!;
    assert.equal(root.parentSpanId, '00f067aa0ba902b7');
  });

  test('the list is newest first, with span counts and services', async () => {
    await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'older-1' } });
    await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'newer-2' } });
    const r = await http(sys.frontApp.url, 'GET', '/traces?limit=5');
    assert.equal(r.status, 200);
    const ids = r.body.traces.map((t: { traceId: string }) => t.traceId);
    assert.ok(ids.indexOf('newer-2') < ids.indexOf('older-1'));
    const newest = r.body.traces[0];
    assert.equal(newest.traceId, 'newer-2');
    assert.equal(newest.spanCount, 3);
    assert.deepEqual(newest.services.sort(), ['back-service', 'front-service']);
    assert.equal(newest.status, 'ok');
  });

  test('unknown traces are 404, invalid ids 400, and a down service makes the answer partial', async () => {
    assert.equal((await http(sys.frontApp.url, 'GET', '/traces/nope-nope')).status, 404);
    assert.equal((await http(sys.frontApp.url, 'GET', '/traces/bad%20id')).status, 400);
    await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'partial-1' } });
    await sys.backApp.close();
    const t = await http(sys.frontApp.url, 'GET', '/traces/partial-1');
    assert.equal(t.status, 200);
    assert.deepEqual(t.body.meta, { complete: false, unavailable: ['back'] });
  });
});

describe('span buffer', () => {
  /** One finished server span of a fresh trace, recorded as a request's would be. */
  const finish = (tracing: Tracing, name: string) => tracing.runServerSpan(traceFromHeaders({}, false), name, {}, (span) => span.end());

  test('stays within its count cap however many spans arrive, the newest last', () => {
    const tracing = createTracing({ service: 's', maxSpans: 1000 });
    for (let i = 0; i < 20_000; i++) {
      finish(tracing, `span-${i}`);
      assert.ok(tracing.buffer.size <= 1000);
    }
    assert.equal(tracing.buffer.size, 1000);
    const spans = tracing.buffer.query({});
    assert.equal(spans.length, 1000);
    assert.equal(spans[0].name, 'span-19000');
    assert.equal(tracing.buffer.query({ limit: 1 })[0].name, 'span-19999');
  });

  test('serves no span older than its age cap', (t) => {
    const tracing = createTracing({ service: 's', maxAgeMs: 1000 });
    finish(tracing, 'old');
    const now = performance.now();
    t.mock.method(performance, 'now', () => now + 5000);
    finish(tracing, 'new');
    assert.deepEqual(tracing.buffer.query({}).map((s) => s.name), ['new']);
  });

  test('a real app keeps its buffer within the cap under many requests', async () => {
    const tracing = createTracing({ service: 'capped', maxSpans: 50 });
    const app = await startApp(createServiceApp({ service: 'capped', logger: memoryLogger('capped', 'warn').logger, metrics: createMetrics('capped'), db: await db(), routes: Router(), api: [], tracing }));
    try {
      for (let i = 0; i < 200; i++) await fetch(`${app.url}/nothing-${i}`).then((r) => r.text());
      assert.equal(tracing.buffer.size, 50);
    } finally {
      await app.close();
    }
  });
});

describe('OTLP export', () => {
  test('with an endpoint set, spans of both services reach an OTLP/HTTP receiver', async () => {
    const received: { path: string; body: any }[] = [];
    const receiver = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        received.push({ path: req.url ?? '', body: JSON.parse(Buffer.concat(chunks).toString()) });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const endpoint = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
    const sys = await twoServices(endpoint);
    try {
      await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'otlp-1' } });
      await Promise.all(sys.tracings.map((t) => t.shutdown()));
      assert.ok(received.length >= 1);
      assert.ok(received.every((r) => r.path === '/v1/traces'));
      const services = new Set<string>();
      const traceIds = new Set<string>();
      for (const { body } of received) {
        for (const rs of body.resourceSpans) {
          const name = rs.resource.attributes.find((a: any) => a.key === 'service.name')?.value.stringValue;
          for (const ss of rs.scopeSpans) for (const s of ss.spans) {
            services.add(name);
            traceIds.add(s.traceId);
          }
        }
      }
      assert.deepEqual(services, new Set(['front-service', 'back-service']));
      assert.ok(traceIds.has(toW3cTraceId('otlp-1')));
    } finally {
      await sys.close();
      receiver.close();
    }
  });
});
