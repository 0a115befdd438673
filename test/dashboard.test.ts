import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { get as httpGet } from 'node:http';
import { GrowthWindow, WindowStats } from '../lib/gateway/dashboard/window-stats.js';
import type { DashboardSnapshot } from '../lib/gateway/dashboard/index.js';
import { deadUrl, eventually, startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';
import { http } from './helpers.js';

const TOKEN = 'dashboard-admin-token-0123456789';

/**
 * Opens the event stream and resolves with its first snapshot; the stream stays open until
 * `abort`. node:http without an agent: one connection, gone when aborted.
 */
function firstEvent(url: string, headers: Record<string, string> = {}): Promise<{ status: number; snapshot?: DashboardSnapshot; abort: () => void }> {
  return new Promise((resolve, reject) => {
    const req = httpGet(`${url}/dashboard/events`, { headers, agent: false, timeout: 5000 }, (res) => {
      const abort = () => req.destroy();
      if (res.statusCode !== 200) {
        res.resume();
        return resolve({ status: res.statusCode ?? 0, abort });
      }
      assert.match(res.headers['content-type'] ?? '', /^text\/event-stream/);
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        const m = /^data: (.*)$/m.exec(text);
        if (m && text.includes('\n\n', m.index)) resolve({ status: 200, snapshot: JSON.parse(m[1]) as DashboardSnapshot, abort });
      });
    });
    req.once('timeout', () => req.destroy(new Error('no event in time')));
    req.once('error', (err) => {
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') reject(err);
    });
  });
}

describe('windowed stats', () => {
  test('when requests are recorded, then rate, error share and percentiles cover the last 10 completed seconds', () => {
    const stats = new WindowStats(2);
    for (let i = 1; i <= 100; i++) stats.record(0, i <= 5 ? 503 : 200, i);
    stats.record(1, 200, 1);
    // The current second is not counted until it is complete.
    assert.equal(stats.summary(0).rps, 0);
    stats.tick();
    const s = stats.summary(0);
    assert.equal(s.rps, 10);
    assert.equal(s.errorPct, 5);
    assert.ok(s.p50! >= 50 && s.p50! <= 50 * 1.25, `p50 ${s.p50}`);
    assert.ok(s.p99! >= 99 && s.p99! <= 99 * 1.25, `p99 ${s.p99}`);
    assert.equal(s.perSecond.length, 119);
    assert.equal(s.perSecond.at(-1), 100);
    assert.equal(s.errorsPerSecond.at(-1), 5);
    assert.equal(stats.summary(1).rps, 0.1);
    // Ten seconds later it has left the recent window, and after two minutes the sparkline too.
    for (let i = 0; i < 10; i++) stats.tick();
    assert.deepEqual([stats.summary(0).rps, stats.summary(0).p50], [0, null]);
    assert.equal(stats.summary(0).perSecond.reduce((a, b) => a + b), 100);
    for (let i = 0; i < 110; i++) stats.tick();
    assert.equal(stats.summary(0).perSecond.reduce((a, b) => a + b), 0);
  });
});

describe('counts over the window', () => {
  test('when totals grow, then a count covers the last 10 samples only, from zero while fewer were taken', () => {
    const window = new GrowthWindow();
    window.sample(new Map([['stale users', 4]]));
    assert.equal(window.growth('stale users'), 4, 'counted from start');
    for (let i = 0; i < 10; i++) window.sample(new Map([['stale users', 4]]));
    assert.equal(window.growth('stale users'), 0, 'ten seconds without growth');
    window.sample(new Map([['stale users', 24]]));
    assert.equal(window.growth('stale users'), 20);
    assert.equal(window.rate('stale users'), 2);
    assert.equal(window.growth('unknown'), 0);
  });

  test('when a stale copy answers in the service\'s place, then it counts as failed', () => {
    const stats = new WindowStats(1);
    stats.record(0, 200, 1, true);
    stats.record(0, 200, 1);
    stats.tick();
    assert.equal(stats.summary(0).errorPct, 50);
  });
});

describe('dashboard with several instances', () => {
  test('when one of two instances refuses, then its row shows it ejected with its failures while the other serves', async () => {
    const up = await startFakeUpstream();
    const dead = await deadUrl();
    const gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: `${up.url},${dead.url}`, ORDERS_URL: up.url, OUTLIER_CONSECUTIVE_FAILURES: '1', RATE_LIMIT: '1000000' });
    try {
      for (let i = 0; i < 10; i++) assert.equal((await http(gw.url, 'GET', '/api/products')).status, 200);
      // The stream's counts are sampled once a second: wait for a snapshot that has them.
      let rows: DashboardSnapshot['services'][number]['instances'] = [];
      await eventually(async () => {
        const { snapshot, abort } = await firstEvent(gw.url);
        abort();
        rows = snapshot!.services[1].instances;
        return rows.length === 2 && rows[0].rps > 0 && rows[1].errorPct > 0;
      }, 5000, 'per-instance rates in a snapshot');
      assert.deepEqual(rows.map((r) => [r.instance, r.state, r.errorPct]), [[new URL(up.url).host, 'up', 0], [new URL(dead.url).host, 'ejected', 100]]);
    } finally {
      await gw.close();
      await up.stop();
      await dead.close();
    }
  });
});

describe('dashboard routes', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  before(async () => {
    up = await startFakeUpstream();
    dead = await deadUrl();
    // Every stream here comes from one address: the per-client cap is test/attacks/admin-surface's.
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: dead.url, DASHBOARD_STREAMS_PER_CLIENT: '20' });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
    await dead?.close();
  });

  test('when GET /dashboard, then the page and its assets come from the gateway under a strict CSP', async () => {
    const page = await http(gw.url, 'GET', '/dashboard');
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'self'/);
    for (const asset of page.text.match(/(?:src|href)="(\/dashboard\/[^"]+)"/g)!.map((m) => m.split('"')[1])) {
      assert.equal((await http(gw.url, 'GET', asset)).status, 200, asset);
    }
    assert.doesNotMatch(page.text, /https?:\/\//, 'nothing is loaded from elsewhere');
  });

  test('when the stream is opened, then the first snapshot has a tile per service with state, rates and probe', async () => {
    await http(gw.url, 'GET', '/api/users');
    const { status, snapshot, abort } = await firstEvent(gw.url);
    abort();
    assert.equal(status, 200);
    assert.equal(snapshot!.controls, true);
    assert.deepEqual(snapshot!.services.map((s) => [s.name, s.state]), [['users', 'CLOSED'], ['products', 'CLOSED'], ['orders', 'CLOSED']]);
    const users = snapshot!.services[0];
    assert.equal(users.spark.length, 119);
    assert.equal(users.probe?.ok, true);
    assert.equal(snapshot!.services[2].probe?.ok, false);
    assert.deepEqual(Object.keys(users).sort(), ['errorPct', 'errorSpark', 'instances', 'name', 'p50', 'p99', 'probe', 'rejected', 'rps', 'spark', 'stale', 'state', 'timeouts']);
    assert.deepEqual(users.instances.map((i) => [i.instance, i.state]), [[new URL(up.url).host, 'up']]);
    assert.deepEqual(snapshot!.rateLimit.topClients, [{ client: '127.0.0.1', hits: 1 }]);
  });

  test('when a proxied request is answered, then it shows in the next seconds\' snapshot of its service', async () => {
    for (let i = 0; i < 5; i++) await http(gw.url, 'GET', '/api/products');
    await eventually(async () => {
      const { snapshot, abort } = await firstEvent(gw.url);
      abort();
      return snapshot!.services[1].spark.reduce((a, b) => a + b) >= 5 && snapshot!.services[1].p50 !== null;
    }, 4000, 'the products requests in the stats');
  });

  test('when 20 streams are open, then the 21st is refused with 503', async () => {
    const open = await Promise.all(Array.from({ length: 20 }, () => firstEvent(gw.url)));
    try {
      const extra = await firstEvent(gw.url);
      extra.abort();
      assert.equal(extra.status, 503);
    } finally {
      for (const s of open) s.abort();
    }
    // Closed streams free their places.
    await eventually(async () => {
      const again = await firstEvent(gw.url);
      again.abort();
      return again.status === 200;
    }, 2000, 'a free place');
  });

  test('when the gateway has an admin token or requires tokens, then the stream needs one; in open production without one it names no clients', async () => {
    const guarded = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ADMIN_TOKEN: TOKEN });
    const prod = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, NODE_ENV: 'production', AUTH_MODE: 'open' });
    const required = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, NODE_ENV: 'production' });
    try {
      assert.equal((await firstEvent(guarded.url)).status, 401);
      assert.equal((await firstEvent(required.url)).status, 401);
      const ok = await firstEvent(guarded.url, { authorization: `Bearer ${TOKEN}` });
      ok.abort();
      assert.equal(ok.status, 200);
      await http(prod.url, 'GET', '/api/users');
      const p = await firstEvent(prod.url);
      p.abort();
      assert.equal(p.snapshot!.controls, false);
      assert.deepEqual(p.snapshot!.rateLimit.topClients, []);
      assert.equal(p.snapshot!.services[0].instances[0].instance, '#1', 'no addresses without the controls');
      assert.equal((await http(prod.url, 'POST', '/debug/faults/users', { body: {} })).status, 404);
    } finally {
      await guarded.close();
      await prod.close();
      await required.close();
    }
  });
});
