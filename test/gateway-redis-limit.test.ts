import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { http, type TestResponse } from './helpers.js';
import { deadUrl, eventually, startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import { skipUnless, TEST_REDIS_URL } from './support/services.js';

const REDIS = TEST_REDIS_URL;
/** REDIS's address, for a fault proxy in front of it. */
const REDIS_TARGET = `http://${new URL(REDIS).host}`;
/** REDIS through a proxy on `port`: the same database and credentials. */
const through = (port: number) => Object.assign(new URL(REDIS), { hostname: '127.0.0.1', port: String(port) }).href;

describe('rate limits shared in Redis', { skip: skipUnless('redis') }, () => {
  // Every key this file makes starts with this; they are deleted at the end (never the others').
  const root = `test:gw-rl:${randomUUID()}:`;
  let redis: Redis;
  let up: FakeUpstream;
  const closers: Array<() => Promise<void>> = [];
  let prefixes = 0;

  /** A gateway in front of the fake upstream, counting in Redis under `prefix`. */
  const gatewayWith = async (env: Record<string, string>): Promise<StartedGateway> => {
    const gw = await startGateway({
      USERS_URL: up.url,
      PRODUCTS_URL: up.url,
      ORDERS_URL: up.url,
      LOG_LEVEL: 'info',
      REDIS_COMMAND_TIMEOUT_MS: '500',
      REDIS_CONNECT_TIMEOUT_MS: '500',
      REDIS_RECONNECT_MAX_MS: '50',
      ...env,
    });
    closers.push(gw.close);
    return gw;
  };
  const storeState = async (gw: StartedGateway): Promise<string | undefined> => {
    const r = await http(gw.url, 'GET', '/health');
    return r.body.rateLimitStore?.state as string | undefined;
  };
  const untilStoreIs = (gw: StartedGateway, state: string) => eventually(async () => (await storeState(gw)) === state, 5_000, `store ${state}`);
  const storeLogs = (gw: StartedGateway, level: number) => gw.logs().filter((l) => l.component === 'rate-limit-store' && l.level === level);
  const metric = async (gw: StartedGateway, name: string): Promise<number | undefined> => {
    const text = await (await fetch(gw.url + '/metrics')).text();
    const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const newPrefix = () => `${root}${++prefixes}:`;

  before(async () => {
    redis = new Redis(REDIS, { maxRetriesPerRequest: 1 });
    up = await startFakeUpstream();
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await up?.stop();
    if (redis) {
      const keys: string[] = [];
      let cursor = '0';
      do {
        const [next, batch] = await redis.scan(cursor, 'MATCH', `${root}*`, 'COUNT', 1000);
        cursor = next;
        keys.push(...batch);
      } while (cursor !== '0');
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
    }
  });

  test('when one client sends 130 requests alternately through two gateways with RATE_LIMIT=100, then exactly 100 are 200 and 30 are 429 with the headers of one shared window', async () => {
    const prefix = newPrefix();
    const env = { REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: prefix, RATE_LIMIT: '100' };
    const gws = [await gatewayWith(env), await gatewayWith(env)];
    for (const gw of gws) await untilStoreIs(gw, 'up');
    const answers: TestResponse[] = [];
    for (let i = 0; i < 130; i++) answers.push(await http(gws[i % 2].url, 'GET', `/api/products/${i}`));

    assert.deepEqual(answers.map((a) => a.status), [...Array<number>(100).fill(200), ...Array<number>(30).fill(429)]);
    answers.forEach((a, i) => {
      assert.equal(a.headers.get('x-ratelimit-limit'), '100', `request ${i + 1}`);
      assert.equal(a.headers.get('x-ratelimit-remaining'), String(Math.max(99 - i, 0)), `request ${i + 1}`);
      assert.equal(a.headers.get('ratelimit-policy'), '100;w=60');
    });
    // One window, whichever gateway answered: its end is the same to the second (one rounding apart).
    const resets = answers.map((a) => Number(a.headers.get('x-ratelimit-reset')));
    assert.ok(Math.max(...resets) - Math.min(...resets) <= 1, `one window end (${Math.min(...resets)}..${Math.max(...resets)})`);
    const limited = answers[100];
    assert.equal(limited.body.code, 'RATE_LIMITED');
    assert.ok(limited.body.retryAfter >= 1 && limited.body.retryAfter <= 60);
    assert.equal(limited.headers.get('retry-after'), String(limited.body.retryAfter));
    assert.match(limited.headers.get('ratelimit') ?? '', /^limit=100, remaining=0, reset=\d+$/);
    // The key lives in Redis, under the prefix, with the window as its expiry.
    const ttl = await redis.pttl(`${prefix}api:127.0.0.1`);
    assert.ok(ttl > 0 && ttl <= 60_000, `key expires with the window (${ttl} ms)`);
    assert.equal(await metric(gws[0], 'gateway_rate_limit_store_up'), 1);
  });

  test('when one address sends logins alternately through two gateways with LOGIN_RATE_LIMIT=3, then the 4th and 5th are 429', async () => {
    const env = { REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: newPrefix(), LOGIN_RATE_LIMIT: '3', LOGIN_RATE_WINDOW_MS: '60000' };
    const gws = [await gatewayWith(env), await gatewayWith(env)];
    for (const gw of gws) await untilStoreIs(gw, 'up');
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await http(gws[i % 2].url, 'POST', '/api/auth/login', { body: { email: 'a@example.com', password: 'x' } });
      statuses.push(r.status);
      if (r.status === 429) {
        assert.equal(r.body.code, 'RATE_LIMITED');
        assert.ok(Number(r.headers.get('retry-after')) >= 1);
        assert.equal(r.headers.get('x-ratelimit-limit'), '3');
      }
    }
    assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
  });

  test('when one address sends through two gateways as different callers, then its address limit is shared in Redis too, refused tokens included', async () => {
    const prefix = newPrefix();
    const admin = { authorization: 'Bearer address-limit-admin-token-0123' };
    const env = { REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: prefix, AUTH_MODE: 'required', ADDRESS_RATE_LIMIT: '4', ADMIN_TOKEN: admin.authorization.slice(7) };
    const gws = [await gatewayWith(env), await gatewayWith(env)];
    // In required mode the detailed /health is an admin's.
    for (const gw of gws) await eventually(async () => (await http(gw.url, 'GET', '/health', { headers: admin })).body.rateLimitStore?.state === 'up', 5_000, 'store up');
    const statuses: number[] = [];
    // Anonymous reads of the catalog and refused tokens, alternately through both gateways.
    for (let i = 0; i < 6; i++) {
      const headers: Record<string, string> = i % 2 ? { authorization: `Bearer not.a.token.${i}` } : {};
      statuses.push((await http(gws[i % 2].url, 'GET', i % 2 ? '/api/orders/1' : '/api/products/1', { headers })).status);
    }
    assert.deepEqual(statuses, [200, 401, 200, 401, 429, 429]);
    assert.equal(await redis.get(`${prefix}addr:127.0.0.1`), '6');
  });

  test('when a client pipelines five requests with a shared limit of 3, then the answers come in order: three 200 and two 429', async () => {
    const gw = await gatewayWith({ REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: newPrefix(), RATE_LIMIT: '3' });
    await untilStoreIs(gw, 'up');
    const { hostname, port } = new URL(gw.url);
    const socket = connect(Number(port), hostname);
    const request = (i: number) => `GET /api/products/${i} HTTP/1.1\r\nHost: x\r\n${i === 5 ? 'Connection: close\r\n' : ''}\r\n`;
    socket.write([1, 2, 3, 4, 5].map(request).join(''));
    let raw = '';
    socket.on('data', (c: Buffer) => (raw += c.toString('latin1')));
    await new Promise<void>((resolve, reject) => {
      socket.once('close', () => resolve());
      socket.once('error', reject);
    });
    assert.deepEqual([...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1])), [200, 200, 200, 429, 429]);
    assert.deepEqual([...raw.matchAll(/X-RateLimit-Remaining: (\d+)/gi)].map((m) => Number(m[1])), [2, 1, 0, 0, 0]);
    // Each answer is its own request's: the upstream echoes the path.
    assert.deepEqual([...raw.matchAll(/"url":"(\/[^"]+)"/g)].map((m) => m[1]), ['/products/1', '/products/2', '/products/3']);
  });

  test('when Redis answers a command with an error, then that request is decided locally and the store stays in use', async () => {
    const prefix = newPrefix();
    const gw = await gatewayWith({ REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: prefix, RATE_LIMIT: '5' });
    await untilStoreIs(gw, 'up');
    // INCR refuses a value that is not a number.
    await redis.set(`${prefix}api:127.0.0.1`, 'not a number', 'PX', 60_000);
    const r = await http(gw.url, 'GET', '/api/products/1');
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ratelimit-remaining'), '4');
    assert.equal(await storeState(gw), 'up');
    assert.equal(await metric(gw, 'gateway_rate_limit_store_failures_total'), 1);
    assert.equal(storeLogs(gw, 40).length, 0);
  });

  describe('when Redis cannot be reached', () => {
    let proxy: FaultProxy;
    before(async () => {
      proxy = await startFaultProxy(REDIS_TARGET);
      closers.push(() => proxy.close());
    });

    test('then requests are still served on the local limit, /health and the gauge say degraded, one warn line, and shared counting resumes when it is back', async () => {
      const prefix = newPrefix();
      const gw = await gatewayWith({ REDIS_URL: through(proxy.port), RATE_LIMIT_REDIS_PREFIX: prefix, RATE_LIMIT: '20' });
      // A second gateway straight to Redis: the shared count is visible through it.
      const direct = await gatewayWith({ REDIS_URL: REDIS, RATE_LIMIT_REDIS_PREFIX: prefix, RATE_LIMIT: '20' });
      await untilStoreIs(gw, 'up');
      await untilStoreIs(direct, 'up');
      assert.equal((await http(gw.url, 'GET', '/api/products/1')).headers.get('x-ratelimit-remaining'), '19');

      await proxy.stop();
      // Served, counted here alone: this gateway's own 2nd..6th requests.
      for (let i = 2; i <= 6; i++) {
        const r = await http(gw.url, 'GET', `/api/products/${i}`);
        assert.equal(r.status, 200);
        assert.equal(r.headers.get('x-ratelimit-remaining'), String(20 - i));
      }
      const health = await http(gw.url, 'GET', '/health');
      assert.equal(health.body.status, 'degraded');
      assert.deepEqual(health.body.rateLimitStore, { kind: 'redis', state: 'degraded' });
      assert.equal(await metric(gw, 'gateway_rate_limit_store_up'), 0);

      // Reconnect attempts go on (now reset as they arrive): still one warn line for the outage.
      proxy.fault = { kind: 'reset-before-response' };
      await proxy.start();
      await eventually(() => proxy.accepted >= 4, 5_000, 'reconnect attempts');
      assert.equal(await storeState(gw), 'degraded');
      const warns = storeLogs(gw, 40);
      assert.equal(warns.length, 1, JSON.stringify(warns));
      assert.ok(!JSON.stringify(warns).includes(String(proxy.port)), 'the log line does not name the address');

      proxy.fault = { kind: 'pass' };
      await untilStoreIs(gw, 'up');
      assert.equal(storeLogs(gw, 30).length, 1);
      assert.equal(storeLogs(gw, 40).length, 1);
      assert.equal(await metric(gw, 'gateway_rate_limit_store_up'), 1);
      // Redis counted one request before the outage; both gateways add to it again.
      assert.equal((await http(gw.url, 'GET', '/api/products/7')).headers.get('x-ratelimit-remaining'), '18');
      assert.equal((await http(direct.url, 'GET', '/api/products/8')).headers.get('x-ratelimit-remaining'), '17');
    });

    test('when nothing listens at REDIS_URL from the start, then requests are served on the local limit and /health says degraded', async () => {
      const dead = await deadUrl();
      closers.push(dead.close);
      const gw = await gatewayWith({ REDIS_URL: dead.url.replace('http:', 'redis:'), RATE_LIMIT_REDIS_PREFIX: newPrefix(), RATE_LIMIT: '2' });
      const statuses: number[] = [];
      for (let i = 1; i <= 3; i++) statuses.push((await http(gw.url, 'GET', `/api/products/${i}`)).status);
      assert.deepEqual(statuses, [200, 200, 429]);
      await untilStoreIs(gw, 'degraded');
      assert.equal(await metric(gw, 'gateway_rate_limit_store_up'), 0);
      assert.equal(storeLogs(gw, 40).length, 1);
    });

    test('with RATE_LIMIT_STORE_FAILURE=deny, then requests get 503 RATE_LIMIT_UNAVAILABLE until it is back', async () => {
      proxy.fault = { kind: 'pass' };
      await proxy.start();
      const gw = await gatewayWith({ REDIS_URL: through(proxy.port), RATE_LIMIT_REDIS_PREFIX: newPrefix(), RATE_LIMIT_STORE_FAILURE: 'deny' });
      await untilStoreIs(gw, 'up');
      assert.equal((await http(gw.url, 'GET', '/api/products/1')).status, 200);

      await proxy.stop();
      const refused = await http(gw.url, 'GET', '/api/products/2');
      assert.equal(refused.status, 503);
      assert.equal(refused.body.code, 'RATE_LIMIT_UNAVAILABLE');
      assert.equal(refused.headers.get('retry-after'), '1');
      assert.ok(refused.body.traceId);
      assert.equal((await http(gw.url, 'POST', '/api/auth/login', { body: { email: 'a@example.com', password: 'x' } })).status, 503);

      await proxy.start();
      await untilStoreIs(gw, 'up');
      assert.equal((await http(gw.url, 'GET', '/api/products/3')).status, 200);
    });

    test('when Redis stops answering on a live connection, then the command timeout lets the request through on the local limit', async () => {
      proxy.fault = { kind: 'pass' };
      await proxy.start();
      const gw = await gatewayWith({ REDIS_URL: through(proxy.port), RATE_LIMIT_REDIS_PREFIX: newPrefix(), REDIS_COMMAND_TIMEOUT_MS: '100' });
      await untilStoreIs(gw, 'up');
      proxy.fault = { kind: 'blackhole' };
      const started = Date.now();
      const r = await http(gw.url, 'GET', '/api/products/1');
      assert.equal(r.status, 200);
      assert.ok(Date.now() - started < 2_000, 'answered after the command timeout, not the upstream timeout');
      assert.equal(await storeState(gw), 'degraded');
      assert.ok((await metric(gw, 'gateway_rate_limit_store_failures_total'))! >= 1);
      proxy.fault = { kind: 'pass' };
      await untilStoreIs(gw, 'up');
    });

    test('when Redis answers each new connection\'s handshake but not the limit script, then only the first request waits for it: reconnects are probed off the request path and the store stays degraded until the script is answered', async () => {
      proxy.fault = { kind: 'pass' };
      await proxy.start();
      const gw = await gatewayWith({ REDIS_URL: through(proxy.port), RATE_LIMIT_REDIS_PREFIX: newPrefix(), REDIS_COMMAND_TIMEOUT_MS: '100', RATE_LIMIT: '100000' });
      await untilStoreIs(gw, 'up');
      // The script's commands (EVAL, EVALSHA) wait a second; the handshake (INFO) passes at once.
      proxy.fault = { kind: 'latency', ms: 1_000, matching: 'eval' };
      const acceptedBefore = proxy.accepted;
      const statuses = new Set<number>();
      const states = new Set<string | undefined>();
      // A request every 20 ms or so meets every reconnect: each would be up for a command timeout.
      const until = Date.now() + 1_500;
      for (let i = 1; Date.now() < until; i++) {
        statuses.add((await http(gw.url, 'GET', `/api/products/${i}`)).status);
        states.add(await storeState(gw));
        await sleep(15);
      }
      assert.deepEqual([...statuses], [200]);
      assert.ok(proxy.accepted - acceptedBefore >= 2, `reconnected and probed ${proxy.accepted - acceptedBefore} times`);
      // Each reconnect passed the handshake, yet no request was sent on it.
      assert.deepEqual([...states], ['degraded']);
      assert.equal(await metric(gw, 'gateway_rate_limit_store_failures_total'), 1);
      assert.equal(storeLogs(gw, 40).length, 1);

      proxy.fault = { kind: 'pass' };
      await untilStoreIs(gw, 'up');
      assert.equal(storeLogs(gw, 30).length, 1);
    });
  });
});

describe('rate limits without Redis', () => {
  test('when REDIS_URL is unset, then /health names no limit store and no store gauge is exported', async () => {
    const up = await startFakeUpstream();
    const gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url });
    try {
      const health = await http(gw.url, 'GET', '/health');
      assert.equal(health.body.rateLimitStore, undefined);
      const metrics = await (await fetch(gw.url + '/metrics')).text();
      assert.doesNotMatch(metrics, /gateway_rate_limit_store/);
    } finally {
      await gw.close();
      await up.stop();
    }
  });
});
