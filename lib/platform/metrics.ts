// Prometheus metrics: each app gets its own Registry, so several apps fit in one test process.
import type { Request, RequestHandler, Response } from 'express';
import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';
import { routeOf, type RequestObserver } from './http.js';

export interface Metrics {
  registry: Registry;
  /**
   * Counts and times a request by route pattern (never the raw URL: that is unbounded); an
   * observer for requestContext, which times the request once for the span, log and metrics.
   */
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
  const recordRequest = requestRecorder(requests, duration);
  const record = (req: Request, res: Response, seconds: number) => {
    recordRequest(metricMethod(req.method), routeOf(req, res) ?? 'unmatched', res.statusCode, seconds);
  };
  const observe: RequestObserver = (req, res, durationMs) => record(req, res, durationMs / 1000);
  const handler: RequestHandler = async (_req, res) => {
    res.setHeader('Content-Type', registry.contentType);
    res.end(await registry.metrics());
  };
  return { registry, observe, handler };
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** The method as a label value: anything unusual is one `OTHER`, so clients cannot add series. */
export const metricMethod = (method: string): string => (KNOWN_METHODS.has(method) ? method : 'OTHER');

/**
 * Counts and times one request: `requests` is labelled (a, b, status) and `duration` (a, b). The
 * label children are made once per combination rather than hashing a label object on every
 * request; label values are route patterns and a few statuses, and the cap is a guard.
 */
export function requestRecorder(
  requests: Counter<string>,
  duration: Histogram<string>,
  maxChildren = 2_000,
): (a: string, b: string, status: number, seconds: number) => void {
  const children = new Map<string, { inc: () => void; observe: (seconds: number) => void }>();
  return (a, b, status, seconds) => {
    const key = `${a} ${b} ${status}`;
    let child = children.get(key);
    if (!child) {
      const counter = requests.labels(a, b, String(status));
      const timer = duration.labels(a, b);
      child = { inc: () => counter.inc(), observe: (s) => timer.observe(s) };
      if (children.size < maxChildren) children.set(key, child);
    }
    child.inc();
    child.observe(seconds);
  };
}
