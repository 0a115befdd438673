import type { Express } from 'express';
import { Gauge } from 'prom-client';
import { createServiceAuth, type ServiceAuth } from '../platform/identity.js';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import type { ProductsClient } from '../products/client.js';
import type { UsersClient } from '../users/client.js';
import { ORDER_API } from './api.js';
import { createKeyedCreates } from './idempotency.js';
import { createOrderRoutes } from './routes.js';
import { createOrderStore } from './store.js';

export interface OrderAppDeps extends ServiceDeps {
  users: UsersClient;
  products: ProductsClient;
  /** Who may see and change which orders; default required mode with no verifier and no service credential: nothing is open. */
  auth?: ServiceAuth;
  /**
   * How long a release started by a request (a failed create, a cancel) holds its outbox row
   * before a release worker may take it over: the process may have died mid-call. The service
   * passes 2 x UPSTREAM_TIMEOUT_MS, the age at which the worker takes rows up.
   */
  releaseLeaseMs?: number;
  /** IDEMPOTENCY_KEY_LEASE_MS (the config's default when not given). */
  keyLeaseMs?: number;
  /** IDEMPOTENCY_KEY_WAIT_MS (the config's default when not given). */
  keyWaitMs?: number;
}

// Creates with an Idempotency-Key that may be in progress at once; more is a 503 with Retry-After.
const MAX_KEYS_IN_FLIGHT = 1000;

export function createOrderApp({ users, products, auth = createServiceAuth({ mode: 'required' }), releaseLeaseMs = 10_000, keyLeaseMs = 3000, keyWaitMs = 5000, ...deps }: OrderAppDeps): Express {
  const { logger, db, metrics } = deps;
  const store = createOrderStore(db);
  new Gauge({
    name: 'orders_pending_releases',
    help: 'Stock reservations waiting to be given back to the product service.',
    registers: [metrics.registry],
    async collect() {
      // While the database is unreachable the last count stays: /metrics keeps answering.
      const n = await store.countPendingReleases().catch(() => undefined);
      if (n !== undefined) this.set(n);
    },
  });
  const routes = createOrderRoutes(auth, {
    store,
    users,
    products,
    logger: logger.child({ component: 'orders' }),
    keyedCreates: createKeyedCreates(MAX_KEYS_IN_FLIGHT),
    releaseLeaseMs,
    keyLeaseMs,
    keyWaitMs,
  });
  return createServiceApp({ ...deps, service: 'order-service', routes, api: ORDER_API, ...(auth.mode === 'required' ? { guardAdmin: auth.requireAdminSurface } : {}) });
}
