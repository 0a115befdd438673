// The order service: orders, their workflow, and the stock they hold in the product service.
import { loadConfig } from './lib/platform/config.js';
import type { Db } from './lib/platform/db.js';
import { createLogger } from './lib/platform/logger.js';
import { createMetrics } from './lib/platform/metrics.js';
import { serve } from './lib/platform/server.js';
import { ServiceClient } from './lib/platform/service-client.js';
import { createTracingFromConfig } from './lib/platform/tracing.js';
import { OrderConfigSchema } from './lib/orders/config.js';
import { openOrderDatabase } from './lib/orders/db.js';
import { createOrderApp } from './lib/orders/app.js';
import { startReleaseWorker } from './lib/orders/release-worker.js';
import { createUsersClient } from './lib/users/client.js';
import { createProductsClient } from './lib/products/client.js';

const config = loadConfig(OrderConfigSchema, 'order-service');
const logger = createLogger({ service: 'order-service', level: config.LOG_LEVEL, pretty: config.LOG_PRETTY });
let db: Db;
try {
  db = openOrderDatabase(config.DATA_DIR, config.SEED_DATA);
} catch (err) {
  logger.fatal({ err, dataDir: config.DATA_DIR }, 'cannot open the database');
  logger.flush();
  process.exit(1);
}

const timeoutMs = config.UPSTREAM_TIMEOUT_MS;
const users = createUsersClient(new ServiceClient({ name: 'users', baseUrl: config.USERS_URL, timeoutMs }));
const products = createProductsClient(new ServiceClient({ name: 'products', baseUrl: config.PRODUCTS_URL, timeoutMs }));

const tracing = createTracingFromConfig('order-service', config);
const app = createOrderApp({ logger, db, metrics: createMetrics('order-service'), tracing, users, products });
const releases = startReleaseWorker({ db, products, logger, intervalMs: config.RELEASE_RETRY_MS, minAgeMs: 2 * timeoutMs });

await serve({
  app,
  port: config.PORT,
  host: config.HOST,
  logger,
  cleanup: async () => {
    await releases.stop();
    await tracing?.shutdown();
    db.close();
  },
});
