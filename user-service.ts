// The user service: users and their roles, in DATA_DIR/users.db.
import { runService } from './lib/platform/main.js';
import { createUserApp } from './lib/users/app.js';
import { UserConfigSchema } from './lib/users/config.js';
import { openUserDatabase } from './lib/users/db.js';

await runService({
  service: 'user-service',
  schema: UserConfigSchema,
  openDatabase: openUserDatabase,
  build: (deps) => ({ app: createUserApp(deps) }),
});
