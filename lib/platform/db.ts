// Opens a service's SQLite file and brings its schema up to date.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

export type Db = Database.Database;

/**
 * Ordered schema steps; step N runs once, when the file's `user_version` is below N+1.
 * Append only: never edit a step that has shipped.
 */
export type Migrations = readonly string[];

export interface OpenDatabaseOptions {
  /** Folder for the file; `:memory:` keeps it in memory (tests that need no restart). */
  dataDir: string;
  /** File name without extension, e.g. `users`. */
  name: string;
  migrations: Migrations;
}

export function openDatabase({ dataDir, name, migrations }: OpenDatabaseOptions): Db {
  let file = ':memory:';
  if (dataDir !== ':memory:') {
    mkdirSync(dataDir, { recursive: true });
    file = join(dataDir, `${name}.db`);
  }
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // FULL, not NORMAL: under WAL, NORMAL may lose transactions we already answered 201 for on a
  // power cut. The cost is one fsync per commit (see README, "Durability").
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db, migrations);
  return db;
}

function migrate(db: Db, migrations: Migrations): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let version = current; version < migrations.length; version++) {
    db.transaction(() => {
      db.exec(migrations[version]);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
}

/** Runs `seed` once for the life of the file: the flag is written in the same transaction. */
export function seedOnce(db: Db, seed: () => void): boolean {
  db.exec('CREATE TABLE IF NOT EXISTS app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
  return db.transaction(() => {
    const done = db.prepare("SELECT 1 FROM app_meta WHERE key = 'seeded'").get();
    if (done) return false;
    seed();
    db.prepare("INSERT INTO app_meta (key, value) VALUES ('seeded', ?)").run(new Date().toISOString());
    return true;
  }).immediate();
}

/** Cheap check for /health: the file answers a read. */
export function databaseIsHealthy(db: Db): boolean {
  try {
    db.prepare('SELECT 1').get();
    return true;
  } catch {
    return false;
  }
}
