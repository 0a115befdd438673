// The debug routes, all behind one guard: POST /debug/circuit/:service/:action switches a circuit
// by hand; POST /debug/faults/:service and GET /debug/faults set and show every instance's fault
// switches (demos, drills).
import { Router, type RequestHandler } from 'express';
import { HttpError } from '../platform/errors.js';
import { FAULTS_PATH, FaultSpecSchema, type FaultState } from '../platform/faults.js';
import { jsonBody } from '../platform/http.js';
import type { Logger } from '../platform/logger.js';
import { ServiceClient } from '../platform/service-client.js';
import { parseBody } from '../platform/validation.js';
import { instanceUrls } from './dashboard/upstream-view.js';
import type { ServiceName, Upstream } from './upstreams.js';

export const CIRCUIT_ACTIONS = ['open', 'close', 'reset'] as const;
type CircuitAction = (typeof CIRCUIT_ACTIONS)[number];

export interface DebugRoutesOptions {
  upstreams: Record<ServiceName, Upstream>;
  logger: Logger;
  /** In front of every debug route: who may switch circuits and faults. */
  guard: RequestHandler;
  /** ADMIN_TOKEN, when set: what the gateway shows the services' fault routes without INTERNAL_TOKEN; else the caller's own token goes on. */
  adminToken?: string;
  /** INTERNAL_TOKEN, when set: the services' credential for /internal/*, shown before anything else. */
  internalToken?: string;
  /** How long the gateway waits for each instance's fault switch route. */
  faultCallTimeoutMs?: number;
}

/** What a fault-switch call reports per service: the switches, and how many instances took them. */
interface ServiceFaults {
  service: ServiceName;
  faults: FaultState | null;
  instances: number;
  reached: number;
}

/**
 * `open` trips the circuit (half-open after the reset timeout, like a tripped one), `close` closes
 * it, `reset` closes it and clears its counters.
 */
export function createDebugRoutes({ upstreams, logger, guard, adminToken, internalToken, faultCallTimeoutMs = 1000 }: DebugRoutesOptions): Router {
  const router = Router();
  const log = logger.child({ component: 'debug' });
  const names = Object.keys(upstreams) as ServiceName[];
  const own = internalToken ?? adminToken;
  const ownToken = own === undefined ? undefined : `Bearer ${own}`;
  // One client per instance, made once.
  const instances = new Map(names.map((name) => [name, instanceUrls(upstreams[name]).map((baseUrl) => new ServiceClient({ name, baseUrl, timeoutMs: faultCallTimeoutMs, maxResponseBytes: 16 * 1024 }))]));

  const upstreamOf = (service: string): Upstream => {
    const upstream = Object.hasOwn(upstreams, service) ? upstreams[service as ServiceName] : undefined;
    if (!upstream) throw new HttpError(404, 'NOT_FOUND', `No service of that name; expected one of ${names.join(', ')}`);
    return upstream;
  };

  /** Sends one fault-switch call to every instance of `service`; the first answer is the state. */
  const toInstances = async (service: ServiceName, callerAuth: string | undefined, method: 'GET' | 'POST', body?: unknown): Promise<ServiceFaults> => {
    const clients = instances.get(service)!;
    // The services guard their fault routes with INTERNAL_TOKEN when it is set; else as the gateway
    // does: ADMIN_TOKEN, or else the admin's own token, which the guard here has already checked.
    const authorization = ownToken ?? callerAuth;
    const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
    const results = await Promise.allSettled(clients.map((c) => c.request<FaultState>(method, FAULTS_PATH, { body, headers })));
    let faults: FaultState | null = null;
    let reached = 0;
    for (const r of results) {
      if (r.status !== 'fulfilled') continue;
      reached++;
      faults ??= r.value.body;
    }
    return { service, faults, instances: clients.length, reached };
  };

  router.use('/debug', guard);

  router.post('/debug/circuit/:service/:action', (req, res) => {
    const { service, action } = req.params;
    const upstream = upstreamOf(service);
    if (!(CIRCUIT_ACTIONS as readonly string[]).includes(action)) {
      throw new HttpError(400, 'VALIDATION_ERROR', 'Unknown circuit action', [{ field: 'action', message: `must be one of ${CIRCUIT_ACTIONS.join(', ')}` }]);
    }
    const breaker = upstream.breaker;
    switch (action as CircuitAction) {
      case 'open':
        breaker.forceOpen();
        break;
      case 'close':
        breaker.forceClose();
        break;
      case 'reset':
        breaker.reset();
        break;
    }
    log.warn({ upstream: upstream.name, action, state: breaker.state }, `${upstream.name} circuit switched by hand`);
    res.json({ service: upstream.name, action, newState: breaker.state });
  });

  router.get('/debug/faults', async (req, res) => {
    res.json({ services: await Promise.all(names.map((name) => toInstances(name, req.headers.authorization, 'GET'))) });
  });

  router.post('/debug/faults/:service', jsonBody(16 * 1024), async (req, res) => {
    const upstream = upstreamOf(String(req.params.service));
    const spec = parseBody(FaultSpecSchema, req.body ?? {});
    const result = await toInstances(upstream.name, req.headers.authorization, 'POST', spec);
    if (result.reached === 0) throw new HttpError(503, 'SERVICE_UNAVAILABLE', `No instance of ${upstream.name} took the fault switches`);
    log.warn({ upstream: upstream.name, faults: spec, reached: result.reached, instances: result.instances }, `${upstream.name} fault switches set`);
    res.json(result);
  });

  return router;
}
