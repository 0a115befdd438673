import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { SharedAnswers } from '../lib/gateway/dashboard/shared-answers.js';
import { deadUrl, startGateway, type StartedGateway } from './gateway-helpers.js';
import { http } from './helpers.js';

const STATS = {
  users: { service: 'user-service', totalUsers: 3, adminUsers: 1, regularUsers: 2 },
  products: { service: 'product-service', totalProducts: 2, categories: 1, categoryList: ['a'], totalInventoryValue: 10, lowStockProducts: 0 },
  orders: { service: 'order-service', totalOrders: 1, statusBreakdown: { pending: 1, confirmed: 0, shipped: 0, delivered: 0, cancelled: 0 }, totalRevenue: 5, averageOrderValue: 5 },
};

interface StatsUpstream {
  url: string;
  /** Requests to /stats (and their Authorization), in arrival order. */
  stats: (string | undefined)[];
  /** Connections that carried a request other than GET /health. */
  busySockets: Set<Socket>;
  /** The next this many /stats answers are 500. */
  failNext: number;
  /** /stats waits for this before answering, when set. */
  gate?: Promise<void>;
  close(): Promise<void>;
}

/** A service that answers /stats with `body`, and any other path with `{}`. */
async function startStatsUpstream(body: object): Promise<StatsUpstream> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((req, res) => {
    if (req.url !== '/health') up.busySockets.add(req.socket);
    const answer = (status: number, value: object) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    if (req.url !== '/stats') return answer(200, {});
    up.stats.push(req.headers.authorization);
    const reply = () => (up.failNext-- > 0 ? answer(500, { error: 'down', code: 'INTERNAL_ERROR' }) : answer(200, body));
    if (up.gate) void up.gate.then(reply);
    else reply();
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const up: StatsUpstream = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stats: [],
    busySockets: new Set(),
    failNext: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return up;
}

describe('shared answers', () => {
  let clock = 0;
  const now = () => clock;
  beforeEach(() => {
    clock = 1_000;
  });

  test('when callers ask while an answer is on its way, then they share it; within ttlMs of its arrival they get it again; after, it is asked again', async () => {
    const shared = new SharedAnswers<number>({ ttlMs: 100, maxEntries: 10, now });
    let loads = 0;
    const load = () => Promise.resolve(++loads);
    const [a, b] = await Promise.all([shared.get('k', load), shared.get('k', load)]);
    assert.deepEqual([a, b, loads], [1, 1, 1]);
    clock += 99;
    assert.equal(await shared.get('k', load), 1);
    clock += 1;
    assert.equal(await shared.get('k', load), 2);
    assert.equal(await shared.get('other', load), 3, 'another key has its own answer');
  });

  test('when the answer fails, then the callers that waited get the failure and the next caller asks again', async () => {
    const shared = new SharedAnswers<string>({ ttlMs: 60_000, maxEntries: 10, now });
    let loads = 0;
    const failing = () => {
      loads++;
      return Promise.reject(new Error('down'));
    };
    const waits = [shared.get('k', failing), shared.get('k', failing)];
    for (const w of waits) await assert.rejects(w, /down/);
    assert.equal(loads, 1);
    assert.equal(await shared.get('k', () => Promise.resolve('up')), 'up');
  });

  test('when ttlMs is 0, then every caller loads its own; the keys kept never exceed maxEntries', async () => {
    const off = new SharedAnswers<number>({ ttlMs: 0, maxEntries: 10, now });
    let loads = 0;
    const load = () => Promise.resolve(++loads);
    await Promise.all([off.get('k', load), off.get('k', load)]);
    assert.equal(loads, 2);
    const bounded = new SharedAnswers<number>({ ttlMs: 1000, maxEntries: 3, now });
    for (let i = 0; i < 20; i++) await bounded.get(`caller ${i}`, load);
    assert.equal(bounded.size, 3);
  });
});

describe('GET /api/dashboard shares each service\'s /stats', () => {
  const ups = {} as Record<keyof typeof STATS, StatsUpstream>;
  const gateways: StartedGateway[] = [];
  const start = async (env: Record<string, string>) => {
    const gw = await startGateway({ USERS_URL: ups.users.url, PRODUCTS_URL: ups.products.url, ORDERS_URL: ups.orders.url, ...env });
    gateways.push(gw);
    return gw;
  };
  const asked = () => Object.values(ups).map((u) => u.stats.length);
  before(async () => {
    for (const [name, body] of Object.entries(STATS)) ups[name as keyof typeof STATS] = await startStatsUpstream(body);
  });
  beforeEach(() => {
    for (const u of Object.values(ups)) {
      u.stats.length = 0;
      u.busySockets.clear();
      u.failNext = 0;
    }
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    for (const u of Object.values(ups)) await u?.close();
  });

  test('when ten dashboards are asked at once and then again within STATS_TTL_MS, then each service is asked once, and every answer has its stats', async () => {
    const gw = await start({ STATS_TTL_MS: '60000' });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    for (const u of Object.values(ups)) u.gate = gate;
    try {
      const answers = Array.from({ length: 10 }, () => http(gw.url, 'GET', '/api/dashboard'));
      // Every /stats call is on its way before any answer comes back.
      while (asked().some((n) => n === 0)) await new Promise((resolve) => setImmediate(resolve));
      release();
      for (const r of await Promise.all(answers)) {
        assert.equal(r.status, 200);
        assert.deepEqual(r.body.services, STATS);
        assert.deepEqual(r.body.meta, { complete: true, unavailable: [] });
      }
    } finally {
      for (const u of Object.values(ups)) u.gate = undefined;
    }
    assert.equal((await http(gw.url, 'GET', '/api/dashboard')).status, 200);
    assert.deepEqual(asked(), [1, 1, 1]);
  });

  test('when another Authorization asks, then its own /stats are asked, with its token', async () => {
    const gw = await start({ STATS_TTL_MS: '60000' });
    assert.equal((await http(gw.url, 'GET', '/api/dashboard')).status, 200);
    const other = await http(gw.url, 'GET', '/api/dashboard', { headers: { authorization: 'Bearer another-caller' } });
    assert.equal(other.status, 200);
    assert.deepEqual(asked(), [2, 2, 2]);
    assert.deepEqual(ups.users.stats, [undefined, 'Bearer another-caller']);
  });

  test('when a /stats call fails, then that dashboard shows the service unavailable and the next one asks again', async () => {
    const gw = await start({ STATS_TTL_MS: '60000' });
    ups.orders.failNext = 1;
    const first = await http(gw.url, 'GET', '/api/dashboard');
    assert.deepEqual(first.body.services.orders, { status: 'unavailable', circuitState: 'CLOSED' });
    const second = await http(gw.url, 'GET', '/api/dashboard');
    assert.deepEqual(second.body.services.orders, STATS.orders);
    assert.deepEqual(second.body.meta, { complete: true, unavailable: [] });
    assert.deepEqual(asked(), [1, 1, 2]);
  });

  test('when STATS_TTL_MS is 0, then every dashboard asks every service, over the connection the proxy uses', async () => {
    const gw = await start({ STATS_TTL_MS: '0' });
    assert.equal((await http(gw.url, 'GET', '/api/users/1')).status, 200);
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', '/api/dashboard')).status, 200);
    assert.deepEqual(asked(), [3, 3, 3]);
    assert.equal(ups.users.busySockets.size, 1, 'the proxied GET and the dashboards share one kept-alive connection');
  });

  test('when a service has several instances and one refuses, then its /stats come from another, over that one\'s pool', async () => {
    const dead = await deadUrl();
    try {
      const gw = await start({ STATS_TTL_MS: '0', PRODUCTS_URL: `${dead.url},${ups.products.url}` });
      for (let i = 0; i < 4; i++) {
        const r = await http(gw.url, 'GET', '/api/dashboard');
        assert.deepEqual(r.body.services.products, STATS.products);
      }
      assert.equal(ups.products.stats.length, 4);
      assert.equal(ups.products.busySockets.size, 1);
    } finally {
      await dead.close();
    }
  });
});
