// Who is calling the gateway: bearer tokens verified at the edge (JWKS, cached), the public routes
// of required mode, the admin surface, and the login route in front of the user service.
import type { Request, RequestHandler, Response } from 'express';
import { Router } from 'express';
import { HttpError } from '../platform/errors.js';
import { jsonBody } from '../platform/http.js';
import {
  authModeOf, forbidden, jwksUrlOf, requireAdminToken, secretDigest, unauthenticated, verifierFromConfig, type AuthMode, type Identity, type TokenVerifier,
} from '../platform/identity.js';
import type { Logger } from '../platform/logger.js';
import type { ServiceResponse } from '../platform/service-client.js';
import type { GatewayConfig } from './config.js';
import { withholdCredential } from './forward-headers.js';
import type { RateLimiter } from './rate-limit.js';
import { ROUTES } from './route-table.js';
import type { Upstream } from './upstreams.js';

/**
 * Sets `res.locals.identity` for a verified token; returns the error to answer, or undefined to go
 * on. Synchronous (no promise, no closure) when the token is absent or already verified; a
 * promise only the first time a token is seen.
 */
export type Authenticate = (req: Request, res: Response) => HttpError | undefined | Promise<HttpError | undefined>;

export interface GatewayAuth {
  readonly mode: AuthMode;
  /** The pipeline step: verifies a bearer token and sets `res.locals.identity`; 401 as the mode says. */
  authenticate: Authenticate;
  /**
   * Guards the admin surface: an admin token (JWT with role admin, or ADMIN_TOKEN) as Bearer.
   * `debug`: the debug routes, locked once ADMIN_TOKEN is set even in open mode; `admin`: the rest,
   * locked in required mode.
   */
  adminOnly(kind: 'debug' | 'admin'): RequestHandler;
  /** Whether the request holds an admin token (for the detailed /health); never throws. */
  isAdmin: (req: Request) => Promise<boolean>;
}

/** The identity authenticate() verified for this request. */
export const identityOf = (res: Response): Identity | undefined => res.locals.identity as Identity | undefined;

/**
 * Routes anyone may call in required mode (the route table's public rows: login, sign-up and the
 * catalog's reads). `url` is the request target as sent, matched as the router matches it.
 */
export const isPublicRoute = (method: string, url: string): boolean => ROUTES.isPublic(method, url);

export interface GatewayAuthOptions {
  config: GatewayConfig;
  logger: Logger;
  /** Tests may pass their own; default: the JWKS the configuration names. */
  verifier?: TokenVerifier;
}

export function createGatewayAuth({ config, logger, verifier = verifierFromConfig(config, config.USERS_URL, logger) }: GatewayAuthOptions): GatewayAuth {
  const mode = authModeOf(config);
  const required = mode === 'required';
  const adminToken = secretDigest(config.ADMIN_TOKEN);
  const log = logger.child({ component: 'auth' });
  if (!required) log.warn({ authMode: mode }, 'AUTH_MODE=open: the API answers anonymous requests; set AUTH_MODE=required to demand tokens');
  else log.info({ authMode: mode, jwks: jwksUrlOf(config, config.USERS_URL) }, 'tokens required');

  const authenticate: Authenticate = (req, res) => {
    const header = req.headers.authorization;
    if (header === undefined) return required && !isPublicRoute(req.method, req.originalUrl) ? unauthenticated(res) : undefined;
    const hit = verifier.cached(header);
    if (hit !== undefined) {
      res.locals.identity = hit;
      return undefined;
    }
    return verifier.verify(header).then(
      (identity) => {
        res.locals.identity = identity;
        return undefined;
      },
      (err: HttpError) => {
        // A public route serves anonymous callers, so a token is only ever a plus there: one that
        // does not verify (a client still sending its expired one to log in again) makes the
        // request anonymous and is not passed on, so no service grants it what a valid one would
        // (an admin's sign-up); one that cannot be checked now (no JWKS) goes on for the service to judge.
        if (isPublicRoute(req.method, req.originalUrl)) {
          if (err.status === 401) withholdCredential(req);
          return undefined;
        }
        if (err.status !== 401) return err;
        // Open mode: ignored (the request is anonymous, and a service that looks at it refuses it).
        return required ? unauthenticated(res) : undefined;
      },
    );
  };

  // No response given: a refused token sets no challenge on the answer it only trims.
  const isAdmin = (req: Request): Promise<boolean> => requireAdminToken(req.headers.authorization, adminToken, verifier).then(() => true, () => false);

  const adminOnly = (kind: 'debug' | 'admin'): RequestHandler => {
    // Without a lock the route is open (open mode without ADMIN_TOKEN: development).
    const locked = required || (kind === 'debug' && adminToken !== undefined);
    if (!locked) return (_req, _res, next) => next();
    return async (req, res, next) => {
      await requireAdminToken(req.headers.authorization, adminToken, verifier, res);
      next();
    };
  };

  return {
    mode,
    authenticate,
    adminOnly,
    isAdmin,
  };
}

export interface LoginRouteOptions {
  users: Upstream;
  /** Login attempts per client address (the user service also limits them per email). */
  limiter: RateLimiter;
  /** The signed X-Client-Address headers: the user service counts failures per email and address. */
  clientAddress: (address: string) => Record<string, string>;
}

/**
 * POST /api/auth/login, relayed to the user service's POST /auth/login through its breaker. The
 * body is parsed here (it is small) and never logged. POST /api/auth/logout beside it.
 */
export function createLoginRoute({ users, limiter, clientAddress }: LoginRouteOptions): Router {
  const router = Router();
  // The user service's 503 OVERLOADED (its password hashing is busy) is thrown as an HttpError that
  // keeps its dependency and Retry-After (neutral for the breaker); the error handler answers it as the service did.
  router.post('/api/auth/login', limiter.middleware, jsonBody(16 * 1024), async (req, res) => {
    res.locals.route = '/api/auth/login';
    relay(res, await users.breaker.run((c) => users.client.post<unknown>('/auth/login', req.body, { signal: c.signal, headers: clientAddress(req.ip ?? ''), accept: [400, 401, 429] })));
  });
  // Ends every token of the caller, at the user service (which raises the account's token
  // version): each verifier refuses them within its TOKEN_VERSION_CACHE_MS. The caller's token
  // was verified on the way in (required mode); the user service checks it in every mode.
  router.post('/api/auth/logout', async (req, res) => {
    res.locals.route = '/api/auth/logout';
    const authorization = req.headers.authorization;
    relay(res, await users.breaker.run((c) => users.client.post<unknown>('/auth/logout', undefined, {
      signal: c.signal, accept: [401], ...(authorization === undefined ? {} : { headers: { authorization } }),
    })));
  });
  return router;
}

/** The headers of a relayed answer that describe it to the client. */
const RELAYED_HEADERS = ['retry-after', 'www-authenticate'] as const;

/**
 * A user-service answer onto the client's response: its status, body and RELAYED_HEADERS, never
 * stored by a cache (RFC 6749 5.1), and an error answer never sniffed, as the gateway's own are.
 */
function relay(res: Response, answer: ServiceResponse<unknown>): void {
  for (const name of RELAYED_HEADERS) {
    const value = answer.headers.get(name);
    if (value) res.setHeader(name, value);
  }
  res.setHeader('Cache-Control', 'no-store');
  if (answer.status >= 400) res.setHeader('X-Content-Type-Options', 'nosniff');
  res.status(answer.status);
  if (answer.body === undefined) res.end();
  else res.json(answer.body);
}

/** /api/dashboard: an admin's (in open mode an anonymous caller may look too). */
export function requireAdminCaller(mode: AuthMode): RequestHandler {
  return (_req, res, next) => {
    const identity = identityOf(res);
    if (identity === undefined ? mode === 'required' : identity.role !== 'admin') throw forbidden('Only an admin may see the dashboard');
    next();
  };
}

/** /api/users/:id/full: the caller itself or an admin; another user's is 404 as if it did not exist. */
export const requireSelfOrAdmin: RequestHandler = (req, res, next) => {
  const identity = identityOf(res);
  if (identity !== undefined && identity.role !== 'admin' && identity.sub !== req.params.id) throw new HttpError(404, 'NOT_FOUND', 'User not found');
  next();
};
