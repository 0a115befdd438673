// The user service's guarantees with several instances on one PostgreSQL schema (two apps, two
// pools), and while PostgreSQL cannot be reached.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ServiceDatabaseOptions } from '../lib/platform/config.js';
import { createMetrics } from '../lib/platform/metrics.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserAuth } from './support/service-auth.js';
import { openUserDatabase } from '../lib/users/db.js';
import { http, memoryLogger, startApp, type TestResponse } from './helpers.js';
import { databaseRelay, testStorage, type DatabaseOutage } from './support/engines.js';
import { skipUnless } from './support/services.js';

interface Instance {
  url: string;
  db: SqlDatabase;
  close(): Promise<void>;
}

async function startInstance(options: ServiceDatabaseOptions): Promise<Instance> {
  const db = await openUserDatabase(options);
  const app = await startApp(createUserApp({ logger: memoryLogger('user-service').logger, db, metrics: createMetrics('user-service') }, { ...openUserAuth(), loginMaxFailures: 3 }));
  return {
    url: app.url,
    db,
    close: async () => {
      await app.close();
      await db.close();
    },
  };
}

const skip = skipUnless('postgres');
const storage = testStorage('postgres');
let a: Instance;
let b: Instance;
if (!skip) before(async () => {
  // Both start at once on an empty schema: the migrations run once.
  [a, b] = await Promise.all([startInstance(storage.options('user-service')), startInstance(storage.options('user-service'))]);
});
if (!skip) after(async () => {
  await a.close();
  await b.close();
  await storage.remove();
});

let seq = 0;
const email = (prefix: string) => `${prefix}.${process.pid}.${++seq}@example.com`;

describe('two instances on one schema', { skip }, () => {
  test('when both create one email in different letter case at once, then exactly one 201 and one 409 EMAIL_TAKEN, every round', async () => {
    for (let round = 0; round < 8; round++) {
      const address = email('Race');
      const answers = await Promise.all([
        http(a.url, 'POST', '/users', { body: { name: 'Racer A', email: address.toLowerCase() } }),
        http(b.url, 'POST', '/users', { body: { name: 'Racer B', email: address.toUpperCase() } }),
      ]);
      assert.deepEqual(answers.map((r) => r.status).sort(), [201, 409], JSON.stringify(answers.map((r) => r.body)));
      assert.equal(answers.find((r) => r.status === 409)!.body.code, 'EMAIL_TAKEN');
    }
  });

  test('when a user changes to an email another holds in another case, then 409 on the other instance too', async () => {
    const first = await http(a.url, 'POST', '/users', { body: { name: 'First One', email: email('taken') } });
    const second = await http(b.url, 'POST', '/users', { body: { name: 'Second One', email: email('free') } });
    const r = await http(b.url, 'PUT', `/users/${second.body.id}`, { body: { email: first.body.email.toUpperCase() } });
    assert.equal(r.status, 409);
    assert.equal(r.body.code, 'EMAIL_TAKEN');
  });

  test('when a user signs up on one instance, then a login in any letter case works on the other', async () => {
    const address = email('login');
    assert.equal((await http(a.url, 'POST', '/users', { body: { name: 'Lee Login', email: address, password: 'lee-password' } })).status, 201);
    const r = await http(b.url, 'POST', '/auth/login', { body: { email: address.toUpperCase(), password: 'lee-password' } });
    assert.equal(r.status, 200, r.text);
  });

  test('when 10 wrong passwords for one email race over both instances, then exactly 3 (the limit) are 401 and the rest 429, the right password too', async () => {
    const address = email('locked');
    assert.equal((await http(a.url, 'POST', '/users', { body: { name: 'Lock Ness', email: address, password: 'right-password' } })).status, 201);
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      http(i % 2 ? a.url : b.url, 'POST', '/auth/login', { body: { email: i % 3 ? address : address.toUpperCase(), password: 'wrong-password' } })));
    const statuses = answers.map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 401).length, 3, String(statuses));
    assert.equal(statuses.filter((s) => s === 429).length, 7, String(statuses));
    const right = await http(b.url, 'POST', '/auth/login', { body: { email: address, password: 'right-password' } });
    assert.equal(right.status, 429);
    assert.ok(Number(right.headers.get('retry-after')) > 0);
  });

  test('ids are never reused and both instances list the same users', async () => {
    const made = await http(a.url, 'POST', '/users', { body: { name: 'Gone Soon', email: email('gone') } });
    assert.equal((await http(b.url, 'DELETE', `/users/${made.body.id}`)).status, 204);
    const next = await http(b.url, 'POST', '/users', { body: { name: 'After Gone', email: email('after') } });
    assert.ok(next.body.id > made.body.id);
    const [listA, listB] = await Promise.all([http(a.url, 'GET', '/users?limit=100'), http(b.url, 'GET', '/users?limit=100')]);
    assert.deepEqual(listA.body, listB.body);
    const stats = await http(a.url, 'GET', '/stats');
    assert.equal(stats.body.totalUsers, listA.body.meta.total);
  });

  test('when a login email holds a NUL (PostgreSQL cannot store it in the failure count), then 400, not a 500', async () => {
    const r = await http(a.url, 'POST', '/auth/login', { body: { email: 'a\u0000b@example.com', password: 'whatever12' } });
    assert.deepEqual([r.status, r.body.code], [400, 'VALIDATION_ERROR']);
  });

  test('when an id is above what a 32-bit column holds (the API takes up to 2^53), then it is not found, not a 500', async () => {
    assert.equal((await http(a.url, 'GET', '/users/3000000000')).status, 404);
    assert.equal((await http(a.url, 'GET', `/users/${Number.MAX_SAFE_INTEGER}`)).status, 404);
  });
});

describe('PostgreSQL unreachable', { skip }, () => {
  let relay: DatabaseOutage;
  let svc: Instance;
  before(async () => {
    relay = await databaseRelay();
    svc = await startInstance({ ...storage.options('user-service'), databaseUrl: relay.url });
  });
  after(async () => {
    await relay.up().catch(() => {});
    await svc.close();
    await relay.close();
  });

  const expect503 = (r: TestResponse) => {
    assert.equal(r.status, 503, r.text);
    assert.equal(r.body.code, 'STORAGE_UNAVAILABLE');
    assert.ok(!/postgres|ECONN|127\.0\.0\.1/.test(r.text), r.text);
  };

  test('when the database goes away, then reads, writes and logins are 503 STORAGE_UNAVAILABLE and /health 503; when it is back, all work again without a restart', async () => {
    const made = await http(svc.url, 'POST', '/users', { body: { name: 'Before Outage', email: email('outage'), password: 'outage-password' } });
    assert.equal(made.status, 201);
    await relay.down();
    expect503(await http(svc.url, 'GET', `/users/${made.body.id}`));
    expect503(await http(svc.url, 'GET', '/users'));
    expect503(await http(svc.url, 'POST', '/users', { body: { name: 'During Outage', email: email('during') } }));
    expect503(await http(svc.url, 'POST', '/auth/login', { body: { email: made.body.email, password: 'outage-password' } }));
    assert.equal((await http(svc.url, 'GET', '/health')).status, 503);
    await relay.up();
    const deadline = Date.now() + 10_000;
    while ((await http(svc.url, 'GET', '/health')).status !== 200) {
      assert.ok(Date.now() < deadline, '/health did not recover');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await http(svc.url, 'GET', `/users/${made.body.id}`)).status, 200);
    assert.equal((await http(svc.url, 'POST', '/users', { body: { name: 'After Outage', email: email('after-outage') } })).status, 201);
    assert.equal((await http(svc.url, 'POST', '/auth/login', { body: { email: made.body.email, password: 'outage-password' } })).status, 200);
  });
});
