// The product service: the catalog, its stock and stock reservations, in DATA_DIR/products.db or PostgreSQL (DATABASE_URL).
import { serviceAuthFromConfig } from './lib/platform/identity.js';
import { runService } from './lib/platform/main.js';
import { createProductApp } from './lib/products/app.js';
import { ProductConfigSchema } from './lib/products/config.js';
import { openProductDatabase } from './lib/products/db.js';

await runService({
  service: 'product-service',
  schema: ProductConfigSchema,
  openDatabase: openProductDatabase,
  build: (deps, config) => ({ app: createProductApp(deps, serviceAuthFromConfig(config, config.USERS_URL, deps.logger)) }),
});
