import assert from 'node:assert/strict';
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { SignJWT } from 'jose';
import { DEFAULT_AUDIENCE, DEFAULT_ISSUER } from '../lib/platform/identity.js';
import { issueToken } from '../lib/users/auth.js';
import { deadUrl, startGateway } from './gateway-helpers.js';
import { http, type TestResponse } from './helpers.js';
import { ADMIN_TOKEN, INTERNAL_TOKEN, startSecuredSystem, type SecuredSystem } from './secured-system.js';

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const BOB = 2;
const CAROL = 3;

function assertUnauthenticated(r: TestResponse, what: string): void {
  assert.equal(r.status, 401, `${what}: ${r.text}`);
  assert.equal(r.body.code, 'UNAUTHENTICATED', what);
  assert.equal(r.headers.get('www-authenticate'), 'Bearer error="invalid_token"', what);
}

describe('AUTH_MODE=required', () => {
  let sys: SecuredSystem;
  let alice: string;
  let bob: string;
  let carol: string;
  const gw = (method: string, path: string, token?: string, body?: unknown) =>
    http(sys.gateway.url, method, path, { ...(token ? { headers: bearer(token) } : {}), ...(body === undefined ? {} : { body }) });

  before(async () => {
    sys = await startSecuredSystem({ logLevel: 'debug' });
    [alice, bob, carol] = await Promise.all(['alice@example.com', 'bob@example.com', 'carol@example.com'].map((e) => sys.login(e)));
  });
  after(() => sys.stop());

  test('when anonymous, then every action of the open example is refused: 401 with the challenge, 403 for making an admin', async () => {
    const refused: [string, string, unknown?][] = [
      ['GET', '/api/users'],
      ['GET', '/api/users/2'],
      ['PUT', '/api/users/2', { role: 'admin' }],
      ['PUT', '/api/users/2', { email: 'stolen@example.com' }],
      ['DELETE', '/api/users/3'],
      ['POST', '/api/orders', { userId: BOB, items: [{ productId: 1, quantity: 1 }] }],
      ['GET', '/api/orders'],
      ['GET', '/api/orders/3'],
      ['PUT', '/api/orders/2/status', { status: 'cancelled' }],
      ['DELETE', '/api/orders/2'],
      ['PUT', '/api/products/1', { price: 0 }],
      ['PATCH', '/api/products/1/stock', { quantity: 0, operation: 'set' }],
      ['DELETE', '/api/products/1'],
      ['GET', '/api/users/2/full'],
      ['GET', '/api/dashboard'],
      ['GET', '/traces'],
      ['GET', '/traces/0123456789abcdef0123456789abcdef'],
      ['GET', '/spans'],
      ['GET', '/metrics'],
      ['POST', '/debug/circuit/users/open'],
      ['GET', '/API/USERS'],
    ];
    for (const [method, path, body] of refused) assertUnauthenticated(await gw(method, path, undefined, body), `${method} ${path}`);
    const admin = await gw('POST', '/api/users', undefined, { name: 'Mallory', email: 'mallory@example.com', role: 'admin' });
    assert.equal(admin.status, 403);
    assert.equal(admin.body.code, 'FORBIDDEN');
  });

  test('when anonymous, then the public routes answer: product reads, sign-up as a user, login, and /health with only its status', async () => {
    assert.equal((await gw('GET', '/api/products')).status, 200);
    assert.equal((await gw('GET', '/api/products/1')).status, 200);
    const signUp = await gw('POST', '/api/users', undefined, { name: 'Newcomer', email: 'new@example.com', password: 'newcomer-password' });
    assert.equal(signUp.status, 201);
    assert.equal(signUp.body.role, 'user');
    const health = await gw('GET', '/health');
    assert.equal(health.status, 200);
    assert.deepEqual(Object.keys(health.body), ['status']);
  });

  test('when Bob places an order, then he reads and cancels it, lists only his own, and cannot read or touch Carol\'s (404)', async () => {
    const placed = await gw('POST', '/api/orders', bob, { userId: BOB, items: [{ productId: 2, quantity: 1 }] });
    assert.equal(placed.status, 201, placed.text);
    const carolsOrder = await gw('POST', '/api/orders', carol, { userId: CAROL, items: [{ productId: 2, quantity: 1 }] });
    assert.equal(carolsOrder.status, 201, carolsOrder.text);

    assert.equal((await gw('GET', `/api/orders/${placed.body.id}`, bob)).status, 200);
    const list = await gw('GET', '/api/orders', bob);
    assert.ok(list.body.data.length >= 2);
    assert.ok(list.body.data.every((o: { userId: number }) => o.userId === BOB));
    assert.equal((await gw('GET', `/api/orders?userId=${CAROL}`, bob)).status, 403);

    for (const [method, path, body] of [['GET', `/api/orders/${carolsOrder.body.id}`], ['PUT', `/api/orders/${carolsOrder.body.id}/status`, { status: 'cancelled' }], ['DELETE', `/api/orders/${carolsOrder.body.id}`]] as const) {
      const r = await gw(method, path, bob, body);
      assert.equal(r.status, 404, `${method} ${path}`);
    }
    assert.equal((await gw('PUT', `/api/orders/${placed.body.id}/status`, bob, { status: 'confirmed' })).status, 403, 'confirming is an admin\'s');
    const cancelled = await gw('PUT', `/api/orders/${placed.body.id}/status`, bob, { status: 'cancelled' });
    assert.equal(cancelled.status, 200);
    assert.equal(cancelled.body.status, 'cancelled');
    assert.equal((await gw('PUT', '/api/orders/3/status', bob, { status: 'cancelled' })).status, 403, 'his confirmed order is not his to cancel');
  });

  test('when Bob tries what only an admin may, then 403: make himself admin, change a price, list users, order for Carol, the dashboard, traces', async () => {
    const cases: [string, string, unknown?][] = [
      ['PUT', `/api/users/${BOB}`, { role: 'admin' }],
      ['PUT', '/api/products/1', { price: 0 }],
      ['PATCH', '/api/products/1/stock', { quantity: 0, operation: 'set' }],
      ['POST', '/api/products', { name: 'Free thing', price: 0, stock: 1, category: 'x' }],
      ['GET', '/api/users'],
      ['DELETE', `/api/users/${CAROL}`],
      ['POST', '/api/orders', { userId: CAROL, items: [{ productId: 1, quantity: 1 }] }],
      ['GET', '/api/dashboard'],
      ['GET', '/traces'],
      ['GET', '/metrics'],
      ['POST', '/debug/circuit/users/open'],
      ['POST', '/api/users', { name: 'Second Admin', email: 'second@example.com', role: 'admin' }],
    ];
    for (const [method, path, body] of cases) {
      const r = await gw(method, path, bob, body);
      assert.equal(r.status, 403, `${method} ${path}: ${r.text}`);
      assert.equal(r.body.code, 'FORBIDDEN');
    }
    assert.equal((await gw('GET', `/api/users/${CAROL}`, bob)).status, 404);
    assert.equal((await gw('GET', `/api/users/${CAROL}/full`, bob)).status, 404);
    const own = await gw('GET', `/api/users/${BOB}/full`, bob);
    assert.equal(own.status, 200);
    assert.ok(own.body.orders.every((o: { userId: number }) => o.userId === BOB));
    const renamed = await gw('PUT', `/api/users/${BOB}`, bob, { name: 'Robert Smith' });
    assert.equal(renamed.status, 200);
    assert.equal(renamed.body.role, 'user');
  });

  test('when Alice (admin) does the same, then everything is allowed', async () => {
    assert.equal((await gw('GET', '/api/users', alice)).status, 200);
    assert.equal((await gw('GET', `/api/users/${CAROL}/full`, alice)).status, 200);
    assert.equal((await gw('PUT', '/api/products/5', alice, { price: 3.99 })).status, 200);
    assert.equal((await gw('GET', `/api/orders?userId=${BOB}`, alice)).status, 200);
    assert.equal((await gw('PUT', '/api/orders/3/status', alice, { status: 'shipped' })).status, 200);
    const dashboard = await gw('GET', '/api/dashboard', alice);
    assert.equal(dashboard.status, 200);
    assert.equal(dashboard.body.meta.complete, true, JSON.stringify(dashboard.body.meta));
    assert.equal(dashboard.body.services.users.totalUsers >= 3, true);
    const traces = await gw('GET', '/traces', alice);
    assert.equal(traces.status, 200);
    assert.deepEqual(traces.body.meta.unavailable, [], 'the services give the admin their spans');
    assert.ok(traces.body.traces.some((t: { services: string[] }) => t.services.includes('order-service')));
    assert.equal((await gw('GET', '/metrics', alice)).status, 200);
    const health = await gw('GET', '/health', alice);
    assert.ok(health.body.services, 'an admin sees the detailed /health');
    assert.ok((await http(sys.gateway.url, 'GET', '/health', { headers: bearer(ADMIN_TOKEN) })).body.services, 'and so does ADMIN_TOKEN');
    assert.equal((await http(sys.gateway.url, 'GET', '/metrics', { headers: bearer(ADMIN_TOKEN) })).status, 200);
    assert.equal((await gw('POST', '/debug/circuit/users/reset', alice)).status, 200);
    const made = await gw('POST', '/api/users', alice, { name: 'Second Admin', email: 'admin2@example.com', role: 'admin' });
    assert.equal(made.status, 201);
    assert.equal(made.body.role, 'admin');
  });

  test('when a token is signed by another key, has alg none, is HS256 made with the public key, is expired or has the wrong aud, then each is 401', async () => {
    const claims = { role: 'admin' };
    const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    const otherKey = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: sys.key.kid }).setSubject('1').setIssuer(DEFAULT_ISSUER)
      .setAudience(DEFAULT_AUDIENCE).setIssuedAt().setExpirationTime('10m').sign(other);
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const payload = { sub: '1', role: 'admin', iss: DEFAULT_ISSUER, aud: DEFAULT_AUDIENCE, iat: now, exp: now + 600 };
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`;
    const publicPem = createPublicKey(sys.key.privateKey).export({ type: 'spki', format: 'pem' }) as string;
    const hs256 = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256', kid: sys.key.kid }).setSubject('1').setIssuer(DEFAULT_ISSUER)
      .setAudience(DEFAULT_AUDIENCE).setIssuedAt().setExpirationTime('10m').sign(new TextEncoder().encode(publicPem));
    const expired = await new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: sys.key.kid }).setSubject('1').setIssuer(DEFAULT_ISSUER)
      .setAudience(DEFAULT_AUDIENCE).setIssuedAt(now - 1000).setExpirationTime(now - 60).sign(sys.key.privateKey);
    const wrongAud = await issueToken(sys.key, { id: 1, role: 'admin' }, { issuer: DEFAULT_ISSUER, audience: 'another-api', ttlS: 600 });
    const wrongIss = await issueToken(sys.key, { id: 1, role: 'admin' }, { issuer: 'someone-else', audience: DEFAULT_AUDIENCE, ttlS: 600 });
    const good = await issueToken(sys.key, { id: 1, role: 'admin' }, { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 600 });
    assert.equal((await gw('GET', '/api/users', good)).status, 200, 'the same claims signed properly pass');
    for (const [name, token] of Object.entries({ otherKey, none, hs256, expired, wrongAud, wrongIss, garbage: 'not.a.token' })) {
      assertUnauthenticated(await gw('GET', '/api/users', token), name);
      assertUnauthenticated(await gw('POST', '/api/auth/logout', token), `${name} on logout`);
      assert.equal((await http(sys.orders.url, 'GET', '/orders', { headers: bearer(token) })).status, 401, `${name} at the order service`);
    }
    assert.equal((await http(sys.gateway.url, 'GET', '/api/users', { headers: { authorization: `bEaReR ${good}` } })).status, 200, 'the scheme in any case');
    assert.equal((await http(sys.gateway.url, 'GET', '/api/users', { headers: { authorization: `Basic ${good}` } })).status, 401);
  });

  test('when a public route gets a token that does not verify, then it answers as to an anonymous caller, and the token grants nothing', async () => {
    const now = Math.floor(Date.now() / 1000);
    const expiredAdmin = await new SignJWT({ role: 'admin' }).setProtectedHeader({ alg: 'ES256', kid: sys.key.kid }).setSubject('1').setIssuer(DEFAULT_ISSUER)
      .setAudience(DEFAULT_AUDIENCE).setIssuedAt(now - 1000).setExpirationTime(now - 60).sign(sys.key.privateKey);
    for (const [name, token] of Object.entries({ expiredAdmin, garbage: 'garbage' })) {
      for (const [method, path] of [['GET', '/api/products'], ['GET', '/api/products/1'], ['HEAD', '/api/products/1']]) {
        const r = await gw(method, path, token);
        assert.equal(r.status, 200, `${name}: ${method} ${path}: ${r.text}`);
        assert.equal(r.headers.get('www-authenticate'), null);
      }
      // A client that still sends its expired token logs in again.
      const login = await gw('POST', '/api/auth/login', token, { email: 'bob@example.com', password: 'microservices-demo' });
      assert.equal(login.status, 200, `${name}: login: ${login.text}`);
      assert.equal(typeof login.body.accessToken, 'string');
      const signUp = await gw('POST', '/api/users', token, { name: 'Late Comer', email: `late-${name}@example.com`, password: 'late-comer-password' });
      assert.equal(signUp.status, 201, `${name}: sign-up: ${signUp.text}`);
      assert.equal(signUp.body.role, 'user');
      // What only an admin's valid token allows stays refused.
      const admin = await gw('POST', '/api/users', token, { name: 'Mallory', email: `mallory-${name}@example.com`, role: 'admin' });
      assert.equal(admin.status, 403, `${name}: making an admin: ${admin.text}`);
      assert.equal(admin.body.code, 'FORBIDDEN');
      // Routes that are not public stay as strict.
      assertUnauthenticated(await gw('GET', '/api/orders', token), `${name}: GET /api/orders`);
      assertUnauthenticated(await gw('POST', '/api/products', token, { name: 'Nope', price: 1 }), `${name}: POST /api/products`);
    }
  });

  test('when tokens cannot be checked (the JWKS is unreachable), then the public routes still answer while the others are 503', async () => {
    const dead = await deadUrl();
    const blind = await startGateway({
      USERS_URL: sys.users.url, PRODUCTS_URL: sys.products.url, ORDERS_URL: sys.orders.url, AUTH_MODE: 'required', INTERNAL_TOKEN, JWKS_URL: `${dead.url}/jwks.json`,
    });
    try {
      const call = (method: string, path: string, body?: unknown) => http(blind.url, method, path, { headers: bearer(bob), ...(body === undefined ? {} : { body }) });
      assert.equal((await call('GET', '/api/products/1')).status, 200);
      assert.equal((await call('POST', '/api/auth/login', { email: 'bob@example.com', password: 'microservices-demo' })).status, 200);
      const orders = await call('GET', '/api/orders');
      assert.equal(orders.status, 503, orders.text);
      assert.equal(orders.body.code, 'SERVICE_UNAVAILABLE');
    } finally {
      await blind.close();
      await dead.close();
    }
  });

  test('when a client reaches a service port directly, then it cannot act as someone else', async () => {
    assert.equal((await http(sys.orders.url, 'GET', '/orders/3')).status, 401);
    assert.equal((await http(sys.orders.url, 'GET', '/orders/3', { headers: { ...bearer(carol), 'x-user-id': '2', 'x-user-role': 'admin' } })).status, 404);
    assert.equal((await http(sys.users.url, 'PUT', `/users/${CAROL}`, { headers: bearer(carol), body: { role: 'admin' } })).status, 403);
    assert.equal((await http(sys.products.url, 'PUT', '/products/1', { headers: { 'x-user-role': 'admin' }, body: { price: 0 } })).status, 401);
    const reserve = { id: 'direct-1', items: [{ productId: 1, quantity: 1 }] };
    assert.equal((await http(sys.products.url, 'POST', '/internal/reservations', { body: reserve })).status, 401);
    const asAdmin = await http(sys.products.url, 'POST', '/internal/reservations', { headers: bearer(alice), body: reserve });
    assert.equal(asAdmin.status, 403, 'an admin is no service');
    assert.equal(asAdmin.body.error, 'The service credential is wrong', 'a credential was sent: the answer says it is wrong, not missing');
    assert.equal((await http(sys.products.url, 'DELETE', '/internal/reservations/demo-order-2', { headers: bearer(bob) })).status, 403);
    assert.equal((await http(sys.products.url, 'GET', '/internal/reservations/demo-order-2', { headers: bearer(INTERNAL_TOKEN) })).status, 200);
    assert.equal((await http(sys.gateway.url, 'GET', '/api/orders/1', { headers: bearer(INTERNAL_TOKEN) })).status, 401, 'the service credential is no token at the gateway');
    for (const service of [sys.users, sys.products, sys.orders]) {
      for (const path of ['/metrics', '/spans', '/traces']) {
        assertUnauthenticated(await http(service.url, 'GET', path), `${service.url}${path}`);
        assert.equal((await http(service.url, 'GET', path, { headers: bearer(bob) })).status, 403);
        assert.equal((await http(service.url, 'GET', path, { headers: bearer(ADMIN_TOKEN) })).status, 200);
      }
      assert.equal((await http(service.url, 'GET', '/stats')).status, 401);
      assert.equal((await http(service.url, 'GET', '/stats', { headers: bearer(bob) })).status, 403);
      assert.equal((await http(service.url, 'GET', '/stats', { headers: bearer(alice) })).status, 200);
    }
  });

  test('when Carol sends the Idempotency-Key Bob used, then she gets her own order, never a replay of his', async () => {
    const key = 'shared-key-1';
    const order = (token: string, userId: number) =>
      http(sys.gateway.url, 'POST', '/api/orders', { headers: { ...bearer(token), 'idempotency-key': key }, body: { userId, items: [{ productId: 5, quantity: 1 }] } });
    const bobs = await order(bob, BOB);
    assert.equal(bobs.status, 201);
    const again = await order(bob, BOB);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.body.id, bobs.body.id);
    const carols = await order(carol, CAROL);
    assert.equal(carols.status, 201);
    assert.equal(carols.headers.get('idempotent-replayed'), null);
    assert.notEqual(carols.body.id, bobs.body.id);
    assert.equal(carols.body.userId, CAROL);
  });

  test('when logs and spans are read after logins and token requests, then none holds a password, a token or an Authorization value', async () => {
    const traces = await gw('GET', '/traces?limit=100', alice);
    const details = await Promise.all(traces.body.traces.slice(0, 30).map((t: { traceId: string }) => gw('GET', `/traces/${t.traceId}`, alice)));
    const everything = JSON.stringify([
      sys.gateway.logs(), sys.users.logs(), sys.products.logs(), sys.orders.logs(), traces.body, details.map((d) => d.body),
    ]);
    assert.ok(sys.gateway.logs().length > 0 && details.length > 0, 'there is something to look at');
    for (const secret of [alice, bob, carol, 'microservices-demo', 'newcomer-password', INTERNAL_TOKEN, ADMIN_TOKEN, 'Bearer ', 'eyJ', 'scrypt$']) {
      assert.ok(!everything.includes(secret), `no ${secret.slice(0, 12)}... in logs or spans`);
    }
  });

  test('while the user service is down, then Bob gets his own stale profile and Carol never gets Bob\'s', async () => {
    const own = await gw('GET', `/api/users/${BOB}`, bob);
    assert.equal(own.status, 200);
    assert.equal((await gw('GET', `/api/users/${CAROL}`, carol)).status, 200);
    await sys.users.close();
    const stale = await gw('GET', `/api/users/${BOB}`, bob);
    assert.equal(stale.status, 200);
    assert.equal(stale.headers.get('x-cache'), 'STALE');
    const carolAsksBob = await gw('GET', `/api/users/${BOB}`, carol);
    assert.notEqual(carolAsksBob.status, 200);
    assert.ok(!carolAsksBob.text.includes('bob@example.com'));
    const anonymous = await gw('GET', `/api/users/${BOB}`);
    assert.equal(anonymous.status, 401);
  });
});

describe('per-user rate limit', () => {
  let sys: SecuredSystem;
  before(async () => {
    sys = await startSecuredSystem({ gatewayEnv: { RATE_LIMIT: '3', LOGIN_RATE_LIMIT: '2' } });
  });
  after(() => sys.stop());

  test('when Bob used his limit, then his next request is 429 while Carol from the same address still gets through', async () => {
    const bob = await sys.login('bob@example.com');
    const carol = await sys.login('carol@example.com');
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await http(sys.gateway.url, 'GET', '/api/products', { headers: bearer(bob) })).status);
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    assert.equal((await http(sys.gateway.url, 'GET', '/api/products', { headers: bearer(carol) })).status, 200);
  });

  test('when an address tried LOGIN_RATE_LIMIT logins, then its next one is 429', async () => {
    const attempt = () => http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email: 'alice@example.com', password: 'wrong-password' } });
    // Two logins were spent by the previous test.
    const r = await attempt();
    assert.equal(r.status, 429);
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
  });
});

describe('AUTH_MODE=open', () => {
  let sys: SecuredSystem;
  before(async () => {
    sys = await startSecuredSystem({ mode: 'open' });
  });
  after(() => sys.stop());

  test('when a gateway starts open, then it logs one warning saying so', () => {
    const warnings = sys.gateway.logs().filter((l) => l.level === 40 && /AUTH_MODE=open/.test(String(l.msg)));
    assert.equal(warnings.length, 1);
  });

  test('when a valid token comes in open mode, then it is honoured: Bob lists only his orders', async () => {
    const bob = await sys.login('bob@example.com');
    const list = await http(sys.gateway.url, 'GET', '/api/orders', { headers: bearer(bob) });
    assert.equal(list.status, 200);
    assert.ok(list.body.data.every((o: { userId: number }) => o.userId === BOB));
    assert.equal((await http(sys.gateway.url, 'GET', '/api/users', { headers: bearer(bob) })).status, 403, 'his role is honoured too');
    assert.equal((await http(sys.gateway.url, 'GET', '/api/users')).status, 200, 'anonymous requests work as before');
    assert.equal((await http(sys.gateway.url, 'GET', '/api/orders')).body.data.length, 3, 'and see every order, as before');
  });
});

describe('GET / in production', () => {
  test('when NODE_ENV=production, then neither / nor /health names an internal address', async () => {
    // Open mode: /health's details are shown on this machine without a token, so they must hold no address either.
    const gw = await startGateway({ NODE_ENV: 'production', AUTH_MODE: 'open', USERS_URL: 'http://10.1.2.3:3011', PRODUCTS_URL: 'http://10.1.2.4:3012', ORDERS_URL: 'http://10.1.2.5:3013', CB_RESET_TIMEOUT_MS: '60000' });
    try {
      const r = await http(gw.url, 'GET', '/');
      assert.equal(r.status, 200);
      assert.ok(!r.text.includes('10.1.2.'), r.text);
      assert.deepEqual(r.body.services.map((s: { name: string }) => s.name), ['users', 'products', 'orders']);
      const health = await http(gw.url, 'GET', '/health');
      assert.ok(!health.text.includes('10.1.2.'), health.text);
      assert.deepEqual(Object.keys(health.body.services.users.instances[0]).sort(), ['consecutiveFailures', 'latencyMs', 'outstanding', 'state']);
    } finally {
      await gw.close();
    }
  });
});

describe('AUTH_MODE=open with a token that does not verify', () => {
  test('when a client sends one, then the gateway serves it as anonymous without a challenge, a service that reads the caller answers 401, and on a public route it is not passed on', async () => {
    const sys = await startSecuredSystem({ mode: 'open' });
    try {
      const products = await http(sys.gateway.url, 'GET', '/api/products/1', { headers: bearer('not.a.token') });
      assert.equal(products.status, 200);
      assert.equal(products.headers.get('www-authenticate'), null);
      assertUnauthenticated(await http(sys.gateway.url, 'GET', '/api/orders', { headers: bearer('not.a.token') }), 'the order service reads it');
      // Sign-up is public: the token is not passed on, so the user service signs the caller up as anyone.
      const signUp = await http(sys.gateway.url, 'POST', '/api/users', { headers: bearer('not.a.token'), body: { name: 'Open Comer', email: 'open-comer@example.com' } });
      assert.equal(signUp.status, 201, signUp.text);
      assert.equal(signUp.body.role, 'user');
    } finally {
      await sys.stop();
    }
  });
});
