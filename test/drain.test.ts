// Graceful stops of real processes (SIGTERM): requests in flight are answered, keep-alive clients
// looping through the stop see no reset, and the process exits 0.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { connect } from 'node:net';
import { http, tempDir } from './helpers.js';
import { startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';
import { spawnService, type ChildService } from './process.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { startServices, type System } from './system.js';

interface LoopResult {
  answered: number;
  answeredAfterSignal: number;
  closeAnswers: number;
  /** Error codes of failed requests (the last, ECONNREFUSED, ends the loop). */
  errors: string[];
  /** Each error with how long after the client's previous answer its request was sent. */
  details: string[];
}

/** One keep-alive client sending GETs one after another until a request fails. */
function loopingClient(url: string, signalled: () => boolean): { result: LoopResult; done: Promise<LoopResult> } {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const result: LoopResult = { answered: 0, answeredAfterSignal: 0, closeAnswers: 0, errors: [], details: [] };
  let lastAnswerAt = Date.now();
  let sentAt = 0;
  const once = () =>
    new Promise<void>((resolve, reject) => {
      sentAt = Date.now();
      const req = request(url, { agent }, (res) => {
        res.resume();
        res.once('end', () => {
          result.answered++;
          if (signalled()) result.answeredAfterSignal++;
          if (res.headers.connection === 'close') result.closeAnswers++;
          lastAnswerAt = Date.now();
          resolve();
        });
        res.once('error', reject);
      });
      req.once('error', reject);
      req.end();
    });
  const done = (async () => {
    try {
      for (;;) await once();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      result.errors.push(code);
      result.details.push(`${code} (sent ${sentAt - lastAnswerAt} ms after its previous answer, ${result.answeredAfterSignal} answers after the signal)`);
    } finally {
      agent.destroy();
    }
    return result;
  })();
  return { result, done };
}

async function loopThroughStop(target: ChildService, url: string): Promise<LoopResult[]> {
  let signalled = false;
  const clients = Array.from({ length: 10 }, () => loopingClient(url, () => signalled));
  // Every client is looping on its own keep-alive connection before the signal: a connection
  // still waiting to be accepted when the listener closes is reset by the kernel, which no
  // drain can prevent.
  const giveUpAt = Date.now() + 10_000;
  while (clients.some((c) => c.result.answered === 0 && c.result.errors.length === 0) && Date.now() < giveUpAt) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50));
  signalled = true;
  assert.equal(await target.stop('SIGTERM'), 0, 'exits 0');
  return Promise.all(clients.map((c) => c.done));
}

describe('graceful stop of a service and of the gateway', () => {
  const data = tempDir('msvc-drain-');
  const children: ChildService[] = [];
  let upstream: FakeUpstream | undefined;
  const spawn = async (entry: string, env: Record<string, string> = {}) => {
    const child = await spawnService(entry, { DATA_DIR: data.dir, ...env });
    children.push(child);
    return child;
  };
  after(async () => {
    await Promise.all(children.map((c) => c.stop('SIGKILL')));
    await upstream?.stop();
    data.remove();
  });

  test('when 10 keep-alive clients loop through a service\'s SIGTERM, then none sees a reset', async () => {
    const products = await spawn('product-service.ts');
    const results = await loopThroughStop(products, `${products.url}/products/1`);
    const errors = results.flatMap((r) => r.errors);
    assert.deepEqual(errors.filter((e) => e !== 'ECONNREFUSED'), [], `errors: ${results.flatMap((r) => r.details).join('; ')}`);
    assert.ok(results.every((r) => r.answered > 0));
    // The answers after the signal told each client to let its connection go.
    assert.ok(results.some((r) => r.closeAnswers > 0));
  });

  test('when a request has begun to arrive at SIGTERM, then its connection is kept until it is answered (with Connection: close)', async () => {
    // A drain of 3.2 s sweeps every 80 ms; the request stays half-sent for several sweeps.
    const products = await spawn('product-service.ts', { STOP_TIMEOUT_MS: '4000' });
    const { port } = new URL(products.url);
    const socket = connect(Number(port), '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    let answer = '';
    socket.on('data', (c: Buffer) => (answer += c.toString()));
    const closed = new Promise((r) => socket.once('close', r));
    socket.write('GET /products/1 HTTP/1.1\r\nHost: x\r\n');
    await new Promise((r) => setTimeout(r, 100));
    const exited = products.stop('SIGTERM');
    await new Promise((r) => setTimeout(r, 400));
    socket.write('\r\n');
    await closed;
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.match(answer, /\r\nConnection: close\r\n/i);
    assert.equal(await exited, 0);
  });

  test('when 10 keep-alive clients loop through the gateway\'s SIGTERM, then none sees a reset', async () => {
    // The gateway process is under test; the service behind it can be a server in this process.
    upstream = await startFakeUpstream();
    const gateway = await spawn('gateway.ts', { PRODUCTS_URL: upstream.url, RATE_LIMIT: '1000000' });
    const results = await loopThroughStop(gateway, `${gateway.url}/api/products/1`);
    const errors = results.flatMap((r) => r.errors);
    assert.deepEqual(errors.filter((e) => e !== 'ECONNREFUSED'), [], `errors: ${results.flatMap((r) => r.details).join('; ')}`);
    assert.ok(results.every((r) => r.answered > 0));
  });
});

describe('graceful stop of the order service with orders in flight', () => {
  const data = tempDir('msvc-drain-orders-');
  let sys: System;
  let proxy: FaultProxy;
  let gw: StartedGateway;
  let orders: ChildService;
  let productId: number;
  before(async () => {
    // The order service process is under test; the user and product services run in this process
    // (with their demo rows; the in-process order service of `sys` is not used).
    sys = await startServices({ seed: true });
    const [users, products] = [sys.users, sys.products];
    // Each reserve waits here, so that every order is mid-workflow when the signal comes.
    proxy = await startFaultProxy(products.url, { kind: 'latency', ms: 300 });
    orders = await spawnService('order-service.ts', { DATA_DIR: data.dir, USERS_URL: users.url, PRODUCTS_URL: proxy.url, UPSTREAM_TIMEOUT_MS: '3000' });
    gw = await startGateway({ ORDERS_URL: orders.url, PRODUCTS_URL: products.url, USERS_URL: users.url, RATE_LIMIT: '1000000' });
    productId = (await http(products.url, 'POST', '/products', { body: { name: 'Drained', price: 1, stock: 1000, category: 'test' } })).body.id;
  });
  after(async () => {
    await gw?.close();
    await proxy?.close();
    await orders?.stop('SIGKILL');
    await sys?.stop();
    data.remove();
  });

  test('when the order service gets SIGTERM with 30 POST /api/orders in flight, then all 30 are answered and none is reset', async () => {
    const posts = Array.from({ length: 30 }, () =>
      http(gw.url, 'POST', '/api/orders', { body: { userId: 1, items: [{ productId, quantity: 1 }] } }).then(
        (r) => String(r.status),
        (err: Error) => `error ${(err.cause as NodeJS.ErrnoException | undefined)?.code ?? err.message}`,
      ),
    );
    const deadline = Date.now() + 10_000;
    while (proxy.requestsSeen < 30 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(proxy.requestsSeen, 30, 'every order is reserving its stock');
    const exited = orders.stop('SIGTERM');
    const statuses = await Promise.all(posts);
    assert.equal(await exited, 0);
    assert.deepEqual(statuses, Array(30).fill('201'));
  });
});

describe('a stop that cannot drain', () => {
  const data = tempDir('msvc-drain-stuck-');
  let proxy: FaultProxy;
  let orders: ChildService | undefined;
  after(async () => {
    await orders?.stop('SIGKILL');
    await proxy?.close();
    data.remove();
  });

  test('when a request never ends, then the process still exits within STOP_TIMEOUT_MS', async () => {
    proxy = await startFaultProxy('', { kind: 'blackhole' });
    orders = await spawnService('order-service.ts', { DATA_DIR: data.dir, USERS_URL: proxy.url, PRODUCTS_URL: proxy.url, UPSTREAM_TIMEOUT_MS: '60000', STOP_TIMEOUT_MS: '800' });
    const stuck = http(orders.url, 'POST', '/orders', { body: { userId: 1, items: [{ productId: 1, quantity: 1 }] } }).catch(() => 'cut');
    while (proxy.accepted === 0) await new Promise((r) => setTimeout(r, 5));
    const started = Date.now();
    await orders.stop('SIGTERM');
    assert.ok(Date.now() - started < 2_000, `exited after ${Date.now() - started} ms`);
    await stuck;
  });
});

