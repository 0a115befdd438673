import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { HttpError } from '../lib/platform/errors.js';
import { ServiceClient, UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { createUserApp } from '../lib/users/app.js';
import { createUsersClient } from '../lib/users/client.js';
import { openUserDatabase } from '../lib/users/db.js';
import { startCheckedService, type CheckedService } from './helpers.js';
import { openUserAuth } from './support/service-auth.js';
import { ENGINES, testStorage, type EngineName, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

type Service = CheckedService;

/**
 * A user service on port 0 over its own database (a temp dir, or a PostgreSQL schema), dropped when
 * it closes. Every answer is checked for leaks.
 */
async function startUserService(engine: EngineName, seed = false, storage: TestStorage = testStorage(engine)): Promise<Service> {
  const svc = await startCheckedService('user-service', openUserDatabase, (deps) => createUserApp(deps, openUserAuth()), seed, storage);
  return { ...svc, close: async () => {
    await svc.close();
    await storage.remove();
  } };
}

const isIso = (s: unknown) => typeof s === 'string' && new Date(s).toISOString() === s;
let seq = 0;
const uniqueEmail = (prefix = 'user') => `${prefix}.${process.pid}.${++seq}@example.com`;

for (const engine of ENGINES) describe(`user service on ${engine}`, { skip: skipUnless(engine) }, () => {
  let svc: Service;
  before(async () => {
    svc = await startUserService(engine);
  });
  after(async () => svc.close());

  async function createUser(body: Record<string, unknown> = {}) {
    const r = await svc.call('POST', '/users', { body: { name: 'Test User', email: uniqueEmail(), ...body } });
    assert.equal(r.status, 201, r.text);
    return r.body as { id: number; name: string; email: string; role: string; createdAt: string; updatedAt: string };
  }

  describe('POST /users', () => {
    test('when valid, then 201 with the user, Location and ISO timestamps; role defaults to user', async () => {
      const email = uniqueEmail();
      const r = await svc.call('POST', '/users', { body: { name: '  Dana Scully ', email } });
      assert.equal(r.status, 201);
      assert.equal(r.headers.get('location'), `/users/${r.body.id}`);
      assert.match(r.headers.get('content-type') ?? '', /^application\/json; charset=utf-8/);
      assert.deepEqual(Object.keys(r.body).sort(), ['createdAt', 'email', 'id', 'name', 'role', 'updatedAt']);
      assert.equal(r.body.name, 'Dana Scully');
      assert.equal(r.body.email, email);
      assert.equal(r.body.role, 'user');
      assert.ok(isIso(r.body.createdAt) && isIso(r.body.updatedAt));
      assert.deepEqual((await svc.call('GET', `/users/${r.body.id}`)).body, r.body);
    });

    test('when the email exists in another case, then 409 EMAIL_TAKEN', async () => {
      const email = uniqueEmail('Case');
      await createUser({ email });
      const r = await svc.call('POST', '/users', { body: { name: 'Other', email: email.toUpperCase() } });
      assert.equal(r.status, 409);
      assert.equal(r.body.code, 'EMAIL_TAKEN');
      assert.equal(r.body.details[0].field, 'email');
    });

    test('when 10 creates with one email race, then exactly one is 201 and the rest 409', async () => {
      const email = uniqueEmail('race');
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => svc.call('POST', '/users', { body: { name: `Racer ${i}`, email } })));
      assert.equal(all.filter((r) => r.status === 201).length, 1);
      assert.ok(all.filter((r) => r.status !== 201).every((r) => r.status === 409 && r.body.code === 'EMAIL_TAKEN'));
    });

    test('when fields are missing or wrong, then 400 VALIDATION_ERROR naming each', async () => {
      const cases: [unknown, string][] = [
        [{ email: uniqueEmail() }, 'name'],
        [{ name: 'A', email: uniqueEmail() }, 'name'],
        [{ name: '   x   ', email: uniqueEmail() }, 'name'],
        [{ name: 'x'.repeat(101), email: uniqueEmail() }, 'name'],
        [{ name: 'Bell\u0007Ringer', email: uniqueEmail() }, 'name'],
        [{ name: 'Valid Name', email: 'not-an-email' }, 'email'],
        [{ name: 'Valid Name', email: `${'a'.repeat(250)}@example.com` }, 'email'],
        [{ name: 'Valid Name', email: uniqueEmail(), role: 'root' }, 'role'],
        [{ name: 42, email: uniqueEmail() }, 'name'],
        [[{ name: 'Valid Name' }], 'body'],
      ];
      for (const [body, field] of cases) {
        const r = await svc.call('POST', '/users', { body });
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
        assert.ok(r.body.details.some((d: { field: string }) => d.field === field), `${JSON.stringify(body)} -> ${JSON.stringify(r.body.details)}`);
      }
    });

    test('when unknown fields are sent (id, createdAt), then 400 naming them and nothing is stored', async () => {
      const email = uniqueEmail();
      const r = await svc.call('POST', '/users', { body: { name: 'Mass Assign', email, id: 999, createdAt: '2000-01-01T00:00:00.000Z' } });
      assert.equal(r.status, 400);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
      assert.match(r.body.details[0].field, /id/);
      assert.match(r.body.details[0].field, /createdAt/);
      assert.equal((await svc.call('POST', '/users', { body: { name: 'Mass Assign', email } })).status, 201);
    });

    test('when the body has a __proto__ key, then 400 naming it', async () => {
      const raw = `{"name":"Proto User","email":"${uniqueEmail()}","__proto__":{"role":"admin"}}`;
      const r = await svc.call('POST', '/users', { raw, headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 400);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
      assert.match(JSON.stringify(r.body.details), /__proto__/);
    });

    test('when the name looks like SQL, then it is stored verbatim and the table survives', async () => {
      const name = "Robert'); DROP TABLE users;--";
      const user = await createUser({ name });
      assert.equal(user.name, name);
      assert.equal((await svc.call('GET', `/users/${user.id}`)).body.name, name);
      assert.equal((await svc.call('GET', '/users')).status, 200);
    });

    test('when the body is malformed, too large, form-encoded or missing, then its contract status', async () => {
      const json = { 'content-type': 'application/json' };
      const bad = await svc.call('POST', '/users', { raw: '{"name": "x",', headers: json });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.code, 'INVALID_JSON');
      const big = await svc.call('POST', '/users', { raw: JSON.stringify({ name: 'x'.repeat(200_000), email: uniqueEmail() }), headers: json });
      assert.equal(big.status, 413);
      assert.equal(big.body.code, 'PAYLOAD_TOO_LARGE');
      const form = await svc.call('POST', '/users', { raw: 'name=Form+User&email=f%40example.com', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      assert.equal(form.status, 415);
      assert.equal(form.body.code, 'UNSUPPORTED_MEDIA_TYPE');
      const none = await svc.call('POST', '/users');
      assert.equal(none.status, 400);
      assert.equal(none.body.code, 'VALIDATION_ERROR');
      assert.equal((await svc.call('GET', '/health')).status, 200, 'still up');
    });
  });

  describe('GET /users', () => {
    let dedicated: Service;
    before(async () => {
      dedicated = await startUserService(engine);
      for (let i = 1; i <= 12; i++) {
        const r = await dedicated.call('POST', '/users', { body: { name: `Person ${i}`, email: `p${i}@example.com`, role: i % 4 === 0 ? 'admin' : 'user' } });
        assert.equal(r.status, 201);
      }
    });
    after(async () => dedicated.close());

    test('when no paging is given, then page 1 of 10 with the total', async () => {
      const r = await dedicated.call('GET', '/users');
      assert.equal(r.status, 200);
      assert.equal(r.body.data.length, 10);
      assert.deepEqual(r.body.meta, { page: 1, limit: 10, total: 12 });
      assert.deepEqual(r.body.data.map((u: { id: number }) => u.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    });

    test('when page and limit are given, then that slice', async () => {
      const r = await dedicated.call('GET', '/users?page=3&limit=5');
      assert.deepEqual(r.body.meta, { page: 3, limit: 5, total: 12 });
      assert.deepEqual(r.body.data.map((u: { id: number }) => u.id), [11, 12]);
      const past = await dedicated.call('GET', '/users?page=9');
      assert.deepEqual(past.body, { data: [], meta: { page: 9, limit: 10, total: 12 } });
    });

    test('when ?role= is given, then only that role, combinable with paging', async () => {
      const admins = await dedicated.call('GET', '/users?role=admin');
      assert.deepEqual(admins.body.data.map((u: { id: number }) => u.id), [4, 8, 12]);
      assert.equal(admins.body.meta.total, 3);
      const page = await dedicated.call('GET', '/users?role=user&limit=2&page=2');
      assert.deepEqual(page.body.data.map((u: { id: number }) => u.id), [3, 5]);
      assert.deepEqual(page.body.meta, { page: 2, limit: 2, total: 9 });
    });

    test('when a query parameter is unknown, repeated or out of range, then 400 VALIDATION_ERROR', async () => {
      for (const q of ['page=0', 'page=-1', 'page=abc', 'limit=0', 'limit=101', 'limit=1.5', 'role=root', 'role=admin&role=user', 'sort=name', '__proto__=x']) {
        const r = await dedicated.call('GET', `/users?${q}`);
        assert.equal(r.status, 400, q);
        assert.equal(r.body.code, 'VALIDATION_ERROR', q);
      }
      const unknown = await dedicated.call('GET', '/users?sort=name');
      assert.equal(unknown.body.details[0].field, 'sort');
    });
  });

  describe('GET /users/:id', () => {
    test('when the user exists, then 200; when not, 404 NOT_FOUND', async () => {
      const user = await createUser();
      assert.deepEqual((await svc.call('GET', `/users/${user.id}`)).body, user);
      const r = await svc.call('GET', '/users/987654');
      assert.equal(r.status, 404);
      assert.equal(r.body.code, 'NOT_FOUND');
    });

    test('when the id is not a positive integer, then 400 VALIDATION_ERROR, never a lookup', async () => {
      for (const id of ['abc', '1.5', '-1', '0', '1abc', '99999999999999999999', '1e3', '%20']) {
        const r = await svc.call('GET', `/users/${id}`);
        assert.equal(r.status, 400, id);
        assert.equal(r.body.code, 'VALIDATION_ERROR', id);
      }
    });
  });

  describe('PUT /users/:id', () => {
    test('when a subset is sent, then only it changes and updatedAt moves', async () => {
      const user = await createUser({ name: 'Before Name' });
      await new Promise((r) => setTimeout(r, 5));
      const r = await svc.call('PUT', `/users/${user.id}`, { body: { role: 'admin' } });
      assert.equal(r.status, 200);
      assert.equal(r.body.role, 'admin');
      assert.equal(r.body.name, 'Before Name');
      assert.equal(r.body.email, user.email);
      assert.equal(r.body.createdAt, user.createdAt);
      assert.ok(r.body.updatedAt > user.updatedAt);
      const both = await svc.call('PUT', `/users/${user.id}`, { body: { name: ' After Name ', role: 'user' } });
      assert.equal(both.body.name, 'After Name');
      assert.equal(both.body.role, 'user');
    });

    test('when the body is empty, then 400', async () => {
      const user = await createUser();
      const r = await svc.call('PUT', `/users/${user.id}`, { body: {} });
      assert.equal(r.status, 400);
      assert.equal(r.body.code, 'VALIDATION_ERROR');
      assert.equal((await svc.call('PUT', `/users/${user.id}`)).status, 400);
    });

    test('when a field is invalid or unknown, then 400 and nothing changes', async () => {
      const user = await createUser();
      for (const body of [{ name: 'A' }, { email: 'nope' }, { role: 'owner' }, { id: 5 }, { name: 'Fine Name', createdAt: 'x' }]) {
        const r = await svc.call('PUT', `/users/${user.id}`, { body });
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
      }
      assert.deepEqual((await svc.call('GET', `/users/${user.id}`)).body, user);
    });

    test("when the email is another user's (any case), then 409 EMAIL_TAKEN; its own in another case is fine", async () => {
      const a = await createUser();
      const b = await createUser();
      const taken = await svc.call('PUT', `/users/${b.id}`, { body: { email: a.email.toUpperCase() } });
      assert.equal(taken.status, 409);
      assert.equal(taken.body.code, 'EMAIL_TAKEN');
      const own = await svc.call('PUT', `/users/${a.id}`, { body: { email: a.email.toUpperCase() } });
      assert.equal(own.status, 200);
      assert.equal(own.body.email, a.email.toUpperCase());
    });

    test('when the user does not exist, then 404; a bad id is 400', async () => {
      assert.equal((await svc.call('PUT', '/users/987654', { body: { name: 'Nobody Here' } })).status, 404);
      assert.equal((await svc.call('PUT', '/users/1abc', { body: { name: 'Nobody Here' } })).status, 400);
    });
  });

  describe('DELETE /users/:id', () => {
    test('when the user exists, then 204 with an empty body; then it is gone (404)', async () => {
      const user = await createUser();
      const r = await svc.call('DELETE', `/users/${user.id}`);
      assert.equal(r.status, 204);
      assert.equal(r.text, '');
      assert.equal((await svc.call('GET', `/users/${user.id}`)).status, 404);
      const again = await svc.call('DELETE', `/users/${user.id}`);
      assert.equal(again.status, 404);
      assert.equal(again.body.code, 'NOT_FOUND');
      assert.equal((await svc.call('DELETE', '/users/-3')).status, 400);
    });

    test('when a user is deleted, then a new user never gets its id', async () => {
      const user = await createUser();
      await svc.call('DELETE', `/users/${user.id}`);
      assert.ok((await createUser()).id > user.id);
    });
  });

  describe('GET /stats and GET /health', () => {
    test('stats count users by role, in the contract field names', async () => {
      const own = await startUserService(engine);
      try {
        assert.deepEqual((await own.call('GET', '/stats')).body, { service: 'user-service', totalUsers: 0, adminUsers: 0, regularUsers: 0 });
        for (const role of ['admin', 'user', 'user']) await own.call('POST', '/users', { body: { name: 'Stat Person', email: uniqueEmail(), role } });
        assert.deepEqual((await own.call('GET', '/stats')).body, { service: 'user-service', totalUsers: 3, adminUsers: 1, regularUsers: 2 });
      } finally {
        await own.close();
      }
    });

    test('health reports the service', async () => {
      assert.deepEqual((await svc.call('GET', '/health')).body, { status: 'healthy', service: 'user-service' });
    });

    test('an unknown route is a JSON 404', async () => {
      const r = await svc.call('GET', '/nothing/here');
      assert.equal(r.status, 404);
      assert.equal(r.body.code, 'NOT_FOUND');
    });
  });

  // A read-only SQLite file; PostgreSQL's outages are in users-postgres.test.ts.
  if (engine === 'sqlite') {
  describe('storage failures', () => {
    test('when the database refuses writes, then writes are 503 STORAGE_UNAVAILABLE, reads work, and writes recover without a restart', async () => {
      const user = await createUser();
      await svc.db.run('PRAGMA query_only = ON');
      try {
        const r = await svc.call('POST', '/users', { body: { name: 'Blocked Write', email: uniqueEmail() } });
        assert.equal(r.status, 503);
        assert.equal(r.body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('PUT', `/users/${user.id}`, { body: { name: 'Blocked Too' } })).body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('DELETE', `/users/${user.id}`)).body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('GET', `/users/${user.id}`)).status, 200);
        assert.equal((await svc.call('GET', '/users')).status, 200);
        assert.equal((await svc.call('GET', '/health')).status, 200);
      } finally {
        await svc.db.run('PRAGMA query_only = OFF');
      }
      assert.equal((await svc.call('POST', '/users', { body: { name: 'Write Again', email: uniqueEmail() } })).status, 201);
    });
  });
  }

  describe('demo data', () => {
    test('when seeded, then 3 users with one admin, written once however often the database is opened', async () => {
      const storage = testStorage(engine);
      await (await openUserDatabase(storage.options('user-service', true))).close();
      await (await openUserDatabase(storage.options('user-service', true))).close();
      const seeded = await startUserService(engine, true, storage);
      try {
        const r = await seeded.call('GET', '/users');
        assert.equal(r.body.meta.total, 3);
        assert.deepEqual(r.body.data.map((u: { id: number; role: string }) => [u.id, u.role]), [[1, 'admin'], [2, 'user'], [3, 'user']]);
      } finally {
        await seeded.close();
      }
    });

    test('when the database already holds users, then a seeded start adds no demo rows', async () => {
      const storage = testStorage(engine);
      const db = await openUserDatabase(storage.options('user-service'));
      await db.run("INSERT INTO users (name, email, role, created_at, updated_at) VALUES ('Own', 'alice@example.com', 'user', 'x', 'x')");
      await db.close();
      const later = await startUserService(engine, true, storage);
      try {
        assert.equal((await later.call('GET', '/users')).body.meta.total, 1);
      } finally {
        await later.close();
      }
    });
  });

  describe('users client', () => {
    test('getUser returns the user, null for 404, and throws UpstreamUnavailableError when the service is down', async () => {
      const user = await createUser();
      const client = createUsersClient(new ServiceClient({ name: 'users', baseUrl: svc.url, timeoutMs: 2_000 }));
      assert.deepEqual(await client.getUser(user.id), user);
      assert.equal(await client.getUser(987654), null);
      await assert.rejects(client.getUser(0), (err: unknown) => err instanceof HttpError && err.status === 400);
      const down = await startUserService(engine);
      const downUrl = down.url;
      await down.close();
      const dead = createUsersClient(new ServiceClient({ name: 'users', baseUrl: downUrl, timeoutMs: 2_000 }));
      await assert.rejects(dead.getUser(1), (err: unknown) => err instanceof UpstreamUnavailableError && err.failure === 'refused');
    });
  });
});
