// Routes that combine services: a user with their orders, and a dashboard of every service's stats.
// Calls run in parallel, each through its service's breaker; a part that fails is reported, not fatal.
import { Router, type Response } from 'express';
import { parseId, type Page } from '../platform/validation.js';
import { CircuitOpenError } from './breakers.js';
import type { GatewayMetrics } from './metrics.js';
import type { ServiceName, Upstream } from './upstreams.js';

/** Orders shown with a user; a user with more sees the newest ones. */
export const USER_ORDERS_LIMIT = 100;

/** The aggregate routes, as Express paths; GET only. */
const AGGREGATE_ROUTES = { userFull: '/api/users/:id/full', dashboard: '/api/dashboard' } as const;

// The same paths as Express matches them (any letter case, one optional trailing slash, a query).
const AGGREGATE_MATCHERS = Object.values(AGGREGATE_ROUTES).map(
  (path) => new RegExp(`^${path.replace(/:\w+/g, '[^/?]+')}/?(?:\\?|$)`, 'i'),
);

/** Whether a request URL is one of the aggregate routes (which live under a service's prefix, too). */
export function isAggregateRequest(method: string | undefined, url: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  for (const matcher of AGGREGATE_MATCHERS) if (matcher.test(url)) return true;
  return false;
}

export interface AggregateRoutesOptions {
  upstreams: Record<ServiceName, Upstream>;
  metrics: GatewayMetrics;
}

export function createAggregateRoutes({ upstreams, metrics }: AggregateRoutesOptions): Router {
  const router = Router();
  const { users, orders } = upstreams;

  const timed = (res: Response, method: string) => {
    const started = performance.now();
    res.once('finish', () => metrics.observeRequest('aggregate', method, res.statusCode, (performance.now() - started) / 1000));
  };

  router.get(AGGREGATE_ROUTES.userFull, async (req, res) => {
    timed(res, req.method);
    const id = parseId(req.params);
    // The services apply their rules to the caller, so they are asked with the caller's token.
    const headers = req.headers.authorization === undefined ? undefined : { authorization: req.headers.authorization };
    const [user, userOrders] = await Promise.allSettled([
      users.breaker.run((c) => users.client.get<Record<string, unknown>>(`/users/${id}`, { signal: c.signal, headers })),
      orders.breaker.run((c) => orders.client.get<Page<unknown>>(`/orders?userId=${id}&limit=${USER_ORDERS_LIMIT}`, { signal: c.signal, headers })),
    ]);
    // Without the user there is nothing to show: its 404 stays a 404, its outage is our 503.
    if (user.status === 'rejected') {
      if (user.reason instanceof CircuitOpenError) res.setHeader('Retry-After', String(user.reason.retryAfterSeconds));
      throw user.reason;
    }
    const ordersOk = userOrders.status === 'fulfilled' && Array.isArray(userOrders.value.body?.data);
    res.json({
      user: user.value.body,
      orders: ordersOk ? userOrders.value.body.data : null,
      meta: { complete: ordersOk, unavailable: ordersOk ? [] : ['orders'] },
    });
  });

  router.get(AGGREGATE_ROUTES.dashboard, async (req, res) => {
    timed(res, req.method);
    const list = Object.values(upstreams);
    const headers = req.headers.authorization === undefined ? undefined : { authorization: req.headers.authorization };
    const results = await Promise.allSettled(list.map((u) => u.breaker.run((c) => u.client.get<unknown>('/stats', { signal: c.signal, headers }))));
    const services: Record<string, unknown> = {};
    const unavailable: string[] = [];
    results.forEach((result, i) => {
      const u = list[i]!;
      if (result.status === 'fulfilled') {
        services[u.name] = result.value.body;
      } else {
        services[u.name] = { status: 'unavailable', circuitState: u.breaker.state };
        unavailable.push(u.name);
      }
    });
    res.json({
      timestamp: new Date().toISOString(),
      gateway: { uptime: process.uptime(), memoryUsage: process.memoryUsage() },
      services,
      meta: { complete: unavailable.length === 0, unavailable },
    });
  });

  return router;
}
