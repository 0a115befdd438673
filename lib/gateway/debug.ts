// POST /debug/circuit/:service/:action: switch a circuit by hand (demos, drills).
import { createHash, timingSafeEqual } from 'node:crypto';
import { Router } from 'express';
import { HttpError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import type { ServiceName, Upstream } from './upstreams.js';

export const CIRCUIT_ACTIONS = ['open', 'close', 'reset'] as const;
type CircuitAction = (typeof CIRCUIT_ACTIONS)[number];

export interface DebugRoutesOptions {
  upstreams: Record<ServiceName, Upstream>;
  logger: Logger;
  /** When set, callers must send `Authorization: Bearer <token>`. */
  adminToken?: string;
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

/**
 * `open` trips the circuit (half-open after the reset timeout, like a tripped one), `close` closes
 * it, `reset` closes it and clears its counters. The caller decides whether to mount it at all.
 */
export function createDebugRoutes({ upstreams, logger, adminToken }: DebugRoutesOptions): Router {
  const router = Router();
  const log = logger.child({ component: 'debug' });
  // Hashing both sides gives equal lengths, so the comparison takes the same time for any guess.
  const expected = adminToken === undefined ? undefined : digest(`Bearer ${adminToken}`);

  router.post('/debug/circuit/:service/:action', (req, res) => {
    if (expected && !timingSafeEqual(digest(req.headers.authorization ?? ''), expected)) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      throw new HttpError(401, 'UNAUTHORIZED', 'A valid admin token is required');
    }
    const { service, action } = req.params;
    const upstream = Object.hasOwn(upstreams, service) ? upstreams[service as ServiceName] : undefined;
    if (!upstream) throw new HttpError(404, 'NOT_FOUND', `No service of that name; expected one of ${Object.keys(upstreams).join(', ')}`);
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
    log.warn({ service: upstream.name, action, state: breaker.state }, 'circuit switched by hand');
    res.json({ service: upstream.name, action, newState: breaker.state });
  });

  return router;
}
