// GET / (what this gateway is and routes to) and GET /health (each service's circuit and a probe).
import { Router, type Request } from 'express';
import type { CircuitState } from './breakers.js';
import type { LimitStoreStatus } from './redis-limit-store.js';
import { instancesOf } from './dashboard/upstream-view.js';
import type { ProbeResult, Upstream } from './upstreams.js';

type ServiceStatus = 'healthy' | 'recovering' | 'unhealthy';

export const GATEWAY_FEATURES = [
  'routing',
  'circuit-breaker',
  'rate-limiting',
  'stale-cache',
  'aggregation',
  'distributed-tracing',
  'metrics',
  'jwt-auth',
] as const;

/**
 * Closed and answering: healthy. Half-open, or open while the service answers again: recovering
 * (trial requests will close it). Otherwise unhealthy. Without a probe, the circuit alone decides.
 */
function serviceStatus(state: CircuitState, probe?: ProbeResult): ServiceStatus {
  if (state === 'HALF_OPEN') return 'recovering';
  if (state === 'OPEN') return probe?.ok ? 'recovering' : 'unhealthy';
  return probe === undefined || probe.ok ? 'healthy' : 'unhealthy';
}

export interface StatusRoutesOptions {
  upstreams: Upstream[];
  name: string;
  version: string;
  /** Whether GET / (to an admin) and the detailed /health may name internal addresses (not in production). */
  showAddresses: boolean;
  /**
   * Whether the caller may use the admin surface: only such a caller sees the detailed /health
   * (others get `{status}`, what a load balancer needs) and the addresses on GET /.
   */
  isAdmin: (req: Request) => Promise<boolean>;
  /** The rate limiters' shared store, when there is one; degraded makes the gateway degraded. */
  rateLimitStore?: () => LimitStoreStatus;
}

export function createStatusRoutes({ upstreams, name, version, showAddresses, isAdmin, rateLimitStore }: StatusRoutesOptions): Router {
  const router = Router();

  // Names and states for anyone; where the services live, only for an admin, and never in production.
  router.get('/', async (req, res) => {
    const admin = showAddresses && (await isAdmin(req));
    res.json({
      name,
      version,
      services: upstreams.map((u) => (admin
        ? { name: u.name, url: u.url, status: serviceStatus(u.breaker.state), instances: u.instances.list.map((i) => i.url) }
        : { name: u.name, status: serviceStatus(u.breaker.state) })),
      features: GATEWAY_FEATURES,
    });
  });

  // Always 200: the gateway itself is up; the body says how its services are.
  router.get('/health', async (req, res) => {
    const detailed = await isAdmin(req);
    const probes = await Promise.all(upstreams.map((u) => u.probe()));
    let degraded = false;
    const services: Record<string, unknown> = {};
    upstreams.forEach((u, i) => {
      const probe = probes[i];
      const circuitState = u.breaker.state;
      const all = instancesOf(u);
      if (circuitState !== 'CLOSED' || !probe.ok || all.some((i) => i.state !== 'up')) degraded = true;
      // In production no internal address is shown here: instances in configured order.
      const instances = showAddresses ? all : all.map(({ url: _url, ...rest }) => rest);
      services[u.name] = { status: serviceStatus(circuitState, probe), circuitState, stats: u.breaker.stats, probe, instances };
    });
    const store = rateLimitStore?.();
    if (store?.state === 'degraded') degraded = true;
    const status = degraded ? 'degraded' : 'healthy';
    res.json(detailed ? { status, timestamp: new Date().toISOString(), services, ...(store && { rateLimitStore: store }) } : { status });
  });

  return router;
}
