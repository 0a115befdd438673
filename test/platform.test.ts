import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Router } from 'express';
import { z } from 'zod';
import { parseConfig, portVar, intVar, boolVar, commonShape } from '../lib/platform/config.js';
import { createServiceApp } from '../lib/platform/service-app.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { openSqlDatabase } from '../lib/platform/sql.js';
import { HttpError, storageError, toHttpError } from '../lib/platform/errors.js';
import { parseBody, parseId } from '../lib/platform/validation.js';
import { currentTrace, traceFromHeaders } from '../lib/platform/trace-context.js';
import { classifyUpstreamError, RESPONSE_TOO_LARGE } from '../lib/platform/upstream-errors.js';
import { createBaseApp } from '../lib/platform/http.js';
import { deadlinePassed } from '../lib/platform/service-client.js';
import { eventually } from './gateway-helpers.js';
import { assertNoLeak, http, memoryLogger, startApp } from './helpers.js';
import { SCHEMAS, shapeOf } from './support/config-schemas.js';

describe('config', () => {
  const schema = z.object({ ...commonShape, PORT: portVar(3011), RATE_LIMIT: intVar(100, 1), SEED_DATA: boolVar(true) });

  test('when unset, then defaults apply', () => {
    const c = parseConfig(schema, {});
    assert.equal(c.PORT, 3011);
    assert.equal(c.RATE_LIMIT, 100);
    assert.equal(c.SEED_DATA, true);
    assert.equal(c.HOST, '127.0.0.1');
  });

  test('when PORT=abc, then one line names the variable', () => {
    assert.throws(() => parseConfig(schema, { PORT: 'abc' }), (err: Error) => {
      assert.match(err.message, /^PORT: .*\(got "abc"\)$/);
      assert.ok(!err.message.includes('\n'));
      return true;
    });
  });

  test('when RATE_LIMIT=-1 or SEED_DATA=maybe, then they are refused by name', () => {
    assert.throws(() => parseConfig(schema, { RATE_LIMIT: '-1' }), /^Error: RATE_LIMIT: /);
    assert.throws(() => parseConfig(schema, { SEED_DATA: 'maybe' }), /SEED_DATA: /);
    assert.equal(parseConfig(schema, { SEED_DATA: 'false' }).SEED_DATA, false);
  });

  test('when a bad value holds a secret, then the error names the variable but shows neither the secret nor a URL password', () => {
    const secrets = z.object({
      ADMIN_TOKEN: z.string().min(16),
      COLLECTOR_URL: z.string().regex(/^https?:\/\/\S+$/).optional(),
      DATABASE_URL: z.string().regex(/^postgres:\/\/\S+$/).optional(),
      BENCH_POSTGRES_URL: z.string().regex(/^postgres:\/\/\S+$/).optional(),
    });
    assert.throws(() => parseConfig(secrets, { ADMIN_TOKEN: 'short-secret' }), (err: Error) => err.message.startsWith('ADMIN_TOKEN: ') && !err.message.includes('short-secret'));
    assert.throws(() => parseConfig(secrets, { ADMIN_TOKEN: 'x'.repeat(16), COLLECTOR_URL: 'ftp://app:hunter2@db/x' }),
      (err: Error) => err.message.includes('ftp://***@db/x') && !err.message.includes('hunter2'));
    // libpq's key=value form has no URL shape to mask: the database URL is never shown.
    assert.throws(() => parseConfig(secrets, { ADMIN_TOKEN: 'x'.repeat(16), DATABASE_URL: 'host=db password=hunter2' }),
      (err: Error) => err.message.startsWith('DATABASE_URL: ') && !err.message.includes('hunter2'));
    assert.throws(() => parseConfig(secrets, { ADMIN_TOKEN: 'x'.repeat(16), BENCH_POSTGRES_URL: 'host=db password=hunter2' }),
      (err: Error) => err.message.startsWith('BENCH_POSTGRES_URL: ') && !err.message.includes('hunter2'));
  });

  test('when several processes read a variable, then they all take it through one definition', () => {
    // PORT alone differs on purpose: each process has its own default port.
    const definitions = new Map<string, Set<z.ZodType>>();
    for (const schema of Object.values(SCHEMAS)) {
      for (const [key, definition] of Object.entries(shapeOf(schema))) {
        definitions.set(key, (definitions.get(key) ?? new Set()).add(definition));
      }
    }
    const repeated = [...definitions].filter(([key, defs]) => key !== 'PORT' && defs.size > 1).map(([key]) => key);
    assert.deepEqual(repeated, []);
  });
});

describe('storage errors', () => {
  const failure = (code: string, message = 'failed') => Object.assign(new Error(message), { code });
  const answer = (err: unknown) => {
    const mapped = storageError(err);
    return mapped instanceof HttpError ? `${mapped.status} ${mapped.code}` : mapped === err ? 'itself' : 'other';
  };

  test('when either engine cannot work now, then the database layer throws 503 STORAGE_UNAVAILABLE', () => {
    for (const code of ['SQLITE_BUSY', 'SQLITE_LOCKED_SHAREDCACHE', 'SQLITE_IOERR_WRITE', 'SQLITE_FULL', 'SQLITE_CANTOPEN', 'SQLITE_READONLY',
      'SQLITE_PERM', 'SQLITE_CORRUPT', 'SQLITE_NOTADB', 'SQLITE_PROTOCOL', 'SQLITE_NOLFS',
      '08006', '53300', '57P01', '57P03', '57014', '40001', '40P01', 'ECONNREFUSED', 'ECONNRESET']) {
      assert.equal(answer(failure(code)), '503 STORAGE_UNAVAILABLE', code);
    }
    assert.equal(answer(new Error('timeout exceeded when trying to connect')), '503 STORAGE_UNAVAILABLE');
    assert.equal(answer(new Error('Connection terminated unexpectedly')), '503 STORAGE_UNAVAILABLE');
  });

  test('when the request or the code is at fault, then it is a 400 or the error itself, never a 503', () => {
    assert.equal(answer(failure('22P02')), '400 BAD_REQUEST');
    for (const code of ['SQLITE_CONSTRAINT_UNIQUE', 'SQLITE_ERROR', '23505', '42P01']) assert.equal(answer(failure(code)), 'itself', code);
    assert.equal(answer(new TypeError('x is undefined')), 'itself');
  });

  test('when a SQLite failure escapes the database layer, then the error handler answers the same 503; another network code stays a 500', () => {
    for (const code of ['SQLITE_BUSY', 'SQLITE_PERM', 'SQLITE_PROTOCOL']) {
      const err = toHttpError(failure(code));
      assert.deepEqual([err.status, err.code, err.message], [503, 'STORAGE_UNAVAILABLE', (storageError(failure(code)) as HttpError).message], code);
    }
    // ECONNREFUSED from anything but the database (another service) is not the store's failure.
    assert.equal(toHttpError(failure('ECONNREFUSED')).status, 500);
  });
});

describe('trace ids', () => {
  test('a valid X-Trace-Id is kept; an invalid one is replaced, never reflected', () => {
    assert.equal(traceFromHeaders({ 'x-trace-id': 'my-trace-123' }).traceId, 'my-trace-123');
    const bad = traceFromHeaders({ 'x-trace-id': '<script>' }).traceId;
    assert.match(bad, /^[0-9a-f]{32}$/);
    assert.match(traceFromHeaders({ 'x-trace-id': 'a'.repeat(129) }).traceId, /^[0-9a-f]{32}$/);
  });

  test('a valid traceparent joins its trace', () => {
    const t = traceFromHeaders({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' });
    assert.equal(t.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(t.parentSpanId, '00f067aa0ba902b7');
    assert.notEqual(traceFromHeaders({ traceparent: '00-00000000000000000000000000000000-00f067aa0ba902b7-01' }).traceId, '0'.repeat(32));
  });
});

const serviceFrameDb = await openSqlDatabase({ dataDir: ':memory:', name: 't', migrations: { sqlite: ['CREATE TABLE t (x INTEGER)'], postgres: [] } });

describe('service frame', () => {
  const { logger, lines } = memoryLogger('platform-test');
  const db = serviceFrameDb;
  const routes = Router();
  routes.post('/echo', (req, res) => {
    const body = parseBody(z.strictObject({ name: z.string().max(10) }), req.body);
    logger.info('echo handled');
    res.status(201).json({ ...body, traceId: currentTrace()?.traceId });
  });
  routes.get('/things/:id', (req, res) => {
    res.json({ id: parseId(req.params) });
  });
  routes.get('/boom', () => {
    throw new Error('secret at /work/main/lib/x.ts:12');
  });
  // Waits for its caller's deadline to pass (at most 5 s) and notes when it saw it pass.
  const deadlineSeen: number[] = [];
  let handlerWaiting = (): void => {};
  routes.get('/wait-for-deadline', async (_req, res) => {
    handlerWaiting();
    const until = Date.now() + 5_000;
    while (!deadlinePassed() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (deadlinePassed()) deadlineSeen.push(Date.now());
    res.json({ passed: deadlinePassed() });
  });
  routes.get('/teapot', () => {
    throw new HttpError(409, 'EMAIL_TAKEN', 'Email is taken');
  });
  const app = createServiceApp({ service: 'platform-test', logger, metrics: createMetrics('platform-test'), db, routes, api: [] });
  const started = startApp(app);
  after(async () => (await started).close());

  test('when the caller closes the connection before its Request-Timeout, then its deadline has passed', async () => {
    const { url } = await started;
    // The caller says it waits 60 s, and gives up once the handler is waiting (a fixed 100 ms could
    // end before a loaded machine had even sent the request).
    const waiting = new Promise<void>((resolve) => (handlerWaiting = resolve));
    const caller = new AbortController();
    const call = fetch(`${url}/wait-for-deadline`, { headers: { 'request-timeout': '60000' }, signal: caller.signal });
    await waiting;
    caller.abort();
    await assert.rejects(call);
    // Well before the handler's own limit (5 s), let alone the 60 s.
    await eventually(() => deadlineSeen.length > 0, 4_000, 'the handler to see its deadline pass');
  });

  test('health answers with the service name and the trace headers', async () => {
    const { url } = await started;
    const r = await http(url, 'GET', '/health', { headers: { 'x-trace-id': 'my-trace-123' } });
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { status: 'healthy', service: 'platform-test' });
    assert.equal(r.headers.get('x-trace-id'), 'my-trace-123');
    assert.match(r.headers.get('x-span-id') ?? '', /^[0-9a-f]{16}$/);
    assert.match(r.headers.get('x-response-time') ?? '', /^\d+(\.\d)?ms$/);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json; charset=utf-8/);
  });

  test('the trace id reaches handlers and log lines, through the body parser', async () => {
    const { url } = await started;
    const r = await http(url, 'POST', '/echo', { body: { name: 'x' }, headers: { 'x-trace-id': 'body-trace-1' } });
    assert.equal(r.status, 201);
    assert.equal(r.body.traceId, 'body-trace-1');
    const line = lines().find((l) => l.msg === 'echo handled' && l.traceId === 'body-trace-1');
    assert.ok(line, 'log line carries the trace id');
    assert.equal(line.service, 'platform-test');
  });

  test('malformed JSON is 400 INVALID_JSON', async () => {
    const { url } = await started;
    const r = await http(url, 'POST', '/echo', { raw: '{"name":', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'INVALID_JSON');
    assert.ok(r.body.traceId);
  });

  test('a 200 kB body is 413 PAYLOAD_TOO_LARGE', async () => {
    const { url } = await started;
    const r = await http(url, 'POST', '/echo', { raw: JSON.stringify({ name: 'x'.repeat(200_000) }), headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 413);
    assert.equal(r.body.code, 'PAYLOAD_TOO_LARGE');
  });

  test('a form-encoded body is 415 UNSUPPORTED_MEDIA_TYPE', async () => {
    const { url } = await started;
    const r = await http(url, 'POST', '/echo', { raw: 'name=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(r.status, 415);
    assert.equal(r.body.code, 'UNSUPPORTED_MEDIA_TYPE');
  });

  test('deeply nested JSON is 400, not a 500', async () => {
    const { url } = await started;
    const raw = '['.repeat(20_000) + ']'.repeat(20_000);
    const r = await http(url, 'POST', '/echo', { raw, headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'INVALID_JSON');
  });

  test('__proto__ and unknown keys are a 400 naming them', async () => {
    const { url } = await started;
    const r = await http(url, 'POST', '/echo', { raw: '{"name":"x","__proto__":{"admin":true}}', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 400);
    assert.equal(r.body.code, 'VALIDATION_ERROR');
    assert.match(JSON.stringify(r.body.details), /__proto__/);
  });

  test('ids like 1abc, 1.5, -1 and 99999999999999999999 are 400', async () => {
    const { url } = await started;
    for (const id of ['1abc', '1.5', '-1', '0', '99999999999999999999', 'abc']) {
      const r = await http(url, 'GET', `/things/${id}`);
      assert.equal(r.status, 400, id);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
    }
    assert.deepEqual((await http(url, 'GET', '/things/42')).body, { id: 42 });
  });

  test('a thrown bug is a generic 500 without stack or path', async () => {
    const { url } = await started;
    const r = await http(url, 'GET', '/boom');
    assert.equal(r.status, 500);
    assert.equal(r.body.code, 'INTERNAL_ERROR');
    assertNoLeak(r.text);
  });

  test('an HttpError keeps its status and code; unknown routes are JSON 404', async () => {
    const { url } = await started;
    assert.equal((await http(url, 'GET', '/teapot')).body.code, 'EMAIL_TAKEN');
    const r = await http(url, 'GET', '/nope');
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'NOT_FOUND');
  });

  test('/metrics serves Prometheus text', async () => {
    const { url } = await started;
    const r = await fetch(url + '/metrics');
    const text = await r.text();
    assert.match(r.headers.get('content-type') ?? '', /text\/plain/);
    assert.match(text, /http_requests_total\{[^}]*route="\/health"/);
    assert.match(text, /process_cpu_seconds_total/);
  });
});

describe('classifyUpstreamError', () => {
  test('when an error names a code, then the proxy\'s form and fetch\'s form (under cause) land in the same kind', () => {
    const cases: Array<[string, string]> = [
      ['ECONNREFUSED', 'refused'], ['ENOTFOUND', 'refused'], ['EHOSTUNREACH', 'refused'], ['ENETUNREACH', 'refused'],
      ['ETIMEDOUT', 'timeout'], ['UND_ERR_CONNECT_TIMEOUT', 'timeout'],
      ['ECONNRESET', 'reset'], ['EPIPE', 'reset'], ['UND_ERR_SOCKET', 'reset'],
      ['HPE_INVALID_CONSTANT', 'bad_response'], [RESPONSE_TOO_LARGE, 'bad_response'],
    ];
    for (const [code, kind] of cases) {
      assert.equal(classifyUpstreamError(Object.assign(new Error('x'), { code })), kind, code);
      assert.equal(classifyUpstreamError(new TypeError('fetch failed', { cause: Object.assign(new Error('x'), { code }) })), kind, `cause ${code}`);
    }
  });

  test('when our own deadline ended the call, then it is a timeout whatever the socket said', () => {
    assert.equal(classifyUpstreamError(Object.assign(new Error('x'), { code: 'ECONNRESET' }), true), 'timeout');
    assert.equal(classifyUpstreamError(new Error('no code')), 'reset');
  });
});

describe('listen', () => {
  test('when a server is made, then its header deadline is set and falls within its request deadline, so both can fire', async () => {
    const app = await startApp(createBaseApp());
    try {
      const { headersTimeout, requestTimeout } = app.server;
      assert.ok(headersTimeout > 0 && requestTimeout > 0, `${headersTimeout} / ${requestTimeout}`);
      assert.ok(headersTimeout <= requestTimeout, `headersTimeout ${headersTimeout} > requestTimeout ${requestTimeout}`);
    } finally {
      await app.close();
    }
  });
});
