// Logins and sign-ups as an attacker uses them: guessing a victim's password to lock her out,
// spraying unique emails to push an active lockout out of the table, many addresses on one account,
// sign-ups in bulk, and a flood of logins that eats the user service's CPU. Through the gateway,
// with TRUST_PROXY=loopback so that each test client picks its address with X-Forwarded-For.
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { clientAddressOf } from '../../lib/platform/client-address.js';
import { createMetrics } from '../../lib/platform/metrics.js';
import type { SqlDatabase } from '../../lib/platform/sql.js';
import { createUserApp, type UserAuthOptions } from '../../lib/users/app.js';
import { openUserAuth } from '../support/service-auth.js';
import { openUserDatabase } from '../../lib/users/db.js';
import { circuitState, startGateway, type StartedGateway } from '../gateway-helpers.js';
import { http, memoryLogger, startApp, tempDir, type Started } from '../helpers.js';
import { startEchoUpstream, type EchoUpstream } from '../support/echo-upstream.js';
import { rawExchange, statusOf } from '../support/raw-client.js';

const INTERNAL_TOKEN = 'internal-token-for-login-abuse-tests';
const PASSWORD = 'right-password-1';

interface Rig {
  users: Started;
  db: SqlDatabase;
  gw: StartedGateway;
  close(): Promise<void>;
}

async function startRig(options: Partial<UserAuthOptions>, gatewayEnv: Record<string, string> = {}): Promise<Rig> {
  const dir = tempDir();
  const db = await openUserDatabase({ dataDir: dir.dir, seed: false });
  const users = await startApp(createUserApp({ logger: memoryLogger('user-service', 'warn').logger, db, metrics: createMetrics('user-service') }, {
    ...openUserAuth(), internalToken: INTERNAL_TOKEN, ...options,
  }));
  const gw = await startGateway({
    USERS_URL: users.url, PRODUCTS_URL: users.url, ORDERS_URL: users.url, INTERNAL_TOKEN, TRUST_PROXY: 'loopback',
    RATE_LIMIT: '100000', LOGIN_RATE_LIMIT: '100000', ...gatewayEnv,
  });
  return {
    users, db, gw,
    close: async () => {
      await gw.close();
      await users.close();
      await db.close();
      dir.remove();
    },
  };
}

const from = (address: string, headers: Record<string, string> = {}) => ({ 'x-forwarded-for': address, ...headers });

describe('lockouts that stop only the guesser', () => {
  let rig: Rig;
  before(async () => {
    rig = await startRig({
      loginMaxFailures: 3,
      limits: { signupLimit: 3, loginMaxTracked: 20, loginSlowdownAfter: 4, loginSlowdownStepMs: 25, loginSlowdownMaxMs: 50 },
    });
  });
  after(() => rig?.close());

  const login = (email: string, password: string, address: string, headers: Record<string, string> = {}) =>
    http(rig.gw.url, 'POST', '/api/auth/login', { body: { email, password }, headers: from(address, headers) });
  const signUp = (email: string, address: string) =>
    http(rig.gw.url, 'POST', '/api/users', { body: { name: 'Victim Test', email, password: PASSWORD }, headers: from(address) });

  test('when someone at another address guesses Carol\'s password, then Carol at her own address logs in throughout, and the guesser is locked out, the right password too', async () => {
    assert.equal((await signUp('carol@example.com', '198.51.100.7')).status, 201);
    const guesser: number[] = [];
    for (let i = 0; i < 6; i++) {
      const [guess, carol] = await Promise.all([login('carol@example.com', `wrong-${i}-password`, '203.0.113.66'), login('carol@example.com', PASSWORD, '198.51.100.7')]);
      guesser.push(guess.status);
      assert.equal(carol.status, 200, `Carol's login ${i}: ${carol.text}`);
    }
    assert.deepEqual(guesser, [401, 401, 401, 429, 429, 429]);
    const right = await login('CAROL@example.com', PASSWORD, '203.0.113.66');
    assert.equal(right.status, 429);
    assert.equal(right.body.code, 'RATE_LIMITED');
    assert.ok(Number(right.headers.get('retry-after')) > 0);
    // The gateway drops a client's own copy of the address and its signature; its signed one counts.
    const spoofed = await login('carol@example.com', PASSWORD, '203.0.113.66', { 'x-client-address': '198.51.100.7', 'x-client-address-signature': '1.AAAA' });
    assert.equal(spoofed.status, 429);
  });

  test('when the user service is called directly with an address it cannot trust, then the caller\'s own address counts', async () => {
    assert.equal((await signUp('frank@example.com', '198.51.100.8')).status, 201);
    // Unsigned, from loopback, with INTERNAL_TOKEN set: the failures are the peer's (127.0.0.1).
    for (let i = 0; i < 3; i++) {
      const r = await http(rig.users.url, 'POST', '/auth/login', { body: { email: 'frank@example.com', password: 'wrong-password' }, headers: { 'x-client-address': '198.51.100.8' } });
      assert.equal(r.status, 401);
    }
    assert.equal((await http(rig.users.url, 'POST', '/auth/login', { body: { email: 'frank@example.com', password: PASSWORD } })).status, 429);
    assert.equal((await login('frank@example.com', PASSWORD, '198.51.100.8')).status, 200);
  });

  test('when one address signs up past the limit, then 429 with Retry-After; another address still signs up', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await signUp(`bulk${i}@example.com`, '192.0.2.50')).status);
    assert.deepEqual(statuses, [201, 201, 201, 429]);
    const refused = await signUp('bulk9@example.com', '192.0.2.50');
    assert.equal(refused.body.code, 'RATE_LIMITED');
    assert.ok(Number(refused.headers.get('retry-after')) > 0);
    assert.equal((await signUp('bulk10@example.com', '192.0.2.51')).status, 201);
  });

  test('when failed logins with unique emails fill the table (scaled: 20 rows, 30 emails), then an active lockout still holds and no row is dropped', async () => {
    assert.equal((await signUp('erin@example.com', '198.51.100.9')).status, 201);
    for (let i = 0; i < 3; i++) assert.equal((await login('erin@example.com', 'wrong-password', '203.0.113.77')).status, 401);
    assert.equal((await login('erin@example.com', PASSWORD, '203.0.113.77')).status, 429);
    const spray: number[] = [];
    for (let i = 0; i < 30; i++) spray.push((await login(`nobody${i}@example.com`, 'wrong-password', '203.0.113.88')).status);
    assert.ok(spray.every((s) => s === 401), spray.join(' '));
    assert.ok((await rig.db.get<{ n: number }>('SELECT count(*) AS n FROM login_attempts'))!.n <= 20);
    assert.equal((await login('erin@example.com', PASSWORD, '203.0.113.77')).status, 429, 'still locked');
    assert.equal((await login('erin@example.com', PASSWORD, '198.51.100.9')).status, 200, 'the owner is not');
  });

  test('when many addresses guess one email, then every attempt on it waits, and the owner\'s right password still gets in', async () => {
    assert.equal((await signUp('dana@example.com', '198.51.100.10')).status, 201);
    for (let i = 0; i < 6; i++) assert.equal((await login('dana@example.com', 'wrong-password', `203.0.113.${100 + i}`)).status, 401);
    const started = performance.now();
    assert.equal((await login('dana@example.com', PASSWORD, '198.51.100.10')).status, 200);
    // A lower bound only: the wait is a timer of LOGIN_SLOWDOWN_MAX_MS (50 ms), which never fires early.
    assert.ok(performance.now() - started >= 49, 'the owner waited too');
  });
});

describe('the client address the gateway gives', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url, INTERNAL_TOKEN, RATE_LIMIT: '10000' });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  test('when a client sends X-Client-Address and its signature, then the user service gets only the gateway\'s, signed for the client\'s real address; other services get none', async () => {
    const forged = 'X-Client-Address: 6.6.6.6\r\nX-Client-Address-Signature: 9999999999.AAAA\r\n';
    const r = await rawExchange(gw.url, `GET /api/users/1 HTTP/1.1\r\nHost: x\r\n${forged}\r\nGET /api/products/1 HTTP/1.1\r\nHost: x\r\n${forged}\r\n`, 2);
    assert.deepEqual(r.responses.map(statusOf), [200, 200]);
    const [users, products] = upstream.messages();
    const named = (m: typeof users, name: string) => m.headers.filter(([n]) => n === name).map(([, v]) => v);
    assert.deepEqual(named(users, 'x-client-address'), ['127.0.0.1']);
    assert.equal(named(users, 'x-client-address-signature').length, 1);
    const seen = { socket: { remoteAddress: '10.1.2.3' }, headers: Object.fromEntries(users.headers) } as unknown as IncomingMessage;
    assert.equal(clientAddressOf(seen, INTERNAL_TOKEN), '127.0.0.1', 'the signature holds');
    assert.deepEqual([named(products, 'x-client-address'), named(products, 'x-client-address-signature')], [[], []]);
  });
});

describe('password hashing with a budget', () => {
  let rig: Rig;
  before(async () => {
    // scrypt at 2^15 takes 40 ms or more a check: a flood sent at once outruns one at a time.
    rig = await startRig({ passwordHashCost: 2 ** 15, limits: { hashConcurrency: 1, hashMaxQueue: 2, hashMaxWaitMs: 60_000 } }, { CB_FAILURE_THRESHOLD: '2' });
    const made = await http(rig.users.url, 'POST', '/users', { body: { name: 'By Stander', email: 'bystander@example.com', password: PASSWORD } });
    assert.equal(made.status, 201);
  });
  after(() => rig?.close());

  test('when a flood of logins from one address outruns the hashing, then some are 503 OVERLOADED with Retry-After, while other routes and a bystander\'s login are answered, and the circuit stays closed', async () => {
    const flood = Array.from({ length: 24 }, (_, i) =>
      http(rig.gw.url, 'POST', '/api/auth/login', { body: { email: `flood${i}@example.com`, password: 'wrong-password' }, headers: from('203.0.113.5') }));
    const [read, bystander] = await Promise.all([
      http(rig.gw.url, 'GET', '/api/users/1', { headers: from('198.51.100.20') }),
      http(rig.gw.url, 'POST', '/api/auth/login', { body: { email: 'bystander@example.com', password: PASSWORD }, headers: from('198.51.100.21') }),
    ]);
    assert.equal(read.status, 200);
    assert.equal(bystander.status, 200, bystander.text);
    const answers = await Promise.all(flood);
    const overloaded = answers.filter((a) => a.status === 503);
    assert.ok(answers.every((a) => a.status === 401 || a.status === 503), answers.map((a) => a.status).join(' '));
    assert.ok(overloaded.length > 0, 'some of the flood is turned away');
    for (const a of overloaded) {
      assert.equal(a.body.code, 'OVERLOADED');
      assert.equal(a.headers.get('retry-after'), '1');
    }
    assert.equal(await circuitState(rig.gw.url, 'users'), 'CLOSED');
    const direct = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      http(rig.users.url, 'POST', '/auth/login', { body: { email: `direct${i}@example.com`, password: 'wrong-password' } })));
    const refused = direct.find((a) => a.status === 503);
    assert.ok(refused, direct.map((a) => a.status).join(' '));
    assert.equal(refused.headers.get('x-dependency-failure'), 'password-hashing');
    assert.equal(refused.headers.get('retry-after'), '1');
  });

  test('when a flood of sign-ups with passwords outruns the hashing, then the proxied 503 OVERLOADED reaches the client with Retry-After and the circuit stays closed', async () => {
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) =>
      http(rig.gw.url, 'POST', '/api/users', { body: { name: 'Flood Test', email: `signup-flood${i}@example.com`, password: PASSWORD }, headers: from('203.0.113.6') })));
    assert.ok(answers.every((a) => a.status === 201 || a.status === 503), answers.map((a) => a.status).join(' '));
    const overloaded = answers.filter((a) => a.status === 503);
    assert.ok(overloaded.length > 0, 'some of the flood is turned away');
    for (const a of overloaded) {
      assert.equal(a.body.code, 'OVERLOADED');
      assert.equal(a.headers.get('retry-after'), '1');
    }
    assert.equal(await circuitState(rig.gw.url, 'users'), 'CLOSED');
  });
});
