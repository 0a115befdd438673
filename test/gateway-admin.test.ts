import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { addressCheck, addressRateLimitOf, GatewayConfigSchema } from '../lib/gateway/config.js';
import { parseConfig } from '../lib/platform/config.js';
import { http } from './helpers.js';
import { circuit, deadUrl, startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';

const TOKEN = 'test-admin-token-0123456789';

describe('gateway configuration', () => {
  test('when unset, then the contract defaults apply', () => {
    const c = parseConfig(GatewayConfigSchema, {});
    assert.equal(c.PORT, 3010);
    assert.equal(c.USERS_URL, 'http://127.0.0.1:3011');
    assert.equal(c.RATE_LIMIT, 100);
    assert.equal(c.RATE_WINDOW_MS, 60_000);
    assert.equal(c.TRUST_PROXY, false);
    assert.equal(c.CB_FAILURE_THRESHOLD, 3);
    assert.equal(c.CB_RESET_TIMEOUT_MS, 30_000);
    assert.equal(c.CB_HALF_OPEN_REQUESTS, 2);
    assert.equal(c.UPSTREAM_TIMEOUT_MS, 5000);
    assert.equal(c.ADMIN_TOKEN, undefined);
    assert.equal(addressRateLimitOf(c), 500, 'five clients\' worth per address');
    assert.equal(addressRateLimitOf(parseConfig(GatewayConfigSchema, { RATE_LIMIT: '7' })), 35);
    assert.equal(addressRateLimitOf(parseConfig(GatewayConfigSchema, { RATE_LIMIT: '7', ADDRESS_RATE_LIMIT: '9' })), 9);
    assert.equal(c.ADMIN_ALLOW_ADDRESSES, 'loopback');
    assert.equal(c.DASHBOARD_STREAMS_PER_CLIENT, 5);
  });

  test('when a value is bad, then one line names the variable', () => {
    assert.throws(() => parseConfig(GatewayConfigSchema, { RATE_LIMIT: '-1' }), /^Error: RATE_LIMIT: .*\(got "-1"\)$/);
    assert.throws(() => parseConfig(GatewayConfigSchema, { USERS_URL: 'ftp://x' }), /^Error: USERS_URL: /);
    assert.throws(() => parseConfig(GatewayConfigSchema, { CB_HALF_OPEN_REQUESTS: '0' }), /^Error: CB_HALF_OPEN_REQUESTS: /);
    assert.throws(() => parseConfig(GatewayConfigSchema, { ADMIN_TOKEN: 'short' }), /^Error: ADMIN_TOKEN: /);
    assert.throws(() => parseConfig(GatewayConfigSchema, { ADDRESS_RATE_LIMIT: '0' }), /^Error: ADDRESS_RATE_LIMIT: /);
    assert.throws(() => parseConfig(GatewayConfigSchema, { ADMIN_ALLOW_ADDRESSES: 'the office' }), /^Error: ADMIN_ALLOW_ADDRESSES: /);
    for (const everyone of ['1', 'true']) assert.throws(() => parseConfig(GatewayConfigSchema, { ADMIN_ALLOW_ADDRESSES: everyone }), /^Error: ADMIN_ALLOW_ADDRESSES: .*every address/);
    assert.equal(parseConfig(GatewayConfigSchema, { ADMIN_ALLOW_ADDRESSES: 'loopback, 10.0.0.9, 192.168.0.0/16' }).ADMIN_ALLOW_ADDRESSES, 'loopback, 10.0.0.9, 192.168.0.0/16');
  });

  test('when the admin surface\'s address list is the default, then it holds 127/8 and ::1 (IPv4-mapped too), nothing else', () => {
    const allowed = addressCheck(parseConfig(GatewayConfigSchema, {}).ADMIN_ALLOW_ADDRESSES);
    for (const address of ['127.0.0.1', '127.0.0.2', '::1', '::ffff:127.0.0.1']) assert.equal(allowed(address), true, address);
    for (const address of ['10.0.0.1', '192.0.2.2', '::ffff:192.0.2.2', '2001:db8::1', undefined]) assert.equal(allowed(address), false, String(address));
    assert.equal(addressCheck('loopback, 10.0.0.0/8')('10.1.2.3'), true);
  });

  test('when TRUST_PROXY is true or not an address, then it is refused; hop counts and addresses are kept', () => {
    assert.throws(() => parseConfig(GatewayConfigSchema, { TRUST_PROXY: 'true' }), /^Error: TRUST_PROXY: .*X-Forwarded-For/);
    assert.throws(() => parseConfig(GatewayConfigSchema, { TRUST_PROXY: 'not-an-ip' }), /^Error: TRUST_PROXY: /);
    assert.equal(parseConfig(GatewayConfigSchema, { TRUST_PROXY: '1' }).TRUST_PROXY, 1);
    assert.equal(parseConfig(GatewayConfigSchema, { TRUST_PROXY: 'loopback, 10.0.0.0/8' }).TRUST_PROXY, 'loopback, 10.0.0.0/8');
  });
});

describe('gateway status, debug routes and metrics', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  const extra: StartedGateway[] = [];
  before(async () => {
    up = await startFakeUpstream();
    dead = await deadUrl();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: dead.url, CB_RESET_TIMEOUT_MS: '60000' });
  });
  after(async () => {
    for (const g of extra) await g.close();
    await gw?.close();
    await up?.stop();
    await dead?.close();
  });

  test('when GET /, then it names the gateway, its services and features', async () => {
    const r = await http(gw.url, 'GET', '/');
    assert.equal(r.status, 200);
    assert.equal(r.body.name, 'api-gateway');
    assert.match(r.body.version, /^\d+\.\d+\.\d+/);
    assert.deepEqual(r.body.services.map((s: { name: string }) => s.name), ['users', 'products', 'orders']);
    assert.equal(r.body.services[0].url, up.url);
    assert.equal(r.body.services[0].status, 'healthy');
    assert.ok(r.body.features.includes('circuit-breaker'));
  });

  test('when a service does not answer its probe, then /health is 200 degraded and shows that service unhealthy', async () => {
    const r = await http(gw.url, 'GET', '/health');
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'degraded');
    assert.ok(!Number.isNaN(Date.parse(r.body.timestamp)));
    const { users, orders } = r.body.services;
    assert.equal(users.status, 'healthy');
    assert.equal(users.circuitState, 'CLOSED');
    assert.deepEqual(Object.keys(users.stats).sort(), ['failures', 'lastFailure', 'rejects', 'successes', 'timeouts']);
    assert.equal(users.probe.ok, true);
    assert.equal(orders.status, 'unhealthy');
    assert.equal(orders.circuitState, 'CLOSED');
    assert.deepEqual({ ok: orders.probe.ok, failure: orders.probe.failure }, { ok: false, failure: 'refused' });
  });

  test('when a circuit is open but the service answers its probe, then it is recovering', async () => {
    await circuit(gw.url, 'products', 'open');
    const r = await http(gw.url, 'GET', '/health');
    assert.deepEqual([r.body.services.products.status, r.body.services.products.circuitState], ['recovering', 'OPEN']);
    await circuit(gw.url, 'products', 'reset');
  });

  test('when the debug route names an unknown service or action, then 404 and 400', async () => {
    const service = await circuit(gw.url, 'payments', 'open');
    assert.equal(service.status, 404);
    assert.equal(service.body.code, 'NOT_FOUND');
    const action = await circuit(gw.url, 'users', 'explode');
    assert.equal(action.status, 400);
    assert.equal(action.body.code, 'VALIDATION_ERROR');
    assert.equal((await circuit(gw.url, '__proto__', 'open')).status, 404);
  });

  test('when ADMIN_TOKEN is set, then the debug route needs it as a Bearer token', async () => {
    const guarded = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ADMIN_TOKEN: TOKEN });
    extra.push(guarded);
    const none = await circuit(guarded.url, 'users', 'open');
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'UNAUTHENTICATED');
    assert.equal((await circuit(guarded.url, 'users', 'open', { authorization: `Bearer ${TOKEN}x` })).status, 401);
    assert.equal((await circuit(guarded.url, 'users', 'open', { authorization: TOKEN })).status, 401);
    const ok = await circuit(guarded.url, 'users', 'open', { authorization: `Bearer ${TOKEN}` });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.newState, 'OPEN');
  });

  test('when NODE_ENV=production and no ADMIN_TOKEN, then the debug route does not exist; with a token it does', async () => {
    const bare = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, NODE_ENV: 'production' });
    extra.push(bare);
    const r = await circuit(bare.url, 'users', 'open');
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'NOT_FOUND');
    const withToken = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, NODE_ENV: 'production', ADMIN_TOKEN: TOKEN });
    extra.push(withToken);
    assert.equal((await circuit(withToken.url, 'users', 'close', { authorization: `Bearer ${TOKEN}` })).status, 200);
  });

  test('when /traces is asked, then it lists real traces, and an unknown one is a JSON 404', async () => {
    const list = await http(gw.url, 'GET', '/traces');
    assert.equal(list.status, 200);
    assert.ok(Array.isArray(list.body.traces));
    const r = await http(gw.url, 'GET', '/traces/abc');
    assert.equal(r.status, 404);
    assert.equal(r.body.code, 'NOT_FOUND');
  });

  test('when /metrics is scraped, then it has the process, HTTP and gateway metrics and passes promtool', async (t) => {
    up.behaviour = { kind: 'echo' };
    await http(gw.url, 'GET', '/api/users/1');
    await http(gw.url, 'GET', '/api/orders/1');
    const res = await fetch(gw.url + '/metrics');
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    const text = await res.text();
    for (const name of [
      'process_cpu_seconds_total',
      'http_requests_total',
      'gateway_requests_total',
      'gateway_request_duration_seconds',
      'gateway_upstream_failures_total',
      'gateway_circuit_state',
      'gateway_rate_limited_total',
      'gateway_stale_responses_total',
    ]) {
      assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
    assert.match(text, /gateway_requests_total\{service="users",method="GET",status="200"\} 1/);
    assert.match(text, /gateway_upstream_failures_total\{service="orders",kind="refused"\} 1/);
    assert.match(text, /# HELP gateway_circuit_state .*0 closed, 1 half-open, 2 open/);
    assert.match(text, /gateway_circuit_state\{service="users"\} 0/);
    assert.match(text, /gateway_request_duration_seconds_bucket\{le="0\.005",service="users",method="GET"\}/);

    const promtool = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    if (promtool.error) {
      t.skip('promtool is not installed');
      return;
    }
    assert.equal(promtool.status, 0, promtool.stdout + promtool.stderr);
  });
});
