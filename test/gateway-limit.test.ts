import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { http } from './helpers.js';
import { startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';

describe('rate limiting', () => {
  let up: FakeUpstream;
  const gateways: StartedGateway[] = [];
  const gatewayWith = async (env: Record<string, string> = {}) => {
    const gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ...env });
    gateways.push(gw);
    return gw;
  };
  before(async () => {
    up = await startFakeUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await up?.stop();
  });

  test('when a client pipelines three requests on one connection with a limit of 2, then the first two are 200 and the third 429', async () => {
    const gw = await gatewayWith({ RATE_LIMIT: '2' });
    const { hostname, port } = new URL(gw.url);
    const socket = connect(Number(port), hostname);
    // Node emits all three 'request' events before any of them is answered.
    const request = (i: number) => `GET /api/products/${i} HTTP/1.1\r\nHost: x\r\n${i === 3 ? 'Connection: close\r\n' : ''}\r\n`;
    socket.write(request(1) + request(2) + request(3));
    let raw = '';
    socket.on('data', (c: Buffer) => (raw += c.toString('latin1')));
    await new Promise<void>((resolve, reject) => {
      socket.once('close', () => resolve());
      socket.once('error', reject);
    });
    const statuses = [...raw.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [200, 200, 429]);
    const remaining = [...raw.matchAll(/X-RateLimit-Remaining: (\d+)/gi)].map((m) => Number(m[1]));
    assert.deepEqual(remaining, [1, 0, 0]);
  });

  test('when a client sends 101 requests in a window, then the 100th is 200 and the 101st is 429 with Retry-After and the contract body, whatever X-Forwarded-For says', async () => {
    const gw = await gatewayWith();
    // The window starts with the first request.
    const windowFrom = Math.floor(Date.now() / 1000) + 60;
    let last = await http(gw.url, 'GET', '/api/products/1', { headers: { 'x-forwarded-for': '10.0.0.1' } });
    const windowTo = Math.ceil(Date.now() / 1000) + 60;
    for (let i = 2; i <= 100; i++) {
      last = await http(gw.url, 'GET', `/api/products/${i}`, { headers: { 'x-forwarded-for': `10.0.${i >> 8}.${i & 255}` } });
      assert.equal(last.status, 200, `request ${i}`);
    }
    assert.equal(last.headers.get('x-ratelimit-limit'), '100');
    assert.equal(last.headers.get('x-ratelimit-remaining'), '0');
    const reset = Number(last.headers.get('x-ratelimit-reset'));
    assert.ok(reset >= windowFrom && reset <= windowTo, `X-RateLimit-Reset is the window's end in Unix seconds (${reset})`);
    assert.equal(last.headers.get('ratelimit-policy'), '100;w=60');
    assert.match(last.headers.get('ratelimit') ?? '', /^limit=100, remaining=0, reset=\d+$/);

    const limited = await http(gw.url, 'GET', '/api/products/101', { headers: { 'x-forwarded-for': '10.9.9.9' } });
    assert.equal(limited.status, 429);
    assert.equal(limited.body.error, 'Too many requests');
    assert.equal(limited.body.code, 'RATE_LIMITED');
    assert.ok(Number.isInteger(limited.body.retryAfter) && limited.body.retryAfter >= 1 && limited.body.retryAfter <= 60);
    assert.equal(limited.headers.get('retry-after'), String(limited.body.retryAfter));
    assert.ok(limited.body.traceId);
    assert.equal(limited.headers.get('x-ratelimit-remaining'), '0');

    const metrics = await (await fetch(gw.url + '/metrics')).text();
    assert.match(metrics, /gateway_rate_limited_total\{[^}]*\} 1\b/);
  });

  test('when the limit is used up, then /, /health, /metrics and /traces are still answered', async () => {
    const gw = await gatewayWith({ RATE_LIMIT: '2' });
    for (let i = 0; i < 3; i++) await http(gw.url, 'GET', '/api/users');
    assert.equal((await http(gw.url, 'GET', '/api/users')).status, 429);
    for (const path of ['/', '/health', '/metrics', '/traces']) {
      const r = await http(gw.url, 'GET', path);
      assert.equal(r.status, 200, path);
      assert.equal(r.headers.get('x-ratelimit-limit'), null, path);
    }
  });

  test('when TRUST_PROXY=1, then each X-Forwarded-For address is its own client, and the service hears the chain', async () => {
    const gw = await gatewayWith({ RATE_LIMIT: '3', TRUST_PROXY: '1' });
    up.seen.length = 0;
    for (let i = 0; i < 10; i++) {
      const r = await http(gw.url, 'GET', '/api/orders', { headers: { 'x-forwarded-for': `203.0.113.${i}` } });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('x-ratelimit-remaining'), '2');
    }
    assert.equal(up.seen[0].headers['x-forwarded-for'], '203.0.113.0, 127.0.0.1');
    for (let i = 0; i < 3; i++) await http(gw.url, 'GET', '/api/orders', { headers: { 'x-forwarded-for': '198.51.100.1' } });
    assert.equal((await http(gw.url, 'GET', '/api/orders', { headers: { 'x-forwarded-for': '198.51.100.1' } })).status, 429);
  });

  test('when an aggregate route is asked, then it counts once however many services it calls', async () => {
    const gw = await gatewayWith({ RATE_LIMIT: '10' });
    const first = await http(gw.url, 'GET', '/api/dashboard');
    assert.equal(first.headers.get('x-ratelimit-remaining'), '9');
    const second = await http(gw.url, 'GET', '/api/users/1/full');
    assert.equal(second.headers.get('x-ratelimit-remaining'), '8');
  });
});
