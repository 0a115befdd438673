// The proxy's own streaming core (node:http through the keep-alive agent): what it passes on and
// what it drops, both ways, for bodies and headers a real service's JSON answers do not exercise.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { deadUrl, startGateway, type StartedGateway } from './gateway-helpers.js';

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A plain node:http service: echoes the body in chunks, with two cookies and hop-by-hop headers. */
async function startRawUpstream(): Promise<{ url: string; seen: Seen[]; close: () => Promise<void> }> {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (req.url !== '/health') seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      res.setHeader('Content-Type', 'text/plain');
      res.setHeader('Set-Cookie', ['a=1', 'b=2']);
      res.setHeader('Keep-Alive', 'timeout=5');
      res.setHeader('X-Span-Id', 'upstream-span');
      // No Content-Length: the answer is chunked, written in two parts.
      res.write(`echo:${body.slice(0, 5)}`);
      setImmediate(() => res.end(`|${body.length}`));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request on its own connection, the body sent in `parts` (chunked when more than one). */
function send(base: string, method: string, path: string, headers: Record<string, string>, parts: string[] = []): Promise<Answer> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, method, path, headers, agent: false, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    for (const p of parts) req.write(p);
    req.end();
  });
}

describe('proxy streaming core', () => {
  let upstream: Awaited<ReturnType<typeof startRawUpstream>>;
  let gw: StartedGateway;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  before(async () => {
    upstream = await startRawUpstream();
    dead = await deadUrl();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: dead.url, ORDERS_URL: dead.url });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await dead?.close();
  });

  test('when a chunked body is posted, then it streams through whole, and hop-by-hop request headers stay behind', async () => {
    const parts = ['x'.repeat(40_000), 'y'.repeat(40_000), 'z'];
    const res = await send(gw.url, 'POST', '/api/users/import?x=1', {
      'content-type': 'text/plain', 'transfer-encoding': 'chunked', te: 'trailers', 'proxy-connection': 'keep-alive', 'keep-alive': 'timeout=1', 'x-custom': 'kept',
    }, parts);
    assert.equal(res.status, 200);
    assert.equal(res.body, `echo:xxxxx|${80_001}`);
    const seen = upstream.seen.at(-1)!;
    assert.equal(seen.url, '/users/import?x=1');
    assert.equal(seen.body.length, 80_001);
    assert.equal(seen.headers['x-custom'], 'kept');
    assert.equal(seen.headers.host, new URL(upstream.url).host);
    for (const name of ['te', 'proxy-connection', 'keep-alive']) assert.equal(seen.headers[name], undefined, name);
    assert.notEqual(seen.headers.connection, 'close', 'the upstream connection is the agent\'s, not the client\'s');
  });

  test('when the service answers chunked with two cookies, then both arrive with the whole body and the gateway\'s own ids', async () => {
    const res = await send(gw.url, 'GET', '/api/users/7', {});
    assert.equal(res.status, 200);
    assert.equal(res.body, 'echo:|0');
    assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(res.headers['keep-alive'], undefined);
    assert.match(String(res.headers['x-span-id']), /^[0-9a-f]{16}$/);
    assert.match(String(res.headers['x-response-time']), /ms$/);
  });

  test('when DELETE or OPTIONS carries no body, then the service gets no body and no framing header', async () => {
    for (const method of ['DELETE', 'OPTIONS']) {
      const res = await send(gw.url, method, '/api/users/7', {});
      assert.equal(res.status, 200, method);
      const seen = upstream.seen.at(-1)!;
      assert.equal(seen.method, method);
      assert.equal(seen.headers['content-length'], undefined, method);
      assert.equal(seen.headers['transfer-encoding'], undefined, method);
      assert.equal(seen.body, '', method);
    }
  });
});
