// The order service: orders, their workflow, and the stock they hold in the product service.
import { OrderConfigSchema } from './lib/orders/config.js';
import { openOrderDatabase } from './lib/orders/db.js';
import { buildOrderService } from './lib/orders/service.js';
import { runService } from './lib/platform/main.js';

await runService({
  service: 'order-service',
  schema: OrderConfigSchema,
  openDatabase: openOrderDatabase,
  build: buildOrderService,
});
