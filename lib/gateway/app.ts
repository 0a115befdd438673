// The gateway app: built once from config, with its breakers, agents, proxies, limiter and cache.
import type { RequestListener } from 'node:http';
import type { Express } from 'express';
import { errorHandler, notFoundHandler } from '../platform/errors.js';
import { createBaseApp, requestContext } from '../platform/http.js';
import type { Logger } from '../platform/logger.js';
import { createMetrics, type Metrics } from '../platform/metrics.js';
import { ServiceClient } from '../platform/service-client.js';
import { createTraceRoutes } from '../platform/trace-endpoints.js';
import { createTracing, type Tracing } from '../platform/span-recorder.js';
import { packageVersion } from '../platform/version.js';
import { buildOpenApi, openApiHandler } from '../platform/openapi/document.js';
import { createAggregateRoutes } from './aggregate.js';
import { gatewayApi } from './api.js';
import type { GatewayConfig } from './config.js';
import { createDebugRoutes } from './debug.js';
import { createGatewayMetrics } from './metrics.js';
import { rejectUnsafePaths } from './path-guard.js';
import { createFrontDoor, createServiceProxy, proxyRoute } from './proxy.js';
import { createRateLimiter } from './rate-limit.js';
import { createStaleCache } from './stale-cache.js';
import { createStatusRoutes } from './status.js';
import { createUpstreams, type ServiceName, type Upstream } from './upstreams.js';

export const GATEWAY_NAME = 'api-gateway';

export interface GatewayOptions {
  config: GatewayConfig;
  logger: Logger;
  /** The process's metrics; the gateway adds its own to this registry. */
  metrics?: Metrics;
  /** The gateway's spans; one without export is made when absent (tests); null records none. */
  tracing?: Tracing | null;
}

export interface Gateway {
  /** Every route; the server should be made with `listen(gateway)`, which puts `front` before it. */
  app: Express;
  /** The server's request listener: proxied requests skip the router, the rest go to `app`. */
  front: RequestListener;
  /** Stops breakers, keep-alive agents and timers. Call after the server has drained. */
  close(): Promise<void>;
}

export function createGateway({ config, logger, metrics = createMetrics('gateway'), tracing = createTracing({ service: 'gateway' }) }: GatewayOptions): Gateway {
  const gatewayMetrics = createGatewayMetrics(metrics.registry);
  const upstreamList = createUpstreams(config, logger, gatewayMetrics);
  const upstreams = Object.fromEntries(upstreamList.map((u) => [u.name, u])) as Record<ServiceName, Upstream>;
  const cache = createStaleCache({ maxEntries: config.CACHE_MAX_ENTRIES, maxAgeMs: config.CACHE_MAX_AGE_MS, maxBytes: config.CACHE_MAX_BYTES });
  const limiter = createRateLimiter({ limit: config.RATE_LIMIT, windowMs: config.RATE_WINDOW_MS, metrics: gatewayMetrics });

  const app = createBaseApp();
  app.set('trust proxy', config.TRUST_PROXY);

  // Order: trace id, timing and metrics -> unlimited routes (/, /health, /metrics, debug) -> rate
  // limit and path guard on /api -> aggregates (before the proxies they would match) -> proxies (no
  // body parser anywhere: bodies stream through) -> 404 -> errors. Proxied /api/<service> requests
  // take the same steps in the front door, ahead of the router (createFrontDoor).
  // One timing and one 'close' listener per request serve the log line, the span and both metrics.
  const context = requestContext(logger, tracing ?? undefined, [metrics.observe, gatewayMetrics.observeProxied]);
  const onError = errorHandler(logger);
  app.use(context);
  const proxies = new Map(upstreamList.map((u) => [u.name, createServiceProxy({ upstream: u, cache, metrics: gatewayMetrics, logger, trustsProxies: config.TRUST_PROXY !== false })]));
  app.use(createStatusRoutes({ upstreams: upstreamList, name: GATEWAY_NAME, version: packageVersion() }));
  app.get('/metrics', metrics.handler);
  if (tracing) {
    // /traces merges the gateway's spans with every service's, each asked with a short timeout.
    const remotes = upstreamList.map((u) => new ServiceClient({ name: u.name, baseUrl: u.target, timeoutMs: config.HEALTH_PROBE_TIMEOUT_MS }));
    app.use(createTraceRoutes({ tracing, remotes }));
  }
  // In production the route exists only behind a token.
  const debug = config.ADMIN_TOKEN !== undefined || config.NODE_ENV !== 'production';
  if (debug) app.use(createDebugRoutes({ upstreams, logger, adminToken: config.ADMIN_TOKEN }));
  app.get('/openapi.json', openApiHandler(buildOpenApi({ title: GATEWAY_NAME, version: packageVersion() }, gatewayApi({ tracing: tracing !== null, debug }))));
  app.use('/api', limiter.middleware, rejectUnsafePaths);
  app.use(createAggregateRoutes({ upstreams }));
  // What the fast path leaves (other letter case, say) still reaches the same handlers here.
  for (const upstream of upstreamList) app.all(proxyRoute(upstream), proxies.get(upstream.name)!);
  app.use(notFoundHandler);
  app.use(onError);

  return {
    app,
    front: createFrontDoor({ app, context, limiter, proxies, onError }),
    close: async () => {
      await tracing?.shutdown();
      limiter.close();
      cache.clear();
      for (const u of upstreamList) {
        u.breaker.shutdown();
        u.agent.destroy();
      }
    },
  };
}
