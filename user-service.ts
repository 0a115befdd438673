// The user service: users and their roles (DATA_DIR/users.db or PostgreSQL), logins, and the token
// signing keys.
import { authModeOf, CLOCK_TOLERANCE_S, remoteKeys } from './lib/platform/identity.js';
import { runService } from './lib/platform/main.js';
import { createUserApp } from './lib/users/app.js';
import { hashPassword, loadSigningKey } from './lib/users/auth.js';
import { UserConfigSchema } from './lib/users/config.js';
import { openUserDatabase, setDemoPasswords } from './lib/users/db.js';
import { staticKeyRing, startStoredKeyRing } from './lib/users/signing-keys.js';

await runService({
  service: 'user-service',
  schema: UserConfigSchema,
  openDatabase: openUserDatabase,
  build: async (deps, config) => {
    // Demo rows of files made before passwords existed get the demo password here (see setDemoPasswords).
    if (config.SEED_DATA && config.DEMO_PASSWORD !== undefined) await setDemoPasswords(deps.db, await hashPassword(config.DEMO_PASSWORD, config.PASSWORD_HASH_COST));
    // JWT_PRIVATE_KEY, else with PostgreSQL the keys every instance shares, else the file under DATA_DIR.
    const keys = config.JWT_PRIVATE_KEY === undefined && config.DATABASE_URL !== undefined
      ? await startStoredKeyRing(deps.db, {
        refreshMs: config.JWT_KEY_REFRESH_MS, retainMs: (config.TOKEN_TTL_S + CLOCK_TOLERANCE_S) * 1000, logger: deps.logger.child({ component: 'signing-keys' }),
      })
      : staticKeyRing(loadSigningKey(config.DATA_DIR, config.JWT_PRIVATE_KEY));
    if (config.INTERNAL_TOKEN === undefined && authModeOf(config) === 'required') {
      deps.logger.warn('INTERNAL_TOKEN is unset: client addresses are believed from loopback peers only, so behind a gateway on another host every login and sign-up counts against the gateway\'s address');
    }
    const app = createUserApp(deps, {
      mode: authModeOf(config),
      keys,
      issuer: config.JWT_ISSUER,
      audience: config.JWT_AUDIENCE,
      algorithms: config.JWT_ALGORITHMS,
      ttlS: config.TOKEN_TTL_S,
      ...(config.JWKS_URL === undefined ? {} : { verifyKeys: remoteKeys(config.JWKS_URL, { refreshMs: config.JWT_KEY_REFRESH_MS }) }),
      adminToken: config.ADMIN_TOKEN,
      internalToken: config.INTERNAL_TOKEN,
      loginMaxFailures: config.LOGIN_MAX_FAILURES,
      loginWindowMs: config.LOGIN_WINDOW_MS,
      passwordHashCost: config.PASSWORD_HASH_COST,
      limits: {
        loginMaxTracked: config.LOGIN_MAX_TRACKED,
        loginSlowdownAfter: config.LOGIN_SLOWDOWN_AFTER,
        loginSlowdownStepMs: config.LOGIN_SLOWDOWN_STEP_MS,
        loginSlowdownMaxMs: config.LOGIN_SLOWDOWN_MAX_MS,
        hashConcurrency: config.PASSWORD_HASH_CONCURRENCY,
        hashMaxQueue: config.PASSWORD_HASH_MAX_QUEUE,
        hashMaxWaitMs: config.PASSWORD_HASH_MAX_WAIT_MS,
        signupLimit: config.SIGNUP_RATE_LIMIT,
        signupWindowMs: config.SIGNUP_RATE_WINDOW_MS,
        signupMaxTracked: config.SIGNUP_MAX_TRACKED,
      },
    });
    return { app, close: () => keys.close() };
  },
});
