import { after, afterEach, before, beforeEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { ServiceBreaker, type BreakerCall, type BreakerOptions, type CircuitState } from '../lib/gateway/breakers.js';
import { UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { http } from './helpers.js';
import { circuit, circuitState, eventually, rawRequest, startFakeUpstream, startFaultedGateway, startGateway, startGatewayFor, type FakeUpstream, type FaultedGateway, type StartedGateway } from './gateway-helpers.js';
import { createProduct, createUser, startServices, type System } from './system.js';
import type { FaultProxy } from './support/fault-proxy.js';

const OPTIONS: BreakerOptions = {
  failureThreshold: 3,
  resetTimeoutMs: 1000,
  maxResetTimeoutMs: 4000,
  stablePeriodMs: 10_000,
  halfOpenRequests: 2,
  timeoutMs: 500,
  probeIntervalMs: 0,
  slowStartMs: 0,
};

describe('breaker state machine (mock timers)', () => {
  let changes: CircuitState[];
  const make = (options: Partial<BreakerOptions> = {}, probe?: () => Promise<boolean>) => {
    changes = [];
    return new ServiceBreaker('svc', { ...OPTIONS, ...options }, { onStateChange: (s) => changes.push(s), probe });
  };
  /** A call whose response headers came (the work resolved) and whose body is still to end. */
  const headersIn = async (b: ServiceBreaker): Promise<BreakerCall> => {
    let admitted: BreakerCall | undefined;
    await b.run((call) => {
      call.defer();
      admitted = call;
      return Promise.resolve();
    });
    return admitted!;
  };
  const flush = () => new Promise((r) => setImmediate(r));
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
  afterEach(() => mock.timers.reset());

  test('when three responses in a row are cut after their headers, then the circuit opens, and none counted as a success', async () => {
    const b = make();
    for (let i = 0; i < 3; i++) {
      const call = await headersIn(b);
      assert.equal(b.state, 'CLOSED');
      call.fail('reset');
      // A second report of the same call changes nothing: one call, one outcome.
      call.succeed();
    }
    assert.equal(b.state, 'OPEN');
    assert.equal(b.stats.failures, 3);
    assert.equal(b.stats.successes, 0);
  });

  test('when a response completes, then it counts once as a success and the failure count starts over', async () => {
    const b = make();
    for (let i = 0; i < 2; i++) (await headersIn(b)).fail('reset');
    const ok = await headersIn(b);
    ok.succeed();
    ok.fail('reset');
    for (let i = 0; i < 2; i++) (await headersIn(b)).fail('reset');
    assert.equal(b.state, 'CLOSED');
    assert.deepEqual([b.stats.successes, b.stats.failures], [1, 4]);
  });

  test('when the work does not resolve within the timeout, then the call fails as a timeout and is aborted', async () => {
    const b = make();
    let aborted = false;
    const pending = b.run((call) => new Promise(() => call.onAbort(() => (aborted = true))));
    mock.timers.tick(499);
    await flush();
    assert.equal(aborted, false);
    mock.timers.tick(1);
    await assert.rejects(pending, (err: unknown) => err instanceof UpstreamUnavailableError && err.failure === 'timeout');
    assert.equal(aborted, true);
    assert.equal(b.stats.timeouts, 1);
  });

  test('when a circuit trips again soon after closing, then its open time doubles up to the cap, and starts over after a stable period', async () => {
    const b = make();
    const openFor = async (): Promise<number> => {
      b.forceOpen();
      let waited = 0;
      while (b.state === 'OPEN') {
        mock.timers.tick(100);
        waited += 100;
      }
      // Two good trials close it again.
      for (let i = 0; i < 2; i++) await b.run(() => Promise.resolve('ok'));
      assert.equal(b.state, 'CLOSED');
      return waited;
    };
    assert.deepEqual([await openFor(), await openFor(), await openFor(), await openFor()], [1000, 2000, 4000, 4000]);
    mock.timers.tick(10_000);
    assert.equal(await openFor(), 1000);
  });

  test('when a probe of the service succeeds while open, then the circuit half-opens before its open time ends', async () => {
    let healthy = false;
    const b = make({ resetTimeoutMs: 30_000, maxResetTimeoutMs: 30_000, probeIntervalMs: 200 }, () => Promise.resolve(healthy));
    b.forceOpen();
    mock.timers.tick(200);
    await flush();
    assert.equal(b.state, 'OPEN', 'the service does not answer yet');
    healthy = true;
    mock.timers.tick(200);
    await flush();
    assert.equal(b.state, 'HALF_OPEN');
    assert.deepEqual(changes, ['OPEN', 'HALF_OPEN']);
  });

  test('when one of the service\'s instances is back while the circuit is open or half-open, then it closes at once, under slow start', () => {
    const b = make({ resetTimeoutMs: 30_000, maxResetTimeoutMs: 30_000, slowStartMs: 1000 });
    b.forceOpen();
    b.instanceBack();
    assert.equal(b.state, 'CLOSED');
    let admitted = 0;
    for (let i = 0; i < 100; i++) {
      try {
        b.admit().succeed();
        admitted++;
      } catch {
        // refused by slow start
      }
    }
    assert.ok(admitted >= 5 && admitted <= 15, `${admitted} of 100 let through at the start of the ramp`);
    b.forceOpen();
    mock.timers.tick(30_000);
    assert.equal(b.state, 'HALF_OPEN');
    b.instanceBack();
    assert.equal(b.state, 'CLOSED');
    b.instanceBack();
    assert.deepEqual(changes, ['OPEN', 'CLOSED', 'OPEN', 'HALF_OPEN', 'CLOSED'], 'a closed circuit stays as it is');
  });

  test('when half-open, then a failed trial reopens it and a trial whose client left frees its slot', () => {
    const b = make();
    b.forceOpen();
    mock.timers.tick(1000);
    assert.equal(b.state, 'HALF_OPEN');
    const first = b.admit();
    b.admit();
    assert.throws(() => b.admit(), /temporarily unavailable/);
    first.neutral();
    const third = b.admit();
    third.fail('reset');
    assert.equal(b.state, 'OPEN');
  });

  test('when a circuit closes after trials, then slow start lets a growing share through over CB_SLOW_START_MS', async () => {
    const b = make({ slowStartMs: 1000 });
    b.forceOpen();
    mock.timers.tick(1000);
    for (let i = 0; i < 2; i++) await b.run(() => Promise.resolve('ok'));
    assert.equal(b.state, 'CLOSED');
    const shareAt = (n: number) => {
      let admitted = 0;
      for (let i = 0; i < n; i++) {
        try {
          b.admit().succeed();
          admitted++;
        } catch {
          // refused by slow start
        }
      }
      return admitted / n;
    };
    const early = shareAt(100);
    mock.timers.tick(500);
    const middle = shareAt(100);
    mock.timers.tick(500);
    const late = shareAt(100);
    assert.ok(early <= 0.15, `early share ${early}`);
    assert.ok(middle > early && middle < 1, `middle share ${middle}`);
    assert.equal(late, 1);
  });

  test('when refused, then Retry-After spreads clients over up to half the open time after it ends', () => {
    const b = make({ resetTimeoutMs: 10_000, maxResetTimeoutMs: 10_000 });
    b.forceOpen();
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) seen.add(b.retryAfterSeconds());
    assert.ok([...seen].every((s) => s >= 10 && s <= 15), [...seen].join(','));
    assert.ok(seen.size >= 3, 'not everyone gets the same value');
  });
});

const SERVICES = ['users', 'products', 'orders'] as const;

describe('circuit breakers', () => {
  let up: FakeUpstream;
  // Two gateways on one upstream: `steady` stays open long enough (1 s) to check refusals on a
  // loaded machine; `quick` turns half-open after 300 ms for the trial tests.
  let steady: StartedGateway;
  let quick: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    const urls = { USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url };
    steady = await startGateway({ ...urls, CB_RESET_TIMEOUT_MS: '1000', UPSTREAM_TIMEOUT_MS: '250', CLIENT_BODY_TIMEOUT_MS: '250' });
    quick = await startGateway({ ...urls, CB_RESET_TIMEOUT_MS: '300', UPSTREAM_TIMEOUT_MS: '2000' });
  });
  after(async () => {
    await steady?.close();
    await quick?.close();
    await up?.stop();
  });
  beforeEach(async () => {
    await up.start();
    up.behaviour = { kind: 'echo' };
    up.seen.length = 0;
    for (const gw of [steady, quick]) for (const s of SERVICES) assert.equal((await circuit(gw.url, s, 'reset')).status, 200);
  });

  const trip = async (gw: StartedGateway, service: string) => {
    up.behaviour = { kind: 'status', status: 500 };
    for (let i = 0; i < 3; i++) assert.equal((await http(gw.url, 'GET', `/api/${service}/1`)).status, 500);
    assert.notEqual(await circuitState(gw.url, service), 'CLOSED');
  };
  const halfOpen = (gw: StartedGateway, service: string) =>
    eventually(async () => (await circuitState(gw.url, service)) === 'HALF_OPEN', 5_000, `${service} half-open`);

  test('when a service answers 500 three times, then the 4th request is 503 with Retry-After and never reaches it', async () => {
    up.behaviour = { kind: 'status', status: 500 };
    for (let i = 1; i <= 3; i++) {
      const r = await http(steady.url, 'GET', `/api/users/${i}`);
      assert.equal(r.status, 500, `failure ${i} passes through`);
      assert.equal(await circuitState(steady.url, 'users'), i < 3 ? 'CLOSED' : 'OPEN');
    }
    const fourth = await http(steady.url, 'GET', '/api/users/4');
    assert.equal(fourth.status, 503);
    assert.equal(fourth.body.error, 'Service users is temporarily unavailable');
    assert.equal(fourth.body.code, 'SERVICE_UNAVAILABLE');
    assert.ok(fourth.body.traceId);
    assert.match(fourth.headers.get('retry-after') ?? '', /^[12]$/, 'seconds until half-open, rounded up, plus a spread');
    assert.equal(up.seen.length, 3);
    const health = await http(steady.url, 'GET', '/health');
    assert.equal(health.body.services.users.circuitState, 'OPEN');
    assert.equal(health.body.services.users.stats.failures, 3);
    assert.equal(health.body.services.users.stats.rejects, 1);
    assert.equal(health.body.status, 'degraded');
  });

  test('when the service refuses connections three times, then the 4th request is 503', async () => {
    await up.stop();
    for (let i = 0; i < 3; i++) assert.equal((await http(steady.url, 'GET', '/api/orders/refused')).status, 502);
    const r = await http(steady.url, 'GET', '/api/orders/refused');
    assert.equal(r.status, 503);
    assert.equal(r.body.error, 'Service orders is temporarily unavailable');
  });

  test('when the service does not answer in time three times, then the circuit opens', async () => {
    up.behaviour = { kind: 'hang' };
    for (let i = 0; i < 3; i++) assert.equal((await http(steady.url, 'GET', '/api/products/slow')).status, 504);
    assert.equal((await http(steady.url, 'GET', '/api/products/slow')).status, 503);
    const health = await http(steady.url, 'GET', '/health');
    assert.equal(health.body.services.products.stats.timeouts, 3);
  });

  test('when the service breaks off three responses in a row after their headers, then the circuit opens', async () => {
    // A small answer is read whole before the gateway sends anything of it: the client is told 502.
    up.behaviour = { kind: 'break' };
    for (let i = 0; i < 2; i++) {
      const cut = await http(steady.url, 'GET', `/api/users/cut-${i}`);
      assert.equal(cut.status, 502, 'a small answer cut short is a 502, not a 200');
      assert.equal(cut.body.code, 'BAD_GATEWAY');
    }
    // A large one is streamed as it comes: its 200 went out, so the client sees the cut.
    up.behaviour = { kind: 'break', length: 100_000 };
    await assert.rejects(http(steady.url, 'GET', '/api/users/cut-2'), 'the client sees the cut, not a complete 200');
    const health = await http(steady.url, 'GET', '/health');
    assert.equal(health.body.services.users.circuitState, 'OPEN');
    assert.equal(health.body.services.users.stats.failures, 3);
    assert.equal(health.body.services.users.stats.successes, 0, 'the headers were not counted as a success');
  });

  test('when a service answers 4xx, then the circuit stays closed and the failure count starts over', async () => {
    up.behaviour = { kind: 'status', status: 500 };
    for (let i = 0; i < 2; i++) await http(steady.url, 'GET', '/api/users/1');
    up.behaviour = { kind: 'status', status: 404 };
    for (let i = 0; i < 5; i++) assert.equal((await http(steady.url, 'GET', '/api/users/1')).status, 404);
    up.behaviour = { kind: 'status', status: 500 };
    for (let i = 0; i < 2; i++) await http(steady.url, 'GET', '/api/users/1');
    assert.equal(await circuitState(steady.url, 'users'), 'CLOSED');
  });

  test('when half-open, then exactly 2 concurrent trials reach the service and their success closes the circuit', async () => {
    await trip(quick, 'products');
    await halfOpen(quick, 'products');
    up.behaviour = { kind: 'echo', delayMs: 300 };
    up.seen.length = 0;
    const results = await Promise.all([1, 2, 3].map((i) => http(quick.url, 'GET', `/api/products/trial-${i}`)));
    assert.deepEqual(results.map((r) => r.status).sort(), [200, 200, 503]);
    assert.equal(up.seen.length, 2);
    assert.equal(await circuitState(quick.url, 'products'), 'CLOSED');
  });

  test('when half-open, then one good trial is not enough and the second closes it', async () => {
    await trip(quick, 'orders');
    await halfOpen(quick, 'orders');
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(quick.url, 'GET', '/api/orders/1')).status, 200);
    assert.equal(await circuitState(quick.url, 'orders'), 'HALF_OPEN');
    assert.equal((await http(quick.url, 'GET', '/api/orders/2')).status, 200);
    assert.equal(await circuitState(quick.url, 'orders'), 'CLOSED');
  });

  test('when a trial fails, then the circuit opens again and refuses without calling the service', async () => {
    await trip(steady, 'users');
    await halfOpen(steady, 'users');
    up.seen.length = 0;
    assert.equal((await http(steady.url, 'GET', '/api/users/1')).status, 500);
    assert.equal(await circuitState(steady.url, 'users'), 'OPEN');
    assert.equal((await http(steady.url, 'GET', '/api/users/1')).status, 503);
    assert.equal(up.seen.length, 1);
  });

  test('when a trial\'s client hangs up, then its slot is freed for another trial', async () => {
    await trip(quick, 'products');
    await halfOpen(quick, 'products');
    up.behaviour = { kind: 'hang' };
    await assert.rejects(fetch(quick.url + '/api/products/gone-1', { signal: AbortSignal.timeout(50) }));
    await assert.rejects(fetch(quick.url + '/api/products/gone-2', { signal: AbortSignal.timeout(50) }));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await circuitState(quick.url, 'products'), 'HALF_OPEN');
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(quick.url, 'GET', '/api/products/gone-3')).status, 200);
    assert.equal((await http(quick.url, 'GET', '/api/products/gone-4')).status, 200);
    assert.equal(await circuitState(quick.url, 'products'), 'CLOSED');
  });

  test('when clients hang up before the service answers, then that is not counted against the service', async () => {
    up.behaviour = { kind: 'hang' };
    up.seen.length = 0;
    for (let i = 0; i < 4; i++) await assert.rejects(fetch(steady.url + '/api/users/1', { signal: AbortSignal.timeout(40) }));
    // The service sees each of the four calls given up (its connection closed before it answered):
    // none is left running to time out and be counted later.
    await eventually(() => up.seen.length === 4 && up.seen.every((s) => s.closedEarly), 5_000, 'the four calls given up');
    const health = await http(steady.url, 'GET', '/health');
    assert.equal(health.body.services.users.circuitState, 'CLOSED');
    assert.equal(health.body.services.users.stats.failures, 0);
    assert.equal(health.body.services.users.stats.timeouts, 0);
  });

  test('when a client stops sending its body, then it gets 408 and the service is not blamed', async () => {
    const { port } = new URL(steady.url);
    const socket = connect(Number(port), '127.0.0.1');
    socket.write('POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":');
    const answer = await new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (c: Buffer) => (text += c.toString()));
      socket.once('close', () => resolve(text));
      setTimeout(() => socket.destroy(), 3_000);
    });
    assert.match(answer, /^HTTP\/1\.1 408 /);
    assert.match(answer, /"code":"REQUEST_TIMEOUT"/);
    const health = await http(steady.url, 'GET', '/health');
    assert.equal(health.body.services.users.stats.failures, 0);
    assert.equal(health.body.services.users.circuitState, 'CLOSED');
  });

  test('when the debug route opens a circuit, then it refuses, turns half-open after the reset timeout and closes after two good trials', async () => {
    const opened = await circuit(steady.url, 'orders', 'open');
    assert.equal(opened.status, 200);
    assert.deepEqual(opened.body, { service: 'orders', action: 'open', newState: 'OPEN' });
    // A URL never fetched before: a cached one would be answered stale.
    const refused = await http(steady.url, 'GET', '/api/orders/forced');
    assert.equal(refused.status, 503);
    assert.match(refused.headers.get('retry-after') ?? '', /^[12]$/);
    assert.equal(up.seen.length, 0);
    await halfOpen(steady, 'orders');
    assert.equal((await http(steady.url, 'GET', '/api/orders/1')).status, 200);
    assert.equal((await http(steady.url, 'GET', '/api/orders/2')).status, 200);
    assert.equal(await circuitState(steady.url, 'orders'), 'CLOSED');
  });

  test('when the debug route closes or resets a circuit, then it is closed (and reset clears the counters)', async () => {
    await trip(steady, 'users');
    assert.deepEqual((await circuit(steady.url, 'users', 'close')).body, { service: 'users', action: 'close', newState: 'CLOSED' });
    assert.equal((await http(steady.url, 'GET', '/health')).body.services.users.stats.failures, 3);
    assert.equal((await circuit(steady.url, 'users', 'reset')).body.newState, 'CLOSED');
    assert.equal((await http(steady.url, 'GET', '/health')).body.services.users.stats.failures, 0);
  });
});

describe('stale answers', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, CB_RESET_TIMEOUT_MS: '60000' });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when a GET that once succeeded fails (5xx, refused, open circuit), then the last good answer comes back with X-Cache: STALE', async () => {
    up.behaviour = { kind: 'echo' };
    const fresh = await http(gw.url, 'GET', '/api/products/42?view=full');
    assert.equal(fresh.status, 200);
    assert.equal(fresh.headers.get('x-cache'), null);

    up.behaviour = { kind: 'status', status: 503 };
    const fromUpstream503 = await http(gw.url, 'GET', '/api/products/42?view=full');
    assert.equal(fromUpstream503.status, 200);
    assert.equal(fromUpstream503.headers.get('x-cache'), 'STALE');
    assert.deepEqual(fromUpstream503.body, fresh.body);
    assert.ok(fromUpstream503.headers.get('x-trace-id'));

    await up.stop();
    const refused = await http(gw.url, 'GET', '/api/products/42?view=full');
    assert.equal(refused.status, 200);
    assert.equal(refused.headers.get('x-cache'), 'STALE');

    await http(gw.url, 'GET', '/api/products/42?view=full');
    assert.equal(await circuitState(gw.url, 'products'), 'OPEN');
    const open = await http(gw.url, 'GET', '/api/products/42?view=full');
    assert.equal(open.status, 200);
    assert.equal(open.headers.get('x-cache'), 'STALE');
    assert.deepEqual(open.body, fresh.body);

    const neverSeen = await http(gw.url, 'GET', '/api/products/43');
    assert.equal(neverSeen.status, 503);

    const metrics = await (await fetch(gw.url + '/metrics')).text();
    assert.match(metrics, /gateway_stale_responses_total\{service="products"[^}]*\} 4/);
    await up.start();
    await circuit(gw.url, 'products', 'reset');
  });

  test('when a request carries Authorization, then its answer is neither cached nor served stale', async () => {
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(gw.url, 'GET', '/api/users/7', { headers: { authorization: 'Bearer abc' } })).status, 200);
    assert.equal((await http(gw.url, 'GET', '/api/users/8')).status, 200);
    await up.stop();
    assert.equal((await http(gw.url, 'GET', '/api/users/7')).status, 502, 'the credentialed answer was not kept');
    assert.equal((await http(gw.url, 'GET', '/api/users/8', { headers: { authorization: 'Bearer abc' } })).status, 502, 'nor served to a credentialed request');
    await up.start();
    await circuit(gw.url, 'users', 'reset');
  });

  test('when a POST fails, then nothing stale is served', async () => {
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(gw.url, 'GET', '/api/orders')).status, 200);
    up.behaviour = { kind: 'status', status: 503 };
    const r = await http(gw.url, 'POST', '/api/orders', { body: { userId: 1 } });
    assert.equal(r.status, 503);
    assert.equal(r.headers.get('x-cache'), null);
    await circuit(gw.url, 'orders', 'reset');
  });
});

describe('a dependency\'s outage', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices({ env: { UPSTREAM_TIMEOUT_MS: '500', RELEASE_RETRY_MS: '50' } });
    gw = await startGatewayFor(sys, { CB_RESET_TIMEOUT_MS: '30000' });
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });

  test('when the product service is down, then creates are 503 DEPENDENCY_UNAVAILABLE and reads of orders stay 200', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const created = await http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] } });
    assert.equal(created.status, 201, created.text);
    await sys.products.close();
    try {
      for (let i = 0; i < 5; i++) {
        const r = await http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] } });
        assert.equal(r.status, 503);
        assert.equal(r.body.code, 'DEPENDENCY_UNAVAILABLE');
        assert.ok(r.headers.get('retry-after'));
      }
      assert.equal(await circuitState(gw.url, 'orders'), 'CLOSED', 'the order service is not blamed for its dependency');
      const read = await http(gw.url, 'GET', `/api/orders/${created.body.id}`);
      assert.equal(read.status, 200);
      assert.equal(read.headers.get('x-cache'), null, 'answered by the service, not the stale cache');
      assert.equal(read.body.id, created.body.id);
    } finally {
      await sys.products.start();
    }
  });
});

describe('retries', () => {
  let up: FakeUpstream;
  let proxy: FaultProxy;
  let gw: StartedGateway;
  let faulted: FaultedGateway | undefined;
  before(async () => {
    faulted = await startFaultedGateway(({ proxy }) => ({ USERS_URL: proxy, PRODUCTS_URL: proxy, ORDERS_URL: proxy, CB_FAILURE_THRESHOLD: '1000' }));
    ({ up, proxy, gw } = faulted);
  });
  after(() => faulted?.close());
  beforeEach(() => {
    up.behaviour = { kind: 'echo' };
    proxy.fault = { kind: 'pass' };
  });
  const retries = async (service: string) => {
    const text = await (await fetch(gw.url + '/metrics')).text();
    return Number(new RegExp(`gateway_upstream_retries_total\\{service="${service}"[^}]*\\} (\\d+)`).exec(text)?.[1] ?? 0);
  };
  /** A request on a pooled connection that the next request will find reset. */
  const warmPool = async (path: string) => assert.equal((await http(gw.url, 'GET', path)).status, 200);

  test('when a GET meets a pooled connection reset before it reached the service, then it is sent once more on a new one and succeeds', async () => {
    await warmPool('/api/users/warm');
    up.seen.length = 0;
    proxy.fault = { kind: 'reset-before-response', times: 1 };
    const r = await http(gw.url, 'GET', '/api/users/retried');
    assert.equal(r.status, 200);
    assert.equal(up.seen.length, 1, 'the service saw it once');
    assert.equal(await retries('users'), 1);
  });

  test('when a POST without Idempotency-Key meets the same reset, then it is not retried', async () => {
    await warmPool('/api/products/warm');
    up.seen.length = 0;
    proxy.fault = { kind: 'reset-before-response', times: 1 };
    const r = await http(gw.url, 'POST', '/api/products', { body: { name: 'x' } });
    assert.equal(r.status, 502);
    assert.equal(up.seen.length, 0);
    assert.equal(await retries('products'), 0);
  });

  test('when a POST with Idempotency-Key meets the same reset, then it is retried', async () => {
    await warmPool('/api/orders/warm');
    up.seen.length = 0;
    proxy.fault = { kind: 'reset-before-response', times: 1 };
    const r = await http(gw.url, 'POST', '/api/orders', { body: { userId: 1 }, headers: { 'idempotency-key': 'retry-1' } });
    assert.equal(r.status, 200);
    assert.equal(up.seen.length, 1);
    assert.equal(up.seen[0].body, JSON.stringify({ userId: 1 }), 'the body arrived whole');
  });

  test('when a POST names its Idempotency-Key in Connection (so the key never reaches the service) and meets the same reset, then it is not retried', async () => {
    await warmPool('/api/orders/warm');
    up.seen.length = 0;
    proxy.fault = { kind: 'reset-before-response', times: 1 };
    // fetch refuses to set Connection: node:http sends what it is given.
    const r = await rawRequest(gw.url, 'POST', '/api/orders', { 'content-type': 'application/json', 'idempotency-key': 'retry-3', connection: 'keep-alive, Idempotency-Key' }, { body: JSON.stringify({ userId: 1 }) });
    assert.equal(r.status, 502, 'without its key the service could create the order twice');
    assert.equal(up.seen.length, 0);
  });

  test('when a POST with Idempotency-Key to a service that ignores the key meets the same reset, then it is not retried', async () => {
    await warmPool('/api/products/warm');
    up.seen.length = 0;
    proxy.fault = { kind: 'reset-before-response', times: 1 };
    const r = await http(gw.url, 'POST', '/api/products', { body: { name: 'x' }, headers: { 'idempotency-key': 'retry-2' } });
    assert.equal(r.status, 502, 'only the order service honours the key');
    assert.equal(up.seen.length, 0);
  });

  test('when the service refuses many GETs, then at most a fifth of them are retried and each counts as one failure', async () => {
    await proxy.stop();
    try {
      const before = (await http(gw.url, 'GET', '/health')).body.services.users.stats.failures as number;
      const retriedBefore = await retries('users');
      for (let i = 0; i < 30; i++) assert.equal((await http(gw.url, 'GET', `/api/users/refused-${i}`)).status, 502);
      const retried = (await retries('users')) - retriedBefore;
      assert.ok(retried >= 1 && retried <= 8, `retried ${retried} of 30`);
      const failures = (await http(gw.url, 'GET', '/health')).body.services.users.stats.failures as number;
      assert.equal(failures - before, 30, 'a request and its retry are one call with one outcome');
    } finally {
      await proxy.start();
    }
  });
});

