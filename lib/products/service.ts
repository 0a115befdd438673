// The product service as a process runs it: the app, and the retention of released reservations.
// The main and the in-process test system both build it here.
import type { Express } from 'express';
import type { ServiceAuth } from '../platform/identity.js';
import type { ServiceDeps } from '../platform/service-app.js';
import { createProductApp } from './app.js';
import type { ProductConfig } from './config.js';
import { startProductRetention } from './retention.js';

export interface ProductService {
  app: Express;
  /** Stops retention (after the server has drained, before the database closes). */
  close: () => Promise<void>;
}

export function buildProductService(deps: ServiceDeps, config: Pick<ProductConfig, 'RESERVATION_RETENTION_MS' | 'RETENTION_INTERVAL_MS'>, auth: ServiceAuth): ProductService {
  const retention = startProductRetention(deps.db, deps.logger, config.RETENTION_INTERVAL_MS, { releasedTtlMs: config.RESERVATION_RETENTION_MS });
  return { app: createProductApp(deps, auth), close: () => retention.stop() };
}
