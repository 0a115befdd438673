// The gateway app: built once from config, with its breakers, agents, proxies, limiter and cache.
import type { RequestListener } from 'node:http';
import type { Express, RequestHandler } from 'express';
import { errorHandler, routeNotFound } from '../platform/errors.js';
import { bearerMatches, secretDigest } from '../platform/identity.js';
import { createBaseApp, requestContext } from '../platform/http.js';
import type { Logger } from '../platform/logger.js';
import { createMetrics, type Metrics } from '../platform/metrics.js';
import { urlList } from '../platform/config.js';
import { ServiceClient } from '../platform/service-client.js';
import { createTraceRoutes } from '../platform/trace-endpoints.js';
import { createTracing, type Tracing } from '../platform/span-recorder.js';
import { packageVersion } from '../platform/version.js';
import { buildOpenApi, openApiHandler } from '../platform/openapi/document.js';
import { createAdminAccess } from './admin-access.js';
import { createAggregateRoutes } from './aggregate.js';
import { createGatewayAuth, createLoginRoute, requireAdminCaller, requireSelfOrAdmin, type Authenticate } from './auth.js';
import { concurrencyBudget } from './budget.js';
import { clientInFlightLimit } from './client-limits.js';
import { gatewayApi } from './api.js';
import { addressCheck, addressRateLimitOf, type GatewayConfig } from './config.js';
import { crossSiteRefusal } from './cross-site.js';
import { createDashboard } from './dashboard/index.js';
import { createDebugRoutes } from './debug.js';
import { createGatewayMetrics } from './metrics.js';
import { createFrontDoor, createProxiedPipeline } from './front-door.js';
import { guardPath } from './path-guard.js';
import { createServiceProxy } from './proxy.js';
import { clientAddressHeaders } from '../platform/client-address.js';
import { createRateLimiter, sendRateLimitHeaders } from './rate-limit.js';
import { createRedisLimitStore } from './redis-limit-store.js';
import { mountRoutes } from './route-table.js';
import { createStaleCache } from './stale-cache.js';
import { createStatusRoutes } from './status.js';
import { createUpstreams, type ServiceName, type Upstream } from './upstreams.js';

const GATEWAY_NAME = 'api-gateway';

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
  // With REDIS_URL both limits are counted in Redis, shared by every gateway replica.
  const limitStore = config.REDIS_URL === undefined ? undefined : createRedisLimitStore({
    url: config.REDIS_URL,
    prefix: config.RATE_LIMIT_REDIS_PREFIX,
    commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS,
    connectTimeoutMs: config.REDIS_CONNECT_TIMEOUT_MS,
    reconnectMaxMs: config.REDIS_RECONNECT_MAX_MS,
    logger,
    metrics: gatewayMetrics,
  });
  const sharedAs = (name: string) => limitStore && { store: limitStore, name, onFailure: config.RATE_LIMIT_STORE_FAILURE };
  const limiter = createRateLimiter({ limit: config.RATE_LIMIT, windowMs: config.RATE_WINDOW_MS, metrics: gatewayMetrics, shared: sharedAs('api') });
  // Every /api request counts against its address too, before its token is looked at: accounts do
  // not multiply what one address may send, and a refused token costs its address like any request.
  const addressLimiter = createRateLimiter({ limit: addressRateLimitOf(config), windowMs: config.RATE_WINDOW_MS, metrics: gatewayMetrics, byAddress: true, shared: sharedAs('addr') });
  const auth = createGatewayAuth({ config, logger });
  // The client's address as the user service must count it (logins, sign-ups), signed with INTERNAL_TOKEN.
  const signAddress = (address: string) => clientAddressHeaders(address, config.INTERNAL_TOKEN);
  const loginLimiter = createRateLimiter({ limit: config.LOGIN_RATE_LIMIT, windowMs: config.LOGIN_RATE_WINDOW_MS, metrics: gatewayMetrics, byAddress: true, shared: sharedAs('login') });

  const app = createBaseApp();
  app.set('trust proxy', config.TRUST_PROXY);

  // Order: trace id, timing and metrics -> unlimited routes (/, /health, /metrics, debug) -> rate
  // limit and path guard on /api -> aggregates (before the proxies they would match) -> proxies (no
  // body parser anywhere: bodies stream through) -> 404 -> errors. Proxied /api/<service> requests
  // take the same steps in the front door, ahead of the router (createFrontDoor).
  // One timing and one 'close' listener per request serve the log line, the span and both metrics.
  // The debug routes (and the dashboard's controls) exist in production only behind a token.
  const debugAllowed = config.ADMIN_TOKEN !== undefined || config.NODE_ENV !== 'production';
  // One rule for the whole admin surface: an admin's token in required mode or once ADMIN_TOKEN is
  // set; else (open mode, no ADMIN_TOKEN) the operator's own machine.
  const admin = createAdminAccess({
    locked: auth.mode === 'required' || config.ADMIN_TOKEN !== undefined,
    requireToken: auth.adminOnly('debug'),
    holdsAdminToken: auth.isAdmin,
    allowedAddress: addressCheck(config.ADMIN_ALLOW_ADDRESSES),
  });
  const dashboard = createDashboard({
    upstreams: upstreamList,
    limiter,
    registry: metrics.registry,
    guard: admin.guard,
    controls: debugAllowed,
    rateLimit: { limit: config.RATE_LIMIT, windowMs: config.RATE_WINDOW_MS },
    maxStreamsPerClient: config.DASHBOARD_STREAMS_PER_CLIENT,
  });
  const recordMetrics = config.REQUEST_METRICS_DISABLED ? [] : [metrics.observe, gatewayMetrics.observeProxied];
  const context = requestContext(logger, tracing ?? undefined, [...recordMetrics, dashboard.observe]);
  // What comes before the caller's identity is known: a cross-site change is refused, and the
  // request counts against its address (a refused token then costs its address too).
  const countAddress = config.RATE_LIMIT_DISABLED ? () => undefined : addressLimiter.check;
  const authenticate: Authenticate = (req, res) => {
    const refused = crossSiteRefusal(req) ?? countAddress(req, res);
    if (refused === undefined) return auth.authenticate(req, res);
    if (refused instanceof Promise) return refused.then((err) => err ?? auth.authenticate(req, res));
    return refused;
  };
  // The proxied pipeline, defined once: context, cross-site check, address limit, the caller's
  // identity, rate limit (per user or address), path guard, the client's requests at once, then
  // the proxy.
  const inFlightPerClient = clientInFlightLimit({ max: config.MAX_CLIENT_IN_FLIGHT, maxClients: config.MAX_IN_FLIGHT });
  const pipeline = createProxiedPipeline(context, authenticate, [...(config.RATE_LIMIT_DISABLED ? [] : [limiter.check]), guardPath, inFlightPerClient], sendRateLimitHeaders);
  const onError = errorHandler(logger);
  app.use(pipeline.context);
  // No route of any kind takes a state change from another site's page (the /api ones are also
  // checked in the pipeline, which proxied requests take without the router).
  app.use((req, _res, next) => next(crossSiteRefusal(req)));
  const bodyLimits = { idleMs: config.CLIENT_BODY_TIMEOUT_MS, totalMs: config.CLIENT_BODY_TOTAL_MS };
  const proxies = new Map(upstreamList.map((u) => [u.name, createServiceProxy({ upstream: u, cache, metrics: gatewayMetrics, logger, trustsProxies: config.TRUST_PROXY !== false, bodyLimits, ...(u.name === 'users' ? { clientAddress: signAddress } : {}) })]));
  // Each of these asks every service: a budget of their own bounds what a flood of them costs.
  app.use('/health', concurrencyBudget(config.OBSERVABILITY_MAX_IN_FLIGHT));
  app.use('/traces', concurrencyBudget(config.OBSERVABILITY_MAX_IN_FLIGHT));
  app.use(createStatusRoutes({
    upstreams: upstreamList,
    name: GATEWAY_NAME,
    version: packageVersion(),
    showAddresses: config.NODE_ENV !== 'production',
    isAdmin: admin.allows,
    rateLimitStore: limitStore?.status,
  }));
  app.get('/metrics', admin.guard, metrics.handler);
  app.use(['/traces', '/spans'], admin.guard);
  if (tracing) {
    // /traces merges the gateway's spans with every process's, each asked with a short timeout.
    // Every instance of every service, and each peer gateway (its own spans only).
    const timeoutMs = config.HEALTH_PROBE_TIMEOUT_MS;
    const remotes = [
      ...upstreamList.flatMap((u) => u.instances.list.map((i) => new ServiceClient({ name: u.instances.single ? u.name : `${u.name}@${i.host}`, baseUrl: i.target, timeoutMs }))),
      ...urlList(config.GATEWAY_PEERS).map((peer) => new ServiceClient({ name: `gateway@${new URL(peer).host}`, baseUrl: peer, timeoutMs })),
    ];
    app.use(createTraceRoutes({ tracing, remotes }));
  }
  app.use(dashboard.router);
  // The debug routes exist in production only with ADMIN_TOKEN set.
  if (debugAllowed) {
    app.use(createDebugRoutes({
      upstreams, logger, guard: admin.guard, adminToken: config.ADMIN_TOKEN, internalToken: config.INTERNAL_TOKEN, faultCallTimeoutMs: config.HEALTH_PROBE_TIMEOUT_MS,
    }));
  }
  const ownRoutes = gatewayApi({ tracing: tracing !== null, debug: debugAllowed });
  app.get('/openapi.json', openApiHandler(buildOpenApi({ title: GATEWAY_NAME, version: packageVersion() }, ownRoutes)));
  app.use('/api', pipeline.middleware);
  const login = createLoginRoute({ users: upstreams.users, limiter: loginLimiter, clientAddress: signAddress });
  const aggregates = createAggregateRoutes({ upstreams, statsTtlMs: config.STATS_TTL_MS });
  // ADMIN_TOKEN is the gateway's secret, not a caller the services know: they are asked as an
  // anonymous caller then (open mode; in required mode it is refused as no token before this).
  const adminSecret = secretDigest(config.ADMIN_TOKEN);
  const asAnonymousIfAdminSecret: RequestHandler = (req, _res, next) => {
    if (bearerMatches(req.headers.authorization, adminSecret)) delete req.headers.authorization;
    next();
  };
  // Every /api route of the route table: the gateway's own, then the proxies. What the fast path
  // leaves (other letter case, say) reaches the same proxy handlers here.
  mountRoutes(app, {
    own: {
      login: [login],
      logout: [login],
      dashboard: [admin.guard, requireAdminCaller(auth.mode), asAnonymousIfAdminSecret, aggregates],
      userFull: [requireSelfOrAdmin, aggregates],
    },
    proxies,
  });
  app.use(routeNotFound(ownRoutes));
  app.use(onError);

  return {
    app,
    front: createFrontDoor({ app, pipeline, proxies, onError, maxInFlight: config.MAX_IN_FLIGHT, maxBufferedBytes: config.GATEWAY_MAX_BUFFERED_BYTES }),
    close: async () => {
      await tracing?.shutdown();
      dashboard.close();
      limiter.close();
      addressLimiter.close();
      loginLimiter.close();
      await limitStore?.close();
      cache.clear();
      for (const u of upstreamList) u.close();
    },
  };
}
