// The SQLite connection the stores still prepare their statements on (see sql.ts for the engines).
import type Database from 'better-sqlite3';

export type Db = Database.Database;
