import type { Express } from 'express';
import type { JWTVerifyGetKey } from 'jose';
import { createServiceAuth, createTokenVerifier, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, type AuthMode } from '../platform/identity.js';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { USER_API } from './api.js';
import { createLoginThrottle, DEFAULT_PASSWORD_HASH_COST, loadSigningKey, localKeys, MIN_PASSWORD_HASH_COST, type SigningKey } from './auth.js';
import { createUserRoutes } from './routes.js';
import { createUserStore } from './store.js';

export interface UserAuthOptions {
  mode: AuthMode;
  key: SigningKey;
  issuer: string;
  audience: string;
  algorithms: readonly string[];
  /** Token lifetime in seconds. */
  ttlS: number;
  /** Where tokens are verified against; absent: this service's own key. */
  verifyKeys?: JWTVerifyGetKey;
  /** Opens /metrics, /spans and /traces in required mode, beside an admin's token. */
  adminToken?: string | undefined;
  /** Failed logins per email per window before 429. */
  loginMaxFailures: number;
  loginWindowMs: number;
  /** scrypt's N for new password hashes (PASSWORD_HASH_COST); unset: the default, 2^14. */
  passwordHashCost?: number;
}

/**
 * Open mode, a key for the life of the process, the defaults of the configuration but the lowest
 * password hash cost (scrypt's work is not what tests test): for tests.
 */
export const defaultUserAuth = (): UserAuthOptions => ({
  mode: 'open',
  key: loadSigningKey(':memory:'),
  issuer: DEFAULT_ISSUER,
  audience: DEFAULT_AUDIENCE,
  algorithms: DEFAULT_ALGORITHMS,
  ttlS: 900,
  loginMaxFailures: 10,
  loginWindowMs: 15 * 60_000,
  passwordHashCost: MIN_PASSWORD_HASH_COST,
});

export function createUserApp(deps: ServiceDeps, options: UserAuthOptions = defaultUserAuth()): Express {
  const { mode, key, issuer, audience, algorithms, ttlS } = options;
  const verifier = createTokenVerifier({ keys: options.verifyKeys ?? localKeys(key), issuer, audience, algorithms });
  const auth = createServiceAuth({ mode, verifier, adminToken: options.adminToken });
  const routes = createUserRoutes({
    store: createUserStore(deps.db),
    auth,
    key,
    token: { issuer, audience, ttlS },
    throttle: createLoginThrottle({ maxFailures: options.loginMaxFailures, windowMs: options.loginWindowMs }),
    passwordHashCost: options.passwordHashCost ?? DEFAULT_PASSWORD_HASH_COST,
  });
  return createServiceApp({ ...deps, service: 'user-service', routes, api: USER_API, ...(mode === 'required' ? { guardAdmin: auth.requireAdminSurface } : {}) });
}
