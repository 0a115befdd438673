// npm run rotate-key: adds a new token signing key to the user service's database, with the
// configuration the user service reads (DATABASE_URL, DATABASE_SCHEMA, TOKEN_TTL_S,
// JWT_KEY_REFRESH_MS). Every instance publishes it within JWT_KEY_REFRESH_MS, every verifier
// fetches it within the next, and it signs from 3 x JWT_KEY_REFRESH_MS on; older keys stay published until every token they signed has expired,
// then this command deletes them. Prints the new key's id, never the key.
import { databaseOptions, loadConfig } from '../lib/platform/config.js';
import { CLOCK_TOLERANCE_S } from '../lib/platform/identity.js';
import { UserConfigSchema } from '../lib/users/config.js';
import { openUserDatabase } from '../lib/users/db.js';
import { activationDelayMs, rotateSigningKey } from '../lib/users/signing-keys.js';

const config = loadConfig(UserConfigSchema, 'rotate-key');
if (config.JWT_PRIVATE_KEY !== undefined) {
  process.stderr.write('rotate-key: JWT_PRIVATE_KEY is set, so the user service signs with that key; rotate by changing it\n');
  process.exit(1);
}
if (config.DATABASE_URL === undefined) {
  process.stderr.write(`rotate-key: the keys are kept in the database only with DATABASE_URL; with SQLite, delete ${config.DATA_DIR}/jwt-signing-key.pem and restart (tokens already issued stop working)\n`);
  process.exit(1);
}

try {
  const db = await openUserDatabase({ ...databaseOptions(config), seed: false });
  try {
    const rotation = await rotateSigningKey(db, {
      activateAfterMs: activationDelayMs(config.JWT_KEY_REFRESH_MS),
      retainMs: (config.TOKEN_TTL_S + CLOCK_TOLERANCE_S) * 1000,
    });
    process.stdout.write(`${JSON.stringify({ kid: rotation.kid, signsFrom: new Date(rotation.activeFromMs).toISOString(), removed: rotation.removed })}\n`);
  } finally {
    await db.close();
  }
} catch (err) {
  // The URL may hold a password: the message names neither it nor the key.
  process.stderr.write(`rotate-key: cannot rotate: ${(err as { code?: string }).code ?? (err as Error).message}\n`);
  process.exit(1);
}
