// The order service as a process runs it: typed clients for users and products from config, the
// app, and the worker that gives back stock left held. The main and the in-process test system
// both build it here.
import type { Express } from 'express';
import { serviceAuthFromConfig, type AuthConfig } from '../platform/identity.js';
import type { ServiceDeps } from '../platform/service-app.js';
import { urlList } from '../platform/config.js';
import { ServiceClient, serviceInstances } from '../platform/service-client.js';
import { createProductsClient } from '../products/client.js';
import { createUsersClient } from '../users/client.js';
import { createOrderApp } from './app.js';
import type { OrderConfig } from './config.js';
import { startReleaseWorker } from './release-worker.js';
import { startOrderRetention } from './retention.js';

export interface OrderService {
  app: Express;
  /** Stops the release worker and retention (after the server has drained, before the database closes). */
  close: () => Promise<void>;
}

type OrderServiceConfig = Pick<OrderConfig, 'USERS_URL' | 'PRODUCTS_URL' | 'UPSTREAM_TIMEOUT_MS' | 'RELEASE_RETRY_MS' | 'INTERNAL_TOKEN'
  | 'OUTLIER_CONSECUTIVE_FAILURES' | 'OUTLIER_EJECTION_MS' | 'OUTLIER_MAX_EJECTION_MS'
  | 'IDEMPOTENCY_KEY_LEASE_MS' | 'IDEMPOTENCY_KEY_WAIT_MS' | 'IDEMPOTENCY_KEY_TTL_MS' | 'RETENTION_INTERVAL_MS'> & AuthConfig;

// An instance's /health must answer this fast for it to come back after an ejection.
const PROBE_TIMEOUT_MS = 1000;

export function buildOrderService(deps: ServiceDeps, config: OrderServiceConfig): OrderService {
  const timeoutMs = config.UPSTREAM_TIMEOUT_MS;
  const outlier = {
    consecutiveFailures: config.OUTLIER_CONSECUTIVE_FAILURES,
    ejectionMs: config.OUTLIER_EJECTION_MS,
    maxEjectionMs: Math.max(config.OUTLIER_EJECTION_MS, config.OUTLIER_MAX_EJECTION_MS),
  };
  const clientOf = (name: string, urls: string) => new ServiceClient({ name, instances: serviceInstances(urlList(urls), outlier, Math.min(PROBE_TIMEOUT_MS, timeoutMs)), timeoutMs });
  const usersClient = clientOf('users', config.USERS_URL);
  const productsClient = clientOf('products', config.PRODUCTS_URL);
  const users = createUsersClient(usersClient);
  const products = createProductsClient(productsClient, config.INTERNAL_TOKEN);
  // Stock left held by a create that died or timed out goes back from here, at start and on a
  // timer; only rows older than any create could still be waiting on.
  const releaseAfterMs = 2 * timeoutMs;
  const releases = startReleaseWorker({ db: deps.db, products, logger: deps.logger, intervalMs: config.RELEASE_RETRY_MS, minAgeMs: releaseAfterMs });
  const retention = startOrderRetention(deps.db, deps.logger, config.RETENTION_INTERVAL_MS, { keyTtlMs: config.IDEMPOTENCY_KEY_TTL_MS });
  const auth = serviceAuthFromConfig(config, config.USERS_URL, deps.logger);
  return {
    app: createOrderApp({
      ...deps, users, products, auth,
      releaseLeaseMs: releaseAfterMs,
      keyLeaseMs: config.IDEMPOTENCY_KEY_LEASE_MS,
      keyWaitMs: config.IDEMPOTENCY_KEY_WAIT_MS,
    }),
    close: async () => {
      await Promise.all([releases.stop(), retention.stop()]);
      for (const client of [usersClient, productsClient]) {
        client.instances.shutdown();
        client.close();
      }
    },
  };
}
