// A key rotation under load refuses no valid token: six clients log in and use their tokens in a
// loop through two gateways while a new key is rotated in, with two user-service instances on one
// PostgreSQL schema (one of them with a clock 20 s ahead, within the tolerance, so it signs with
// the new key before anyone else has read it), and the order and product services verifying too.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { decodeProtectedHeader } from 'jose';
import { createOrderApp } from '../lib/orders/app.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import {
  CLOCK_TOLERANCE_S, createServiceAuth, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, verifierFromConfig, type ServiceAuth,
} from '../lib/platform/identity.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { ServiceClient } from '../lib/platform/service-client.js';
import { createProductApp } from '../lib/products/app.js';
import { createProductsClient } from '../lib/products/client.js';
import { openProductDatabase } from '../lib/products/db.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserAuth } from './support/service-auth.js';
import { hashPassword, MIN_PASSWORD_HASH_COST } from '../lib/users/auth.js';
import { createUsersClient } from '../lib/users/client.js';
import { openUserDatabase } from '../lib/users/db.js';
import { activationDelayMs, rotateSigningKey, startStoredKeyRing } from '../lib/users/signing-keys.js';
import { createUserStore } from '../lib/users/store.js';
import { startGateway, type StartedGateway } from './gateway-helpers.js';
import { http, memoryLogger, startApp, type Started, type TestResponse } from './helpers.js';
import { testStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

// Small times of the same code paths as the defaults (30 s, 2 s).
const REFRESH_MS = 300;
const VERSION_CACHE_MS = 500;
const TTL_S = 900;
const INTERNAL_TOKEN = 'internal-token-for-rotation-0123456789';
const PASSWORD = 'rotation-test-password';
const CLIENTS = 6;

const storage = testStorage('postgres');
const closers: (() => Promise<void>)[] = [];
let users: Started[] = [];
let userDb: Awaited<ReturnType<typeof openUserDatabase>>;
let products: Started;
let orders: Started;
let gateways: StartedGateway[] = [];

/** What every verifier of the services reads from its configuration. */
function serviceAuth(usersUrls: string): ServiceAuth {
  const verifier = verifierFromConfig({
    NODE_ENV: 'test', JWT_ISSUER: DEFAULT_ISSUER, JWT_AUDIENCE: DEFAULT_AUDIENCE, JWT_ALGORITHMS: [...DEFAULT_ALGORITHMS],
    TOKEN_TTL_S: TTL_S, JWT_KEY_REFRESH_MS: REFRESH_MS, TOKEN_VERSION_CACHE_MS: VERSION_CACHE_MS, INTERNAL_TOKEN,
  }, usersUrls);
  return createServiceAuth({ mode: 'required', verifier, internalToken: INTERNAL_TOKEN });
}

describe('key rotation on PostgreSQL', { skip: skipUnless('postgres') }, () => {
  before(async () => {
    const where = storage.options('user-service');
    // Instance A's clock runs 20 s ahead: it takes up a new key as soon as it reads it.
    const clocks = [() => Date.now() + 20_000, Date.now];
    users = await Promise.all(clocks.map(async (now) => {
      const db = await openUserDatabase(where);
      const { logger } = memoryLogger('user-service', 'warn');
      const keys = await startStoredKeyRing(db, { refreshMs: REFRESH_MS, retainMs: (TTL_S + CLOCK_TOLERANCE_S) * 1000, logger, now });
      const app = await startApp(createUserApp({ logger, db, metrics: createMetrics('user-service') }, {
        ...openUserAuth(), mode: 'required', keys, ttlS: TTL_S, internalToken: INTERNAL_TOKEN,
      }));
      closers.push(async () => {
        await app.close();
        await keys.close();
        await db.close();
      });
      return app;
    }));
    userDb = await openUserDatabase(where);
    closers.push(() => userDb.close());
    const usersUrls = users.map((u) => u.url).join(',');

    const productDb = await openProductDatabase(storage.options('product-service', true));
    products = await startApp(createProductApp({ logger: memoryLogger('product-service', 'warn').logger, db: productDb, metrics: createMetrics('product-service') }, serviceAuth(usersUrls)));
    closers.push(async () => {
      await products.close();
      await productDb.close();
    });
    const orderDb = await openOrderDatabase(storage.options('order-service', true));
    orders = await startApp(createOrderApp({
      logger: memoryLogger('order-service', 'warn').logger, db: orderDb, metrics: createMetrics('order-service'),
      users: createUsersClient(new ServiceClient({ name: 'users', baseUrl: users[1].url, timeoutMs: 2000 })),
      products: createProductsClient(new ServiceClient({ name: 'products', baseUrl: products.url, timeoutMs: 2000 }), INTERNAL_TOKEN),
      auth: serviceAuth(usersUrls),
    }));
    closers.push(async () => {
      await orders.close();
      await orderDb.close();
    });
    gateways = await Promise.all([0, 1].map(() => startGateway({
      USERS_URL: usersUrls, PRODUCTS_URL: products.url, ORDERS_URL: orders.url, AUTH_MODE: 'required', INTERNAL_TOKEN,
      JWT_KEY_REFRESH_MS: String(REFRESH_MS), TOKEN_VERSION_CACHE_MS: String(VERSION_CACHE_MS), TOKEN_TTL_S: String(TTL_S),
      RATE_LIMIT: '1000000', LOGIN_RATE_LIMIT: '1000000', LOG_LEVEL: 'warn',
    })));
    for (const g of gateways) closers.push(() => g.close());

    const store = createUserStore(userDb);
    const hash = await hashPassword(PASSWORD, MIN_PASSWORD_HASH_COST);
    for (let i = 0; i < CLIENTS; i++) {
      // Client 0 is an admin: its loop changes a product, which the product service verifies.
      await store.create({ name: `Rotation ${i}`, email: `rotation-${i}@example.com`, role: i === 0 ? 'admin' : 'user', passwordHash: hash });
    }
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await storage.remove();
  });

  test('when a key is rotated while six clients log in and use their tokens through two gateways, then none of their requests gets 401', async () => {
    const oldKid = decodeProtectedHeader((await http(users[1].url, 'POST', '/auth/login', { body: { email: 'rotation-1@example.com', password: PASSWORD } })).body.accessToken as string).kid;
    const statuses = new Map<string, number>();
    const refused: string[] = [];
    const kidsUsed = new Set<string>();
    let newKidRequests = 0;
    // The rotated key's id, once there is one.
    const rotated: { kid?: string } = {};
    let stop = false;
    const record = (what: string, res: TestResponse, kid?: string) => {
      const key = String(res.status);
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
      if (res.status === 401) refused.push(`${what}: ${res.text}`);
      if (kid !== undefined && kid === rotated.kid && res.status === 200) newKidRequests++;
    };

    const client = async (i: number) => {
      let round = 0;
      while (!stop) {
        round++;
        const gateway = gateways[(i + round) % 2];
        const login = await http(gateway.url, 'POST', '/api/auth/login', { body: { email: `rotation-${i}@example.com`, password: PASSWORD } });
        record('login', login);
        if (login.status !== 200) continue;
        const token = login.body.accessToken as string;
        const kid = decodeProtectedHeader(token).kid!;
        kidsUsed.add(kid);
        const headers = { authorization: `Bearer ${token}` };
        for (const g of gateways) {
          record(`GET /api/orders via a gateway (kid ${kid})`, await http(g.url, 'GET', '/api/orders', { headers }), kid);
          record(`GET /api/users/:id via a gateway (kid ${kid})`, await http(g.url, 'GET', `/api/users/${i + 1}`, { headers }), kid);
        }
        if (i === 0) record(`PUT /api/products/1 (kid ${kid})`, await http(gateway.url, 'PUT', '/api/products/1', { headers, body: { name: 'Rotated Mug' } }), kid);
      }
    };

    const running = Array.from({ length: CLIENTS }, (_, i) => client(i));
    // The load runs with the old key for a moment, then a rotation as `npm run rotate-key` makes it.
    await new Promise((r) => setTimeout(r, 2 * REFRESH_MS));
    const rotation = await rotateSigningKey(userDb, { activateAfterMs: activationDelayMs(REFRESH_MS), retainMs: (TTL_S + CLOCK_TOLERANCE_S) * 1000 });
    rotated.kid = rotation.kid;
    // Until the new key has signed on both instances for a while, and served a good number of requests.
    const deadline = Date.now() + 20_000;
    while (Date.now() < rotation.activeFromMs + 2 * REFRESH_MS || newKidRequests < 6 * CLIENTS) {
      assert.ok(Date.now() < deadline, `the new key served ${newKidRequests} requests in 20 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
    stop = true;
    await Promise.all(running);

    assert.deepEqual(refused, [], `refused: ${refused.length}`);
    assert.deepEqual([...statuses.keys()].sort(), ['200'], `statuses: ${JSON.stringify([...statuses])}`);
    assert.ok(kidsUsed.has(oldKid!) && kidsUsed.has(rotation.kid), 'tokens of both keys were used');
  });
});
