// The auth the tests give the service factories when they want open mode: the factories default to
// required mode, so open mode is always asked for by name.
import { createServiceAuth, DEFAULT_ALGORITHMS, DEFAULT_AUDIENCE, DEFAULT_ISSUER, type ServiceAuth } from '../../lib/platform/identity.js';
import type { UserAuthOptions } from '../../lib/users/app.js';
import { loadSigningKey, MIN_PASSWORD_HASH_COST } from '../../lib/users/auth.js';

/** Open mode for the product or order service, without a verifier: a bearer token is a 401. */
export const openServiceAuth = (): ServiceAuth => createServiceAuth({ mode: 'open' });

/**
 * The user service in open mode, a key for the life of the process, the defaults of the
 * configuration but the lowest password hash cost (scrypt's work is not what tests test) and no
 * practical sign-up limit.
 */
export const openUserAuth = (): UserAuthOptions => ({
  mode: 'open',
  key: loadSigningKey(':memory:'),
  issuer: DEFAULT_ISSUER,
  audience: DEFAULT_AUDIENCE,
  algorithms: DEFAULT_ALGORITHMS,
  ttlS: 900,
  loginMaxFailures: 10,
  loginWindowMs: 15 * 60_000,
  passwordHashCost: MIN_PASSWORD_HASH_COST,
  // Tests sign many users up from one loopback address; the limit's own tests set theirs.
  limits: { signupLimit: 1_000_000 },
});
