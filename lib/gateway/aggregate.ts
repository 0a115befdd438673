// Routes that combine services: a user with their orders, and a dashboard of every service's stats.
// Calls go through each service's typed client, in parallel, each through its service's breaker,
// with each service's own client (upstreams.ts: the proxy's keep-alive pools and retry budget); a
// part that fails is reported, not fatal.
import { createHash } from 'node:crypto';
import { Router } from 'express';
import { notFound } from '../platform/errors.js';
import { asCaller, type CallOptions } from '../platform/typed-client.js';
import { parseId } from '../platform/validation.js';
import { createOrdersClient } from '../orders/client.js';
import { createProductsClient } from '../products/client.js';
import { createUsersClient } from '../users/client.js';
import { CircuitOpenError } from './breakers.js';
import { SharedAnswers } from './dashboard/shared-answers.js';
import { ownRoutePath } from './route-table.js';
import type { ServiceName, Upstream } from './upstreams.js';

/** Orders shown with a user; a user with more sees the newest ones. */
const USER_ORDERS_LIMIT = 100;

/** The aggregate routes' paths, as the route table has them. */
const AGGREGATE_ROUTES = { userFull: ownRoutePath('userFull'), dashboard: ownRoutePath('dashboard') } as const;

export interface AggregateRoutesOptions {
  upstreams: Record<ServiceName, Upstream>;
  /** STATS_TTL_MS: how long a service's /stats answer serves the dashboard again; 0 never. */
  statsTtlMs?: number;
}

// Callers whose /stats answers are remembered at once (each service's, for each): a few admins.
const MAX_STATS_CALLERS = 64;

export function createAggregateRoutes({ upstreams, statsTtlMs = 0 }: AggregateRoutesOptions): Router {
  const router = Router();
  const { users, products, orders } = upstreams;
  const usersClient = createUsersClient(users.client);
  const ordersClient = createOrdersClient(orders.client);
  const productsClient = createProductsClient(products.client);
  const stats: Record<ServiceName, (options: CallOptions) => Promise<unknown>> = {
    users: (options) => usersClient.stats(options),
    products: (options) => productsClient.stats(options),
    orders: (options) => ordersClient.stats(options),
  };
  // A service's answer is the caller's (it applies its rules to the caller's token): it is shared
  // only among requests with the same Authorization, kept as a digest.
  const sharedStats = new SharedAnswers<unknown>({ ttlMs: statsTtlMs, maxEntries: MAX_STATS_CALLERS * Object.keys(upstreams).length });
  // Reading the heap's figures costs more than the rest of the gateway's part: as old as the stats.
  const memory = new SharedAnswers<NodeJS.MemoryUsage>({ ttlMs: statsTtlMs, maxEntries: 1 });

  router.get(AGGREGATE_ROUTES.userFull, async (req, res) => {
    // Counted and timed by requestContext's observer, under `aggregate`.
    res.locals.proxiedTo = 'aggregate';
    const id = parseId(req.params);
    // The services apply their rules to the caller, so they are asked with the caller's token.
    const caller = asCaller(req.headers.authorization);
    const [user, userOrders] = await Promise.allSettled([
      users.breaker.run((c) => usersClient.getUser(id, { ...caller, signal: c.signal })),
      orders.breaker.run((c) => ordersClient.listOrders({ userId: id, limit: USER_ORDERS_LIMIT }, { ...caller, signal: c.signal })),
    ]);
    // Without the user there is nothing to show: its 404 stays a 404, its outage is our 503.
    if (user.status === 'rejected') {
      if (user.reason instanceof CircuitOpenError) res.setHeader('Retry-After', String(user.reason.retryAfterSeconds));
      throw user.reason;
    }
    if (user.value === null) throw notFound('User');
    const ordersOk = userOrders.status === 'fulfilled';
    res.json({
      user: user.value,
      orders: ordersOk ? userOrders.value.data : null,
      meta: { complete: ordersOk, unavailable: ordersOk ? [] : ['orders'] },
    });
  });

  router.get(AGGREGATE_ROUTES.dashboard, async (req, res) => {
    res.locals.proxiedTo = 'aggregate';
    const list = Object.values(upstreams);
    const { authorization } = req.headers;
    const caller = asCaller(authorization);
    const callerKey = authorization === undefined ? '' : createHash('sha256').update(authorization).digest('base64url');
    const memoryUsage = memory.get('', () => Promise.resolve(process.memoryUsage()));
    const results = await Promise.allSettled(list.map((u) => sharedStats.get(`${u.name} ${callerKey}`, () => u.breaker.run((c) => stats[u.name]({ ...caller, signal: c.signal })))));
    const services: Record<string, unknown> = {};
    const unavailable: string[] = [];
    results.forEach((result, i) => {
      const u = list[i];
      if (result.status === 'fulfilled') {
        services[u.name] = result.value;
      } else {
        services[u.name] = { status: 'unavailable', circuitState: u.breaker.state };
        unavailable.push(u.name);
      }
    });
    res.json({
      timestamp: new Date().toISOString(),
      gateway: { uptime: process.uptime(), memoryUsage: await memoryUsage },
      services,
      meta: { complete: unavailable.length === 0, unavailable },
    });
  });

  return router;
}
