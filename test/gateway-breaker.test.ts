import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { http } from './helpers.js';
import { circuit, circuitState, eventually, startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';

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
    steady = await startGateway({ ...urls, CB_RESET_TIMEOUT_MS: '1000', UPSTREAM_TIMEOUT_MS: '250' });
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
    assert.equal(fourth.headers.get('retry-after'), '1', 'seconds until half-open, rounded up');
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
    for (let i = 0; i < 4; i++) await assert.rejects(fetch(quick.url + '/api/users/1', { signal: AbortSignal.timeout(40) }));
    await new Promise((r) => setTimeout(r, 300));
    const health = await http(quick.url, 'GET', '/health');
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
    assert.equal(refused.headers.get('retry-after'), '1');
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
