import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Router } from 'express';
import { createServiceApp } from '../lib/platform/service-app.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { openSqlDatabase } from '../lib/platform/sql.js';
import { ServiceClient } from '../lib/platform/service-client.js';
import { createSampler, createTracing, createTracingFromConfig, EXPORT_SLICE, startClientSpan, type SpanRecord, type Tracing, type TracingOptions } from '../lib/platform/span-recorder.js';
import { createTraceRoutes } from '../lib/platform/trace-endpoints.js';
import { toW3cTraceId, traceFromHeaders } from '../lib/platform/trace-context.js';
import { createBaseApp, requestContext } from '../lib/platform/http.js';
import { errorHandler, notFoundHandler } from '../lib/platform/errors.js';
import { commonShape, parseConfig } from '../lib/platform/config.js';
import { z } from 'zod';
import { SpanStatusCode } from '@opentelemetry/api';
import { assertOneTree, http, memoryLogger, startApp } from './helpers.js';
import { rawRequest } from './gateway-helpers.js';

const db = () => openSqlDatabase({ dataDir: ':memory:', name: 't', migrations: { sqlite: [], postgres: [] } });

/** A back service with GET /thing, and a front service whose GET /proxy calls it. */
async function twoServices(otlpEndpoint?: string, options: Partial<TracingOptions> = {}) {
  const back = memoryLogger('back');
  const backTracing = createTracing({ service: 'back-service', otlpEndpoint, ...options });
  const backRoutes = Router().get('/thing', (req, res) => {
    res.json({ ok: true, traceparent: req.headers.traceparent });
  });
  const backApp = await startApp(createServiceApp({ service: 'back-service', logger: back.logger, metrics: createMetrics('back'), db: await db(), routes: backRoutes, api: [], tracing: backTracing }));
  const client = new ServiceClient({ name: 'back', baseUrl: backApp.url, timeoutMs: 2000 });
  const front = memoryLogger('front');
  const frontTracing = createTracing({ service: 'front-service', otlpEndpoint, ...options });
  const frontRoutes = Router()
    .get('/proxy', async (_req, res) => {
      const r = await client.get<{ ok: boolean }>('/thing');
      res.json({ fromBack: r.body });
    })
    .get('/broken', async () => {
      await client.get('/thing');
      throw new Error('broken on purpose');
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

/** An OTLP/HTTP receiver on port 0 that keeps what it is sent. */
async function otlpReceiver() {
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
  const spanCount = () => received.reduce((n, { body }) => n + body.resourceSpans.reduce((m: number, rs: any) => m + rs.scopeSpans.reduce((k: number, ss: any) => k + ss.spans.length, 0), 0), 0);
  return { received, endpoint, spanCount, close: () => receiver.close() };
}

describe('head sampling', async () => {
  // Nothing sampled, and nothing slow enough: only failures are kept.
  const sys = await twoServices(undefined, { sampler: createSampler('parentbased_traceidratio', 0), slowMs: 60_000 });
  after(() => sys.close());

  test('when a request is not sampled, then its ids still reach the service and the response, with traceparent flags 00, and a quick success is not kept', async () => {
    const r = await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': 'unsampled-ok' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-trace-id'), 'unsampled-ok');
    assert.match(r.headers.get('x-span-id') ?? '', /^[0-9a-f]{16}$/);
    assert.match(r.body.fromBack.traceparent, new RegExp(`^00-${toW3cTraceId('unsampled-ok')}-[0-9a-f]{16}-00$`));
    assert.equal((await http(sys.frontApp.url, 'GET', '/traces/unsampled-ok')).status, 404);
    for (const t of sys.tracings) assert.equal(t.buffer.query({ traceId: toW3cTraceId('unsampled-ok') }).length, 0);
  });

  test('when an unsampled request fails, then /traces still has it, with the call it made', async () => {
    const r = await http(sys.frontApp.url, 'GET', '/broken', { headers: { 'x-trace-id': 'unsampled-broken' } });
    assert.equal(r.status, 500);
    const t = await http(sys.frontApp.url, 'GET', '/traces/unsampled-broken');
    assert.equal(t.status, 200);
    const spans = t.body.spans as SpanRecord[];
    // The back service answered quickly and well: its own span is not kept.
    assert.deepEqual(spans.map((s) => `${s.service} ${s.kind} ${s.status}`).sort(), ['front-service client ok', 'front-service server error']);
  });

  test('when the caller says its trace is sampled, then the parent-based sampler follows it', async () => {
    const id = '5bf92f3577b34da6a3ce929d0e0e4736';
    const r = await http(sys.frontApp.url, 'GET', '/proxy', { headers: { traceparent: `00-${id}-00f067aa0ba902b7-01` } });
    assert.match(r.body.fromBack.traceparent, /-01$/);
    const t = await http(sys.frontApp.url, 'GET', `/traces/${id}`);
    assert.equal(t.status, 200);
    assert.equal(t.body.spans.length, 3);
  });
});

describe('the tail decision for unsampled requests', () => {
  const unsampled = (slowMs: number) => createTracing({ service: 's', sampler: createSampler('always_off'), slowMs });
  /** A request's server span with one call under it that answers `status`. */
  const request = (tracing: Tracing, id: string, status: number, serverError = false) =>
    tracing.runServerSpan(traceFromHeaders({ 'x-trace-id': id }, false), 'GET', {}, (span) => {
      startClientSpan('GET back', {}).end({ status });
      if (serverError) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
  const kept = (tracing: Tracing, id: string) => tracing.buffer.query({ traceId: toW3cTraceId(id) }).map((s) => `${s.kind} ${s.status}`).sort();

  test('when its server span lasts TRACE_SLOW_MS or more, then it is kept, its call included', () => {
    const tracing = unsampled(0);
    request(tracing, 'slow-1', 200);
    assert.deepEqual(kept(tracing, 'slow-1'), ['client ok', 'server ok']);
  });

  test('when only a call under it failed, then it is kept; when nothing failed and it was quick, then it is not', () => {
    const tracing = unsampled(60_000);
    request(tracing, 'call-failed', 503);
    request(tracing, 'server-failed', 200, true);
    request(tracing, 'fine', 200);
    assert.deepEqual(kept(tracing, 'call-failed'), ['client error', 'server ok']);
    assert.deepEqual(kept(tracing, 'server-failed'), ['client ok', 'server error']);
    assert.deepEqual(kept(tracing, 'fine'), []);
    assert.equal(tracing.buffer.size, 4);
  });
});

describe('sampler configuration', () => {
  const Schema = z.object(commonShape);
  const tracingFor = (env: Record<string, string>) => createTracingFromConfig('s', parseConfig(Schema, env))!;
  const sampledOf = (tracing: Tracing, id: string) => tracing.runServerSpan(traceFromHeaders({ 'x-trace-id': id }, false), 'GET', {}, (span) => span.spanContext().traceFlags === 1);

  test('when unset, then every request is sampled; with a ratio, then about that share is, decided on the trace id', () => {
    const all = tracingFor({});
    assert.ok(Array.from({ length: 50 }, (_, i) => sampledOf(all, `t-${i}`)).every(Boolean));
    const tenth = tracingFor({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' });
    const decisions = Array.from({ length: 2000 }, (_, i) => sampledOf(tenth, `t-${i}`));
    const share = decisions.filter(Boolean).length / decisions.length;
    assert.ok(share > 0.05 && share < 0.15, `share ${share}`);
    // The same trace id gets the same decision in any process.
    const other = tracingFor({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' });
    assert.deepEqual(Array.from({ length: 200 }, (_, i) => sampledOf(other, `t-${i}`)), decisions.slice(0, 200));
  });

  test('when a sampler or its ratio is not one OpenTelemetry defines, then the config names the variable', () => {
    assert.throws(() => parseConfig(Schema, { OTEL_TRACES_SAMPLER: 'jaeger_remote' }), /^Error: OTEL_TRACES_SAMPLER: must be one of always_on, .*parentbased_traceidratio \(got "jaeger_remote"\)$/);
    for (const bad of ['1.5', '-0.1', 'half']) {
      assert.throws(() => parseConfig(Schema, { OTEL_TRACES_SAMPLER_ARG: bad }), /^Error: OTEL_TRACES_SAMPLER_ARG: must be a ratio from 0 to 1/, bad);
    }
    assert.equal(parseConfig(Schema, { OTEL_TRACES_SAMPLER_ARG: '0.25' }).OTEL_TRACES_SAMPLER_ARG, 0.25);
  });
});

describe('OTLP export', () => {
  test('with an endpoint set, spans of both services reach an OTLP/HTTP receiver', async () => {
    const { received, endpoint, close: closeReceiver } = await otlpReceiver();
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
      closeReceiver();
    }
  });

  test('when many spans wait for export, then they go out as they are drained, in batches of at most EXPORT_SLICE spans', async () => {
    const receiver = await otlpReceiver();
    const sys = await twoServices(receiver.endpoint, { exportDelayMs: 20 });
    try {
      const requests = 200;
      await Promise.all(Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; i < requests / 4; i++) assert.equal((await http(sys.frontApp.url, 'GET', '/proxy', { headers: { 'x-trace-id': `slice-${w}-${i}` } })).status, 200);
      }));
      // Each request: the front's server and client spans, the back's server span.
      for (let waited = 0; receiver.spanCount() < requests * 3 && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
      assert.equal(receiver.spanCount(), requests * 3, 'every span exported before any shutdown');
      const sizes = receiver.received.map(({ body }) => body.resourceSpans.reduce((m: number, rs: any) => m + rs.scopeSpans.reduce((k: number, ss: any) => k + ss.spans.length, 0), 0));
      assert.ok(Math.max(...sizes) <= EXPORT_SLICE, `batches of ${sizes.join(', ')}`);
    } finally {
      await Promise.all(sys.tracings.map((t) => t.shutdown()));
      await sys.close();
      receiver.close();
    }
  });

  test('when 4,000 spans wait at shutdown, then all are exported, a few batches at a time (the exporter refuses more than 30 at once)', async () => {
    const receiver = await otlpReceiver();
    const tracing = createTracing({ service: 'many', otlpEndpoint: receiver.endpoint, exportDelayMs: 60_000 });
    try {
      for (let i = 0; i < 4000; i++) tracing.runServerSpan(traceFromHeaders({}), 'GET /', {}, (span) => span.end());
      await tracing.shutdown();
      assert.equal(receiver.spanCount(), 4000);
    } finally {
      receiver.close();
    }
  });

  test('when the collector refuses the spans at shutdown, then stopping logs it once, without a stack, and does not fail', async () => {
    let posts = 0;
    const refusing = createServer((req, res) => {
      posts++;
      req.resume().on('end', () => res.writeHead(400, { 'content-type': 'application/json' }).end('{}'));
    });
    await new Promise<void>((r) => refusing.listen(0, '127.0.0.1', r));
    const { logger, lines } = memoryLogger();
    const tracing = createTracing({ service: 'refused', otlpEndpoint: `http://127.0.0.1:${(refusing.address() as AddressInfo).port}`, exportDelayMs: 60_000, logger });
    try {
      for (let i = 0; i < 3 * EXPORT_SLICE * 8; i++) tracing.runServerSpan(traceFromHeaders({}), 'GET /', {}, (span) => span.end());
      await tracing.shutdown();
      assert.ok(posts >= 1, 'the collector was asked');
      assert.ok(posts <= 8, `a collector that refused is not asked again for the rest (${posts} posts)`);
      const failures = lines().filter((l) => l.msg === 'span export failed; spans are still kept for /traces, and export is retried with each batch');
      assert.equal(failures.length, 1);
      assert.equal(JSON.stringify(failures[0]).includes('stack'), false);
    } finally {
      refusing.close();
      refusing.closeAllConnections();
    }
  });

  test('when requests are not sampled, then none is exported, the failing ones kept for /traces included', async () => {
    const receiver = await otlpReceiver();
    const sys = await twoServices(receiver.endpoint, { sampler: createSampler('always_off') });
    try {
      assert.equal((await http(sys.frontApp.url, 'GET', '/broken', { headers: { 'x-trace-id': 'kept-not-exported' } })).status, 500);
      assert.equal((await http(sys.frontApp.url, 'GET', '/traces/kept-not-exported')).status, 200);
      await Promise.all(sys.tracings.map((t) => t.shutdown()));
      assert.equal(receiver.spanCount(), 0);
    } finally {
      await sys.close();
      receiver.close();
    }
  });
});
