// The user service: users and their roles, in DATA_DIR/users.db; logins and the token signing key.
import { authModeOf, remoteKeys } from './lib/platform/identity.js';
import { runService } from './lib/platform/main.js';
import { createUserApp } from './lib/users/app.js';
import { hashPasswordSync, loadSigningKey } from './lib/users/auth.js';
import { UserConfigSchema } from './lib/users/config.js';
import { openUserDatabase, setDemoPasswords } from './lib/users/db.js';

await runService({
  service: 'user-service',
  schema: UserConfigSchema,
  openDatabase: openUserDatabase,
  build: (deps, config) => {
    // Demo rows of files made before passwords existed get the demo password here (see setDemoPasswords).
    if (config.SEED_DATA && config.DEMO_PASSWORD !== undefined) setDemoPasswords(deps.db, hashPasswordSync(config.DEMO_PASSWORD, config.PASSWORD_HASH_COST));
    const app = createUserApp(deps, {
      mode: authModeOf(config),
      key: loadSigningKey(config.DATA_DIR, config.JWT_PRIVATE_KEY),
      issuer: config.JWT_ISSUER,
      audience: config.JWT_AUDIENCE,
      algorithms: config.JWT_ALGORITHMS,
      ttlS: config.TOKEN_TTL_S,
      ...(config.JWKS_URL === undefined ? {} : { verifyKeys: remoteKeys(config.JWKS_URL) }),
      adminToken: config.ADMIN_TOKEN,
      loginMaxFailures: config.LOGIN_MAX_FAILURES,
      loginWindowMs: config.LOGIN_WINDOW_MS,
      passwordHashCost: config.PASSWORD_HASH_COST,
    });
    return { app };
  },
});
