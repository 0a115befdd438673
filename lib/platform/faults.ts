// Fault switches every service honours (added latency, 500s, cut connections, down), set over
// HTTP by the gateway's /debug/faults and switched off by themselves after a time to live.
import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import { HttpError, sendError } from './errors.js';
import { jsonBody } from './http.js';
import { bearerMatches, forbidden, secretDigest, unauthenticated } from './identity.js';
import type { Logger } from './logger.js';
import { parseBody } from './validation.js';
import { untraced } from './trace-context.js';

/** What a caller may switch on; absent fields are off. */
export const FaultSpecSchema = z.strictObject({
  latencyMs: z.number().int().min(0).max(60_000).optional(),
  errorRate: z.number().min(0).max(1).optional(),
  resetRate: z.number().min(0).max(1).optional(),
  down: z.boolean().optional(),
});
type FaultSpec = z.infer<typeof FaultSpecSchema>;

/** The switches as GET reports them: every field present, and when they switch off. */
export interface FaultState {
  latencyMs: number;
  errorRate: number;
  resetRate: number;
  down: boolean;
  /** ISO time the switches turn off by themselves; null when all are off. */
  expiresAt: string | null;
}

/** The service's own route the gateway calls; not proxied (the gateway only proxies /api/...). */
export const FAULTS_PATH = '/internal/faults';

const DEFAULT_FAULT_TTL_MS = 10 * 60_000;

const OFF: FaultState = { latencyMs: 0, errorRate: 0, resetRate: 0, down: false, expiresAt: null };

export interface FaultSwitches {
  /** True while any switch is on: the middleware's only work otherwise. */
  readonly active: boolean;
  state(): FaultState;
  /** Replaces the switches (absent fields off); they expire after the time to live. */
  set(spec: FaultSpec): FaultState;
  clear(): void;
  /**
   * Applies the switches to a request; one boolean check when none is on. Mounted after /health,
   * /metrics, /spans, /traces and the switch's own route, so those still answer under any fault:
   * a broken service can still be watched and repaired.
   */
  middleware: RequestHandler;
  /** GET and POST, to mount at FAULTS_PATH; behind the admin token when there is one. */
  routes: Router;
}

export interface FaultOptions {
  ttlMs?: number;
  /** When set, the route needs `Authorization: Bearer <token>`. */
  adminToken?: string;
  logger?: Logger;
  random?: () => number;
}

/**
 * Middleware that refuses a request without `Authorization: Bearer <token>` (401, scheme in any
 * letter case), or lets every request through when `token` is undefined.
 */
function bearerGuard(token: string | undefined): RequestHandler {
  if (token === undefined) return (_req, _res, next) => next();
  const expected = secretDigest(token);
  return (req, res, next) => {
    if (bearerMatches(req.headers.authorization, expected)) return next();
    next(unauthenticated(res, 'A valid admin token is required'));
  };
}

/** 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients). */
function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

/**
 * In front of a service's /internal/* routes, which no client should reach: with INTERNAL_TOKEN
 * set, `Authorization: Bearer <INTERNAL_TOKEN>` (none: 401, anything else: 403), and the request
 * is marked as the service credential's (`res.locals.serviceCredential`: what else guards these
 * routes steps aside); without it, callers on this machine only (403), the connection's own peer
 * being what counts (no header can claim it).
 */
export function internalGuard(internalToken: string | undefined): RequestHandler {
  const expected = secretDigest(internalToken);
  if (expected === undefined) {
    return (req, _res, next) => next(isLoopback(req.socket.remoteAddress) ? undefined : forbidden('Internal routes answer this machine only; set INTERNAL_TOKEN to call them from elsewhere'));
  }
  return (req, res, next) => {
    if (bearerMatches(req.headers.authorization, expected)) {
      res.locals.serviceCredential = true;
      return next();
    }
    if (req.headers.authorization === undefined) return next(unauthenticated(res, 'The service credential is required'));
    next(forbidden('The service credential is required'));
  };
}

export function createFaultSwitches({ ttlMs = DEFAULT_FAULT_TTL_MS, adminToken, logger, random = Math.random }: FaultOptions = {}): FaultSwitches {
  let current: FaultState = OFF;
  let active = false;
  let timer: NodeJS.Timeout | undefined;
  const log = logger?.child({ component: 'faults' });

  const clear = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    current = OFF;
    active = false;
  };

  const set = (spec: FaultSpec): FaultState => {
    clear();
    const next = { latencyMs: spec.latencyMs ?? 0, errorRate: spec.errorRate ?? 0, resetRate: spec.resetRate ?? 0, down: spec.down ?? false };
    if (next.latencyMs === 0 && next.errorRate === 0 && next.resetRate === 0 && !next.down) {
      log?.info('fault switches off');
      return current;
    }
    current = { ...next, expiresAt: new Date(Date.now() + ttlMs).toISOString() };
    active = true;
    // Set by one request, it fires long after: its line carries no request's trace id.
    timer = setTimeout(untraced(() => {
      clear();
      log?.info('fault switches expired');
    }), ttlMs);
    timer.unref();
    log?.warn({ faults: current }, 'fault switches on');
    return current;
  };

  const middleware: RequestHandler = (req, res, next) => {
    if (!active) return next();
    const f = current;
    if (f.down) return sendError(res, new HttpError(503, 'SERVICE_DOWN', 'Service is switched down'));
    if (f.resetRate > 0 && random() < f.resetRate) return void req.socket.destroy();
    if (f.errorRate > 0 && random() < f.errorRate) return sendError(res, new HttpError(500, 'INJECTED_FAULT', 'Injected fault'));
    if (f.latencyMs > 0) return void setTimeout(next, f.latencyMs);
    next();
  };

  // Mounted at FAULTS_PATH, so other requests pass it with one prefix check.
  const routes = Router();
  const adminGuard = bearerGuard(adminToken);
  // The service credential (internalGuard, in front) stands for the gateway, which checked the admin.
  routes.use((req, res, next) => (res.locals.serviceCredential === true ? next() : adminGuard(req, res, next)));
  routes.get('/', (_req, res) => {
    res.json(current);
  });
  routes.post('/', jsonBody(), (req, res) => {
    res.json(set(parseBody(FaultSpecSchema, req.body ?? {})));
  });

  return {
    get active() {
      return active;
    },
    state: () => current,
    set,
    clear,
    middleware,
    routes,
  };
}

/**
 * A process's switches as its config says: none in production without an admin token (the route
 * does not exist there), else guarded by the token when there is one.
 */
export function createFaultSwitchesFromConfig(
  config: { NODE_ENV: string; ADMIN_TOKEN?: string; FAULT_TTL_MS: number },
  logger?: Logger,
): FaultSwitches | null {
  if (config.NODE_ENV === 'production' && config.ADMIN_TOKEN === undefined) return null;
  return createFaultSwitches({ ttlMs: config.FAULT_TTL_MS, adminToken: config.ADMIN_TOKEN, logger });
}
