// The ServiceClient's transport at its edges, over real sockets: bounded answers, connections that
// break mid-answer, aborts, refused connects, bodies that are not JSON, and its keep-alive pool.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { ServiceClient, UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { ensureContextManager, runWithTrace, traceFromHeaders } from '../lib/platform/trace-context.js';
import { deadUrl } from './gateway-helpers.js';

interface Upstream {
  url: string;
  /** Every connection accepted, and whether it has closed. */
  sockets: Socket[];
  closed: Set<Socket>;
  /** Requests seen: method, path and headers. */
  seen: { method: string; url: string; headers: IncomingMessage['headers']; socket: Socket }[];
  server: Server;
}

async function startUpstream(handle: (req: IncomingMessage, res: ServerResponse, u: Upstream) => void): Promise<Upstream> {
  const server = createServer();
  const u: Upstream = { url: '', sockets: [], closed: new Set(), seen: [], server };
  server.on('connection', (socket: Socket) => {
    u.sockets.push(socket);
    socket.once('close', () => u.closed.add(socket));
  });
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    u.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, socket: req.socket });
    handle(req, res, u);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  u.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return u;
}

const closeUpstream = (u: Upstream | undefined) => new Promise<void>((resolve) => {
  if (!u) return resolve();
  u.server.closeAllConnections();
  u.server.close(() => resolve());
});

/** Resolves once `socket` has closed. */
const closedSoon = (u: Upstream, socket: Socket) => new Promise<void>((resolve) => {
  if (u.closed.has(socket)) resolve();
  else socket.once('close', () => resolve());
});

const failureOf = (kind: string, status?: number) => (err: unknown) => {
  assert.ok(err instanceof UpstreamUnavailableError, String(err));
  assert.equal(err.failure, kind);
  if (status !== undefined) assert.equal(err.upstreamStatus, status);
  return true;
};

describe('ServiceClient transport', () => {
  const clients: ServiceClient[] = [];
  const clientOf = (url: string, options: { timeoutMs?: number; maxResponseBytes?: number } = {}) => {
    const c = new ServiceClient({ name: 'svc', baseUrl: url, timeoutMs: options.timeoutMs ?? 5000, maxResponseBytes: options.maxResponseBytes });
    clients.push(c);
    return c;
  };
  let up: Upstream;
  // Held answers: the test releases (or never releases) them.
  const held: ServerResponse[] = [];
  before(async () => {
    up = await startUpstream((req, res) => {
      switch (req.url) {
        case '/json':
          return res.writeHead(200, { 'content-type': 'application/json', 'x-extra': 'a' }).end('{"ok":true}');
        case '/chunked':
          return res.end('x'.repeat(100_000));
        case '/declared':
          return res.writeHead(200, { 'content-length': '100000' }).end('x'.repeat(100_000));
        case '/cut':
          res.writeHead(200, { 'content-length': '100' }).write('x'.repeat(50));
          return setImmediate(() => req.socket.destroy());
        case '/half':
          res.writeHead(200, { 'content-length': '100' }).write('{"a":');
          return held.push(res);
        case '/text':
          return res.writeHead(200, { 'content-type': 'text/html' }).end('<html>oops</html>');
        case '/bad-gateway':
          return res.writeHead(502, { 'content-type': 'text/plain' }).end('Bad Gateway');
        case '/slow':
          return held.push(res);
        default:
          return res.writeHead(404).end();
      }
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    for (const res of held) res.destroy();
    await closeUpstream(up);
  });

  test('when called one after another, then the calls share one kept-alive connection and carry the trace and timeout headers', async () => {
    const client = clientOf(up.url);
    const from = up.seen.length;
    ensureContextManager();
    const trace = traceFromHeaders({ 'x-trace-id': 'a'.repeat(32) });
    for (let i = 0; i < 3; i++) {
      const res = await runWithTrace(trace, () => client.get<{ ok: boolean }>('/json', { headers: { authorization: 'Bearer t' } }));
      assert.equal(res.status, 200);
      assert.deepEqual(res.body, { ok: true });
      assert.equal(res.headers.get('Content-Type'), 'application/json');
      assert.equal(res.headers.has('x-extra'), true);
      assert.equal(res.headers.get('x-missing'), null);
    }
    const seen = up.seen.slice(from);
    assert.equal(new Set(seen.map((s) => s.socket)).size, 1);
    assert.equal(seen[0].headers.authorization, 'Bearer t');
    assert.match(String(seen[0].headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
    assert.equal(seen[0].headers['x-trace-id'], 'a'.repeat(32));
    assert.match(String(seen[0].headers['request-timeout']), /^\d+$/);
    assert.ok(Number(seen[0].headers['request-timeout']) <= 5000);
  });

  test('when the answer is larger than maxResponseBytes, declared or not, then it fails as a bad response and the connection is closed', async () => {
    const client = clientOf(up.url, { maxResponseBytes: 10_000 });
    for (const path of ['/chunked', '/declared']) {
      const from = up.seen.length;
      await assert.rejects(client.get(path), failureOf('bad_response'));
      await closedSoon(up, up.seen[from].socket);
    }
  });

  test('when the connection is reset mid-body, then it fails as a reset', async () => {
    await assert.rejects(clientOf(up.url).get('/cut'), failureOf('reset'));
  });

  test('when the caller aborts mid-body, then it rejects with the signal\'s reason and the connection is closed', async () => {
    const client = clientOf(up.url);
    const controller = new AbortController();
    const from = up.seen.length;
    const call = client.get('/half', { signal: controller.signal });
    while (held.length === 0 || up.seen.length === from) await new Promise((resolve) => setImmediate(resolve));
    controller.abort(new Error('given up'));
    await assert.rejects(call, /given up/);
    await closedSoon(up, up.seen[from].socket);
    const already = new AbortController();
    already.abort(new Error('before'));
    await assert.rejects(client.get('/json', { signal: already.signal }), /before/);
  });

  test('when no answer comes within timeoutMs, then it fails as a timeout and the connection is closed', async () => {
    const client = clientOf(up.url, { timeoutMs: 50 });
    const from = up.seen.length;
    await assert.rejects(client.get('/slow'), failureOf('timeout'));
    await closedSoon(up, up.seen[from].socket);
  });

  test('when nothing listens, then it fails as refused', async () => {
    const dead = await deadUrl();
    await dead.close();
    await assert.rejects(clientOf(dead.url).get('/json'), failureOf('refused'));
  });

  test('when the body is not JSON, then it fails as a bad response with the upstream\'s status', async () => {
    const client = clientOf(up.url);
    await assert.rejects(client.get('/text'), failureOf('bad_response', 200));
    await assert.rejects(client.get('/bad-gateway'), failureOf('bad_response', 502));
  });
});

describe('ServiceClient over a pooled connection the service closed', () => {
  let up: Upstream;
  const clients: ServiceClient[] = [];
  before(async () => {
    // Answers the first request of each connection; drops a connection's second request unanswered,
    // as a service does that closes an idle connection just as a request is sent on it.
    const served = new WeakSet<Socket>();
    up = await startUpstream((req, res) => {
      if (served.has(req.socket)) return req.socket.destroy();
      served.add(req.socket);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"n":1}');
    });
  });
  after(async () => {
    for (const c of clients) c.close();
    await closeUpstream(up);
  });

  test('when a GET is reset on a reused connection, then it goes again once on a fresh one; a POST without an Idempotency-Key does not', async () => {
    const client = new ServiceClient({ name: 'svc', baseUrl: up.url, timeoutMs: 5000 });
    clients.push(client);
    await client.get('/a');
    const from = up.seen.length;
    assert.deepEqual((await client.get('/b')).body, { n: 1 });
    assert.equal(up.seen.length - from, 2, 'sent twice: on the pooled connection, then on a new one');
    assert.notEqual(up.seen[from].socket, up.seen[from + 1].socket);
    const before = up.seen.length;
    await assert.rejects(client.post('/c', { x: 1 }), failureOf('reset'));
    assert.equal(up.seen.length - before, 1);
  });
});
