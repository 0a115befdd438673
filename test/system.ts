// Starts the user, product and order services in this process on port 0, wired to each other over
// real HTTP as the separate processes are (the order service gets ServiceClients for the other two).
//
//   const sys = await startServices({ seed?, dataDir?, env? });
//   sys.users.url, sys.products.url, sys.orders.url   base URLs, the same after a restart
//   sys.users.close()    stops one service (server, release worker, database): callers now get
//                        connection refused, as when its process is stopped
//   sys.users.start()    starts it again on the same port with the same data dir
//   sys.products.db      the open database of a service, for checks the API cannot make
//   sys.orders.logs()    its log lines (JSON objects, level LOG_LEVEL, default warn)
//   await sys.stop()     stops all three and removes the temp data dir (not a dataDir you gave)
//   createUser(sys), createProduct(sys, { stock, price }), stockOf(sys, productId)
//                        rows made through the public API, for tests that need their own
//
// `env` is read through each service's config schema like process.env would be, e.g.
// { UPSTREAM_TIMEOUT_MS: '300', RELEASE_RETRY_MS: '50', PRODUCTS_URL: 'http://127.0.0.1:1234' }.
// USERS_URL / PRODUCTS_URL default to the in-process services. `seed` defaults to false (tests make
// their own rows). Each service has its own metrics registry and an in-memory logger.
import type { TestStorage } from './support/engines.js';
import type { Server } from 'node:http';
import type { Express } from 'express';
import type { Logger } from '../lib/platform/logger.js';
import { parseConfig } from '../lib/platform/config.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { closeServer, listen } from '../lib/platform/server.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserDatabase } from '../lib/users/db.js';
import { ProductConfigSchema } from '../lib/products/config.js';
import { openProductDatabase } from '../lib/products/db.js';
import { buildProductService } from '../lib/products/service.js';
import { OrderConfigSchema } from '../lib/orders/config.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import { buildOrderService } from '../lib/orders/service.js';
import { http, memoryLogger, tempDir } from './helpers.js';
import { openServiceAuth, openUserAuth } from './support/service-auth.js';

export type ServiceName = 'users' | 'products' | 'orders';
const SERVICE_NAMES = { users: 'user-service', products: 'product-service', orders: 'order-service' } as const;

export interface ServiceHandle {
  readonly name: ServiceName;
  readonly url: string;
  readonly port: number;
  /** The current server (a new one after start()). */
  readonly server: Server;
  /** The current database; closed while the service is stopped. */
  readonly db: SqlDatabase;
  readonly running: boolean;
  /** Stops the server, then whatever runs beside it, then closes the database. Safe to repeat. */
  close(): Promise<void>;
  /** Starts the service again on the same port and data dir. */
  start(): Promise<void>;
  logs(): Record<string, unknown>[];
}

export interface System {
  users: ServiceHandle;
  products: ServiceHandle;
  orders: ServiceHandle;
  dataDir: string;
  stop(): Promise<void>;
}

export interface StartServicesOptions {
  /** Where the three SQLite files go; default a temp dir removed by stop(). */
  dataDir?: string;
  /**
   * Where the three services keep their data instead (test/support/engines.ts: SQLite or
   * PostgreSQL schemas); the caller removes it.
   */
  storage?: TestStorage;
  /** Demo rows on first start; default false. */
  seed?: boolean;
  env?: Record<string, string>;
}

interface Built {
  app: Express;
  db: SqlDatabase;
  /** Stops what runs beside the server (the release worker); the handle closes the db. */
  stopExtras?: () => Promise<void>;
}

async function startHandle(name: ServiceName, build: (logger: Logger) => Promise<Built>, level: string): Promise<ServiceHandle> {
  // One logger for the handle's life, so logs() spans restarts.
  const { logger, lines } = memoryLogger(SERVICE_NAMES[name], level);
  let built: Built | undefined;
  let server: Server | undefined;
  let port = 0;
  let url = '';

  const start = async () => {
    if (server) return;
    const next = await build(logger);
    try {
      const listening = await listen(next.app, port, '127.0.0.1');
      ({ port, url } = listening);
      server = listening.server;
      built = next;
    } catch (err) {
      await next.stopExtras?.();
      await next.db.close();
      throw err;
    }
  };
  const close = async () => {
    const [s, b] = [server, built];
    server = undefined;
    if (s) await closeServer(s, 2_000);
    if (b) {
      await b.stopExtras?.();
      await b.db.close();
    }
  };
  const handle: ServiceHandle = {
    name,
    get url() {
      return url;
    },
    get port() {
      return port;
    },
    get server() {
      if (!built || !server) throw new Error(`${name} is stopped`);
      return server;
    },
    get db() {
      if (!built) throw new Error(`${name} was never started`);
      return built.db;
    },
    get running() {
      return server !== undefined;
    },
    close,
    start,
    logs: lines,
  };
  await start();
  return handle;
}

export async function startServices({ dataDir, storage, seed = false, env = {} }: StartServicesOptions = {}): Promise<System> {
  const temp = dataDir === undefined ? tempDir('msvc-system-') : undefined;
  const dir = dataDir ?? temp!.dir;
  const level = env.LOG_LEVEL ?? 'warn';
  const where = (service: string) => storage?.options(service, seed) ?? { dataDir: dir, seed };
  const started: ServiceHandle[] = [];
  const stopAll = async () => {
    for (const h of started.reverse()) await h.close();
    temp?.remove();
  };

  try {
    const users = await startHandle('users', async (logger) => {
      const db = await openUserDatabase(where('users'));
      return { app: createUserApp({ logger, db, metrics: createMetrics('user-service') }, openUserAuth()), db };
    }, level);
    started.push(users);
    const productConfig = parseConfig(ProductConfigSchema, { ...env, DATA_DIR: dir });
    const products = await startHandle('products', async (logger) => {
      const db = await openProductDatabase(where('products'));
      const { app, close } = buildProductService({ logger, db, metrics: createMetrics('product-service') }, productConfig, openServiceAuth());
      return { app, db, stopExtras: close };
    }, level);
    started.push(products);

    const config = parseConfig(OrderConfigSchema, { USERS_URL: users.url, PRODUCTS_URL: products.url, ...env, DATA_DIR: dir });
    const orders = await startHandle('orders', async (logger) => {
      const db = await openOrderDatabase(where('orders'));
      const { app, close } = buildOrderService({ logger, db, metrics: createMetrics('order-service') }, config);
      return { app, db, stopExtras: close };
    }, level);
    started.push(orders);

    return { users, products, orders, dataDir: dir, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

let rowCounter = 0;

/** A new user (unique email) made through POST /users; resolves with its id. */
export async function createUser(sys: Pick<System, 'users'>, role: 'admin' | 'user' = 'user'): Promise<number> {
  rowCounter++;
  const r = await http<{ id: number }>(sys.users.url, 'POST', '/users', {
    body: { name: `Test User ${rowCounter}`, email: `user-${process.pid}-${Date.now()}-${rowCounter}@example.com`, role },
  });
  if (r.status !== 201) throw new Error(`POST /users answered ${r.status}: ${r.text}`);
  return r.body.id;
}

/** A new product made through POST /products; resolves with its id. */
export async function createProduct(sys: Pick<System, 'products'>, { stock, price = 10, category = 'test' }: { stock: number; price?: number; category?: string }): Promise<number> {
  rowCounter++;
  const r = await http<{ id: number }>(sys.products.url, 'POST', '/products', {
    body: { name: `Test Product ${rowCounter}`, price, stock, category },
  });
  if (r.status !== 201) throw new Error(`POST /products answered ${r.status}: ${r.text}`);
  return r.body.id;
}

/** The product's stock as GET /products/:id reports it. */
export async function stockOf(sys: Pick<System, 'products'>, productId: number): Promise<number> {
  const r = await http<{ stock: number }>(sys.products.url, 'GET', `/products/${productId}`);
  if (r.status !== 200) throw new Error(`GET /products/${productId} answered ${r.status}: ${r.text}`);
  return r.body.stock;
}
