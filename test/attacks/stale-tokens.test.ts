// Tokens that outlive what their account allowed: a demoted or deleted admin, a changed password,
// a logout, and tokens signed by a trusted key with an iat in the future or a lifetime of years.
// Every verifier (gateway, user, order services) must refuse them within 5 s of the change.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SignJWT } from 'jose';
import { DEFAULT_AUDIENCE, DEFAULT_ISSUER } from '../../lib/platform/identity.js';
import { http, type TestResponse } from '../helpers.js';
import { INTERNAL_TOKEN, startSecuredSystem, type SecuredSystem } from '../secured-system.js';

// Small enough for a quick test, the same code path as the 2 s default.
const VERSION_CACHE_MS = 300;
const REVOKED_WITHIN_MS = 5000;
const BOB = 2;
const CAROL = 3;

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

let sys: SecuredSystem;
let alice: string;
let made = 0;

const call = (base: string, method: string, path: string, token: string, body?: unknown): Promise<TestResponse> =>
  http(base, method, path, { headers: bearer(token), ...(body === undefined ? {} : { body }) });
const gw = (method: string, path: string, token: string, body?: unknown) => call(sys.gateway.url, method, path, token, body);

/** A new user made by Alice, and its token. */
async function newUser(role: 'admin' | 'user'): Promise<{ id: number; email: string; password: string; token: string }> {
  const email = `stale-${++made}@example.com`;
  const password = `password-${made}-of-a-test`;
  const res = await gw('POST', '/api/users', alice, { name: `Stale ${made}`, email, role, password });
  assert.equal(res.status, 201, res.text);
  const login = await http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email, password } });
  assert.equal(login.status, 200, login.text);
  return { id: res.body.id as number, email, password, token: login.body.accessToken as string };
}

/**
 * Waits until `token` is refused (401) by the gateway, the user service and the order service,
 * each asked directly; returns the ms it took from `since`. Fails past REVOKED_WITHIN_MS.
 */
async function refusedEverywhere(token: string, ownId: number, since: number): Promise<number> {
  const checks: [string, () => Promise<TestResponse>][] = [
    // The dashboard is the gateway's own (an admin's 200, a user's 403): a 401 is the gateway's verdict.
    // (A public route, such as a product read, takes a token that does not verify as no token.)
    ['gateway', () => gw('GET', '/api/dashboard', token)],
    ['user service', () => call(sys.users.url, 'GET', `/users/${ownId}`, token)],
    ['order service', () => call(sys.orders.url, 'GET', '/orders', token)],
  ];
  for (const [where, check] of checks) {
    for (;;) {
      const res = await check();
      if (res.status === 401) break;
      assert.ok(Date.now() - since < REVOKED_WITHIN_MS, `${where} still answers ${res.status} after ${Date.now() - since} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return Date.now() - since;
}

before(async () => {
  sys = await startSecuredSystem({ versionCacheMs: VERSION_CACHE_MS });
  alice = await sys.login('alice@example.com');
});
after(() => sys.stop());

describe('tokens follow their account', () => {
  test('when an admin is demoted, then within 5 s her token is refused everywhere and cannot promote her again', async () => {
    const eve = await newUser('admin');
    // Her token works as an admin's first, at the gateway and at the services it reaches.
    assert.equal((await gw('GET', '/api/users', eve.token)).status, 200);
    assert.equal((await call(sys.orders.url, 'GET', '/orders', eve.token)).status, 200);
    const demoted = await gw('PUT', `/api/users/${eve.id}`, alice, { role: 'user' });
    assert.equal(demoted.status, 200, demoted.text);
    const since = Date.now();
    await refusedEverywhere(eve.token, eve.id, since);
    assert.equal((await gw('PUT', `/api/users/${eve.id}`, eve.token, { role: 'admin' })).status, 401);
    assert.equal((await call(sys.users.url, 'PUT', `/users/${eve.id}`, eve.token, { role: 'admin' })).status, 401);
    assert.equal((await gw('GET', `/api/users/${eve.id}`, alice)).body.role, 'user');
    // A new login gives her what she has now: a user's rights.
    const again = await http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email: eve.email, password: eve.password } });
    assert.equal((await gw('GET', '/api/users', again.body.accessToken as string)).status, 403);
  });

  test("when an admin is deleted, then within 5 s her token can neither create an admin nor change another user's password", async () => {
    const eve = await newUser('admin');
    assert.equal((await gw('DELETE', `/api/users/${eve.id}`, alice)).status, 204);
    const since = Date.now();
    await refusedEverywhere(eve.token, eve.id, since);
    const created = await gw('POST', '/api/users', eve.token, { name: 'Eve Again', email: 'eve-again@example.com', role: 'admin', password: 'taken-over-account' });
    // Sign-up is public: the revoked token is no one's, and no one may make an admin.
    assert.equal(created.status, 403, created.text);
    assert.equal((await call(sys.users.url, 'POST', '/users', eve.token, { name: 'Eve Again', email: 'eve-again@example.com', role: 'admin' })).status, 401);
    for (const base of [sys.gateway.url, sys.users.url]) {
      const path = base === sys.gateway.url ? `/api/users/${CAROL}` : `/users/${CAROL}`;
      assert.equal((await call(base, 'PUT', path, eve.token, { password: 'taken-over-account' })).status, 401);
    }
    // Carol's password is still hers.
    assert.ok(await sys.login('carol@example.com'));
  });

  test('when a user changes her password, then within 5 s the tokens issued before are refused; the new password gives one that works', async () => {
    const user = await newUser('user');
    const other = (await http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email: user.email, password: user.password } })).body.accessToken as string;
    const changed = await gw('PUT', `/api/users/${user.id}`, user.token, { password: 'a-new-password-now' });
    assert.equal(changed.status, 200, changed.text);
    const since = Date.now();
    await refusedEverywhere(user.token, user.id, since);
    await refusedEverywhere(other, user.id, since);
    const fresh = await http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email: user.email, password: 'a-new-password-now' } });
    assert.equal(fresh.status, 200);
    assert.equal((await gw('GET', `/api/users/${user.id}`, fresh.body.accessToken as string)).status, 200);
  });

  test("when another field changes (the name), then the user's tokens go on working", async () => {
    const user = await newUser('user');
    assert.equal((await gw('PUT', `/api/users/${user.id}`, user.token, { name: 'A New Name' })).status, 200);
    assert.equal((await gw('PUT', `/api/users/${user.id}`, alice, { role: 'user' })).status, 200, 'a role set to what it was');
    // Past the version cache's TTL: what is served is what the user service says now.
    await new Promise((r) => setTimeout(r, VERSION_CACHE_MS + 100));
    assert.equal((await gw('GET', `/api/users/${user.id}`, user.token)).status, 200);
    assert.equal((await call(sys.orders.url, 'GET', '/orders', user.token)).status, 200);
  });
});

describe('POST /api/auth/logout', () => {
  test("when a user logs out, then 204, and within 5 s that token (and the user's others) is refused everywhere", async () => {
    const user = await newUser('user');
    const res = await gw('POST', '/api/auth/logout', user.token);
    assert.equal(res.status, 204, res.text);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    await refusedEverywhere(user.token, user.id, Date.now());
    // Logging out again with it: it is no token any more.
    assert.equal((await gw('POST', '/api/auth/logout', user.token)).status, 401);
    const back = await http(sys.gateway.url, 'POST', '/api/auth/login', { body: { email: user.email, password: user.password } });
    assert.equal((await gw('GET', `/api/users/${user.id}`, back.body.accessToken as string)).status, 200);
  });

  test('when there is no token, then 401 with the challenge, at the gateway and at the user service', async () => {
    const atGateway = await http(sys.gateway.url, 'POST', '/api/auth/logout');
    assert.equal(atGateway.status, 401);
    assert.equal(atGateway.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
    assert.equal((await http(sys.users.url, 'POST', '/auth/logout')).status, 401);
    // In any letter case the router matches, it is the same route, not a public one.
    assert.equal((await http(sys.gateway.url, 'POST', '/API/AUTH/LOGOUT')).status, 401);
  });
});

describe("the user service's token-version route", () => {
  test('when called without INTERNAL_TOKEN, then 401; with another bearer (a user token), 403; with it, the version', async () => {
    assert.equal((await http(sys.users.url, 'GET', `/internal/users/${BOB}/token-version`)).status, 401);
    const bob = await sys.login('bob@example.com');
    assert.equal((await call(sys.users.url, 'GET', `/internal/users/${BOB}/token-version`, bob)).status, 403);
    assert.equal((await http(sys.gateway.url, 'GET', `/api/users/${BOB}/token-version`, { headers: bearer(bob) })).status, 404, 'not reachable through the gateway');
    const answer = await call(sys.users.url, 'GET', `/internal/users/${BOB}/token-version`, INTERNAL_TOKEN);
    assert.equal(answer.status, 200);
    assert.equal(typeof answer.body.tokenVersion, 'number');
    assert.equal((await call(sys.users.url, 'GET', '/internal/users/999999/token-version', INTERNAL_TOKEN)).status, 404);
  });
});

describe('tokens signed by a trusted key with claims we never issue', () => {
  const forge = (claims: { iatS: number; expS: number }) =>
    new SignJWT({ role: 'admin', ver: 0 })
      .setProtectedHeader({ alg: sys.key.alg, kid: sys.key.kid, typ: 'JWT' })
      .setSubject('1').setIssuer(DEFAULT_ISSUER).setAudience(DEFAULT_AUDIENCE)
      .setIssuedAt(claims.iatS).setExpirationTime(claims.expS)
      .sign(sys.key.privateKey);
  const nowS = () => Math.floor(Date.now() / 1000);

  test('when iat is beyond the clock tolerance in the future, or the lifetime is ten years, then 401 at the gateway and at every service', async () => {
    const future = await forge({ iatS: nowS() + 3600, expS: nowS() + 3600 + 600 });
    const tenYears = await forge({ iatS: nowS(), expS: nowS() + 10 * 365 * 24 * 3600 });
    for (const token of [future, tenYears]) {
      assert.equal((await gw('GET', '/api/users', token)).status, 401);
      assert.equal((await call(sys.users.url, 'GET', '/users', token)).status, 401);
      assert.equal((await call(sys.orders.url, 'GET', '/orders', token)).status, 401);
      assert.equal((await call(sys.products.url, 'PUT', '/products/1', token, { price: 0 })).status, 401);
    }
  });

  test('when iat is ahead by less than the clock tolerance (a signer whose clock runs 20 s ahead), then it is accepted', async () => {
    const ahead = await forge({ iatS: nowS() + 20, expS: nowS() + 20 + 900 });
    assert.equal((await gw('GET', '/api/users', ahead)).status, 200);
    assert.equal((await call(sys.orders.url, 'GET', '/orders', ahead)).status, 200);
  });
});
