// The order service as a process runs it: typed clients for users and products from config, the
// app, and the worker that gives back stock left held. The main and the in-process test system
// both build it here.
import type { Express } from 'express';
import { serviceAuthFromConfig, type AuthConfig } from '../platform/identity.js';
import type { ServiceDeps } from '../platform/service-app.js';
import { ServiceClient } from '../platform/service-client.js';
import { createProductsClient } from '../products/client.js';
import { createUsersClient } from '../users/client.js';
import { createOrderApp } from './app.js';
import type { OrderConfig } from './config.js';
import { startReleaseWorker } from './release-worker.js';

export interface OrderService {
  app: Express;
  /** Stops the release worker (after the server has drained, before the database closes). */
  close: () => Promise<void>;
}

type OrderServiceConfig = Pick<OrderConfig, 'USERS_URL' | 'PRODUCTS_URL' | 'UPSTREAM_TIMEOUT_MS' | 'RELEASE_RETRY_MS' | 'INTERNAL_TOKEN'> & AuthConfig;

export function buildOrderService(deps: ServiceDeps, config: OrderServiceConfig): OrderService {
  const timeoutMs = config.UPSTREAM_TIMEOUT_MS;
  const users = createUsersClient(new ServiceClient({ name: 'users', baseUrl: config.USERS_URL, timeoutMs }));
  const products = createProductsClient(new ServiceClient({ name: 'products', baseUrl: config.PRODUCTS_URL, timeoutMs }), config.INTERNAL_TOKEN);
  // Stock left held by a create that died or timed out goes back from here, at start and on a
  // timer; only rows older than any create could still be waiting on.
  const releases = startReleaseWorker({ db: deps.db, products, logger: deps.logger, intervalMs: config.RELEASE_RETRY_MS, minAgeMs: 2 * timeoutMs });
  return { app: createOrderApp({ ...deps, users, products, auth: serviceAuthFromConfig(config, config.USERS_URL) }), close: () => releases.stop() };
}
