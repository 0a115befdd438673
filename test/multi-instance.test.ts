import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createGateway } from '../lib/gateway/app.js';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { OrderConfigSchema } from '../lib/orders/config.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import { buildOrderService } from '../lib/orders/service.js';
import { parseConfig } from '../lib/platform/config.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { closeServer, listen } from '../lib/platform/server.js';
import { http, memoryLogger, startApp, tempDir, type Started } from './helpers.js';
import { circuitState, deadUrl, eventually, startGateway, type StartedGateway } from './gateway-helpers.js';
import { spawnService, type ChildService } from './process.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';

interface InstanceHealth {
  url: string;
  state: 'up' | 'ejected';
  outstanding: number;
  consecutiveFailures: number;
}

const ADMIN_TOKEN = 'multi-instance-admin-token-0123';
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** A port free now, for a gateway that others must name before it starts. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** startGateway, on a given port. */
async function startGatewayOn(port: number, env: Record<string, string>): Promise<StartedGateway> {
  const config = parseConfig(GatewayConfigSchema, { LOG_LEVEL: 'warn', ...env });
  const { logger, lines } = memoryLogger('gateway', config.LOG_LEVEL);
  const metrics = createMetrics('gateway');
  const gateway = createGateway({ config, logger, metrics });
  const listening = await listen(gateway, port, '127.0.0.1');
  return { url: listening.url, gateway, metrics, logs: lines, close: async () => {
    await closeServer(listening.server, 2_000);
    await gateway.close();
  } };
}

async function instancesOf(gw: StartedGateway, service: string): Promise<InstanceHealth[]> {
  const r = await http(gw.url, 'GET', '/health', { headers: admin });
  return r.body.services[service].instances as InstanceHealth[];
}

/** Requests the gateway sent to each instance of products, from its metrics. */
async function sentTo(gw: StartedGateway, url: string): Promise<number> {
  const text = (await http(gw.url, 'GET', '/metrics', { headers: admin })).text;
  const escaped = url.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  return Number(new RegExp(`gateway_upstream_requests_total\\{service="products",instance="${escaped}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
}

/** `clients` loops of GET `path` until `stop()` resolves; resolves with every status and error seen. */
async function loopClients(base: string, path: string, clients: number, during: () => Promise<void>): Promise<{ ok: number; failed: string[] }> {
  let running = true;
  const failed: string[] = [];
  let ok = 0;
  const loops = Array.from({ length: clients }, async () => {
    while (running) {
      try {
        const r = await http(base, 'GET', path, { timeoutMs: 5_000 });
        if (r.status === 200) ok++;
        else failed.push(`${r.status} ${r.text.slice(0, 120)}`);
      } catch (err) {
        failed.push(String(err));
      }
    }
  });
  try {
    await during();
  } finally {
    running = false;
    await Promise.all(loops);
  }
  return { ok, failed };
}

describe('instance lists in the configuration', () => {
  test('when a URL list is given, then it is kept in order, trimmed, without trailing slashes', () => {
    const c = parseConfig(GatewayConfigSchema, { PRODUCTS_URL: ' http://127.0.0.1:4001/ , http://127.0.0.1:4002' });
    assert.equal(c.PRODUCTS_URL, 'http://127.0.0.1:4001,http://127.0.0.1:4002');
    assert.equal(c.GATEWAY_PEERS, '');
    assert.equal(parseConfig(OrderConfigSchema, { USERS_URL: 'http://a:1,http://b:2' }).USERS_URL, 'http://a:1,http://b:2');
  });

  test('when the list repeats a URL, names garbage or is too long, then one line names the variable', () => {
    assert.throws(() => parseConfig(GatewayConfigSchema, { PRODUCTS_URL: 'http://127.0.0.1:4001,http://127.0.0.1:4001/' }), /^Error: PRODUCTS_URL: entry 2 repeats an earlier URL/);
    assert.throws(() => parseConfig(GatewayConfigSchema, { USERS_URL: 'http://127.0.0.1:4001,not a url' }), /^Error: USERS_URL: entry 2 must be an http\(s\) URL/);
    assert.throws(() => parseConfig(GatewayConfigSchema, { ORDERS_URL: ',' }), /^Error: ORDERS_URL: must be an http\(s\) URL/);
    const seventeen = Array.from({ length: 17 }, (_, i) => `http://127.0.0.1:${4000 + i}`).join(',');
    assert.throws(() => parseConfig(GatewayConfigSchema, { PRODUCTS_URL: seventeen }), /^Error: PRODUCTS_URL: must list at most 16 URLs/);
    assert.throws(() => parseConfig(GatewayConfigSchema, { GATEWAY_PEERS: 'ftp://x' }), /^Error: GATEWAY_PEERS: /);
    assert.throws(() => parseConfig(OrderConfigSchema, { PRODUCTS_URL: 'http://a:1,http://a:1' }), /^Error: PRODUCTS_URL: entry 2 repeats/);
    // Credentials would show in /health, metric labels and logs.
    assert.throws(() => parseConfig(GatewayConfigSchema, { ORDERS_URL: 'http://127.0.0.1:4001,http://svc:s3cret@127.0.0.1:4002' }),
      (err: Error) => /^ORDERS_URL: entry 2 must not hold a user name or password/.test(err.message) && !err.message.includes('s3cret'));
  });
});

describe('a gateway in front of two product-service processes', () => {
  const dirs = [tempDir('msvc-multi-a-'), tempDir('msvc-multi-b-')];
  const children: (ChildService | undefined)[] = [];
  const urls: string[] = [];
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  let gw: StartedGateway;
  let peer: StartedGateway;

  const startInstance = async (i: number, port = '0') => {
    children[i] = await spawnService('product-service.ts', { DATA_DIR: dirs[i].dir, SEED_DATA: 'true', PORT: port });
    urls[i] = children[i].url;
  };

  before(async () => {
    await Promise.all([startInstance(0), startInstance(1)]);
    dead = await deadUrl();
    const env = {
      PRODUCTS_URL: urls.join(','),
      USERS_URL: dead.url,
      ORDERS_URL: dead.url,
      ADMIN_TOKEN,
      RATE_LIMIT: '1000000',
      OUTLIER_CONSECUTIVE_FAILURES: '2',
      OUTLIER_EJECTION_MS: '50',
      OUTLIER_MAX_EJECTION_MS: '200',
      CB_RESET_TIMEOUT_MS: '60000',
      CB_PROBE_INTERVAL_MS: '0',
      CB_SLOW_START_MS: '0',
      HEALTH_PROBE_TIMEOUT_MS: '300',
    };
    // Two gateways, each the other's peer.
    const peerPort = await freePort();
    gw = await startGateway({ ...env, GATEWAY_PEERS: `http://127.0.0.1:${peerPort}` });
    peer = await startGatewayOn(peerPort, { ...env, GATEWAY_PEERS: gw.url });
  });
  after(async () => {
    await peer?.close();
    await gw?.close();
    for (const c of children) await c?.stop('SIGKILL');
    await dead?.close();
    for (const d of dirs) d.remove();
  });

  test('when requests come in, then both instances take some, and /health and GET / list both', async () => {
    // The balancer weighs instances by latency: an instance whose first answers were slow (a cold
    // process on a busy machine) gets a small share until its average comes down, within a second
    // or two. So requests go on, twenty at a time, until both have taken some (at most 3 s).
    let sent = 0;
    let a: number;
    let b: number;
    const until = Date.now() + 3_000;
    do {
      for (let i = 0; i < 20; i++, sent++) assert.equal((await http(gw.url, 'GET', '/api/products/1')).status, 200);
      [a, b] = [await sentTo(gw, urls[0]), await sentTo(gw, urls[1])];
    } while (!(a > 5 && b > 5) && Date.now() < until);
    assert.ok(a > 5 && b > 5 && a + b >= sent, `split ${a}/${b} of ${sent}`);
    const instances = await instancesOf(gw, 'products');
    assert.deepEqual(instances.map((i) => [i.url, i.state, i.outstanding, i.consecutiveFailures]), [[urls[0], 'up', 0, 0], [urls[1], 'up', 0, 0]]);
    const root = await http(gw.url, 'GET', '/', { headers: admin });
    assert.deepEqual(root.body.services[1].instances, urls);
    assert.match((await http(gw.url, 'GET', '/metrics', { headers: admin })).text, /gateway_upstream_instance_up\{service="products",instance="[^"]+"\} 1/);
  });

  test('when the spans of one trace are on both instances and both gateways, then /traces/:id on either gateway shows all of them', async () => {
    const traceId = `multi-trace-${Date.now()}`;
    const ownSpans = async (base: string) => (await http(base, 'GET', `/spans?traceId=${traceId}`, { headers: admin })).body.spans as { spanId: string }[];
    // Until each instance has served part of the trace (the balancer picks at random among equals).
    for (let i = 0; i < 200; i++) {
      assert.equal((await http(i % 2 ? peer.url : gw.url, 'GET', '/api/products/1', { headers: { 'x-trace-id': traceId } })).status, 200);
      if (i >= 3 && (await ownSpans(urls[0])).length > 0 && (await ownSpans(urls[1])).length > 0) break;
    }
    const expected = new Set<string>();
    for (const base of [gw.url, peer.url, ...urls]) for (const s of await ownSpans(base)) expected.add(s.spanId);
    assert.ok((await ownSpans(urls[0])).length > 0 && (await ownSpans(urls[1])).length > 0, 'both instances served the trace');
    for (const base of [gw.url, peer.url]) {
      const r = await http(base, 'GET', `/traces/${traceId}`, { headers: admin });
      assert.equal(r.status, 200);
      assert.deepEqual(new Set(r.body.spans.map((s: { spanId: string }) => s.spanId)), expected, base);
      assert.equal(r.body.spans.length, expected.size, 'no span twice');
      assert.equal(r.body.meta.complete, false, 'users and orders are down');
      assert.ok(!r.body.meta.unavailable.some((u: string) => u.startsWith('gateway') || u.startsWith('products')), r.body.meta.unavailable.join());
    }
    const list = await http(peer.url, 'GET', '/traces?limit=100', { headers: admin });
    const summary = list.body.traces.find((t: { traceId: string }) => t.traceId === traceId);
    assert.equal(summary?.spanCount, expected.size);
  });

  test('when a peer gateway is down, then /traces still answers and names it unavailable', async () => {
    const lonely = await startGateway({ PRODUCTS_URL: urls.join(','), USERS_URL: dead.url, ORDERS_URL: dead.url, ADMIN_TOKEN, GATEWAY_PEERS: dead.url, HEALTH_PROBE_TIMEOUT_MS: '300' });
    try {
      const r = await http(lonely.url, 'GET', '/traces', { headers: admin });
      assert.equal(r.status, 200);
      assert.ok(r.body.meta.unavailable.includes(`gateway@${new URL(dead.url).host}`), r.body.meta.unavailable.join());
    } finally {
      await lonely.close();
    }
  });

  test('when one instance is killed (-9) under 20 looping clients, then no GET fails, it is ejected, the circuit stays closed, and it is probed back in when it returns', async () => {
    // Enough calls first that the retry budget is full, as on a service in use.
    await Promise.all(Array.from({ length: 10 }, async () => {
      for (let i = 0; i < 15; i++) await http(gw.url, 'GET', '/api/products/1');
    }));
    const victimUrl = urls[1];
    const port = new URL(victimUrl).port;
    const result = await loopClients(gw.url, '/api/products/1', 20, async () => {
      await eventually(async () => (await sentTo(gw, victimUrl)) > 0);
      await children[1]!.stop('SIGKILL');
      await eventually(async () => (await instancesOf(gw, 'products'))[1].state === 'ejected', 5_000, 'ejection');
      // Keep the clients going a little while it is out.
      const served = await sentTo(gw, urls[0]);
      await eventually(async () => (await sentTo(gw, urls[0])) > served + 100, 5_000, 'traffic to the survivor');
    });
    assert.deepEqual(result.failed, [], `${result.failed.length} failed of ${result.ok + result.failed.length}`);
    assert.ok(result.ok > 100);
    assert.equal(await circuitState(gw.url, 'products', admin), 'CLOSED');
    const health = await http(gw.url, 'GET', '/health', { headers: admin });
    assert.equal(health.body.status, 'degraded');
    assert.equal(health.body.services.products.instances[1].state, 'ejected');
    assert.match((await http(gw.url, 'GET', '/metrics', { headers: admin })).text, /gateway_upstream_instance_up\{service="products",instance="[^"]+"\} 0/);
    // Ejection took two failures in a row on the killed instance, and no client saw them: each went again to the other.
    const retries = Number(/gateway_upstream_retries_total\{service="products"\} (\d+)/.exec((await http(gw.url, 'GET', '/metrics', { headers: admin })).text)?.[1]);
    assert.ok(retries >= 2, `retries: ${retries}`);

    await startInstance(1, port);
    await eventually(async () => (await instancesOf(gw, 'products'))[1].state === 'up', 5_000, 'probed back in');
    const before = await sentTo(gw, victimUrl);
    await eventually(async () => {
      await http(gw.url, 'GET', '/api/products/1');
      return (await sentTo(gw, victimUrl)) > before;
    }, 5_000, 'traffic to the returned instance');
  });

  test('when every instance is down, then the circuit opens and the gateway answers 503 as with one', async () => {
    for (const c of children) await c?.stop('SIGKILL');
    let n = 0;
    await eventually(async () => {
      // A path never asked before, so the stale cache has no answer for it.
      const r = await http(gw.url, 'GET', `/api/products/1?fresh=${n++}`);
      return r.status === 503 && r.body.code === 'SERVICE_UNAVAILABLE' && r.headers.get('retry-after') !== null;
    }, 5_000, '503 with an open circuit');
    assert.equal(await circuitState(gw.url, 'products', admin), 'OPEN');
    assert.ok((await instancesOf(gw, 'products')).every((i) => i.state === 'ejected'));
  });
});

describe('the order service with two product-service URLs, one of them dead', () => {
  let sys: System;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  let orders: Started;
  let stopOrders: () => Promise<void>;
  const data = tempDir('msvc-multi-orders-');

  before(async () => {
    sys = await startServices();
    dead = await deadUrl();
    // The dead instance is never ejected here: every call that picks it must go to the other.
    const config = parseConfig(OrderConfigSchema, {
      USERS_URL: `${dead.url},${sys.users.url}`,
      PRODUCTS_URL: `${dead.url},${sys.products.url}`,
      OUTLIER_CONSECUTIVE_FAILURES: '1000',
      RELEASE_RETRY_MS: '3600000',
      DATA_DIR: data.dir,
    });
    const db = await openOrderDatabase({ dataDir: data.dir, seed: false });
    const built = buildOrderService({ logger: memoryLogger('order-service', 'warn').logger, db, metrics: createMetrics('order-service') }, config);
    orders = await startApp(built.app);
    stopOrders = async () => {
      await orders.close();
      await built.close();
      await db.close();
    };
  });
  after(async () => {
    await stopOrders?.();
    await sys?.stop();
    await dead?.close();
    data.remove();
  });

  test('when 10 orders are placed, then all are created and the stock is taken once each', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 100 });
    for (let i = 0; i < 10; i++) {
      const r = await http(orders.url, 'POST', '/orders', { body: { userId, items: [{ productId, quantity: 2 }] } });
      assert.equal(r.status, 201, r.text);
    }
    assert.equal(await stockOf(sys, productId), 80);
  });
});
