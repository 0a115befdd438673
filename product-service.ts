// The product service: the catalog, its stock and stock reservations, in DATA_DIR/products.db or PostgreSQL (DATABASE_URL).
import { serviceAuthFromConfig } from './lib/platform/identity.js';
import { runService } from './lib/platform/main.js';
import { ProductConfigSchema } from './lib/products/config.js';
import { openProductDatabase } from './lib/products/db.js';
import { buildProductService } from './lib/products/service.js';

await runService({
  service: 'product-service',
  schema: ProductConfigSchema,
  openDatabase: openProductDatabase,
  build: (deps, config) => buildProductService(deps, config, serviceAuthFromConfig(config, config.USERS_URL, deps.logger)),
});
