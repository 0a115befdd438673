import { z } from 'zod';
import { intVar, portVar, serviceShape } from '../platform/config.js';
import { authShape, demoSeedShape } from '../platform/identity.js';
import { DEFAULT_USER_LIMITS as D } from './limits.js';
import { DEFAULT_DEMO_PASSWORD, DEFAULT_PASSWORD_HASH_COST, isPasswordHashCost, isUsableSigningKey, MAX_PASSWORD_HASH_COST, MIN_PASSWORD_HASH_COST } from './auth.js';

export const UserConfigSchema = z
  .object({
    ...serviceShape,
    ...authShape,
    PORT: portVar(3011),
    // A PKCS#8 PEM (P-256 or Ed25519; "\n" may be written as \n); unset: with DATABASE_URL the keys
    // kept in the database (shared by every instance, rotated by `npm run rotate-key`), else
    // DATA_DIR/jwt-signing-key.pem, made on first start.
    JWT_PRIVATE_KEY: z.string().min(1).refine(isUsableSigningKey, 'must be a PKCS#8 PEM of a P-256 or Ed25519 private key').optional(),
    ...demoSeedShape,
    // Failed logins by one client address on one email within the window before that address's
    // attempts on it are 429 (the account's owner elsewhere is not refused).
    LOGIN_MAX_FAILURES: intVar(10, 1, 10_000),
    LOGIN_WINDOW_MS: intVar(15 * 60_000, 1000, 2 ** 31 - 1),
    // (email, address) counts kept; an active one is never dropped to make room. Each row is a
    // failed scrypt check within one window, which the hash budget makes slow to pile up; past it,
    // attempts without a row of their own wait LOGIN_SLOWDOWN_MAX_MS and are not counted.
    LOGIN_MAX_TRACKED: intVar(D.loginMaxTracked, 10, 100_000_000),
    // Failures on one email from all addresses together within the window past which every attempt
    // on it waits (many addresses guessing one account): STEP_MS more per failure, up to MAX_MS.
    // Waiting, not refusing: the owner's right password still gets in.
    LOGIN_SLOWDOWN_AFTER: intVar(D.loginSlowdownAfter, 1, 1_000_000),
    LOGIN_SLOWDOWN_STEP_MS: intVar(D.loginSlowdownStepMs, 0, 60_000),
    LOGIN_SLOWDOWN_MAX_MS: intVar(D.loginSlowdownMaxMs, 0, 60_000),
    // scrypt checks at once (logins, new passwords): default one core fewer than the machine has,
    // 1 to 4, so the other routes keep a core. Past it they queue, at most MAX_QUEUE, each at most
    // MAX_WAIT_MS; beyond either, 503 OVERLOADED with Retry-After. The address that asked least goes
    // first, so a bystander's login waits about one check (~50 ms) whatever the flood. A second's
    // wait leaves room for checks slowed by a busy machine or a higher PASSWORD_HASH_COST.
    PASSWORD_HASH_CONCURRENCY: intVar(D.hashConcurrency, 1, 256),
    PASSWORD_HASH_MAX_QUEUE: intVar(D.hashMaxQueue, 0, 10_000),
    PASSWORD_HASH_MAX_WAIT_MS: intVar(D.hashMaxWaitMs, 1, 60_000),
    // Sign-ups (POST /users by anyone but an admin) per client address per window: each account is
    // another per-user rate-limit bucket at the gateway. Counted per instance.
    SIGNUP_RATE_LIMIT: intVar(D.signupLimit, 1, 1_000_000),
    SIGNUP_RATE_WINDOW_MS: intVar(D.signupWindowMs, 1000, 2 ** 31 - 1),
    // Addresses with a sign-up window of their own; when all are active, the rest share one window.
    SIGNUP_MAX_TRACKED: intVar(D.signupMaxTracked, 1, 10_000_000),
    // scrypt's N for new password hashes (each hash keeps its own, so old ones still verify); the
    // tests set the minimum, production should keep the default or more.
    PASSWORD_HASH_COST: intVar(DEFAULT_PASSWORD_HASH_COST, MIN_PASSWORD_HASH_COST, MAX_PASSWORD_HASH_COST)
      .refine(isPasswordHashCost, `must be a power of two from ${MIN_PASSWORD_HASH_COST} to ${MAX_PASSWORD_HASH_COST}`),
  })
  .transform((c) => {
    const demoPassword = c.DEMO_PASSWORD ?? (c.NODE_ENV === 'production' ? undefined : DEFAULT_DEMO_PASSWORD);
    return { ...c, DEMO_PASSWORD: demoPassword, SEED_DATA: c.SEED_DATA && demoPassword !== undefined };
  });
