import type { Express } from 'express';
import type { JWTVerifyGetKey } from 'jose';
import { createServiceAuth, createTokenVerifier, internalCallerGuard, type AuthMode } from '../platform/identity.js';
import { createTokenVersions } from '../platform/token-versions.js';
import { createServiceApp, type ServiceDeps } from '../platform/service-app.js';
import { USER_API } from './api.js';
import { clientAddressOf, clientKeyOf } from '../platform/client-address.js';
import { DEFAULT_PASSWORD_HASH_COST, type SigningKey } from './auth.js';
import { createHashBudget } from './hash-budget.js';
import { DEFAULT_USER_LIMITS, type UserLimits } from './limits.js';
import { createLoginLockout } from './lockout.js';
import { createSignupLimit } from './signup-limit.js';
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
  /**
   * INTERNAL_TOKEN: what verifiers show the token-version route, and the key of the gateway's
   * signed X-Client-Address; unset: both are believed from callers on this machine only.
   */
  internalToken?: string | undefined;
  /** Failed logins per email per window before 429. */
  loginMaxFailures: number;
  loginWindowMs: number;
  /** scrypt's N for new password hashes (PASSWORD_HASH_COST); unset: the default, 2^14. */
  passwordHashCost?: number;
  /** Bounds against login and sign-up abuse; each unset one takes the configuration's default. */
  limits?: Partial<UserLimits>;
}

export function createUserApp(deps: ServiceDeps, options: UserAuthOptions): Express {
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
  const limits = { ...DEFAULT_USER_LIMITS, ...options.limits };
  const routes = createUserRoutes({
    store: createUserStore(deps.db),
    sessions,
    auth,
    internalOnly: internalCallerGuard(options.internalToken),
    keys,
    token: { issuer, audience, ttlS },
    lockout: createLoginLockout(deps.db, {
      maxFailures: options.loginMaxFailures, windowMs: options.loginWindowMs, maxRows: limits.loginMaxTracked,
      slowdownAfter: limits.loginSlowdownAfter, slowdownStepMs: limits.loginSlowdownStepMs, slowdownMaxMs: limits.loginSlowdownMaxMs,
    }),
    hashBudget: createHashBudget({ concurrency: limits.hashConcurrency, maxQueue: limits.hashMaxQueue, maxWaitMs: limits.hashMaxWaitMs }),
    signups: createSignupLimit({ limit: limits.signupLimit, windowMs: limits.signupWindowMs, maxClients: limits.signupMaxTracked }),
    clientOf: (req) => clientKeyOf(clientAddressOf(req, options.internalToken)),
    passwordHashCost: options.passwordHashCost ?? DEFAULT_PASSWORD_HASH_COST,
  });
  return createServiceApp({ ...deps, service: 'user-service', routes, api: USER_API, ...(mode === 'required' ? { guardAdmin: auth.requireAdminSurface } : {}) });
}
