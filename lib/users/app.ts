import type { Express } from 'express';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { createUserRoutes } from './routes.js';
import { createUserStore } from './store.js';

export function createUserApp(deps: ServiceDeps): Express {
  return createServiceApp({ ...deps, service: 'user-service', routes: createUserRoutes(createUserStore(deps.db)) });
}
