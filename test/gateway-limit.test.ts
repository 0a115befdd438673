import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { http } from './helpers.js';
import { rawRequest, startFakeUpstream, startGateway, type FakeUpstream, type RawResponse, type StartedGateway } from './gateway-helpers.js';
import { startSecuredSystem, type SecuredSystem } from './secured-system.js';

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

describe('the address limit, which accounts do not multiply', () => {
  // Required mode, RATE_LIMIT 3 per client, ADDRESS_RATE_LIMIT 6 per address. Each test sends from
  // an address of its own (127.0.0.x is another client).
  let sys: SecuredSystem;
  const tokens: string[] = [];
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const send = (from: string, headers: Record<string, string> = {}, path = '/api/orders'): Promise<RawResponse> => rawRequest(sys.gateway.url, 'GET', path, headers, { from });
  before(async () => {
    sys = await startSecuredSystem({ gatewayEnv: { RATE_LIMIT: '3', ADDRESS_RATE_LIMIT: '6' } });
    // Two self-made accounts beside the demo users, signed up and logged in at the user service
    // itself, so that no gateway budget is spent on them.
    const emails = ['alice@example.com', 'bob@example.com', 'carol@example.com'];
    for (const n of [1, 2]) {
      const email = `sock${n}@example.com`;
      const made = await http(sys.users.url, 'POST', '/users', { body: { name: `Sock ${n}`, email, password: 'sock-puppet-password' } });
      assert.equal(made.status, 201, made.text);
      emails.push(email);
    }
    for (const email of emails) {
      const password = email.startsWith('sock') ? 'sock-puppet-password' : 'microservices-demo';
      const login = await http(sys.users.url, 'POST', '/auth/login', { body: { email, password } });
      assert.equal(login.status, 200, login.text);
      tokens.push(login.body.accessToken as string);
    }
  });
  after(() => sys?.stop());

  test('when five accounts call from one address, then together they get ADDRESS_RATE_LIMIT requests, and the address\'s next is 429 whoever sends it', async () => {
    const from = '127.0.0.4';
    const statuses: number[] = [];
    for (const token of tokens) for (let i = 0; i < 2; i++) statuses.push((await send(from, bearer(token))).status);
    // 6 for the address, though each account used only 2 of its 3.
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
    const refused = await send(from, bearer(tokens[4]));
    assert.equal(refused.status, 429);
    const body = JSON.parse(refused.text) as { code: string; retryAfter: number };
    assert.equal(body.code, 'RATE_LIMITED');
    assert.equal(refused.headers['retry-after'], String(body.retryAfter));
    assert.equal(refused.headers['x-ratelimit-limit'], '6', 'the headers name the limit that refused');
    assert.equal(refused.headers['x-ratelimit-remaining'], '0');
    assert.equal((await send(from, {}, '/api/products/1')).status, 429, 'an anonymous request from there too');
    // The accounts themselves are within their limits elsewhere.
    const elsewhere = await send('127.0.0.5', bearer(tokens[4]));
    assert.equal(elsewhere.status, 200);
    assert.equal(elsewhere.headers['x-ratelimit-limit'], '3', 'the headers name the limit closest to refusing');
    assert.equal(elsewhere.headers['x-ratelimit-remaining'], '2');
  });

  test('when an address sends refused tokens, then each costs it a request: after ADDRESS_RATE_LIMIT of them, 429 before any token is checked', async () => {
    const from = '127.0.0.6';
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send(from, bearer(`not.a.token.${i}`))).status);
    assert.deepEqual(statuses, [401, 401, 401, 401, 401, 401]);
    assert.equal((await send(from, bearer('not.a.token.7'))).status, 429);
    assert.equal((await send(from)).status, 429, 'no token: the same address budget');
    assert.equal((await send(from, bearer(tokens[0]))).status, 429, 'a good token from that address waits its turn too');
    assert.equal((await send('127.0.0.7', bearer('not.a.token.8'))).status, 401, 'another address is not charged');
  });
});
