// The gateway's own Prometheus metrics, registered beside the platform's process and HTTP metrics.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { RequestObserver } from '../platform/http.js';
import { DURATION_BUCKETS, metricMethod, requestMetrics } from '../platform/metrics.js';
import type { UpstreamFailure } from '../platform/service-client.js';
import type { CircuitState } from './breakers.js';

/** `aggregate` is the routes that combine several services. */
type RouteGroup = 'users' | 'products' | 'orders' | 'aggregate';

declare module 'express-serve-static-core' {
  interface Locals {
    /** Set by a proxy or aggregate route: requestContext's observer counts the request under this group. */
    proxiedTo?: RouteGroup;
  }
}

export interface GatewayMetrics {
  /**
   * One client request answered by a proxy or aggregation route (the group in
   * `res.locals.proxiedTo`), from requestContext's one timing of the request.
   */
  observeProxied: RequestObserver;
  /** `instance`: given with several instances (one label per configured URL), absent with one. */
  upstreamFailure(service: string, kind: UpstreamFailure, instance?: string): void;
  circuitRejected(service: string): void;
  /** A request sent to the service a second time: after failing before it reached it, or after a per-try timeout. */
  upstreamRetry(service: string): void;
  /** A try given up for another instance because this one had not answered within the per-try timeout. */
  tryTimeout(service: string, instance: string): void;
  circuitState(service: string, state: CircuitState): void;
  rateLimited(): void;
  /** The rate limiters' shared store answers (1) or not (0); the gauge exists only with a store. */
  rateLimitStoreUp(up: boolean): void;
  /** A command to the shared store that failed or timed out. */
  rateLimitStoreFailure(): void;
  staleResponse(service: string): void;
  /** Whether an instance takes requests (1) or is ejected (0). */
  instanceUp(service: string, instance: string, up: boolean): void;
  /** The counter of requests sent to one instance, bound once (no label lookup per request). */
  instanceRequests(service: string, instance: string): { inc(): void };
}

const STATE_VALUE: Record<CircuitState, number> = { CLOSED: 0, HALF_OPEN: 1, OPEN: 2 };

export function createGatewayMetrics(registry: Registry): GatewayMetrics {
  const registers = [registry];
  const record = requestMetrics({
    registers,
    requests: {
      name: 'gateway_requests_total',
      help: 'Client requests answered by the proxy and aggregation routes, by service, method and status.',
      labelNames: ['service', 'method', 'status'],
    },
    duration: {
      name: 'gateway_request_duration_seconds',
      help: 'Time from a proxied or aggregated request to its response end, by service and method.',
      labelNames: ['service', 'method'],
      buckets: DURATION_BUCKETS,
    },
  });
  const failures = new Counter({
    name: 'gateway_upstream_failures_total',
    help: 'Calls to a service that failed, by kind: refused, reset, timeout, bad_response, server_error.',
    labelNames: ['service', 'kind', 'instance'] as const,
    registers,
  });
  const rejections = new Counter({
    name: 'gateway_circuit_rejections_total',
    help: 'Requests refused without calling the service because its circuit was open.',
    labelNames: ['service'] as const,
    registers,
  });
  const retries = new Counter({
    name: 'gateway_upstream_retries_total',
    help: 'Requests sent again: after failing before they reached the service, or (a GET or HEAD) to another instance after the per-try timeout.',
    labelNames: ['service'] as const,
    registers,
  });
  const tryTimeouts = new Counter({
    name: 'gateway_upstream_try_timeouts_total',
    help: 'Tries of a GET or HEAD given up for another instance because this one had not answered within the per-try timeout.',
    labelNames: ['service', 'instance'] as const,
    registers,
  });
  const state = new Gauge({
    name: 'gateway_circuit_state',
    help: 'Circuit breaker state per service: 0 closed, 1 half-open, 2 open.',
    labelNames: ['service'] as const,
    registers,
  });
  const limited = new Counter({
    name: 'gateway_rate_limited_total',
    help: 'Requests refused with 429 by the rate limiter.',
    registers,
  });
  const stale = new Counter({
    name: 'gateway_stale_responses_total',
    help: 'GET requests answered from the stale cache because the service failed.',
    labelNames: ['service'] as const,
    registers,
  });

  const instanceUp = new Gauge({
    name: 'gateway_upstream_instance_up',
    help: 'Per instance of a service (its configured URL): 1 takes requests, 0 ejected after failures.',
    labelNames: ['service', 'instance'] as const,
    registers,
  });
  // Counted in plain numbers on the proxy's path and handed to prom-client at scrape time: a
  // labelled inc() would build its label key on every request.
  const sentCounts: { labels: { service: string; instance: string }; count: number }[] = [];
  new Counter({
    name: 'gateway_upstream_requests_total',
    help: 'Requests sent to each instance of a service (retries included).',
    labelNames: ['service', 'instance'] as const,
    registers,
    collect() {
      this.reset();
      for (const s of sentCounts) this.inc(s.labels, s.count);
    },
  });

  // Made on first use: without a shared store a gauge at 0 would read as a store that is down.
  let store: { up: Gauge; failures: Counter } | undefined;
  const storeMetrics = () =>
    (store ??= {
      up: new Gauge({ name: 'gateway_rate_limit_store_up', help: "1 while the rate limiters' shared store (Redis) answers, 0 while each gateway limits on its own.", registers }),
      failures: new Counter({ name: 'gateway_rate_limit_store_failures_total', help: "Commands to the rate limiters' shared store (Redis) that failed or timed out.", registers }),
    });

  return {
    observeProxied(req, res, durationMs) {
      const service = res.locals.proxiedTo;
      if (service) record(service, metricMethod(req.method), res.statusCode, durationMs / 1000);
    },
    upstreamFailure: (service, kind, instance) => failures.inc(instance === undefined ? { service, kind } : { service, kind, instance }),
    circuitRejected: (service) => rejections.inc({ service }),
    upstreamRetry: (service) => retries.inc({ service }),
    tryTimeout: (service, instance) => tryTimeouts.inc({ service, instance }),
    circuitState: (service, s) => state.set({ service }, STATE_VALUE[s]),
    rateLimited: () => limited.inc(),
    rateLimitStoreUp: (up) => storeMetrics().up.set(up ? 1 : 0),
    rateLimitStoreFailure: () => storeMetrics().failures.inc(),
    staleResponse: (service) => stale.inc({ service }),
    instanceUp: (service, instance, up) => instanceUp.set({ service, instance }, up ? 1 : 0),
    instanceRequests: (service, instance) => {
      const entry = { labels: { service, instance }, count: 0 };
      sentCounts.push(entry);
      return { inc: () => void entry.count++ };
    },
  };
}
