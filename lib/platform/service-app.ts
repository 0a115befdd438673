// The frame every data-owning service shares: middleware order, /health, /metrics, 404, errors.
import type { Express, Router } from 'express';
import type { Logger } from 'pino';
import { databaseIsHealthy, type Db } from './db.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { createBaseApp, jsonBody, requestContext } from './http.js';
import type { Metrics } from './metrics.js';
import { buildOpenApi, openApiHandler, type ApiRoute } from './openapi/document.js';
import { PROCESS_API, serviceHealthApi, TRACE_API } from './openapi/common.js';
import { createTraceRoutes } from './trace-endpoints.js';
import { createTracing, type Tracing } from './span-recorder.js';
import { packageVersion } from './version.js';

/** What every service's app factory takes. */
export interface ServiceDeps {
  logger: Logger;
  db: Db;
  metrics: Metrics;
  /** Spans of this app; one without export is made when absent (tests); null records none. */
  tracing?: Tracing | null;
}

export interface ServiceAppOptions extends ServiceDeps {
  /** `user-service`, `product-service`, `order-service`: the name /health reports. */
  service: string;
  routes: Router;
  /** The routes of `routes`, for GET /openapi.json (the frame adds its own). */
  api: readonly ApiRoute[];
}

export function createServiceApp({ service, logger, metrics, db, routes, api, tracing = createTracing({ service }) }: ServiceAppOptions): Express {
  const app = createBaseApp();
  // Metrics hang on the request's one 'close' listener, with the span and the log line.
  app.use(requestContext(logger, tracing ?? undefined, [metrics.observe]));
  app.get('/health', (_req, res) => {
    const healthy = databaseIsHealthy(db);
    res.status(healthy ? 200 : 503).json({ status: healthy ? 'healthy' : 'unhealthy', service });
  });
  app.get('/metrics', metrics.handler);
  const document = buildOpenApi({ title: service, version: packageVersion() }, [serviceHealthApi(service), ...PROCESS_API, ...(tracing ? TRACE_API : []), ...api]);
  app.get('/openapi.json', openApiHandler(document));
  if (tracing) app.use(createTraceRoutes({ tracing }));
  app.use(jsonBody());
  app.use(routes);
  app.use(notFoundHandler);
  app.use(errorHandler(logger));
  return app;
}
