// Prometheus metrics: each app gets its own Registry, so several apps fit in one test process.
import type { Request, RequestHandler, Response } from 'express';
import { collectDefaultMetrics, Counter, type Metric, Registry } from 'prom-client';
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
  const recordRequest = requestMetrics({
    registers: [registry],
    requests: { name: 'http_requests_total', help: 'HTTP requests answered, by route pattern, method and status.', labelNames: ['method', 'route', 'status'] },
    duration: { name: 'http_request_duration_seconds', help: 'Time from request to response end, by route pattern and method.', labelNames: ['method', 'route'], buckets: DURATION_BUCKETS },
  });
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
 * request path only adds to plain numbers per label set (a labelled prom-client inc or observe
 * builds a label key on every call, even through a cached child); the counter and the histogram
 * read those numbers when scraped. Label values are route patterns, methods and statuses: bounded.
 */
export function requestMetrics(options: {
  registers: Registry[];
  requests: { name: string; help: string; labelNames: readonly [string, string, string] };
  duration: { name: string; help: string; labelNames: readonly [string, string]; buckets: number[] };
}): (a: string, b: string, status: number, seconds: number) => void {
  const { requests, duration } = options;
  const bounds = [...duration.buckets].sort((x, y) => x - y);
  interface Series {
    labels: Record<string, string>;
    buckets: number[];
    sum: number;
    count: number;
    statuses: Map<number, number>;
  }
  const series = new Map<string, Map<string, Series>>();
  new Counter({
    name: requests.name,
    help: requests.help,
    labelNames: requests.labelNames,
    registers: options.registers,
    collect() {
      this.reset();
      for (const byB of series.values()) {
        for (const s of byB.values()) {
          for (const [status, n] of s.statuses) this.inc({ ...s.labels, [requests.labelNames[2]]: String(status) }, n);
        }
      }
    },
  });
  const histogramValues = () => {
    const values: { labels: Record<string, string | number>; sharedLabels: Record<string, string>; value: number; metricName: string }[] = [];
    const bucket = `${duration.name}_bucket`;
    for (const byB of series.values()) {
      for (const s of byB.values()) {
        let acc = 0;
        bounds.forEach((le, i) => {
          acc += s.buckets[i];
          values.push({ labels: { le }, sharedLabels: s.labels, value: acc, metricName: bucket });
        });
        values.push({ labels: { le: '+Inf' }, sharedLabels: s.labels, value: s.count, metricName: bucket });
        values.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${duration.name}_sum` });
        values.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${duration.name}_count` });
      }
    }
    return values;
  };
  // A histogram whose buckets prom-client's Histogram cannot be given, so it is read in the shape
  // that Histogram exposes: the same text and JSON.
  const histogram = {
    name: duration.name,
    help: duration.help,
    type: 'histogram',
    aggregator: 'sum',
    getForPromString: () => Promise.resolve({ name: duration.name, help: duration.help, type: 'histogram', aggregator: 'sum', values: histogramValues() }),
    get: () =>
      Promise.resolve({
      name: duration.name,
      help: duration.help,
      type: 'histogram',
      aggregator: 'sum',
      values: histogramValues().map(({ labels, sharedLabels, value, metricName }) => ({ labels: { ...sharedLabels, ...labels }, value, metricName })),
    }),
    reset: () => series.clear(),
  };
  for (const registry of options.registers) registry.registerMetric(histogram as unknown as Metric);

  return (a, b, status, seconds) => {
    let byB = series.get(a);
    if (!byB) series.set(a, (byB = new Map<string, Series>()));
    let s = byB.get(b);
    if (!s) {
      s = { labels: { [duration.labelNames[0]]: a, [duration.labelNames[1]]: b }, buckets: bounds.map(() => 0), sum: 0, count: 0, statuses: new Map() };
      byB.set(b, s);
    }
    s.statuses.set(status, (s.statuses.get(status) ?? 0) + 1);
    for (let i = 0; i < bounds.length; i++) {
      if (seconds <= bounds[i]) {
        s.buckets[i]++;
        break;
      }
    }
    s.sum += seconds;
    s.count++;
  };
}
