// The user service's SQLite file: schema steps and the demo rows of a first start.
import { demoUsers } from '../demo/data.js';
import type { ServiceDatabaseOptions } from '../platform/config.js';
import { openSqlDatabase, seedOnce, sqliteHandle, type Migrations, type SqlDatabase } from '../platform/sql.js';
import { createUserStore } from './store.js';

export const USER_MIGRATIONS: Migrations = { sqlite: [
  // AUTOINCREMENT: a deleted user's id is never handed out again, since orders keep pointing at it.
  `CREATE TABLE users (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     name TEXT NOT NULL,
     email TEXT NOT NULL COLLATE NOCASE UNIQUE,
     role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   ) STRICT;
   CREATE INDEX users_role ON users (role, id);`,
  // A scrypt hash (lib/users/auth.ts); NULL: the user cannot log in.
  'ALTER TABLE users ADD COLUMN password_hash TEXT;',
], postgres: [] };

export async function openUserDatabase(options: ServiceDatabaseOptions): Promise<SqlDatabase> {
  const db = await openSqlDatabase({ ...options, name: 'users', migrations: USER_MIGRATIONS });
  if (options.seed) {
    await seedOnce(db, async () => {
      const store = createUserStore(sqliteHandle(db));
      // A file that already holds users (started once with SEED_DATA=false) gets no demo rows:
      // they could clash with real emails.
      if (store.count() > 0) return;
      for (const user of demoUsers) store.create({ ...user });
    });
  }
  return db;
}

/**
 * Gives the demo users that have no password `passwordHash`. Files seeded before passwords existed
 * hold the demo rows without one; this makes them usable after a restart. Only rows with no
 * password are touched, so a password someone set is never overwritten.
 */
export function setDemoPasswords(db: SqlDatabase, passwordHash: string): number {
  const store = createUserStore(sqliteHandle(db));
  return demoUsers.reduce((n, u) => n + (store.setPasswordIfMissing(u.email, passwordHash) ? 1 : 0), 0);
}
