// POST /api/auth/login and /api/auth/logout, the gateway's relays to the user service: what a client
// gets back is the user service's answer, with the headers every error answer carries.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createMetrics } from '../lib/platform/metrics.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserDatabase } from '../lib/users/db.js';
import { circuitState, startGateway, type StartedGateway } from './gateway-helpers.js';
import { http, memoryLogger, startApp, tempDir, type Started, type TestResponse } from './helpers.js';
import { openUserAuth } from './support/service-auth.js';

const INTERNAL_TOKEN = 'internal-token-for-login-relay-tests';
const PASSWORD = 'right-password-1';

function assertErrorHeaders(r: TestResponse, what: string): void {
  assert.equal(r.headers.get('x-content-type-options'), 'nosniff', what);
  assert.equal(r.headers.get('cache-control'), 'no-store', what);
}

describe('the login and logout relays', () => {
  let users: Started;
  let db: SqlDatabase;
  let gw: StartedGateway;
  let removeDir: () => void;
  const login = (body: unknown, address = '198.51.100.1') => http(gw.url, 'POST', '/api/auth/login', { body, headers: { 'x-forwarded-for': address } });

  before(async () => {
    const dir = tempDir();
    removeDir = dir.remove;
    db = await openUserDatabase({ dataDir: dir.dir, seed: false });
    // One password check at a time and none waiting: a few logins at once are enough to overload it.
    // scrypt at 2^15 takes tens of milliseconds, so logins sent together overlap.
    users = await startApp(createUserApp({ logger: memoryLogger('user-service', 'warn').logger, db, metrics: createMetrics('user-service') }, {
      ...openUserAuth(), internalToken: INTERNAL_TOKEN, loginMaxFailures: 2, passwordHashCost: 2 ** 15,
      limits: { signupLimit: 1_000_000, hashConcurrency: 1, hashMaxQueue: 0, hashMaxWaitMs: 60_000 },
    }));
    gw = await startGateway({
      USERS_URL: users.url, PRODUCTS_URL: users.url, ORDERS_URL: users.url, INTERNAL_TOKEN, TRUST_PROXY: 'loopback', LOGIN_RATE_LIMIT: '100000', CB_FAILURE_THRESHOLD: '1',
    });
    const made = await http(users.url, 'POST', '/users', { body: { name: 'Ada Lovelace', email: 'ada@example.com', password: PASSWORD } });
    assert.equal(made.status, 201, made.text);
  });
  after(async () => {
    await gw?.close();
    await users?.close();
    await db?.close();
    removeDir?.();
  });

  test('when login or logout is refused by the user service, then the answer carries nosniff and no-store, as every error answer does', async () => {
    const invalid = await login({ email: 'ada@example.com', password: 'wrong-password' }, '198.51.100.2');
    assert.equal(invalid.status, 401);
    assert.equal(invalid.body.code, 'INVALID_CREDENTIALS');
    assertErrorHeaders(invalid, '401 INVALID_CREDENTIALS');

    const malformed = await login({ email: 'ada@example.com' });
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.code, 'VALIDATION_ERROR');
    assertErrorHeaders(malformed, '400 VALIDATION_ERROR');

    for (let i = 0; i < 2; i++) assert.equal((await login({ email: 'ada@example.com', password: 'wrong-password' }, '198.51.100.3')).status, 401);
    const locked = await login({ email: 'ada@example.com', password: 'wrong-password' }, '198.51.100.3');
    assert.equal(locked.status, 429, locked.text);
    assert.equal(locked.body.code, 'RATE_LIMITED');
    assert.ok(Number(locked.headers.get('retry-after')) > 0);
    assertErrorHeaders(locked, '429 RATE_LIMITED');

    const logout = await http(gw.url, 'POST', '/api/auth/logout');
    assert.equal(logout.status, 401);
    assert.equal(logout.body.code, 'UNAUTHENTICATED');
    assert.match(logout.headers.get('www-authenticate') ?? '', /^Bearer/);
    assertErrorHeaders(logout, 'logout 401');

    const good = await login({ email: 'ada@example.com', password: PASSWORD }, '198.51.100.4');
    assert.equal(good.status, 200, good.text);
    assert.equal(good.headers.get('cache-control'), 'no-store');
  });

  test('when the user service\'s password hashing is overloaded, then login\'s 503 OVERLOADED arrives as the service sent it: X-Dependency-Failure, dependency, Retry-After; and the circuit stays closed', async () => {
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => login({ email: `nobody${i}@example.com`, password: 'wrong-password' }, `203.0.113.${i + 1}`)));
    assert.ok(answers.every((a) => a.status === 401 || a.status === 503), answers.map((a) => a.status).join(' '));
    const overloaded = answers.filter((a) => a.status === 503);
    assert.ok(overloaded.length > 0, 'some of them are turned away');
    for (const a of overloaded) {
      const { traceId, ...body } = a.body;
      assert.equal(typeof traceId, 'string');
      assert.deepEqual(body, { error: 'Too many password checks at once, retry shortly', code: 'OVERLOADED', retryAfter: 1, dependency: 'password-hashing' });
      assert.equal(a.headers.get('x-dependency-failure'), 'password-hashing');
      assert.equal(a.headers.get('retry-after'), '1');
      assertErrorHeaders(a, '503 OVERLOADED');
    }
    assert.equal(await circuitState(gw.url, 'users'), 'CLOSED', 'a dependency\'s fault counts neither for nor against the service');
  });
});
