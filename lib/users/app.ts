import type { Express } from 'express';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { USER_API } from './api.js';
import { createUserRoutes } from './routes.js';
import { createUserStore } from './store.js';

export function createUserApp(deps: ServiceDeps): Express {
  return createServiceApp({ ...deps, service: 'user-service', routes: createUserRoutes(createUserStore(deps.db)), api: USER_API });
}
