// Clients that are slow on purpose: bodies that never finish, too many requests at once, and
// connections that pipeline without reading. Each is the client's problem, never the service's.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createGateway } from '../../lib/gateway/app.js';
import { GatewayConfigSchema } from '../../lib/gateway/config.js';
import { parseConfig } from '../../lib/platform/config.js';
import { closeServer, listen } from '../../lib/platform/server.js';
import { eventually, startGateway, type StartedGateway } from '../gateway-helpers.js';
import { http, memoryLogger } from '../helpers.js';
import { header, jsonOf, openRaw, statusOf, type RawConnection } from '../support/raw-client.js';

interface SeenRequest {
  url: string;
  /** The upstream connection it came on. */
  socket: Socket;
  /** Body bytes read so far. */
  bodyBytes: number;
}

/**
 * A service that answers at once without waiting for a body (as the real ones do for a GET), but
 * holds answers to paths under /products/hold until `release()`, and to a POST until its body ends.
 */
interface SlowTestUpstream {
  url: string;
  requests: SeenRequest[];
  /** Upstream connections the gateway has open now. */
  open: Set<Socket>;
  release(): void;
  close(): Promise<void>;
}

async function startUpstream(): Promise<SlowTestUpstream> {
  const requests: SeenRequest[] = [];
  const open = new Set<Socket>();
  let held: Array<() => void> = [];
  const answer = (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify({ url: req.url });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  const server: Server = createServer((req, res) => {
    if (req.url === '/health') return answer(req, res);
    const seen: SeenRequest = { url: req.url ?? '', socket: req.socket, bodyBytes: 0 };
    requests.push(seen);
    req.on('data', (c: Buffer) => (seen.bodyBytes += c.length));
    if (req.method === 'POST') req.once('end', () => answer(req, res));
    else if (seen.url.startsWith('/products/hold')) held.push(() => answer(req, res));
    else answer(req, res);
  });
  server.on('connection', (s: Socket) => {
    open.add(s);
    s.once('close', () => open.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    open,
    release: () => {
      const waiting = held;
      held = [];
      for (const r of waiting) r();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}

const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`;

describe('slow clients', () => {
  let upstream: SlowTestUpstream;
  let gw: StartedGateway;
  const conns: RawConnection[] = [];
  const connect = async () => {
    const c = await openRaw(gw.url);
    conns.push(c);
    return c;
  };

  before(async () => {
    upstream = await startUpstream();
    gw = await startGateway({
      USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url,
      RATE_LIMIT: '100000',
      CLIENT_BODY_TIMEOUT_MS: '200',
      CLIENT_BODY_TOTAL_MS: '600',
      MAX_CLIENT_IN_FLIGHT: '20',
    });
  });
  after(async () => {
    upstream?.release();
    await gw?.close();
    await upstream?.close();
  });
  afterEach(() => {
    for (const c of conns.splice(0)) c.close();
    upstream.release();
    upstream.requests.length = 0;
  });

  const productsCircuit = async () => (await http(gw.url, 'GET', '/health')).body.services.products;

  test('when a small body stops arriving, then the client gets 408 REQUEST_TIMEOUT with Connection: close, and the service never saw the request', async () => {
    const conn = await connect();
    conn.send('POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":');
    const answers = await conn.read(1);
    assert.equal(statusOf(answers.responses[0]), 408);
    assert.equal(jsonOf(answers.responses[0]).code, 'REQUEST_TIMEOUT');
    assert.equal(header(answers.responses[0], 'connection'), 'close');
    assert.equal((await conn.read(2)).closed, true, 'the client connection is closed');
    assert.equal(upstream.requests.length, 0, 'no connection to the service was taken while it trickled');
    assert.equal((await productsCircuit()).stats.failures, 0);
  });

  test('when a large body stops arriving, then the client gets 408 REQUEST_TIMEOUT with Connection: close, and the upstream connection that carried it is destroyed, not pooled', async () => {
    const conn = await connect();
    // Over 64 kB: streamed to the service as it arrives.
    conn.send('POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"name":');
    await eventually(() => upstream.requests.length === 1, 3_000, 'the request upstream');
    const carried = upstream.requests[0].socket;
    const answers = await conn.read(1);
    assert.equal(statusOf(answers.responses[0]), 408);
    assert.equal(jsonOf(answers.responses[0]).code, 'REQUEST_TIMEOUT');
    assert.equal(header(answers.responses[0], 'connection'), 'close');
    assert.equal((await conn.read(2)).closed, true, 'the client connection is closed');
    await eventually(() => carried.destroyed, 3_000, 'the upstream connection to close');
    // The next request goes out on another connection.
    assert.equal((await http(gw.url, 'GET', '/api/products/1')).status, 200);
    assert.notEqual(upstream.requests.at(-1)!.socket, carried);
    const products = await productsCircuit();
    assert.equal(products.circuitState, 'CLOSED');
    assert.equal(products.stats.failures, 0, 'the client was slow, not the service');
  });

  test('when a body trickles in fast enough between reads but not in all, then it is 408 at the total limit', async () => {
    const conn = await connect();
    conn.send('POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n');
    // A byte well within CLIENT_BODY_TIMEOUT_MS of the last, until the gateway answers.
    const trickle = setInterval(() => conn.send(' '), 50);
    try {
      const answers = await conn.read(1);
      assert.equal(statusOf(answers.responses[0]), 408);
      assert.equal(jsonOf(answers.responses[0]).code, 'REQUEST_TIMEOUT');
      assert.equal(upstream.requests.length, 0);
    } finally {
      clearInterval(trickle);
    }
    assert.equal((await productsCircuit()).stats.failures, 0);
  });

  test('when the service answers before the body has arrived, then the rest is not forwarded, the upstream connection is released, and the client connection closes after the answer', async () => {
    const conn = await connect();
    conn.send(`${get('/api/products/1', 'Content-Length: 1000000\r\n')}0123456789`);
    const answers = await conn.read(1);
    assert.equal(statusOf(answers.responses[0]), 200);
    assert.equal(header(answers.responses[0], 'connection'), 'close');
    assert.equal(upstream.requests.length, 1);
    const seen = upstream.requests[0];
    await eventually(() => seen.socket.destroyed, 3_000, 'the upstream connection to close');
    const forwarded = seen.bodyBytes;
    assert.ok(forwarded <= 10);
    conn.send('x'.repeat(5000));
    assert.equal((await conn.read(2)).closed, true, 'the client connection is closed after the answer');
    assert.equal(seen.bodyBytes, forwarded, 'nothing more was forwarded');
  });

  test('when a body keeps coming for longer than UPSTREAM_TIMEOUT_MS, then the service is given its time from the end of the body', async (t) => {
    const patient = await startGateway({ PRODUCTS_URL: upstream.url, RATE_LIMIT: '100000', UPSTREAM_TIMEOUT_MS: '300', CLIENT_BODY_TIMEOUT_MS: '250', CLIENT_BODY_TOTAL_MS: '5000' });
    t.after(() => patient.close());
    const conn = await openRaw(patient.url);
    conns.push(conn);
    // Over 64 kB, so streamed to the service as it arrives: twice the upstream timeout in all.
    const piece = 'x'.repeat(4 * 1024);
    conn.send(`POST /api/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${piece.length * 20}\r\n\r\n`);
    for (let i = 0; i < 20; i++) {
      conn.send(piece);
      await new Promise((r) => setTimeout(r, 30));
    }
    const answers = await conn.read(1);
    assert.equal(statusOf(answers.responses[0]), 200);
    const products = (await http(patient.url, 'GET', '/health')).body.services.products;
    assert.equal(products.stats.failures, 0);
  });

  test('when 20 connections each trickle a body the service does not wait for, then no upstream connection is held for them, bystanders are served and the circuit stays closed', async () => {
    const slow = await Promise.all(Array.from({ length: 20 }, () => connect()));
    for (const [i, c] of slow.entries()) c.send(get(`/api/products/${i + 1}`, 'Content-Length: 1000000\r\n') + 'x');
    const trickle = setInterval(() => {
      for (const c of slow) if (!c.socket.destroyed) c.send('x');
    }, 50);
    try {
      await eventually(() => upstream.requests.length === 20, 5_000, 'the 20 requests upstream');
      const attackSockets = upstream.requests.map((r) => r.socket);
      // Each upstream connection is let go as soon as its answer was read, while the clients
      // still hold theirs open and keep sending.
      await eventually(() => attackSockets.every((s) => s.destroyed), 5_000, 'the upstream connections to close');
      let served = 0;
      for (let i = 0; i < 10; i++) if ((await http(gw.url, 'GET', `/api/products/${100 + i}`)).status === 200) served++;
      assert.equal(served, 10);
      const products = await productsCircuit();
      assert.equal(products.circuitState, 'CLOSED');
      assert.equal(products.stats.failures, 0);
    } finally {
      clearInterval(trickle);
    }
  });

  test('when one client has MAX_CLIENT_IN_FLIGHT requests in the gateway, then its next is 429 TOO_MANY_IN_FLIGHT with Retry-After, and served again once they end', async () => {
    const held = await Promise.all(Array.from({ length: 20 }, () => connect()));
    held.forEach((c, i) => c.send(get(`/api/products/hold-${i}`)));
    await eventually(() => upstream.requests.length === 20, 3_000, 'twenty in flight');
    const over = await http(gw.url, 'GET', '/api/products/1');
    assert.equal(over.status, 429);
    assert.equal(over.body.code, 'TOO_MANY_IN_FLIGHT');
    assert.equal(over.headers.get('retry-after'), '1');
    assert.equal(over.body.retryAfter, 1);
    assert.equal(upstream.requests.length, 20, 'it never reached the service');
    // Refused while its body is still arriving, the connection is not kept for the rest of it.
    const trickling = await connect();
    trickling.send(get('/api/products/1', 'Content-Length: 1000000\r\n') + 'x');
    const refused = await trickling.read(2);
    assert.equal(statusOf(refused.responses[0]), 429);
    assert.equal(header(refused.responses[0], 'connection'), 'close');
    assert.equal(refused.closed, true);
    upstream.release();
    for (const c of held) assert.equal(statusOf((await c.read(1)).responses[0]), 200);
    assert.equal((await http(gw.url, 'GET', '/api/products/1')).status, 200);
  });

  test('when clients pipeline held requests and hang up, then their requests no longer count against MAX_CLIENT_IN_FLIGHT', async () => {
    // Pipelined answers that never got their socket emit no 'close' of their own.
    for (let round = 0; round < 3; round++) {
      const conn = await connect();
      conn.send(Array.from({ length: 8 }, (_, i) => get(`/api/products/hold-${round}-${i}`)).join(''));
      await eventually(() => upstream.requests.length === (round + 1) * 8, 3_000, 'held requests');
      conn.close();
    }
    upstream.release();
    // 24 were admitted against MAX_CLIENT_IN_FLIGHT=20: had their counts leaked, this would be a 429.
    await eventually(async () => (await http(gw.url, 'GET', '/api/products/1')).status === 200, 3_000, 'a 200');
  });

  test('when never-reading pipelining connections hold more than GATEWAY_MAX_BUFFERED_BYTES, then the heaviest is closed first, the others stay, and a bystander is served', async (t) => {
    // About 33 parsed requests at 3 kB each.
    const tight = await startGateway({ PRODUCTS_URL: upstream.url, RATE_LIMIT: '100000', GATEWAY_MAX_BUFFERED_BYTES: String(100 * 1024) });
    t.after(() => tight.close());
    const connect = async () => {
      const c = await openRaw(tight.url);
      conns.push(c);
      return c;
    };
    const pipeline = (n: number, tag: string) => Array.from({ length: n }, (_, i) => get(`/api/products/hold-${tag}-${i}`)).join('');
    const light = await connect();
    light.send(pipeline(10, 'light'));
    await eventually(() => upstream.requests.length === 8, 3_000, "the light connection's first requests");
    const heavy = await connect();
    heavy.send(pipeline(20, 'heavy'));
    await eventually(() => upstream.requests.length === 16, 3_000, "the heavy connection's first requests");
    // 30 parsed requests are within the bound; 15 more are not, and the heaviest must go.
    const middle = await connect();
    middle.send(pipeline(15, 'middle'));
    assert.equal((await heavy.read(1)).closed, true, 'the heaviest connection is closed');
    const bystander = await http(tight.url, 'GET', '/api/products/1');
    assert.equal(bystander.status, 200);
    assert.equal(light.socket.destroyed || middle.socket.destroyed, false, 'the lighter ones stay');
    upstream.release();
    // Each answer lets a waiting request through, which is held again: release until all came.
    const releasing = setInterval(() => upstream.release(), 10);
    try {
      const [l, m] = await Promise.all([light.read(10), middle.read(15)]);
      assert.equal(l.responses.length, 10);
      assert.equal(m.responses.length, 15);
      assert.ok([...l.responses, ...m.responses].every((r) => statusOf(r) === 200));
    } finally {
      clearInterval(releasing);
    }
  });

  test('when a connection floods pipelined requests past what may wait, then it is closed and the rest of what was read from it is not parsed', async (t) => {
    // The server itself, to count the requests Node's parser made of the bytes.
    const config = parseConfig(GatewayConfigSchema, { LOG_LEVEL: 'warn', PRODUCTS_URL: upstream.url, RATE_LIMIT: '100000' });
    const gateway = createGateway({ config, logger: memoryLogger('gateway', 'warn').logger, tracing: null });
    const { server, url } = await listen(gateway, 0, '127.0.0.1');
    t.after(async () => {
      await closeServer(server, 2_000);
      await gateway.close();
    });
    let parsed = 0;
    server.on('request', () => parsed++);
    const conn = await openRaw(url);
    conns.push(conn);
    // 2 000 requests, 80 kB: a single read holds over a thousand of them.
    conn.send(Array.from({ length: 2000 }, (_, i) => get(`/api/products/hold-flood-${i}`)).join(''));
    assert.equal((await conn.read(2000)).closed, true, 'the connection is closed');
    assert.ok(parsed < 200, `${parsed} requests were parsed`);
  });
});
