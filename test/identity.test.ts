import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, mock, test } from 'node:test';
import { isPublicRoute } from '../lib/gateway/auth.js';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { OrderConfigSchema } from '../lib/orders/config.js';
import { parseConfig } from '../lib/platform/config.js';
import { ProductConfigSchema } from '../lib/products/config.js';
import { UserConfigSchema } from '../lib/users/config.js';
import { authModeOf, bearerToken, createTokenVerifier, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, verifierFromConfig } from '../lib/platform/identity.js';
import { createServer } from 'node:http';
import { deadUrl } from './gateway-helpers.js';
import { createLogger } from '../lib/platform/logger.js';
import { issueToken, loadSigningKey, localKeys } from '../lib/users/auth.js';
import { Writable } from 'node:stream';
import type { JWTVerifyGetKey } from 'jose';

describe('bearerToken', () => {
  test('when the scheme is Bearer in any letter case, then the token is read; any other form gives none', () => {
    assert.equal(bearerToken('Bearer abc'), 'abc');
    assert.equal(bearerToken('bEARER abc '), 'abc');
    for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Bearer  ', 'Basic abc', 'Bearerabc', 'Bearer\tabc', 'Token abc']) {
      assert.equal(bearerToken(header), undefined, String(header));
    }
  });
});

describe('isPublicRoute', () => {
  test('when a route is login, sign-up or a product read, then it is public, and nothing that merely starts like one is', () => {
    for (const [method, url] of [['GET', '/api/products'], ['HEAD', '/api/products/1'], ['GET', '/api/products?search=mug'], ['POST', '/api/users'], ['POST', '/api/users/'], ['POST', '/api/users?x=1'], ['POST', '/api/auth/login']]) {
      assert.ok(isPublicRoute(method, url), `${method} ${url}`);
    }
    for (const [method, url] of [['GET', '/api/productsecret'], ['PUT', '/api/products/1'], ['POST', '/api/products'], ['POST', '/api/users/1'], ['POST', '/api/users/1/x'], ['GET', '/api/users'], ['POST', '/api/userss'], ['GET', '/api/orders']]) {
      assert.ok(!isPublicRoute(method, url), `${method} ${url}`);
    }
  });
});

describe('createTokenVerifier', () => {
  const key = loadSigningKey(':memory:');
  const settings = { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 60 };
  const counted = () => {
    const inner = localKeys(key);
    const keys = mock.fn<JWTVerifyGetKey>((header, token) => inner(header, token));
    return keys;
  };

  test('when a token was verified, then it is served from the cache until its exp, and checked again after', async () => {
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    try {
      const keys = counted();
      const verifier = createTokenVerifier({ keys, issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS });
      const header = `Bearer ${await issueToken(key, { id: 7, role: 'user' }, settings)}`;
      assert.equal(verifier.cached(header), undefined);
      const identity = await verifier.verify(header);
      assert.deepEqual([identity.sub, identity.role, identity.key], ['7', 'user', 'user:7']);
      assert.equal(verifier.cached(header), identity);
      await verifier.verify(header);
      assert.equal(keys.mock.callCount(), 1, 'the second verify was a cache hit');
      mock.timers.tick(61_000);
      assert.equal(verifier.cached(header), undefined, 'expired: no longer cached');
    } finally {
      mock.timers.reset();
    }
  });

  test('when more tokens than maxCached were verified, then only the newest are held', async () => {
    const verifier = createTokenVerifier({ keys: localKeys(key), issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS, maxCached: 2 });
    const headers = await Promise.all([1, 2, 3].map(async (id) => `Bearer ${await issueToken(key, { id, role: 'user' }, settings)}`));
    for (const h of headers) await verifier.verify(h);
    assert.equal(verifier.size, 2);
    assert.equal(verifier.cached(headers[0]), undefined);
    assert.ok(verifier.cached(headers[2]));
  });

  test('when the key is Ed25519, then tokens are EdDSA and verify against its JWKS', async () => {
    const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    const edKey = loadSigningKey(':memory:', pem.replace(/\n/g, '\\n'));
    assert.equal(edKey.publicJwk.kty, 'OKP');
    const verifier = createTokenVerifier({ keys: localKeys(edKey), issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS });
    assert.equal((await verifier.verify(`Bearer ${await issueToken(edKey, { id: 5, role: 'admin' }, settings)}`)).role, 'admin');
  });

  test('when a token fails, then it is not cached and the answer is 401 UNAUTHENTICATED', async () => {
    const verifier = createTokenVerifier({ keys: localKeys(key), issuer: DEFAULT_ISSUER, audience: 'other', algorithms: DEFAULT_ALGORITHMS });
    const header = `Bearer ${await issueToken(key, { id: 1, role: 'admin' }, settings)}`;
    await assert.rejects(verifier.verify(header), (err: { status: number; code: string }) => err.status === 401 && err.code === 'UNAUTHENTICATED');
    assert.equal(verifier.size, 0);
  });
});

describe('logger redaction', () => {
  test('when an object holding a password, a token or an Authorization header is logged by mistake, then the values are redacted', () => {
    let out = '';
    const destination = new Writable({ write(chunk, _enc, cb) { out += String(chunk); cb(); } });
    const logger = createLogger({ service: 'test', destination });
    logger.info({ body: { email: 'a@example.com', password: 'hunter2-secret' }, answer: { accessToken: 'eyJsecret' }, req: { headers: { authorization: 'Bearer eyJsecret' } } }, 'oops');
    assert.ok(out.includes('a@example.com'));
    assert.ok(!out.includes('hunter2-secret') && !out.includes('eyJsecret'), out);
  });
});

describe('auth configuration', () => {
  const internal = { INTERNAL_TOKEN: 'an-internal-token-of-length' };

  test('when AUTH_MODE is required (or NODE_ENV=production) without INTERNAL_TOKEN, then the order and product services refuse to start, naming it', () => {
    for (const schema of [OrderConfigSchema, ProductConfigSchema]) {
      assert.throws(() => parseConfig(schema, { AUTH_MODE: 'required' }), /^Error: INTERNAL_TOKEN: is required/);
      assert.throws(() => parseConfig(schema, { NODE_ENV: 'production' }), /^Error: INTERNAL_TOKEN: is required/);
      assert.doesNotThrow(() => parseConfig(schema, {}));
    }
    assert.throws(() => parseConfig(GatewayConfigSchema, { AUTH_MODE: 'sometimes' }), /^Error: AUTH_MODE: /);
    assert.throws(() => parseConfig(GatewayConfigSchema, { JWT_ALGORITHMS: 'ES256,HS256' }), /^Error: JWT_ALGORITHMS: /);
  });

  test('when NODE_ENV=production, then demo rows are seeded only with DEMO_PASSWORD set; outside production the demo password has its default', () => {
    assert.equal(parseConfig(UserConfigSchema, { NODE_ENV: 'production' }).SEED_DATA, false);
    assert.equal(parseConfig(UserConfigSchema, { NODE_ENV: 'production' }).DEMO_PASSWORD, undefined);
    assert.equal(parseConfig(UserConfigSchema, { NODE_ENV: 'production', DEMO_PASSWORD: 'a-demo-password' }).SEED_DATA, true);
    assert.equal(parseConfig(UserConfigSchema, {}).DEMO_PASSWORD, 'microservices-demo');
    const ed25519 = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    assert.equal(loadSigningKey(':memory:', parseConfig(UserConfigSchema, { JWT_PRIVATE_KEY: ed25519 }).JWT_PRIVATE_KEY).alg, 'EdDSA');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    for (const bad of [rsa, 'not a key']) {
      assert.throws(() => parseConfig(UserConfigSchema, { JWT_PRIVATE_KEY: bad }), /^Error: JWT_PRIVATE_KEY: must be a PKCS#8 PEM/);
    }
    assert.equal(parseConfig(OrderConfigSchema, { NODE_ENV: 'production', ...internal }).SEED_DATA, false);
    assert.equal(parseConfig(OrderConfigSchema, { NODE_ENV: 'production', DEMO_PASSWORD: 'a-demo-password', ...internal }).SEED_DATA, true);
    assert.equal('DEMO_PASSWORD' in parseConfig(ProductConfigSchema, { DEMO_PASSWORD: 'a-demo-password' }), false, 'only the user service keeps the password');
    assert.equal(authModeOf(parseConfig(GatewayConfigSchema, { NODE_ENV: 'production' })), 'required');
    assert.equal(authModeOf(parseConfig(GatewayConfigSchema, {})), 'open');
  });
});

describe('JWKS of several user-service instances', () => {
  test('when the first instance is down, then a token verifies with the next one; a key no instance publishes is a 401', async () => {
    const key = loadSigningKey(':memory:');
    const other = loadSigningKey(':memory:');
    const settings = { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 60 };
    let asked = 0;
    const server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.url === '/internal/users/3/token-version') return res.end(JSON.stringify({ id: 3, tokenVersion: 0 }));
      asked++;
      res.end(JSON.stringify({ keys: [key.publicJwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const live = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const dead = await deadUrl();
    try {
      const config = {
        NODE_ENV: 'test', JWT_ISSUER: DEFAULT_ISSUER, JWT_AUDIENCE: DEFAULT_AUDIENCE, JWT_ALGORITHMS: [...DEFAULT_ALGORITHMS], TOKEN_TTL_S: 900, JWT_KEY_REFRESH_MS: 30_000, TOKEN_VERSION_CACHE_MS: 1000,
      };
      const verifier = verifierFromConfig(config, `${dead.url},${live}`);
      const identity = await verifier.verify(`Bearer ${await issueToken(key, { id: 3, role: 'user' }, settings)}`);
      assert.equal(identity.sub, '3');
      assert.equal(asked, 1);
      await assert.rejects(verifier.verify(`Bearer ${await issueToken(other, { id: 4, role: 'user' }, settings)}`), { status: 401 });
    } finally {
      server.close();
      await dead.close();
    }
  });
});
