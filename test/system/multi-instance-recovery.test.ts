import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from '../helpers.js';
import { deadUrl, eventually, startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from '../gateway-helpers.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';

const ADMIN_TOKEN = 'multi-instance-recovery-token-0123';
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** A metric of the gateway's, summed over the series whose labels include `labels`. */
async function metric(gw: StartedGateway, name: string, labels: string): Promise<number> {
  const text = (await http(gw.url, 'GET', '/metrics', { headers: admin })).text;
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) && line.includes(labels)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

const CIRCUIT = ['CLOSED', 'HALF_OPEN', 'OPEN'];

/**
 * The products circuit and each instance's state, from the metrics: GET /health would probe every
 * instance, ejected ones too, and so add requests of its own to those the tests count.
 */
async function products(gw: StartedGateway, urls: string[]): Promise<{ circuit: string; instances: string[] }> {
  const circuit = CIRCUIT[await metric(gw, 'gateway_circuit_state', 'service="products"')];
  const instances = await Promise.all(urls.map(async (url) => ((await metric(gw, 'gateway_upstream_instance_up', `instance="${url}"`)) === 1 ? 'up' : 'ejected')));
  return { circuit, instances };
}

/** `clients` loops of GET until `during` resolves; every answer's status is counted. */
async function underLoad(base: string, clients: number, during: () => Promise<void>): Promise<{ ok: number; other: string[] }> {
  let running = true;
  let ok = 0;
  const other: string[] = [];
  let n = 0;
  const loops = Array.from({ length: clients }, async () => {
    while (running) {
      const r = await http(base, 'GET', `/api/products/${n++ % 50}`, { timeoutMs: 10_000 }).catch((err: Error) => ({ status: 0, text: String(err) }));
      if (r.status === 200) ok++;
      else other.push(`${r.status} ${r.text.slice(0, 100)}`);
    }
  });
  try {
    await during();
  } finally {
    running = false;
    await Promise.all(loops);
  }
  return { ok, other };
}

describe('one of two product instances slowed by 300 ms', () => {
  let fast: FakeUpstream;
  let slow: FakeUpstream;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  let gw: StartedGateway;

  before(async () => {
    [fast, slow, dead] = await Promise.all([startFakeUpstream(), startFakeUpstream(), deadUrl()]);
    gw = await startGateway({
      PRODUCTS_URL: `${fast.url},${slow.url}`,
      USERS_URL: dead.url,
      ORDERS_URL: dead.url,
      ADMIN_TOKEN,
      RATE_LIMIT: '1000000',
      // Under the 300 ms the slow instance adds, well over what a busy machine adds to a fast answer.
      UPSTREAM_PER_TRY_TIMEOUT_MS: '250',
      CACHE_MAX_ENTRIES: '0',
    });
  });
  after(async () => {
    await gw?.close();
    await fast?.stop();
    await slow?.stop();
    await dead?.close();
  });

  test('when one instance turns slow, then it gets under 2 % of requests, every try it gets is given up for the other, no request fails, and its share is back within 5 s of the fault ending', async () => {
    const slowUrl = slow.url;
    const result = await underLoad(gw.url, 8, async () => {
      // Warm-up: both take requests.
      await eventually(() => fast.seen.length > 20 && slow.seen.length > 20, 20_000, 'both instances in use');
      slow.behaviour = { kind: 'echo', delayMs: 300 };
      // The balancer has learnt once a try on it was given up.
      await eventually(async () => (await metric(gw, 'gateway_upstream_try_timeouts_total', `instance="${slowUrl}"`)) > 0, 5_000, 'a try given up on the slow instance');
      const before = {
        fast: fast.seen.length,
        slow: slow.seen.length,
        timeouts: await metric(gw, 'gateway_upstream_try_timeouts_total', `instance="${slowUrl}"`),
        fastTimeouts: await metric(gw, 'gateway_upstream_try_timeouts_total', `instance="${fast.url}"`),
      };
      await eventually(() => fast.seen.length - before.fast >= 1_000, 30_000, '1000 requests on the fast instance');
      const sentSlow = slow.seen.length - before.slow;
      const sentFast = fast.seen.length - before.fast;
      const share = sentSlow / (sentSlow + sentFast);
      assert.ok(share < 0.02, `the slow instance got ${sentSlow} of ${sentSlow + sentFast} (${(share * 100).toFixed(2)} %)`);
      // Each of them waited no more than the per-try timeout: the try was given up, the request went to the fast one.
      const timeouts = (await metric(gw, 'gateway_upstream_try_timeouts_total', `instance="${slowUrl}"`)) - before.timeouts;
      assert.ok(timeouts >= sentSlow - 8, `${timeouts} tries given up of ${sentSlow} sent to the slow instance`);
      // Nor is a try on the fast one given up for the slow one, however late the busy machine makes it.
      assert.equal(await metric(gw, 'gateway_upstream_try_timeouts_total', `instance="${fast.url}"`), before.fastTimeouts, 'no try on the fast instance given up');

      // The fault ends: within 5 s the instance takes a fair share again. The moment it is back is
      // read off the arrival times afterwards (the first request to it that opens a 500 ms span in
      // which it takes a quarter or more), not off the time a poll of a busy machine notices.
      slow.behaviour = { kind: 'echo' };
      const ended = performance.now();
      const fastFrom = fast.seen.length;
      const slowFrom = slow.seen.length;
      const backAt = (): number | undefined => {
        const s = slow.seen.slice(slowFrom).map((r) => r.at);
        const f = fast.seen.slice(fastFrom).map((r) => r.at);
        for (const t of s) {
          if (t < ended) continue;
          const inSlow = s.filter((x) => x >= t && x < t + 500).length;
          const inFast = f.filter((x) => x >= t && x < t + 500).length;
          if (inSlow >= 3 && inSlow >= 0.25 * (inSlow + inFast) && performance.now() >= t + 500) return t;
        }
        return undefined;
      };
      await eventually(() => backAt() !== undefined, 15_000, 'the slow instance back to a fair share');
      const backMs = (backAt() as number) - ended;
      assert.ok(backMs < 5_000, `back after ${backMs.toFixed(0)} ms`);
    });
    assert.deepEqual(result.other, [], `${result.other.length} of ${result.ok + result.other.length} not 200`);
    assert.deepEqual(await products(gw, [fast.url, slow.url]), { circuit: 'CLOSED', instances: ['up', 'up'] }, 'a slow instance is avoided, never ejected');
  });
});

describe('two product instances that crash and come back', () => {
  const PROBE_INTERVAL_MS = 200;
  let ups: FakeUpstream[];
  let proxies: FaultProxy[];
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  let gw: StartedGateway;

  before(async () => {
    ups = await Promise.all([startFakeUpstream(), startFakeUpstream()]);
    proxies = await Promise.all(ups.map((u) => startFaultProxy(u.url)));
    dead = await deadUrl();
    gw = await startGateway({
      PRODUCTS_URL: proxies.map((p) => p.url).join(','),
      USERS_URL: dead.url,
      ORDERS_URL: dead.url,
      ADMIN_TOKEN,
      RATE_LIMIT: '1000000',
      OUTLIER_CONSECUTIVE_FAILURES: '2',
      // Far longer than any wait below: an instance can only come back through its probes.
      OUTLIER_EJECTION_MS: '60000',
      OUTLIER_MAX_EJECTION_MS: '600000',
      CB_RESET_TIMEOUT_MS: '60000',
      CB_PROBE_INTERVAL_MS: String(PROBE_INTERVAL_MS),
      CB_SLOW_START_MS: '0',
      HEALTH_PROBE_TIMEOUT_MS: '300',
      CACHE_MAX_ENTRIES: '0',
    });
  });
  after(async () => {
    await gw?.close();
    for (const p of proxies ?? []) await p.close();
    for (const u of ups ?? []) await u.stop();
    await dead?.close();
  });

  const urls = () => proxies.map((p) => p.url);

  test('when both crash three times, then each time the circuit opens, and closes at the first probe that finds one back, well before the ejection time', async () => {
    for (let crash = 0; crash < 3; crash++) {
      await Promise.all(proxies.map((p) => p.stop()));
      let n = 0;
      await eventually(async () => (await http(gw.url, 'GET', `/api/products/crash-${crash}-${n++}`)).status === 503, 5_000, 'the circuit open');
      assert.deepEqual(await products(gw, urls()), { circuit: 'OPEN', instances: ['ejected', 'ejected'] });

      // One instance answers again: it is back at the first probe that reaches it (two, if one was on its way as it started).
      const seenBefore = proxies[0].requestsSeen;
      const restarted = performance.now();
      await proxies[0].start();
      await eventually(async () => (await products(gw, urls())).circuit === 'CLOSED', 10_000, 'the circuit closed');
      const backMs = performance.now() - restarted;
      const probes = proxies[0].requestsSeen - seenBefore;
      assert.ok(probes >= 1 && probes <= 2, `${probes} probes before it was back`);
      // Two probe intervals, and slack for a busy machine, against the 60 s (and doubled) ejection time.
      assert.ok(backMs < 2 * PROBE_INTERVAL_MS + 2_000, `back after ${backMs.toFixed(0)} ms`);
      assert.deepEqual((await products(gw, urls())).instances, ['up', 'ejected']);
      assert.equal((await http(gw.url, 'GET', `/api/products/back-${crash}`)).status, 200);

      // The other one follows, through its own probe.
      await proxies[1].start();
      await eventually(async () => (await products(gw, urls())).instances.every((i) => i === 'up'), 10_000, 'both up');
    }
  });

  test('when an ejected instance keeps failing its probes, then it is asked every probe interval, not at a doubling ejection time', async () => {
    await Promise.all(proxies.map((p) => p.start()));
    // Every request, probes included, is answered 503 on a connection of its own.
    proxies[1].fault = { kind: 'status', status: 503 };
    try {
      let n = 0;
      // Eight at once: a failing instance weighs more, so requests one at a time would all go to
      // the other and never make it fail twice in a row.
      await eventually(async () => {
        await Promise.all(Array.from({ length: 8 }, () => http(gw.url, 'GET', `/api/products/storm-${n++}`)));
        return (await products(gw, urls())).instances[1] === 'ejected';
      }, 10_000, 'the failing instance ejected');
      const seen = proxies[1].accepted;
      // Five probes take 5 x 200 ms; with an ejection time from 60 s, doubling, there would be none.
      await eventually(() => proxies[1].accepted - seen >= 5, 10_000, 'five probes of the failing instance');
      assert.deepEqual(await products(gw, urls()), { circuit: 'CLOSED', instances: ['up', 'ejected'] }, 'the other instance serves');
    } finally {
      proxies[1].fault = { kind: 'pass' };
    }
    await eventually(async () => (await products(gw, urls())).instances[1] === 'up', 5_000, 'back once it answers');
  });
});
