// The order service: orders, their workflow, and the stock they hold in the product service.
import { createOrderApp } from './lib/orders/app.js';
import { OrderConfigSchema } from './lib/orders/config.js';
import { openOrderDatabase } from './lib/orders/db.js';
import { startReleaseWorker } from './lib/orders/release-worker.js';
import { serviceAuthFromConfig } from './lib/platform/identity.js';
import { runService } from './lib/platform/main.js';
import { ServiceClient } from './lib/platform/service-client.js';
import { createProductsClient } from './lib/products/client.js';
import { createUsersClient } from './lib/users/client.js';

await runService({
  service: 'order-service',
  schema: OrderConfigSchema,
  openDatabase: openOrderDatabase,
  build: (deps, config) => {
    const timeoutMs = config.UPSTREAM_TIMEOUT_MS;
    const users = createUsersClient(new ServiceClient({ name: 'users', baseUrl: config.USERS_URL, timeoutMs }));
    const products = createProductsClient(new ServiceClient({ name: 'products', baseUrl: config.PRODUCTS_URL, timeoutMs }), config.INTERNAL_TOKEN);
    // Stock left held by a create that died or timed out goes back from here, at start and on a timer.
    const releases = startReleaseWorker({ db: deps.db, products, logger: deps.logger, intervalMs: config.RELEASE_RETRY_MS, minAgeMs: 2 * timeoutMs });
    return { app: createOrderApp({ ...deps, users, products, auth: serviceAuthFromConfig(config, config.USERS_URL) }), close: () => releases.stop() };
  },
});
