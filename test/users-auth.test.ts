import assert from 'node:assert/strict';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { createMetrics } from '../lib/platform/metrics.js';
import { DEFAULT_AUDIENCE, DEFAULT_ISSUER } from '../lib/platform/identity.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserAuth } from './support/service-auth.js';
import { HttpError } from '../lib/platform/errors.js';
import { DEFAULT_PASSWORD_HASH_COST, hashPassword, loadSigningKey, MIN_PASSWORD_HASH_COST, SIGNING_KEY_FILE, verifyPassword } from '../lib/users/auth.js';
import { UserConfigSchema } from '../lib/users/config.js';
import { ConfigError, parseConfig } from '../lib/platform/config.js';
import { openUserDatabase, setDemoPasswords } from '../lib/users/db.js';
import { createLoginLockout } from '../lib/users/lockout.js';
import { http, memoryLogger, startApp, tempDir, type Started } from './helpers.js';
import { ENGINES, testStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

describe('user service logins', () => {
  const dir = tempDir();
  const { logger, lines } = memoryLogger('user-service');
  let app: Started;
  let db: SqlDatabase;

  before(async () => {
    db = await openUserDatabase({ dataDir: dir.dir, seed: false });
    app = await startApp(createUserApp({ logger, db, metrics: createMetrics('user-service') }, { ...openUserAuth(), loginMaxFailures: 3 }));
  });
  after(async () => {
    await app.close();
    await db.close();
    dir.remove();
  });

  const signUp = (email: string, password?: string) =>
    http(app.url, 'POST', '/users', { body: { name: 'Dora Test', email, ...(password ? { password } : {}) } });

  test('when a user signs up with a password, then it is never answered and a login gives a token with sub, role, iss, aud, exp and kid', async () => {
    const created = await signUp('dora@example.com', 'correct horse battery');
    assert.equal(created.status, 201);
    assert.ok(!('password' in created.body) && !('passwordHash' in created.body));
    assert.ok(!created.text.includes('correct horse'));

    const res = await http(app.url, 'POST', '/auth/login', { body: { email: 'DORA@example.com', password: 'correct horse battery' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.equal(res.body.tokenType, 'Bearer');
    assert.equal(res.body.expiresIn, 900);
    const jwks = await http(app.url, 'GET', '/.well-known/jwks.json');
    assert.equal(jwks.status, 200);
    assert.equal(jwks.body.keys.length, 1);
    assert.ok(!('d' in jwks.body.keys[0]), 'no private part in the JWKS');
    const { payload } = await jwtVerify(res.body.accessToken, createLocalJWKSet(jwks.body), { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE });
    assert.equal(payload.sub, String(created.body.id));
    assert.equal(payload.role, 'user');
    assert.equal(payload.exp! - payload.iat!, 900);
    const header = decodeProtectedHeader(res.body.accessToken);
    assert.equal(header.alg, 'ES256');
    assert.equal(header.kid, jwks.body.keys[0].kid);
  });

  test('when the password is wrong, the email unknown or the user has none, then each is the same 401 INVALID_CREDENTIALS', async () => {
    await signUp('nopass@example.com');
    const answers = await Promise.all([
      http(app.url, 'POST', '/auth/login', { body: { email: 'dora@example.com', password: 'wrong password' } }),
      http(app.url, 'POST', '/auth/login', { body: { email: 'nobody@example.com', password: 'whatever1' } }),
      http(app.url, 'POST', '/auth/login', { body: { email: 'nopass@example.com', password: 'whatever1' } }),
    ]);
    for (const a of answers) {
      assert.equal(a.status, 401);
      assert.equal(a.body.code, 'INVALID_CREDENTIALS');
      assert.equal(a.body.error, answers[0].body.error);
    }
  });

  test('when a password is shorter than 8 or longer than 128 characters, then 400', async () => {
    assert.equal((await signUp('short@example.com', 'short')).status, 400);
    assert.equal((await signUp('long@example.com', 'x'.repeat(129))).status, 400);
  });

  test('when an email had 3 failed logins (the configured limit), then the 4th attempt is 429 even with the right password', async () => {
    await signUp('erin@example.com', 'erin-password');
    for (let i = 0; i < 3; i++) {
      assert.equal((await http(app.url, 'POST', '/auth/login', { body: { email: 'erin@example.com', password: 'nope-nope' } })).status, 401);
    }
    const res = await http(app.url, 'POST', '/auth/login', { body: { email: 'erin@example.com', password: 'erin-password' } });
    assert.equal(res.status, 429);
    assert.ok(Number(res.headers.get('retry-after')) > 0);
  });

  test('when a user changes their password, then the old one no longer logs in', async () => {
    const created = await signUp('fay@example.com', 'first-password');
    const login = await http(app.url, 'POST', '/auth/login', { body: { email: 'fay@example.com', password: 'first-password' } });
    const put = await http(app.url, 'PUT', `/users/${created.body.id}`, {
      body: { password: 'second-password' }, headers: { authorization: `Bearer ${login.body.accessToken}` },
    });
    assert.equal(put.status, 200);
    assert.equal((await http(app.url, 'POST', '/auth/login', { body: { email: 'fay@example.com', password: 'first-password' } })).status, 401);
    assert.equal((await http(app.url, 'POST', '/auth/login', { body: { email: 'fay@example.com', password: 'second-password' } })).status, 200);
  });

  test('no log line holds a password, a hash or a token', () => {
    const text = JSON.stringify(lines());
    for (const secret of ['correct horse', 'erin-password', 'second-password', 'scrypt$', 'eyJ']) assert.ok(!text.includes(secret), secret);
  });
});

describe('signing key and demo passwords', () => {
  test('when the service starts on an empty data dir, then it writes its key with mode 0600 and reuses it on the next start', () => {
    const dir = tempDir();
    try {
      const first = loadSigningKey(dir.dir);
      assert.equal(statSync(join(dir.dir, SIGNING_KEY_FILE)).mode & 0o777, 0o600);
      assert.equal(loadSigningKey(dir.dir).kid, first.kid);
    } finally {
      dir.remove();
    }
  });

  test('when a file seeded before passwords existed is opened, then the demo rows without one get the demo password and others are left alone', async () => {
    const dir = tempDir();
    try {
      const db = await openUserDatabase({ dataDir: dir.dir, seed: true });
      await db.run('UPDATE users SET password_hash = NULL');
      await db.run("UPDATE users SET password_hash = 'kept' WHERE email = 'carol@example.com'");
      assert.equal(await setDemoPasswords(db, await hashPassword('demo-password')), 2);
      const hashOf = async (email: string) => (await db.get<{ h: string }>('SELECT password_hash AS h FROM users WHERE email = $1', [email]))!.h;
      assert.ok(await verifyPassword('demo-password', await hashOf('alice@example.com')));
      assert.equal(await hashOf('carol@example.com'), 'kept');
      await db.close();
    } finally {
      dir.remove();
    }
  });
});

for (const engine of ENGINES) {
  describe(`failed-login lockout on ${engine}`, { skip: skipUnless(engine) }, () => {
    const isRefused = (retryAfter?: number) => (e: unknown) => e instanceof HttpError && e.status === 429 && (retryAfter === undefined || e.extra?.retryAfter === retryAfter);
    const bounds = { maxFailures: 2, windowMs: 1000, maxRows: 10, slowdownAfter: 1_000_000, slowdownStepMs: 0, slowdownMaxMs: 0 };

    test('when one address reaches the limit on an email, then it alone is refused until its window ends, and the owner elsewhere is not', async () => {
      const storage = testStorage(engine);
      const db = await openUserDatabase(storage.options('user-service'));
      try {
        const lockout = createLoginLockout(db, bounds);
        await lockout.attempt('a@example.com', 'guesser', 0);
        await lockout.attempt('a@example.com', 'guesser', 1);
        await assert.rejects(lockout.attempt('a@example.com', 'guesser', 2), isRefused(1));
        const owner = await lockout.attempt('a@example.com', 'owner', 3);
        assert.equal(owner.counted, true);
        await lockout.succeed(owner);
        await lockout.attempt('a@example.com', 'owner', 4);
        await lockout.attempt('a@example.com', 'guesser', 1000);
        await lockout.attempt('a@example.com', 'guesser', 1001);
        await assert.rejects(lockout.attempt('a@example.com', 'guesser', 1002), isRefused());
      } finally {
        await db.close();
        await storage.remove();
      }
    });

    test('when failures on many emails fill the table, then no active row is dropped: an active lockout holds, and attempts without a row wait and are not counted', async () => {
      const storage = testStorage(engine);
      const db = await openUserDatabase(storage.options('user-service'));
      try {
        const lockout = createLoginLockout(db, { ...bounds, windowMs: 10_000, slowdownMaxMs: 5 });
        await lockout.attempt('carol@example.com', 'guesser', 0);
        await lockout.attempt('carol@example.com', 'guesser', 1);
        const counted: boolean[] = [];
        for (let i = 0; i < 30; i++) counted.push((await lockout.attempt(`guess${i}@example.com`, 'sprayer', 10 + i)).counted);
        assert.deepEqual(counted, [...Array(9).fill(true), ...Array(21).fill(false)]);
        const untracked = await lockout.attempt('new@example.com', 'sprayer', 50);
        assert.deepEqual([untracked.counted, untracked.delayedMs], [false, 5]);
        assert.equal((await db.get<{ n: number }>('SELECT count(*) AS n FROM login_attempts'))!.n, 10);
        await assert.rejects(lockout.attempt('carol@example.com', 'guesser', 100), isRefused());
        // Once windows end, their rows make room again.
        assert.equal((await lockout.attempt('later@example.com', 'sprayer', 10_020)).counted, true);
        assert.ok((await db.get<{ n: number }>('SELECT count(*) AS n FROM login_attempts'))!.n <= 10);
      } finally {
        await db.close();
        await storage.remove();
      }
    });

    test('when many addresses fail on one email, then every attempt on it waits longer, up to the cap, the owner\'s too, and none is refused', async () => {
      const storage = testStorage(engine);
      const db = await openUserDatabase(storage.options('user-service'));
      try {
        const lockout = createLoginLockout(db, { ...bounds, slowdownAfter: 3, slowdownStepMs: 10, slowdownMaxMs: 25 });
        const waits: number[] = [];
        for (let i = 0; i < 6; i++) waits.push((await lockout.attempt('dana@example.com', `bot${i}`, i)).delayedMs);
        assert.deepEqual(waits, [0, 0, 0, 10, 20, 25]);
        const owner = await lockout.attempt('dana@example.com', 'owner', 10);
        assert.deepEqual([owner.counted, owner.delayedMs], [true, 25]);
        assert.equal((await lockout.attempt('other@example.com', 'bot0', 11)).delayedMs, 0, 'other emails do not wait');
      } finally {
        await db.close();
        await storage.remove();
      }
    });
  });
}

describe('password hash cost', () => {
  test('when a hash was made at one cost, then it verifies under another, and a wrong password fails at either', async () => {
    const cheap = await hashPassword('correct horse', MIN_PASSWORD_HASH_COST);
    const dear = await hashPassword('correct horse', DEFAULT_PASSWORD_HASH_COST);
    assert.match(cheap, /^scrypt\$1024\$8\$1\$/);
    assert.match(dear, /^scrypt\$16384\$8\$1\$/);
    for (const [stored, cost] of [[cheap, DEFAULT_PASSWORD_HASH_COST], [dear, MIN_PASSWORD_HASH_COST]] as const) {
      assert.equal(await verifyPassword('correct horse', stored, cost), true);
      assert.equal(await verifyPassword('wrong horse', stored, cost), false);
    }
  });

  test('when a stored hash asks for a cost out of bounds or not a power of two, then no password matches it', async () => {
    const [, , r, p, salt, hash] = (await hashPassword('pw-123456', MIN_PASSWORD_HASH_COST)).split('$');
    for (const n of [512, 1000, 2 ** 18]) assert.equal(await verifyPassword('pw-123456', ['scrypt', n, r, p, salt, hash].join('$')), false, `N=${n}`);
  });

  test('when PASSWORD_HASH_COST is set, then it must be a power of two from 1024 to 131072', () => {
    assert.equal(parseConfig(UserConfigSchema, {}).PASSWORD_HASH_COST, 16384);
    assert.equal(parseConfig(UserConfigSchema, { PASSWORD_HASH_COST: '1024' }).PASSWORD_HASH_COST, 1024);
    for (const bad of ['512', '3000', '262144', 'x']) assert.throws(() => parseConfig(UserConfigSchema, { PASSWORD_HASH_COST: bad }), (err: Error) => err instanceof ConfigError && err.message.startsWith('PASSWORD_HASH_COST: '));
  });
});
