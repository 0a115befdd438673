import type { Express } from 'express';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { PRODUCT_API } from './api.js';
import { createProductRoutes } from './routes.js';
import { createProductStore } from './store.js';

export function createProductApp(deps: ServiceDeps): Express {
  return createServiceApp({ ...deps, service: 'product-service', routes: createProductRoutes(createProductStore(deps.db)), api: PRODUCT_API });
}
