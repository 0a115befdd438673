// What a verifier checks beyond the signature: the JWKS it fetches (again every refresh, and at once
// for an unknown kid, at most once a second), and the account versions it asks (cached for a TTL).
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, mock, test } from 'node:test';
import { createTokenVerifier, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, JWKS_MIN_REFETCH_MS, remoteKeys } from '../lib/platform/identity.js';
import { createTokenVersions, remoteTokenVersions } from '../lib/platform/token-versions.js';
import { issueToken, loadSigningKey, localKeys, type SigningKey } from '../lib/users/auth.js';
import { eventually } from './gateway-helpers.js';
import { memoryLogger } from './helpers.js';

const settings = { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 60 };
const verifierOf = (keys: ReturnType<typeof remoteKeys>) => createTokenVerifier({ keys, issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS });
const headerOf = async (key: SigningKey, id: number) => `Bearer ${await issueToken(key, { id, role: 'user' }, settings)}`;

describe('remote JWKS', () => {
  let server: Server;
  let url: string;
  const published: SigningKey[] = [];
  let fetches: number[] = [];
  let inFlight = 0;
  let mostInFlight = 0;

  before(async () => {
    server = createServer((_req, res) => {
      fetches.push(Date.now());
      inFlight++;
      mostInFlight = Math.max(mostInFlight, inFlight);
      // Answered a little later, so that fetches asked meanwhile would overlap if they were made.
      setTimeout(() => {
        inFlight--;
        res.setHeader('content-type', 'application/json').end(JSON.stringify({ keys: published.map((k) => k.publicJwk) }));
      }, 20);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}/jwks.json`;
  });
  after(() => new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  }));

  test('when a token names a key published after the last fetch, then it is fetched at once (within the second after it) and the token verifies', async () => {
    published.length = 0;
    fetches = [];
    const first = loadSigningKey(':memory:');
    published.push(first);
    const verifier = verifierOf(remoteKeys(url, { refreshMs: 60_000 }));
    await verifier.verify(await headerOf(first, 1));
    assert.equal(fetches.length, 1);
    // Rotated in just now: the verifier has not seen it, and its last fetch was a moment ago.
    const next = loadSigningKey(':memory:');
    published.push(next);
    const identity = await verifier.verify(await headerOf(next, 2));
    assert.equal(identity.sub, '2');
    assert.equal(fetches.length, 2);
    // Timed by the server: a connection's set-up can delay the first arrival by some hundred ms.
    assert.ok(fetches[1] - fetches[0] >= JWKS_MIN_REFETCH_MS / 2, `fetched again ${fetches[1] - fetches[0]} ms after the last`);
  });

  test('when many tokens name unknown keys at once, then one fetch is in flight and at most one is made a second; each such token is 401', async () => {
    published.length = 0;
    fetches = [];
    mostInFlight = 0;
    const known = loadSigningKey(':memory:');
    published.push(known);
    const verifier = verifierOf(remoteKeys(url, { refreshMs: 60_000 }));
    await verifier.verify(await headerOf(known, 1));
    const strangers = await Promise.all(Array.from({ length: 20 }, (_, i) => headerOf(loadSigningKey(':memory:'), 100 + i)));
    const first = await Promise.allSettled(strangers.slice(0, 10).map((h) => verifier.verify(h)));
    const second = await Promise.allSettled(strangers.slice(10).map((h) => verifier.verify(h)));
    for (const r of [...first, ...second]) assert.equal(r.status === 'rejected' && (r.reason as { status: number }).status, 401);
    assert.equal(mostInFlight, 1);
    // The first fetch, then one for each wave of unknown kids.
    assert.equal(fetches.length, 3, `fetches: ${fetches.length}`);
    for (let i = 1; i < fetches.length; i++) assert.ok(fetches[i] - fetches[i - 1] >= JWKS_MIN_REFETCH_MS / 2, `gap ${fetches[i] - fetches[i - 1]} ms`);
  });

  test('when a verifier is in use, then it fetches the JWKS again every refresh on its own, so a new key is known before any token carries it', async () => {
    published.length = 0;
    fetches = [];
    const known = loadSigningKey(':memory:');
    published.push(known);
    const keys = remoteKeys(url, { refreshMs: 100 });
    const verifier = verifierOf(keys);
    await verifier.verify(await headerOf(known, 1));
    const next = loadSigningKey(':memory:');
    published.push(next);
    await eventually(() => fetches.length >= 3, 3000, 'two fetches of its own');
    // Known already: the key is found without a fetch.
    const before = fetches.length;
    const started = Date.now();
    const { kid } = next;
    assert.ok(await keys({ alg: 'ES256', kid }, { payload: '', signature: '' }));
    assert.ok(Date.now() - started < JWKS_MIN_REFETCH_MS / 2, 'no wait for a fetch');
    assert.ok(fetches.length - before <= 1);
  });
});

describe('token versions', () => {
  test('when asked, then an answer is used for the TTL, one question per account at a time, asked again after it or for a newer token', async () => {
    mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
    try {
      const asked: string[] = [];
      let version = 3;
      const versions = createTokenVersions({ fetch: (sub) => (asked.push(sub), Promise.resolve(version)), ttlMs: 1000 });
      assert.equal(versions.fresh('7'), undefined);
      assert.deepEqual(await Promise.all([versions.current('7'), versions.current('7'), versions.current('7')]), [3, 3, 3]);
      assert.deepEqual(asked, ['7']);
      assert.equal(versions.fresh('7'), 3);
      version = 4;
      mock.timers.tick(999);
      assert.equal(await versions.current('7'), 3, 'within the TTL: the answer held');
      assert.equal(await versions.current('7', 4), 4, 'a token newer than the answer: asked again');
      assert.equal(asked.length, 2);
      version = 5;
      mock.timers.tick(1000);
      assert.equal(versions.fresh('7'), undefined);
      assert.equal(await versions.current('7'), 5);
    } finally {
      mock.timers.reset();
    }
  });

  test('when nobody can be asked, then the last answer stands for maxStaleMs after it came, then 503; an account never answered is 503 at once', async () => {
    mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
    try {
      let up = true;
      const versions = createTokenVersions({ fetch: () => (up ? Promise.resolve(1) : Promise.reject(new Error('down'))), ttlMs: 100, maxStaleMs: 5000 });
      assert.equal(await versions.current('1'), 1);
      up = false;
      mock.timers.tick(4000);
      assert.equal(await versions.current('1'), 1);
      mock.timers.tick(1000);
      await assert.rejects(versions.current('1'), { status: 503, code: 'SERVICE_UNAVAILABLE' });
      await assert.rejects(versions.current('2'), { status: 503 });
    } finally {
      mock.timers.reset();
    }
  });

  test('when a verifier has versions, then a token of an older version or of no account is 401 and leaves the cache', async () => {
    const key = loadSigningKey(':memory:');
    const current = new Map<string, number>([['1', 2]]);
    const versions = createTokenVersions({ fetch: (sub) => Promise.resolve(current.get(sub) ?? null), ttlMs: 0 });
    const verifier = createTokenVerifier({ keys: localKeys(key), issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS, versions });
    const token = (id: number, tokenVersion: number) => issueToken(key, { id, role: 'admin', tokenVersion }, settings).then((t) => `Bearer ${t}`);
    assert.equal((await verifier.verify(await token(1, 2))).ver, 2);
    await assert.rejects(verifier.verify(await token(1, 1)), { status: 401 });
    await assert.rejects(verifier.verify(await token(9, 0)), { status: 401 });
    assert.equal(verifier.size, 1, 'only the valid token is held');
  });
});

describe("the user service's token versions, asked over HTTP", () => {
  test('when the user service refuses our credential, then each question fails and one warn line per outage says why, without the credential', async () => {
    let refuse = true;
    const seen: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.setHeader('content-type', 'application/json');
      if (refuse) return res.writeHead(403).end(JSON.stringify({ error: 'The service credential is required', code: 'FORBIDDEN' }));
      res.end(JSON.stringify({ id: 4, tokenVersion: 7 }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { logger, lines } = memoryLogger('gateway');
    try {
      const fetchVersion = remoteTokenVersions([`http://127.0.0.1:${(server.address() as { port: number }).port}`], 'internal-token-of-ours-0123456789', { logger });
      await assert.rejects(fetchVersion('4'), { status: 403 });
      await assert.rejects(fetchVersion('4'), { status: 403 });
      assert.equal(await fetchVersion('not-a-user-id'), null, 'a subject that is no id of ours is not asked');
      refuse = false;
      assert.equal(await fetchVersion('4'), 7);
      const messages = lines().map((l) => l.msg as string);
      assert.equal(messages.filter((m) => m.startsWith('cannot ask the user service')).length, 1);
      assert.ok(messages.includes('token versions answered again'));
      assert.deepEqual(new Set(seen), new Set(['Bearer internal-token-of-ours-0123456789']));
      assert.ok(!JSON.stringify(lines()).includes('internal-token-of-ours'), 'no credential in the logs');
    } finally {
      server.close();
      server.closeAllConnections();
    }
  });
});
