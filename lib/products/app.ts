import type { Express } from 'express';
import { createServiceAuth, type ServiceAuth } from '../platform/identity.js';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { PRODUCT_API } from './api.js';
import { createProductRoutes } from './routes.js';
import { createProductStore } from './store.js';

/** `auth` defaults to required mode with no verifier and no service credential: nothing is open. */
export function createProductApp(deps: ServiceDeps, auth: ServiceAuth = createServiceAuth({ mode: 'required' })): Express {
  return createServiceApp({
    ...deps,
    service: 'product-service',
    routes: createProductRoutes(createProductStore(deps.db), auth),
    api: PRODUCT_API,
    ...(auth.mode === 'required' ? { guardAdmin: auth.requireAdminSurface } : {}),
  });
}
