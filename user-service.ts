// The user service: users and their roles, in DATA_DIR/users.db.
import { loadConfig } from './lib/platform/config.js';
import { createLogger } from './lib/platform/logger.js';
import { createMetrics } from './lib/platform/metrics.js';
import { serve } from './lib/platform/server.js';
import { createTracingFromConfig } from './lib/platform/tracing.js';
import type { Db } from './lib/platform/db.js';
import { createUserApp } from './lib/users/app.js';
import { UserConfigSchema } from './lib/users/config.js';
import { openUserDatabase } from './lib/users/db.js';

const SERVICE = 'user-service';
const config = loadConfig(UserConfigSchema, SERVICE);
const logger = createLogger({ service: SERVICE, level: config.LOG_LEVEL, pretty: config.LOG_PRETTY });

let db: Db;
try {
  db = openUserDatabase(config.DATA_DIR, config.SEED_DATA);
} catch (err) {
  logger.fatal({ err, dataDir: config.DATA_DIR }, 'cannot open the database');
  logger.flush();
  process.exit(1);
}

const metrics = createMetrics(SERVICE);
const tracing = createTracingFromConfig(SERVICE, config);
const app = createUserApp({ logger, db, metrics, tracing });
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
