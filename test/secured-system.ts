// The four apps in this process, wired as the processes are, with tokens required: the user
// service signs with a key under a temp data dir, the other services and the gateway verify with
// its JWKS over HTTP, and the order service shows the product service the internal token.
//
//   const sys = await startSecuredSystem({ gatewayEnv? });
//   await sys.login('bob@example.com')     a token of a demo user (password DEMO_PASSWORD)
//   sys.gateway.url, sys.users.url, ...     base URLs; sys.users.close() stops the user service
//   await sys.stop()
import type { Server } from 'node:http';
import type { Express } from 'express';
import { createOrderApp } from '../lib/orders/app.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import { createServiceAuth, createTokenVerifier, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, remoteKeys, type AuthMode, type ServiceAuth } from '../lib/platform/identity.js';
import { createTokenVersions, remoteTokenVersions } from '../lib/platform/token-versions.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { closeServer, listen } from '../lib/platform/server.js';
import { ServiceClient } from '../lib/platform/service-client.js';
import { createProductApp } from '../lib/products/app.js';
import { createProductsClient } from '../lib/products/client.js';
import { openProductDatabase } from '../lib/products/db.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserAuth } from './support/service-auth.js';
import { DEFAULT_DEMO_PASSWORD, hashPassword, loadSigningKey, MIN_PASSWORD_HASH_COST, type SigningKey } from '../lib/users/auth.js';
import { createUsersClient } from '../lib/users/client.js';
import { openUserDatabase, setDemoPasswords } from '../lib/users/db.js';
import { startGateway, type StartedGateway } from './gateway-helpers.js';
import { http, memoryLogger, tempDir } from './helpers.js';

export const INTERNAL_TOKEN = 'internal-token-for-tests-0123456789';
export const ADMIN_TOKEN = 'admin-token-for-tests-0123456789';

export interface RunningApp {
  url: string;
  logs: () => Record<string, unknown>[];
  close: () => Promise<void>;
}

export interface SecuredSystem {
  gateway: StartedGateway;
  users: RunningApp;
  products: RunningApp;
  orders: RunningApp;
  /** The user service's signing key, for tests that forge or alter tokens. */
  key: SigningKey;
  login(email: string): Promise<string>;
  stop(): Promise<void>;
}

async function run(service: string, build: (logger: ReturnType<typeof memoryLogger>['logger']) => Promise<{ app: Express; db: SqlDatabase }>, level: string): Promise<RunningApp> {
  const { logger, lines } = memoryLogger(service, level);
  const { app, db } = await build(logger);
  const { server, url } = await listen(app, 0, '127.0.0.1');
  let open: Server | undefined = server;
  return {
    url,
    logs: lines,
    close: async () => {
      if (!open) return;
      const s = open;
      open = undefined;
      await closeServer(s, 2_000);
      await db.close();
    },
  };
}

/**
 * `mode`: every process's AUTH_MODE (the gateway's can be changed with `gatewayEnv`);
 * `versionCacheMs`: every verifier's TOKEN_VERSION_CACHE_MS.
 */
export async function startSecuredSystem({ mode = 'required', gatewayEnv = {}, logLevel = 'warn', versionCacheMs = 2000 }: { mode?: AuthMode; gatewayEnv?: Record<string, string>; logLevel?: string; versionCacheMs?: number } = {}): Promise<SecuredSystem> {
  const dir = tempDir('msvc-secured-');
  const key = loadSigningKey(dir.dir);
  const users = await run('user-service', async (logger) => {
    const db = await openUserDatabase({ dataDir: dir.dir, seed: true });
    await setDemoPasswords(db, await hashPassword(DEFAULT_DEMO_PASSWORD, MIN_PASSWORD_HASH_COST));
    return { app: createUserApp({ logger, db, metrics: createMetrics('user-service') }, { ...openUserAuth(), mode, key, adminToken: ADMIN_TOKEN, internalToken: INTERNAL_TOKEN }), db };
  }, logLevel);
  const serviceAuth = (): ServiceAuth => createServiceAuth({
    mode,
    verifier: createTokenVerifier({
      keys: remoteKeys(`${users.url}/.well-known/jwks.json`), issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, algorithms: DEFAULT_ALGORITHMS,
      versions: createTokenVersions({ fetch: remoteTokenVersions([users.url], INTERNAL_TOKEN), ttlMs: versionCacheMs }),
    }),
    internalToken: INTERNAL_TOKEN,
    adminToken: ADMIN_TOKEN,
  });
  const products = await run('product-service', async (logger) => {
    const db = await openProductDatabase({ dataDir: dir.dir, seed: true });
    return { app: createProductApp({ logger, db, metrics: createMetrics('product-service') }, serviceAuth()), db };
  }, logLevel);
  const orders = await run('order-service', async (logger) => {
    const db = await openOrderDatabase({ dataDir: dir.dir, seed: true });
    const usersClient = createUsersClient(new ServiceClient({ name: 'users', baseUrl: users.url, timeoutMs: 2000 }));
    const productsClient = createProductsClient(new ServiceClient({ name: 'products', baseUrl: products.url, timeoutMs: 2000 }), INTERNAL_TOKEN);
    return { app: createOrderApp({ logger, db, metrics: createMetrics('order-service'), users: usersClient, products: productsClient, auth: serviceAuth() }), db };
  }, logLevel);
  const gateway = await startGateway({
    USERS_URL: users.url, PRODUCTS_URL: products.url, ORDERS_URL: orders.url, AUTH_MODE: mode, ADMIN_TOKEN, INTERNAL_TOKEN, TOKEN_VERSION_CACHE_MS: String(versionCacheMs), LOG_LEVEL: logLevel, ...gatewayEnv,
  });
  return {
    gateway,
    users,
    products,
    orders,
    key,
    async login(email) {
      const res = await http(gateway.url, 'POST', '/api/auth/login', { body: { email, password: DEFAULT_DEMO_PASSWORD } });
      if (res.status !== 200) throw new Error(`login of ${email} answered ${res.status}: ${res.text}`);
      return res.body.accessToken as string;
    },
    async stop() {
      await gateway.close();
      for (const s of [orders, products, users]) await s.close();
      dir.remove();
    },
  };
}
