// The frame every data-owning service shares: middleware order, /health, /metrics, 404, errors.
import type { Express, Request, Response, Router } from 'express';
import type { Logger } from 'pino';
import type { SqlDatabase } from './sql.js';
import { errorHandler, notFoundHandler, routeNotFound } from './errors.js';
import { createFaultSwitches, FAULTS_PATH, internalGuard, type FaultSwitches } from './faults.js';
import { createBaseApp, jsonBody, requestContext } from './http.js';
import type { Metrics } from './metrics.js';
import { buildOpenApi, openApiHandler, type ApiRoute } from './openapi/document.js';
import { FAULTS_API, PROCESS_API, serviceHealthApi, TRACE_API } from './openapi/common.js';
import { requestDeadline } from './service-client.js';
import { createTraceRoutes } from './trace-endpoints.js';
import { createTracing, type Tracing } from './span-recorder.js';
import { packageVersion } from './version.js';

/** What every service's app factory takes. */
export interface ServiceDeps {
  logger: Logger;
  db: SqlDatabase;
  metrics: Metrics;
  /** Spans of this app; one without export is made when absent (tests); null records none. */
  tracing?: Tracing | null;
  /** Fault switches; default ones (no token) are made when absent (tests); null has none. */
  faults?: FaultSwitches | null;
  /** INTERNAL_TOKEN: what /internal/* needs; absent, they answer this machine only. */
  internalToken?: string | undefined;
}

/** Throws when the caller may not read /metrics, /spans or /traces (lib/platform/identity.ts). */
type AdminSurfaceGuard = (req: Request, res: Response) => Promise<void>;

export interface ServiceAppOptions extends ServiceDeps {
  /** `user-service`, `product-service`, `order-service`: the name /health reports. */
  service: string;
  routes: Router;
  /** Absent: the admin surface is open (open mode). */
  guardAdmin?: AdminSurfaceGuard;
  /** The routes of `routes`, for GET /openapi.json (the frame adds its own). */
  api: readonly ApiRoute[];
}

export function createServiceApp({
  service, logger, metrics, db, routes, api, guardAdmin, internalToken, tracing = createTracing({ service }), faults = createFaultSwitches({ logger }),
}: ServiceAppOptions): Express {
  const app = createBaseApp();
  // Metrics hang on the request's one 'close' listener, with the span and the log line.
  app.use(requestContext(logger, tracing ?? undefined, [metrics.observe]));
  app.get('/health', async (_req, res) => {
    const healthy = await db.healthy();
    res.status(healthy ? 200 : 503).json({ status: healthy ? 'healthy' : 'unhealthy', service });
  });
  // No switches (production without ADMIN_TOKEN): their path does not exist for anyone, so no
  // guard in front of it may answer first and tell a caller that something is there.
  if (!faults) app.use(FAULTS_PATH, notFoundHandler);
  // Before anything else under /internal: the fault switches, and the routes' own (reservations).
  app.use('/internal', internalGuard(internalToken));
  if (guardAdmin) {
    app.use(['/metrics', '/spans', '/traces', FAULTS_PATH], async (req, res, next) => {
      if (res.locals.serviceCredential !== true) await guardAdmin(req, res);
      next();
    });
  }
  app.get('/metrics', metrics.handler);
  const allRoutes = [serviceHealthApi(service), ...PROCESS_API, ...(tracing ? TRACE_API : []), ...(faults ? FAULTS_API : []), ...api];
  const document = buildOpenApi({ title: service, version: packageVersion() }, allRoutes);
  app.get('/openapi.json', openApiHandler(document));
  if (tracing) app.use(createTraceRoutes({ tracing }));
  // Faults reach the API routes only: the routes above keep answering under any switch.
  if (faults) app.use(FAULTS_PATH, faults.routes).use(faults.middleware);
  app.use(jsonBody());
  // The caller's Request-Timeout bounds every call the routes make to other services.
  app.use(requestDeadline);
  app.use(routes);
  app.use(routeNotFound(allRoutes));
  app.use(errorHandler(logger));
  return app;
}
