// One order-service instance in this process (app, release worker, its own pool) on a given
// database: the tests that run several instances on one PostgreSQL schema start them with this.
import type { ServiceDatabaseOptions } from '../../lib/platform/config.js';
import { parseConfig } from '../../lib/platform/config.js';
import { createMetrics } from '../../lib/platform/metrics.js';
import type { SqlDatabase } from '../../lib/platform/sql.js';
import { OrderConfigSchema } from '../../lib/orders/config.js';
import { openOrderDatabase } from '../../lib/orders/db.js';
import { buildOrderService } from '../../lib/orders/service.js';
import { memoryLogger, startApp } from '../helpers.js';

export interface OrderInstance {
  url: string;
  db: SqlDatabase;
  close(): Promise<void>;
}

export async function startOrderInstance(options: ServiceDatabaseOptions, env: Record<string, string>): Promise<OrderInstance> {
  const db = await openOrderDatabase(options);
  const svc = buildOrderService({ logger: memoryLogger('order-service', 'fatal').logger, db, metrics: createMetrics('order-service') }, parseConfig(OrderConfigSchema, env));
  const started = await startApp(svc.app);
  return {
    url: started.url,
    db,
    close: async () => {
      await started.close();
      await svc.close();
      await db.close();
    },
  };
}
