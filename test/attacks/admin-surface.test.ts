// Anonymous clients on other machines against the admin surface of an open-mode gateway: circuits,
// faults, traces, metrics, the detailed /health, the dashboard and its streams, and the services'
// own /internal routes. "Another machine" is another loopback address (127.0.0.2...) with
// ADMIN_ALLOW_ADDRESSES narrowed to 127.0.0.1, or the machine's own network address where it has one.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { networkInterfaces } from 'node:os';
import { createFaultSwitches } from '../../lib/platform/faults.js';
import { closeServer, listen } from '../../lib/platform/server.js';
import { createMetrics } from '../../lib/platform/metrics.js';
import { createProductApp } from '../../lib/products/app.js';
import { openProductDatabase } from '../../lib/products/db.js';
import { memoryLogger, tempDir } from '../helpers.js';
import { openServiceAuth } from '../support/service-auth.js';
import { startSecuredSystem, type SecuredSystem } from '../secured-system.js';
import { circuitState, rawRequest, startFakeUpstream, startGateway, type FakeUpstream, type RawResponse, type StartedGateway } from '../gateway-helpers.js';

const TOKEN = 'admin-surface-token-0123456789';
const INTERNAL = 'internal-surface-token-0123456789';
const ELSEWHERE = '127.0.0.2';

/** Every admin route, as a request that would act or read if let in. */
const ADMIN_ROUTES: [string, string][] = [
  ['POST', '/debug/circuit/products/open'],
  ['GET', '/debug/faults'],
  ['GET', '/traces'],
  ['GET', '/traces/0123456789abcdef0123456789abcdef'],
  ['GET', '/spans'],
  ['GET', '/metrics'],
  ['GET', '/api/dashboard'],
];

const json = (r: RawResponse) => JSON.parse(r.text) as Record<string, any>;

/** Opens the dashboard's event stream from `from`; resolves with its status once headers arrive, and a way to close it. */
function openStream(base: string, from: string, headers: Record<string, string> = {}): Promise<{ status: number; retryAfter?: string; close: () => void }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, path: '/dashboard/events', headers, agent: false, localAddress: from, timeout: 5000 }, (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'], close: () => req.destroy() });
    });
    req.once('timeout', () => req.destroy(new Error('no answer in time')));
    req.once('error', (err) => {
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') reject(err);
    });
    req.end();
  });
}

describe('the admin surface in open mode without ADMIN_TOKEN', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ADMIN_ALLOW_ADDRESSES: '127.0.0.1', DASHBOARD_STREAMS_PER_CLIENT: '2' });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when a client on another address asks any admin route, then 403 ADDRESS_NOT_ALLOWED and nothing changes', async () => {
    for (const [method, path] of ADMIN_ROUTES) {
      const r = await rawRequest(gw.url, method, path, {}, { from: ELSEWHERE });
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(json(r).code, 'ADDRESS_NOT_ALLOWED', `${method} ${path}`);
    }
    const faults = await rawRequest(gw.url, 'POST', '/debug/faults/users', { 'content-type': 'application/json' }, { from: ELSEWHERE, body: '{"down":true}' });
    assert.equal(faults.status, 403);
    assert.equal((await openStream(gw.url, ELSEWHERE)).status, 403);
    assert.equal(await circuitState(gw.url, 'products'), 'CLOSED');
    assert.equal(up.seen.filter((s) => s.url.startsWith('/internal')).length, 0, 'no fault switch call went out');
  });

  test('when a client on another address asks /health and /, then it gets the status and the service names, without addresses', async () => {
    const health = await rawRequest(gw.url, 'GET', '/health', {}, { from: ELSEWHERE });
    assert.equal(health.status, 200);
    assert.deepEqual(Object.keys(json(health)), ['status']);
    const root = json(await rawRequest(gw.url, 'GET', '/', {}, { from: ELSEWHERE }));
    assert.deepEqual(root.services, [{ name: 'users', status: 'healthy' }, { name: 'products', status: 'healthy' }, { name: 'orders', status: 'healthy' }]);
    assert.doesNotMatch(JSON.stringify(root), /127\.0\.0\.1|http:/);
    assert.equal((await rawRequest(gw.url, 'GET', '/api/products/1', {}, { from: ELSEWHERE })).status, 200, 'the API itself is not the admin surface');
  });

  test('when the operator asks from this machine without a token, then every admin route answers, as the example\'s curl lines expect', async () => {
    const open = await rawRequest(gw.url, 'POST', '/debug/circuit/users/open');
    assert.equal(open.status, 200, open.text);
    assert.equal(json(open).newState, 'OPEN');
    assert.equal((await rawRequest(gw.url, 'POST', '/debug/circuit/users/reset')).status, 200);
    for (const [method, path] of ADMIN_ROUTES.filter(([m]) => m === 'GET')) {
      const r = await rawRequest(gw.url, method, path);
      assert.ok(r.status === 200 || (path.startsWith('/traces/') && r.status === 404), `${method} ${path}: ${r.status} ${r.text.slice(0, 200)}`);
    }
    const health = json(await rawRequest(gw.url, 'GET', '/health'));
    assert.ok(health.services?.users?.circuitState, 'the detailed /health');
    const root = json(await rawRequest(gw.url, 'GET', '/'));
    assert.equal(root.services[0].url, up.url);
    assert.deepEqual(root.services[0].instances, [up.url]);
  });

  test('when a proxy on this machine relays another client (TRUST_PROXY), then that client is refused; its own requests pass', async () => {
    const proxied = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, TRUST_PROXY: 'loopback' });
    try {
      const relayed = await rawRequest(proxied.url, 'POST', '/debug/circuit/users/open', { 'x-forwarded-for': '203.0.113.9' });
      assert.equal(relayed.status, 403);
      assert.equal(json(relayed).code, 'ADDRESS_NOT_ALLOWED');
      assert.equal((await rawRequest(proxied.url, 'GET', '/metrics', { 'x-forwarded-for': '203.0.113.9' })).status, 403);
      assert.equal((await rawRequest(proxied.url, 'GET', '/metrics')).status, 200);
    } finally {
      await proxied.close();
    }
  });

  test('when one client opens more dashboard streams than its share, then 429 TOO_MANY_STREAMS; other clients still get theirs, and a closed stream frees its place', async () => {
    const mine = [await openStream(gw.url, '127.0.0.1'), await openStream(gw.url, '127.0.0.1')];
    const other = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, DASHBOARD_STREAMS_PER_CLIENT: '2' });
    const theirs: { close: () => void }[] = [];
    try {
      assert.deepEqual(mine.map((s) => s.status), [200, 200]);
      const third = await openStream(gw.url, '127.0.0.1');
      third.close();
      assert.equal(third.status, 429);
      assert.equal(third.retryAfter, '5');
      // On a gateway that lets all of 127/8 in, another loopback address is another client.
      theirs.push(await openStream(other.url, '127.0.0.3'), await openStream(other.url, '127.0.0.4'));
      assert.equal((await openStream(other.url, '127.0.0.3').then((s) => (s.close(), s))).status, 200, 'the default list is all of 127/8');
      mine.pop()!.close();
      const deadline = Date.now() + 3000;
      let again = await openStream(gw.url, '127.0.0.1');
      while (again.status !== 200 && Date.now() < deadline) {
        again.close();
        await new Promise((r) => setTimeout(r, 20));
        again = await openStream(gw.url, '127.0.0.1');
      }
      mine.push(again);
      assert.equal(again.status, 200, 'the closed stream freed its place');
    } finally {
      for (const s of [...mine, ...theirs]) s.close();
      await other.close();
    }
  });
});

describe('the admin surface with ADMIN_TOKEN in open mode', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ADMIN_TOKEN: TOKEN });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when a client on this machine comes without the token, then every admin route is 401; with it, each answers', async () => {
    for (const [method, path] of ADMIN_ROUTES) {
      const r = await rawRequest(gw.url, method, path);
      assert.equal(r.status, 401, `${method} ${path}: ${r.text}`);
      assert.equal(json(r).code, 'UNAUTHENTICATED', `${method} ${path}`);
      const wrong = await rawRequest(gw.url, method, path, { authorization: `Bearer ${TOKEN}x` });
      assert.equal(wrong.status, 401, `${method} ${path} with a wrong token`);
    }
    assert.equal((await openStream(gw.url, '127.0.0.1')).status, 401);
    const auth = { authorization: `Bearer ${TOKEN}` };
    for (const [method, path] of ADMIN_ROUTES) {
      const r = await rawRequest(gw.url, method, path, auth, { from: ELSEWHERE });
      assert.ok(r.status === 200 || (path.startsWith('/traces/') && r.status === 404), `${method} ${path} with the token from elsewhere: ${r.status}`);
    }
    assert.equal((await rawRequest(gw.url, 'POST', '/debug/circuit/products/reset', auth)).status, 200);
  });

  test('when /api/dashboard is asked with ADMIN_TOKEN, then the services are asked as an anonymous caller: the gateway\'s secret does not travel', async () => {
    up.seen.length = 0;
    const r = await rawRequest(gw.url, 'GET', '/api/dashboard', { authorization: `Bearer ${TOKEN}` });
    assert.equal(r.status, 200, r.text);
    const stats = up.seen.filter((s) => s.url === '/stats');
    assert.equal(stats.length, 3);
    assert.ok(stats.every((s) => s.headers.authorization === undefined));
  });

  test('when the gateway requires tokens, then an anonymous GET / names the services and their states, never where they live', async () => {
    const required = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, AUTH_MODE: 'required' });
    try {
      const root = await rawRequest(required.url, 'GET', '/');
      assert.equal(root.status, 200);
      assert.deepEqual(json(root).services.map((s: Record<string, unknown>) => Object.keys(s)), [['name', 'status'], ['name', 'status'], ['name', 'status']]);
      assert.ok(!root.text.includes(up.url), root.text);
    } finally {
      await required.close();
    }
  });

  test('when /health and / are asked without the token, then only the status and names; with it, the details and addresses', async () => {
    assert.deepEqual(Object.keys(json(await rawRequest(gw.url, 'GET', '/health'))), ['status']);
    assert.equal(json(await rawRequest(gw.url, 'GET', '/')).services[0].url, undefined);
    const auth = { authorization: `Bearer ${TOKEN}` };
    assert.ok(json(await rawRequest(gw.url, 'GET', '/health', auth)).services);
    assert.equal(json(await rawRequest(gw.url, 'GET', '/', auth)).services[0].url, up.url);
  });
});

describe('the admin surface in open mode without ADMIN_TOKEN, for token holders elsewhere', () => {
  let sys: SecuredSystem;
  let alice: string;
  let bob: string;
  before(async () => {
    // Open mode, no ADMIN_TOKEN at the gateway (an empty value is unset), only 127.0.0.1 let in bare.
    sys = await startSecuredSystem({ mode: 'open', gatewayEnv: { ADMIN_TOKEN: '', ADMIN_ALLOW_ADDRESSES: '127.0.0.1' } });
    [alice, bob] = await Promise.all(['alice@example.com', 'bob@example.com'].map((e) => sys.login(e)));
  });
  after(() => sys?.stop());

  test('when an admin\'s JWT comes from another address, then it is let in; a user\'s is not', async () => {
    for (const [method, path] of ADMIN_ROUTES.filter(([m]) => m === 'GET')) {
      const admin = await rawRequest(sys.gateway.url, method, path, { authorization: `Bearer ${alice}` }, { from: ELSEWHERE });
      assert.ok(admin.status === 200 || (path.startsWith('/traces/') && admin.status === 404), `${path} with an admin's token: ${admin.status} ${admin.text.slice(0, 200)}`);
      const user = await rawRequest(sys.gateway.url, method, path, { authorization: `Bearer ${bob}` }, { from: ELSEWHERE });
      assert.equal(user.status, 403, `${path} with a user's token`);
    }
    const dashboard = json(await rawRequest(sys.gateway.url, 'GET', '/api/dashboard', { authorization: `Bearer ${alice}` }, { from: ELSEWHERE }));
    assert.deepEqual(dashboard.meta, { complete: true, unavailable: [] }, 'the services answered the admin');
  });
});

/** An IPv4 address of this machine that is not loopback, if it has one. */
function networkAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

describe('a service\'s /internal routes', () => {
  const dir = tempDir('msvc-internal-');
  const started: { url: string; close: () => Promise<void> }[] = [];
  const startProducts = async (host: string, internalToken?: string) => {
    const db = await openProductDatabase({ dataDir: dir.dir, seed: false });
    const app = createProductApp({ logger: memoryLogger('product-service', 'warn').logger, db, metrics: createMetrics('product-service'), faults: createFaultSwitches(), internalToken }, openServiceAuth());
    const listening = await listen(app, 0, host);
    const handle = { url: listening.url, close: async () => { await closeServer(listening.server, 2000); await db.close(); } };
    started.push(handle);
    return handle;
  };
  after(async () => {
    for (const s of started) await s.close();
    dir.remove();
  });

  test('when INTERNAL_TOKEN is set, then /internal/faults and /internal/reservations need it, from this machine too', async () => {
    const svc = await startProducts('127.0.0.1', INTERNAL);
    for (const path of ['/internal/faults', '/internal/reservations/r1']) {
      const none = await rawRequest(svc.url, 'GET', path);
      assert.equal(none.status, 401, path);
      assert.equal(json(none).code, 'UNAUTHENTICATED');
      assert.equal((await rawRequest(svc.url, 'GET', path, { authorization: `Bearer ${TOKEN}` })).status, 403, `${path}: another secret`);
    }
    assert.equal((await rawRequest(svc.url, 'GET', '/internal/faults', { authorization: `Bearer ${INTERNAL}` })).status, 200);
    assert.equal((await rawRequest(svc.url, 'GET', '/internal/reservations/r1', { authorization: `Bearer ${INTERNAL}` })).status, 404, 'let in: no such reservation');
  });

  test('when a gateway holds the same INTERNAL_TOKEN, then its fault switches reach the service', async () => {
    const svc = await startProducts('127.0.0.1', INTERNAL);
    const gw = await startGateway({ USERS_URL: svc.url, PRODUCTS_URL: svc.url, ORDERS_URL: svc.url, INTERNAL_TOKEN: INTERNAL });
    try {
      const r = await rawRequest(gw.url, 'POST', '/debug/faults/products', { 'content-type': 'application/json' }, { body: '{"latencyMs":1}' });
      assert.equal(r.status, 200, r.text);
      assert.equal(json(r).reached, 1);
      assert.equal(json(await rawRequest(svc.url, 'GET', '/internal/faults', { authorization: `Bearer ${INTERNAL}` })).latencyMs, 1);
    } finally {
      await gw.close();
    }
  });

  test('when INTERNAL_TOKEN is unset, then /internal answers this machine and refuses another (403)', async (t) => {
    const address = networkAddress();
    if (address === undefined) return t.skip('this machine has no network address besides loopback');
    // Listening on the network address, a client connecting to it comes from it: not loopback.
    const svc = await startProducts(address);
    const fromNetwork = await rawRequest(svc.url, 'GET', '/internal/faults');
    assert.equal(fromNetwork.status, 403, fromNetwork.text);
    assert.equal(json(fromNetwork).code, 'FORBIDDEN');
    assert.equal((await rawRequest(svc.url, 'POST', '/internal/faults', { 'content-type': 'application/json' }, { body: '{"down":true}' })).status, 403);
    const local = await startProducts('127.0.0.1');
    assert.equal((await rawRequest(local.url, 'GET', '/internal/faults', {}, { from: ELSEWHERE })).status, 200, 'all of 127/8 is this machine');
  });
});
