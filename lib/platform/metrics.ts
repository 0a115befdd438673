// Prometheus metrics: each app gets its own Registry, so several apps fit in one test process.
import type { Request, RequestHandler, Response } from 'express';
import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';
import { routeOf, type RequestObserver } from './http.js';

export interface Metrics {
  registry: Registry;
  /** Counts and times every request by route pattern (never the raw URL: that is unbounded). */
  middleware: RequestHandler;
  /** The same counting for requestContext's observers: no timer or listener of its own. */
  observe: RequestObserver;
  /** GET /metrics */
  handler: RequestHandler;
}

export const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createMetrics(service: string): Metrics {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  // prom-client names these three gauges `_total`, a counter suffix that `promtool check metrics`
  // refuses; nodejs_active_handles/requests/resources (by type) carry the same numbers.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  const requests = new Counter({
    name: 'http_requests_total',
    help: 'HTTP requests answered, by route pattern, method and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Time from request to response end, by route pattern and method.',
    labelNames: ['method', 'route'] as const,
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  // Label children made once per (method, route, status) rather than hashing a label object on
  // every request. Routes are patterns and statuses few, so this stays small; the cap is a guard.
  const children = new Map<string, { inc: () => void; observe: (seconds: number) => void }>();
  const record = (req: Request, res: Response, seconds: number) => {
    const route = routeOf(req, res) ?? 'unmatched';
    const method = KNOWN_METHODS.has(req.method) ? req.method : 'OTHER';
    const status = res.statusCode;
    const key = `${method} ${status} ${route}`;
    let child = children.get(key);
    if (!child) {
      const counter = requests.labels(method, route, String(status));
      const timer = duration.labels(method, route);
      child = { inc: () => counter.inc(), observe: (s) => timer.observe(s) };
      if (children.size < MAX_LABEL_CHILDREN) children.set(key, child);
    }
    child.inc();
    child.observe(seconds);
  };
  const middleware: RequestHandler = (req, res, next) => {
    const started = performance.now();
    res.once('finish', () => record(req, res, (performance.now() - started) / 1000));
    next();
  };
  const observe: RequestObserver = (req, res, durationMs) => record(req, res, durationMs / 1000);
  const handler: RequestHandler = async (_req, res) => {
    res.setHeader('Content-Type', registry.contentType);
    res.end(await registry.metrics());
  };
  return { registry, middleware, observe, handler };
}

const MAX_LABEL_CHILDREN = 2_000;
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
