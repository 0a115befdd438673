import type { Express } from 'express';
import type { JWTVerifyGetKey } from 'jose';
import { createServiceAuth, createTokenVerifier, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, internalCallerGuard, type AuthMode } from '../platform/identity.js';
import { createTokenVersions } from '../platform/token-versions.js';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { USER_API } from './api.js';
import { createLoginThrottle, DEFAULT_PASSWORD_HASH_COST, loadSigningKey, MIN_PASSWORD_HASH_COST, type SigningKey } from './auth.js';
import { createUserRoutes } from './routes.js';
import { createSessionStore } from './sessions.js';
import { staticKeyRing, type KeyRing } from './signing-keys.js';
import { createUserStore } from './store.js';

export interface UserAuthOptions {
  mode: AuthMode;
  /** The one key tokens are signed with; or `keys`. */
  key?: SigningKey;
  /** The keys kept in the database (signing-keys.ts); absent: `key` alone. */
  keys?: KeyRing;
  issuer: string;
  audience: string;
  algorithms: readonly string[];
  /** Token lifetime in seconds. */
  ttlS: number;
  /** Where tokens are verified against; absent: this service's own key. */
  verifyKeys?: JWTVerifyGetKey;
  /** Opens /metrics, /spans and /traces in required mode, beside an admin's token. */
  adminToken?: string | undefined;
  /** What verifiers show the token-version route (INTERNAL_TOKEN); unset: callers on this machine only. */
  internalToken?: string | undefined;
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
  const { mode, issuer, audience, algorithms, ttlS } = options;
  if (!options.keys && !options.key) throw new Error('createUserApp needs a signing key (key or keys)');
  const keys = options.keys ?? staticKeyRing(options.key!);
  const sessions = createSessionStore(deps.db);
  // Our own tokens are checked against the account's version in the database itself, every time
  // (a primary-key read); an external provider's (verifyKeys) are not ours to check.
  const versions = options.verifyKeys === undefined
    ? createTokenVersions({ fetch: async (sub) => (/^[1-9]\d{0,15}$/.test(sub) ? (await sessions.version(Number(sub))) ?? null : null), ttlMs: 0 })
    : undefined;
  const verifier = createTokenVerifier({ keys: options.verifyKeys ?? keys.verifyKeys, issuer, audience, algorithms, maxLifetimeS: ttlS, versions });
  const auth = createServiceAuth({ mode, verifier, adminToken: options.adminToken });
  const routes = createUserRoutes({
    store: createUserStore(deps.db),
    sessions,
    auth,
    internalOnly: internalCallerGuard(options.internalToken),
    keys,
    token: { issuer, audience, ttlS },
    throttle: createLoginThrottle(deps.db, { maxFailures: options.loginMaxFailures, windowMs: options.loginWindowMs }),
    passwordHashCost: options.passwordHashCost ?? DEFAULT_PASSWORD_HASH_COST,
  });
  return createServiceApp({ ...deps, service: 'user-service', routes, api: USER_API, ...(mode === 'required' ? { guardAdmin: auth.requireAdminSurface } : {}) });
}
