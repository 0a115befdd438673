// Whatever a client sends is never a server fault: generated hostile requests (methods, content
// types, encodings, charsets, bodies, headers, paths) at each service and at the gateway get a
// 4xx in the contract's shape or a success, never a 5xx, and the processes go on.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { startServices, type System } from '../system.js';
import { circuitState, startGatewayFor, type StartedGateway } from '../gateway-helpers.js';

interface Hostile {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

function send(base: string, r: Hostile): Promise<Answer> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, method: r.method, path: r.path, headers: r.headers, agent: false, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.once('error', reject);
    });
    req.once('timeout', () => req.destroy(new Error('timed out')));
    req.once('error', reject);
    req.end(r.body);
  });
}

// The gateway's own routes too (not /debug: switching circuits by hand is what it is for).
const PATHS = ['/', '/metrics', '/api/dashboard', '/api/users/1/full', '/users', '/users/1', '/users/abc', '/products', '/products/1', '/products/1/stock', '/orders', '/orders/1', '/orders/1/status',
  '/internal/reservations', '/internal/reservations/x', '/stats', '/health', '/spans', '/traces', '/traces/abc', '/nowhere'];
const SUFFIXES = ['', '/', '/%', '/%E0%A4%A', '/%00', '/%2e%2e', '/..%2f', '//', '/1.5', '/-1', '/99999999999999999999', '/%ZZ', '/%C0%AF', '/caf%C3%A9'];
const QUERIES = ['', '?', '?limit=abc', '?limit=5&limit=6', '?page=0', '?%=%', '?a[b]=c', '?limit=%FF', '?role=admin&role=user', '?search=%00', '?traceId=..'];
const CONTENT_TYPES = [undefined, 'application/json', 'application/json; charset=utf-8', 'application/json; charset=utf-16', 'application/json; charset=utf-16le',
  'application/json; charset=latin1', 'application/json; charset=foo', 'application/json; charset="', 'application/json;;;', 'text/plain',
  'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/vnd.x+json', '*/*', 'application/', 'json'];
const ENCODINGS = [undefined, 'identity', 'gzip', 'deflate', 'br', 'zstd', 'gzip, gzip', 'x-unknown', 'GZIP', 'identity, gzip'];

const jsonBody = fc.oneof(
  fc.jsonValue().map((v) => JSON.stringify(v)),
  fc.record({ name: fc.string(), email: fc.string(), price: fc.oneof(fc.double(), fc.integer()), stock: fc.integer(), userId: fc.integer(), role: fc.string() }, { requiredKeys: [] })
    .map((v) => JSON.stringify(v)),
  fc.integer({ min: 1, max: 2000 }).map((n) => '['.repeat(n) + ']'.repeat(n)),
  fc.string(),
);
const body = fc.oneof(
  jsonBody.map((s) => Buffer.from(s)),
  jsonBody.map((s) => gzipSync(s)),
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  fc.constant(Buffer.from([0xff, 0xfe, 0x00, 0x7b])),
);
const token = fc.stringMatching(/^[!-~]{0,40}$/);

const hostile = (prefix: string): fc.Arbitrary<Hostile> =>
  fc.record({
    method: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'PROPFIND', 'TRACE'),
    path: fc.tuple(fc.constantFrom(...PATHS), fc.constantFrom(...SUFFIXES), fc.constantFrom(...QUERIES)).map(([p, s, q]) => `${prefix}${p}${s}${q}`),
    contentType: fc.constantFrom(...CONTENT_TYPES),
    encoding: fc.constantFrom(...ENCODINGS),
    body: fc.option(body, { nil: undefined }),
    extra: fc.dictionary(fc.constantFrom('x-trace-id', 'traceparent', 'idempotency-key', 'accept', 'authorization', 'x-forwarded-for', 'cookie', 'if-none-match', 'range', 'expect-ct', 'connection'), token, { maxKeys: 4 }),
  }).map(({ method, path, contentType, encoding, body: b, extra }) => {
    const headers: Record<string, string> = { ...extra };
    // The client would refuse to send a Connection header naming close/upgrade oddly: keep it a token list.
    if (headers.connection !== undefined) headers.connection = 'keep-alive, x-foo';
    if (contentType !== undefined) headers['content-type'] = contentType;
    if (encoding !== undefined) headers['content-encoding'] = encoding;
    // Node's client frames a GET/DELETE body by nothing unless told its length (the extra bytes
    // would then be a malformed next request, refused by the parser; the raw-socket suite covers that).
    if (b !== undefined) headers['content-length'] = String(b.length);
    return { method, path, headers, ...(b === undefined ? {} : { body: b }) };
  });

function assertContract(r: Hostile, a: Answer): void {
  const what = `${r.method} ${r.path} ${JSON.stringify(r.headers)} -> ${a.status} ${a.text.slice(0, 200)}`;
  assert.ok(a.status < 500, what);
  if (a.status >= 400 && r.method !== 'HEAD') {
    const parsed = JSON.parse(a.text) as Record<string, unknown>;
    assert.equal(typeof parsed.error, 'string', what);
    assert.match(String(parsed.code), /^[A-Z_]+$/, what);
    assert.equal(typeof parsed.traceId, 'string', what);
    assert.ok(!/\bat [\w.<>]+ \(|node_modules|\/work\//.test(a.text), `leaks internals: ${what}`);
  }
}

describe('hostile requests', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices();
    gw = await startGatewayFor(sys, { RATE_LIMIT: '1000000' });
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });

  const targets = [
    ['the users service', 'users', ''], ['the products service', 'products', ''], ['the orders service', 'orders', ''],
    ['the services through the gateway', 'gateway', '/api'], ['the gateway\'s own routes', 'gateway', ''],
  ] as const;
  for (const [what, target, prefix] of targets) {
    test(`when generated hostile requests reach ${what}, then none is answered 5xx and every error has the contract's shape`, async () => {
      const base = target === 'gateway' ? gw.url : sys[target].url;
      await fc.assert(fc.asyncProperty(hostile(prefix), async (r) => assertContract(r, await send(base, r))), { numRuns: 80 });
    });
  }

  test('when 20 POSTs carry a body that claims gzip but is not, then each is a 415 and every circuit stays CLOSED', async () => {
    for (let i = 0; i < 20; i++) {
      const service = (['users', 'products', 'orders'] as const)[i % 3];
      const a = await send(gw.url, { method: 'POST', path: `/api/${service}`, headers: { 'content-type': 'application/json', 'content-encoding': ['gzip', 'deflate', 'br'][i % 3] }, body: Buffer.from('{"not":"compressed"}') });
      assert.equal(a.status, 415, a.text);
      assert.equal((JSON.parse(a.text) as { code: string }).code, 'UNSUPPORTED_ENCODING');
    }
    for (const service of ['users', 'products', 'orders']) assert.equal(await circuitState(gw.url, service), 'CLOSED', service);
    for (const service of ['users', 'products', 'orders'] as const) {
      assert.deepEqual(sys[service].logs().filter((l) => (l.level as number) >= 50), [], `${service} logged no error`);
    }
  });
});
