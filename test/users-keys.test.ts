// Token signing keys kept in PostgreSQL: every instance signs with the same key, a token of one
// verifies through any gateway, and a rotation logs no one out.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JWK } from 'jose';
import type { ServiceDatabaseOptions } from '../lib/platform/config.js';
import { DEFAULT_AUDIENCE, DEFAULT_ISSUER } from '../lib/platform/identity.js';
import { createMetrics } from '../lib/platform/metrics.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserAuth } from './support/service-auth.js';
import { issueToken, loadSigningKey } from '../lib/users/auth.js';
import { openUserDatabase } from '../lib/users/db.js';
import { keysInUse, rotateSigningKey, startStoredKeyRing, type KeyRing } from '../lib/users/signing-keys.js';
import { startGateway, type StartedGateway } from './gateway-helpers.js';
import { http, memoryLogger, startApp } from './helpers.js';
import { spawnService, TS_LOADER } from './process.js';
import { databaseRelay, TEST_DATABASE_URL, testStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { eventually } from './support/eventually.js';

interface Instance {
  url: string;
  db: SqlDatabase;
  keys: KeyRing;
  logs: () => Record<string, unknown>[];
  close(): Promise<void>;
}

async function startInstance(options: ServiceDatabaseOptions, { refreshMs = 50, retainMs = 60_000 } = {}): Promise<Instance> {
  const db = await openUserDatabase(options);
  const { logger, lines } = memoryLogger('user-service');
  const keys = await startStoredKeyRing(db, { refreshMs, retainMs, logger });
  const app = await startApp(createUserApp({ logger, db, metrics: createMetrics('user-service') }, {
    ...openUserAuth(), mode: 'required', keys,
  }));
  return {
    url: app.url,
    db,
    keys,
    logs: lines,
    close: async () => {
      await app.close();
      await keys.close();
      await db.close();
    },
  };
}

const skip = skipUnless('postgres');
const storage = testStorage('postgres');
const where = storage.options('user-service');
let a: Instance;
let b: Instance;
const PASSWORD = 'key-test-password';
let userId: number;

const jwksOf = async (i: { url: string }): Promise<JWK[]> => (await http<{ keys: JWK[] }>(i.url, 'GET', '/.well-known/jwks.json')).body.keys;
const kidsOf = async (i: { url: string }) => (await jwksOf(i)).map((k) => k.kid).sort();
const tokenFrom = async (i: { url: string }): Promise<string> => {
  const r = await http(i.url, 'POST', '/auth/login', { body: { email: 'keys@example.com', password: PASSWORD } });
  assert.equal(r.status, 200, r.text);
  return r.body.accessToken as string;
};
const kidOf = (token: string) => decodeProtectedHeader(token).kid;
/** A gateway in required mode that verifies tokens with B's JWKS and relays to A. */
const gatewayOnB = (): Promise<StartedGateway> =>
  startGateway({ USERS_URL: a.url, PRODUCTS_URL: a.url, ORDERS_URL: a.url, AUTH_MODE: 'required', JWKS_URL: `${b.url}/.well-known/jwks.json` });
const getThrough = (gateway: StartedGateway, token: string) => http(gateway.url, 'GET', `/api/users/${userId}`, { headers: { authorization: `Bearer ${token}` } });
const verifiesWith = async (token: string, keys: JWK[]) =>
  jwtVerify(token, createLocalJWKSet({ keys }), { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE }).then(() => true, () => false);

if (!skip) before(async () => {
  // Both start at once on an empty schema: one of them makes the key, the other reads it.
  [a, b] = await Promise.all([startInstance(where), startInstance(where)]);
  const made = await http(a.url, 'POST', '/users', { body: { name: 'Key Holder', email: 'keys@example.com', password: PASSWORD } });
  assert.equal(made.status, 201);
  userId = made.body.id as number;
});
if (!skip) after(async () => {
  await a.close();
  await b.close();
  await storage.remove();
});

describe('signing keys in PostgreSQL', { skip }, () => {
  test('when two instances start together on an empty schema, then one key is made and both publish only it, without its private part', async () => {
    assert.equal((await a.db.get<{ n: number }>('SELECT count(*) AS n FROM signing_keys'))!.n, 1);
    const [ka, kb] = [await jwksOf(a), await jwksOf(b)];
    assert.deepEqual(ka, kb);
    assert.equal(ka.length, 1);
    assert.ok(!('d' in ka[0]), 'no private part in the JWKS');
  });

  test('when A issues a token, then it verifies with B\'s JWKS, on B, and through a gateway whose JWKS_URL is B\'s', async () => {
    const token = await tokenFrom(a);
    assert.ok(await verifiesWith(token, await jwksOf(b)));
    assert.equal((await http(b.url, 'GET', `/users/${userId}`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    const gateway = await gatewayOnB();
    try {
      const through = await getThrough(gateway, token);
      assert.equal(through.status, 200, through.text);
      // The gateway checks the signature itself: a token of a key no instance holds is refused there.
      const stranger = await issueToken(loadSigningKey(':memory:'), { id: userId, role: 'admin' }, { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 600 });
      assert.equal((await getThrough(gateway, stranger)).status, 401);
    } finally {
      await gateway.close();
    }
  });

  test('when an instance restarts, then it signs with the same key', async () => {
    const before = kidOf(await tokenFrom(a));
    const again = await startInstance(where);
    try {
      assert.equal(kidOf(await tokenFrom(again)), before);
    } finally {
      await again.close();
    }
  });

  test('when a key is rotated, then it is published at once, signs when its time comes, and the old tokens still verify on every instance and the gateway', async () => {
    const oldToken = await tokenFrom(a);
    const oldKid = kidOf(oldToken);
    // Its time is far off at first: published everywhere, signing nowhere yet.
    const rotation = await rotateSigningKey(a.db, { activateAfterMs: 60 * 60_000, retainMs: 60_000 });
    assert.notEqual(rotation.kid, oldKid);
    assert.deepEqual(rotation.removed, []);
    await eventually(async () => (await kidsOf(a)).length === 2 && (await kidsOf(b)).length === 2, 5000, 'both instances publish the new key');
    assert.deepEqual(await kidsOf(b), [oldKid, rotation.kid].sort());
    assert.equal(kidOf(await tokenFrom(a)), oldKid, 'the new key does not sign before its time');
    // A gateway that fetches B's JWKS now knows the new key before any token carries it (a gateway
    // fetches the JWKS again on its own every JWT_KEY_REFRESH_MS, and at once for an unknown kid).
    const gateway = await gatewayOnB();
    after(() => gateway.close());
    assert.equal((await getThrough(gateway, oldToken)).status, 200);

    // Its time comes.
    await a.db.run('UPDATE signing_keys SET active_from_ms = $1 WHERE kid = $2', [Date.now(), rotation.kid]);
    await eventually(async () => kidOf(await tokenFrom(a)) === rotation.kid, 5000, 'A signs with the new key');
    await eventually(async () => kidOf(await tokenFrom(b)) === rotation.kid, 5000, 'B signs with the new key');
    const newToken = await tokenFrom(b);
    const published = await jwksOf(b);
    assert.deepEqual(published.map((k) => k.kid).sort(), [oldKid, rotation.kid].sort());
    assert.ok(await verifiesWith(oldToken, published), 'a token of the old key still verifies');
    assert.ok(await verifiesWith(newToken, published));
    for (const token of [oldToken, newToken]) {
      assert.equal((await http(a.url, 'GET', `/users/${userId}`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
      assert.equal((await getThrough(gateway, token)).status, 200);
    }
  });

  test('when the retention after a newer key took over has passed, then the old key leaves the JWKS and the next rotation deletes it', async () => {
    const current = kidOf(await tokenFrom(a));
    const all = (await a.db.all<{ kid: string }>('SELECT kid FROM signing_keys')).map((r) => r.kid);
    assert.equal(all.length, 2);
    const old = all.find((k) => k !== current)!;
    const short = await startInstance(where, { retainMs: 300 });
    try {
      await eventually(async () => !(await kidsOf(short)).includes(old), 5000, 'the old key leaves the JWKS');
      assert.deepEqual(await kidsOf(short), [current]);
      assert.equal(kidOf(await tokenFrom(short)), current);
    } finally {
      await short.close();
    }
    const next = await rotateSigningKey(a.db, { activateAfterMs: 60 * 60_000, retainMs: 300 });
    assert.deepEqual(next.removed, [old]);
    assert.deepEqual((await a.db.all<{ kid: string }>('SELECT kid FROM signing_keys ORDER BY kid')).map((r) => r.kid), [current, next.kid].sort());
  });

  test('which keys are in use: the newest whose time has come signs; older ones stay published for the retention, future ones already are', () => {
    const keys = [{ kid: 'k1', activeFromMs: 1000 }, { kid: 'k2', activeFromMs: 5000 }, { kid: 'k3', activeFromMs: 9000 }];
    const at = (now: number) => {
      const { signing, published } = keysInUse(keys, now, 2000);
      return [signing?.kid, published.map((k) => k.kid).sort().join(',')];
    };
    assert.deepEqual(at(1000), ['k1', 'k1,k2,k3']);
    assert.deepEqual(at(6999), ['k2', 'k1,k2,k3']);
    assert.deepEqual(at(7000), ['k2', 'k2,k3']);
    assert.deepEqual(at(10_999), ['k3', 'k2,k3']);
    assert.deepEqual(at(11_000), ['k3', 'k3']);
    assert.deepEqual(at(500), ['k1', 'k1,k2,k3'], 'a clock behind every key: the oldest signs');
  });
});

describe('signing keys while PostgreSQL is unreachable', { skip }, () => {
  test('when the database goes away, then the JWKS still lists the keys read last and one warn line says so; logins are 503; when it is back, the keys are read again', async () => {
    const relay = await databaseRelay();
    const svc = await startInstance({ ...where, databaseUrl: relay.url });
    try {
      const kids = await kidsOf(svc);
      await relay.down();
      const warned = () => svc.logs().filter((l) => l.msg === 'cannot read the signing keys; the last ones read stay in use').length;
      await eventually(() => Promise.resolve(warned() === 1), 5000, 'a warn line');
      assert.deepEqual(await kidsOf(svc), kids);
      const login = await http(svc.url, 'POST', '/auth/login', { body: { email: 'keys@example.com', password: PASSWORD } });
      assert.equal(login.body.code, 'STORAGE_UNAVAILABLE');
      await relay.up();
      await eventually(() => Promise.resolve(svc.logs().some((l) => l.msg === 'signing keys read again')), 5000, 'the keys are read again');
      assert.equal(warned(), 1, 'one line per outage');
      assert.ok(!JSON.stringify(svc.logs()).includes('PRIVATE'), 'no key in the logs');
      assert.equal((await http(svc.url, 'POST', '/auth/login', { body: { email: 'keys@example.com', password: PASSWORD } })).status, 200);
    } finally {
      await relay.up().catch(() => {});
      await svc.close();
      await relay.close();
    }
  });
});

describe('the processes', { skip }, () => {
  const ROTATE_KEY = fileURLToPath(new URL('../scripts/rotate-key.ts', import.meta.url));
  const env = { DATABASE_URL: TEST_DATABASE_URL, DATABASE_SCHEMA: where.schema!, JWT_KEY_REFRESH_MS: '100', SEED_DATA: 'false', LOG_LEVEL: 'info' };

  test('npm run rotate-key adds a key and prints its id and time, never the key; user-service.ts with DATABASE_URL publishes the keys of the database', async () => {
    const startedAt = Date.now();
    const child = spawn(process.execPath, ['--import', TS_LOADER, ROTATE_KEY], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, out);
    const printed = JSON.parse(out) as { kid: string; signsFrom: string; removed: string[] };
    assert.ok(!/PRIVATE|BEGIN/.test(out));
    assert.ok(Date.parse(printed.signsFrom) >= startedAt + 3 * 100, 'it signs 3 x JWT_KEY_REFRESH_MS after the command');
    const stored = (await a.db.all<{ kid: string }>('SELECT kid FROM signing_keys')).map((r) => r.kid);
    assert.ok(stored.includes(printed.kid));

    const svc = await spawnService('user-service.ts', env);
    try {
      const kids = await kidsOf(svc);
      assert.ok(kids.includes(printed.kid), `${kids.join(",")} holds the rotated key`);
      await eventually(async () => JSON.stringify(await kidsOf(a)) === JSON.stringify(kids), 5000, 'A publishes the same keys');
      assert.ok(!/PRIVATE|BEGIN/.test(svc.output()), 'no key in the logs');
    } finally {
      await svc.stop();
    }
  });

  test('rotate-key without DATABASE_URL exits 1 with one line', async () => {
    const child = spawn(process.execPath, ['--import', TS_LOADER, ROTATE_KEY], { env: { ...process.env, DATABASE_URL: '', JWT_PRIVATE_KEY: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const [code] = await once(child, 'exit');
    assert.equal(code, 1);
    assert.match(err, /^rotate-key: .*DATABASE_URL.*\n$/);
  });
});
