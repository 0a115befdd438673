// The product service: the catalog, its stock and stock reservations, in DATA_DIR/products.db.
import { loadConfig } from './lib/platform/config.js';
import { createLogger } from './lib/platform/logger.js';
import { createMetrics } from './lib/platform/metrics.js';
import { serve } from './lib/platform/server.js';
import { createTracingFromConfig } from './lib/platform/tracing.js';
import type { Db } from './lib/platform/db.js';
import { createProductApp } from './lib/products/app.js';
import { ProductConfigSchema } from './lib/products/config.js';
import { openProductDatabase } from './lib/products/db.js';

const SERVICE = 'product-service';
const config = loadConfig(ProductConfigSchema, SERVICE);
const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL, pretty: config.LOG_PRETTY });

let db: Db;
try {
  db = openProductDatabase(config.DATA_DIR, config.SEED_DATA);
} catch (err) {
  logger.fatal({ err, dataDir: config.DATA_DIR }, 'cannot open the database');
  logger.flush();
  process.exit(1);
}

const metrics = createMetrics(SERVICE);
const tracing = createTracingFromConfig(SERVICE, config);
const app = createProductApp({ logger, db, metrics, tracing });
await serve({
  app,
  port: config.PORT,
  host: config.HOST,
  logger,
  cleanup: async () => {
    await tracing?.shutdown();
    db.close();
  },
});
