// The gateway in front of a service with a TCP fault proxy between them: each fault the proxy
// makes, what the client gets, and what the breaker makes of it; then recovery.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from './helpers.js';
import { circuit, circuitState, eventually, startFaultedGateway, type FakeUpstream, type FaultedGateway, type StartedGateway } from './gateway-helpers.js';
import type { FaultProxy } from './support/fault-proxy.js';

const stats = async (gw: StartedGateway) => (await http(gw.url, 'GET', '/health')).body.services.users as { circuitState: string; stats: { failures: number; successes: number; timeouts: number } };

describe('upstream faults through the fault proxy', () => {
  let up: FakeUpstream;
  let proxy: FaultProxy;
  let gw: StartedGateway;
  let faulted: FaultedGateway | undefined;
  before(async () => {
    faulted = await startFaultedGateway(({ proxy, up }) => ({ USERS_URL: proxy, PRODUCTS_URL: up, ORDERS_URL: up, UPSTREAM_TIMEOUT_MS: '200', CB_RESET_TIMEOUT_MS: '60000', CB_PROBE_INTERVAL_MS: '0' }));
    ({ up, proxy, gw } = faulted);
  });
  after(() => faulted?.close());
  beforeEach(async () => {
    proxy.fault = { kind: 'pass' };
    up.behaviour = { kind: 'echo' };
    await circuit(gw.url, 'users', 'reset');
  });

  test('latency: answers slower than UPSTREAM_TIMEOUT_MS are 504 and timeouts; faster ones pass', async () => {
    proxy.fault = { kind: 'latency', ms: 40 };
    assert.equal((await http(gw.url, 'GET', '/api/users/fast')).status, 200);
    proxy.fault = { kind: 'latency', ms: 150 };
    const slow = await http(gw.url, 'GET', '/api/users/slow');
    assert.equal(slow.status, 504);
    assert.equal(slow.body.code, 'GATEWAY_TIMEOUT');
    assert.equal((await stats(gw)).stats.timeouts, 1);
  });

  test('blackhole: three requests that never get an answer open the circuit; the 4th is refused at once', async () => {
    proxy.fault = { kind: 'blackhole' };
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', `/api/users/hole-${i}`)).status, 504);
    const started = performance.now();
    const refused = await http(gw.url, 'GET', '/api/users/hole-4');
    assert.equal(refused.status, 503);
    assert.ok(performance.now() - started < 150, 'not waiting for the timeout');
    assert.equal((await stats(gw)).circuitState, 'OPEN');
  });

  test('RST before the response: 502 each time (a GET is retried once, and counted once), the circuit opens after three', async () => {
    proxy.fault = { kind: 'reset-before-response' };
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', `/api/users/rst-${i}`)).status, 502);
    const s = await stats(gw);
    assert.equal(s.circuitState, 'OPEN');
    assert.equal(s.stats.failures, 3);
  });

  test('RST after the headers: the client is told 502 (nothing of a small answer went out yet), and three in a row open the circuit', async () => {
    proxy.fault = { kind: 'reset-after-headers' };
    for (let i = 0; i < 3; i++) {
      const cut = await http(gw.url, 'GET', `/api/users/cut-${i}`);
      assert.equal(cut.status, 502, 'a small answer cut short is a 502, not a 200');
      assert.equal(cut.body.code, 'BAD_GATEWAY');
    }
    const s = await stats(gw);
    assert.equal(s.circuitState, 'OPEN');
    assert.deepEqual([s.stats.failures, s.stats.successes], [3, 0]);
  });

  test('5xx storm: the 503s pass through, open the circuit, then the gateway answers 503 with a spread Retry-After', async () => {
    proxy.fault = { kind: 'status', status: 503 };
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', `/api/users/storm-${i}`)).body.error, 'fault proxy storm');
    const accepted = proxy.accepted;
    const refusals = await Promise.all(Array.from({ length: 20 }, (_, i) => http(gw.url, 'GET', `/api/users/storm-more-${i}`)));
    assert.ok(refusals.every((r) => r.status === 503 && r.body.code === 'SERVICE_UNAVAILABLE'));
    assert.equal(proxy.accepted, accepted, 'the service is not asked');
    const retryAfter = new Set(refusals.map((r) => Number(r.headers.get('retry-after'))));
    assert.ok([...retryAfter].every((s) => s >= 60 && s <= 90), [...retryAfter].join(','));
    assert.ok(retryAfter.size > 1, 'refused clients are told different times');
  });
});

describe('recovery', () => {
  let proxy: FaultProxy;
  let gw: StartedGateway;
  let faulted: FaultedGateway | undefined;
  before(async () => {
    faulted = await startFaultedGateway(({ proxy, up }) => ({
      USERS_URL: proxy,
      PRODUCTS_URL: up,
      ORDERS_URL: up,
      UPSTREAM_TIMEOUT_MS: '200',
      CB_RESET_TIMEOUT_MS: '30000',
      CB_PROBE_INTERVAL_MS: '50',
      CB_SLOW_START_MS: '600',
      HEALTH_PROBE_TIMEOUT_MS: '100',
      // These tests send a few hundred requests a minute from one client: the limit is not theirs to test.
      RATE_LIMIT: '1000000',
    }));
    ({ proxy, gw } = faulted);
  });
  after(() => faulted?.close());
  beforeEach(async () => {
    proxy.fault = { kind: 'pass' };
    await proxy.start();
    await circuit(gw.url, 'users', 'reset');
  });

  const trip = async () => {
    await proxy.stop();
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', `/api/users/down-${i}`)).status, 502);
    assert.equal(await circuitState(gw.url, 'users'), 'OPEN');
  };

  test('when the service answers its /health again, then the circuit half-opens long before its 30 s open time ends', async () => {
    await trip();
    await proxy.start();
    await eventually(async () => (await circuitState(gw.url, 'users')) === 'HALF_OPEN', 2_000, 'half-open after a probe');
  });

  test('when the circuit closes, then a growing share of requests goes through over CB_SLOW_START_MS, then all', async () => {
    await trip();
    await proxy.start();
    await eventually(async () => (await circuitState(gw.url, 'users')) === 'HALF_OPEN', 2_000, 'half-open');
    for (let i = 0; i < 2; i++) assert.equal((await http(gw.url, 'GET', `/api/users/trial-${i}`)).status, 200);
    assert.equal(await circuitState(gw.url, 'users'), 'CLOSED');
    const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => http(gw.url, 'GET', `/api/users/ramp-${i}`)));
    const passed = burst.filter((r) => r.status === 200).length;
    assert.ok(passed >= 1 && passed < 20, `${passed} of 20 let through at first`);
    assert.ok(burst.filter((r) => r.status === 503).every((r) => Number(r.headers.get('retry-after')) >= 1));
    // Past the ramp every request goes through; polled, since a loaded machine may be late to look.
    let round = 0;
    let statuses: number[] = [];
    await eventually(async () => {
      const later = await Promise.all(Array.from({ length: 20 }, (_, i) => http(gw.url, 'GET', `/api/users/all-${round}-${i}`)));
      round++;
      statuses = later.map((r) => r.status);
      return statuses.every((s) => s === 200);
    }, 3_000, 'every request through after the ramp').catch((err: Error) => {
      throw new Error(`${err.message}; last burst: ${statuses.join(' ')}`);
    });
  });

  test('when the service flaps (300 ms up, 300 ms down), then the circuit is open for about the down half of the time, closes in every up phase and up phases serve requests', async () => {
    proxy.fault = { kind: 'flap', upMs: 300, downMs: 300 };
    await proxy.stop();
    await proxy.start();
    const end = Date.now() + 2_400;
    // Requests keep coming while another loop samples the circuit's state.
    let ok = 0;
    let sent = 0;
    // Both loops pause 5 ms between requests: a few hundred requests and samples over the 2.4 s,
    // without spinning a core for it.
    const pause = () => new Promise((r) => setTimeout(r, 5));
    const load = (async () => {
      while (Date.now() < end) {
        if ((await http(gw.url, 'GET', `/api/users/flap-${sent++}`)).status === 200) ok++;
        await pause();
      }
    })();
    // Time-weighted, each state held until the next sample: samples come faster while the
    // circuit refuses at once, so counting them would weigh the open phases more.
    const started = Date.now();
    let openMs = 0;
    let reopenings = 0;
    let last = { at: started, open: false };
    while (Date.now() < end) {
      const open = (await circuitState(gw.url, 'users')) === 'OPEN';
      const at = Date.now();
      if (last.open) openMs += at - last.at;
      if (last.open && !open) reopenings++;
      last = { at, open };
      await pause();
    }
    if (last.open) openMs += Date.now() - last.at;
    await load;
    const share = openMs / (Date.now() - started);
    // Four up phases: each one serves requests again.
    assert.ok(ok >= 4, `${ok} of ${sent} answered`);
    // The service is down half the time; the circuit follows it within a failure or a probe, not
    // an open time that grows from one trip to the next.
    assert.ok(share < 0.6, `open ${(share * 100).toFixed(0)} % of the time`);
    assert.ok(reopenings >= 3, `left open ${reopenings} times; the first three down phases each end in an up phase`);
  });
});
