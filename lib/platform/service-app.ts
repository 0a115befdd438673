// The frame every data-owning service shares: middleware order, /health, /metrics, 404, errors.
import type { Express, Router } from 'express';
import type { Logger } from 'pino';
import { databaseIsHealthy, type Db } from './db.js';
import { errorHandler, notFoundHandler } from './errors.js';
import { createBaseApp, jsonBody, requestContext } from './http.js';
import type { Metrics } from './metrics.js';
import { requestDeadline } from './service-client.js';
import { createTraceRoutes } from './trace-endpoints.js';
import { createTracing, type Tracing } from './span-recorder.js';

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
}

export function createServiceApp({ service, logger, metrics, db, routes, tracing = createTracing({ service }) }: ServiceAppOptions): Express {
  const app = createBaseApp();
  // Metrics hang on the request's one 'close' listener, with the span and the log line.
  app.use(requestContext(logger, tracing ?? undefined, [metrics.observe]));
  app.get('/health', (_req, res) => {
    const healthy = databaseIsHealthy(db);
    res.status(healthy ? 200 : 503).json({ status: healthy ? 'healthy' : 'unhealthy', service });
  });
  app.get('/metrics', metrics.handler);
  if (tracing) app.use(createTraceRoutes({ tracing }));
  app.use(jsonBody());
  // The caller's Request-Timeout bounds every call the routes make to other services.
  app.use(requestDeadline);
  app.use(routes);
  app.use(notFoundHandler);
  app.use(errorHandler(logger));
  return app;
}
