// One small interface over the two engines a service can keep its data in: SQLite (a file under
// DATA_DIR, the default) and PostgreSQL (DATABASE_URL). The stores write SQL once, with `$1`
// placeholders; where the dialects differ they ask `db.engine`.
import { AsyncLocalStorage, AsyncResource } from 'node:async_hooks';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { HttpError, StorageUnavailableError, storageError } from './errors.js';

type Engine = 'sqlite' | 'postgres';
type Params = readonly unknown[];

/** What a store runs its statements on: the database, or the transaction it is inside. */
export interface Db {
  readonly engine: Engine;
  all<T>(sql: string, params?: Params): Promise<T[]>;
  get<T>(sql: string, params?: Params): Promise<T | undefined>;
  /** Runs a write; resolves to the number of rows it changed. */
  run(sql: string, params?: Params): Promise<number>;
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. Inside
   * a transaction, `tx.transaction` simply runs `fn` in the same one, so store methods compose.
   * Inside `fn`, every statement goes through `tx`: the database's own handle refuses with
   * TransactionReentryError (see there). SQLite: BEGIN IMMEDIATE (one writer at a time).
   * PostgreSQL: READ COMMITTED; make every check and write one guarded statement, or lock the
   * rows first (FOR UPDATE).
   */
  transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T>;
}

export interface SqlDatabase extends Db {
  /** True when the database answers a query (for /health). */
  healthy(): Promise<boolean>;
  close(): Promise<void>;
}

/** Schema steps per engine; step N runs once, in order. Append only: never edit a step that shipped. */
export interface Migrations {
  sqlite: readonly string[];
  postgres: readonly string[];
}

export interface OpenSqlOptions {
  /** `postgres://...`: PostgreSQL; absent: SQLite under `dataDir`. */
  databaseUrl?: string;
  /** Folder for the SQLite file; `:memory:` keeps it in memory (tests). */
  dataDir: string;
  /** The service's name: its SQLite file's name and, by default, its PostgreSQL schema. */
  name: string;
  /** PostgreSQL schema to keep the tables in (default: `name`). */
  schema?: string;
  migrations: Migrations;
  /** PostgreSQL: most connections this process opens. */
  poolMax?: number;
  /** PostgreSQL: longest wait for a connection and for one statement. */
  timeoutMs?: number;
}

/**
 * A 503 STORAGE_UNAVAILABLE from a transaction whose connection broke, or gave up, while the answer
 * to its COMMIT was on its way: it may have committed, or not. The caller reads back what did
 * before it answers (PostgreSQL; SQLite's commit is never in doubt).
 */
export class CommitInDoubtError extends StorageUnavailableError {}

/**
 * A statement or transaction sent through the database's own handle from inside a transaction's
 * `fn`, instead of through its `tx`. On SQLite it would wait for the transaction it is part of
 * (a deadlock); on PostgreSQL it would run on another connection, outside the transaction, blind
 * to its writes and blocked by its locks. Refused at once, on both engines: a bug to fix, not a
 * state to retry.
 */
export class TransactionReentryError extends Error {
  constructor(database: string) {
    super(`${database}: a statement was sent through the database handle inside its own transaction; use the transaction's handle (tx)`);
    this.name = 'TransactionReentryError';
  }
}

/** The transactions the current async context runs inside, innermost first. */
interface OpenTransaction {
  readonly owner: object;
  open: boolean;
  readonly outer: OpenTransaction | undefined;
}
const transactionScope = new AsyncLocalStorage<OpenTransaction>();

/** Throws when the caller is inside an open transaction of `owner`. */
function refuseReentry(owner: object, database: string): void {
  // Work started inside a transaction that outlives it (a timer, a floating promise) keeps the
  // context: only a transaction still open counts.
  for (let t = transactionScope.getStore(); t; t = t.outer) {
    if (t.owner === owner && t.open) throw new TransactionReentryError(database);
  }
}

/** Runs `fn` marked as inside a transaction of `owner` until it settles. */
async function inTransactionOf<T>(owner: object, fn: () => Promise<T>): Promise<T> {
  const scope: OpenTransaction = { owner, open: true, outer: transactionScope.getStore() };
  try {
    return await transactionScope.run(scope, fn);
  } finally {
    scope.open = false;
  }
}

/** True for an insert or update that broke a UNIQUE constraint (either engine). */
export function isUniqueViolation(err: unknown): boolean {
  if (err instanceof Database.SqliteError) return err.code === 'SQLITE_CONSTRAINT_UNIQUE' || err.code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
  return (err as { code?: unknown } | null)?.code === '23505';
}

export async function openSqlDatabase(options: OpenSqlOptions): Promise<SqlDatabase> {
  const db = options.databaseUrl ? openPostgres(options.databaseUrl, options) : openSqlite(options);
  try {
    await migrate(db, options.migrations, options.schema ?? options.name);
  } catch (err) {
    await db.close().catch(() => {});
    throw err;
  }
  return db;
}

/**
 * Runs `seed` once for the life of the database, however many instances start at once: the flag
 * is written in the same transaction, taken under a lock.
 */
export async function seedOnce(db: Db, seed: (tx: Db) => Promise<void>): Promise<boolean> {
  return db.transaction(async (tx) => {
    if (tx.engine === 'postgres') await tx.run("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.seed'))");
    const done = await tx.get("SELECT 1 AS done FROM app_meta WHERE key = 'seeded'");
    if (done) return false;
    await seed(tx);
    await tx.run("INSERT INTO app_meta (key, value) VALUES ('seeded', $1)", [new Date().toISOString()]);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Migrations: a version table of our own, so both engines count steps the same way.

async function migrate(db: SqlDatabase, migrations: Migrations, schema: string): Promise<void> {
  const steps = db.engine === 'postgres' ? migrations.postgres : migrations.sqlite;
  await db.transaction(async (tx) => {
    if (tx.engine === 'postgres') {
      // Instances starting together: the first migrates, the others wait here and find it done.
      await tx.run('SELECT pg_advisory_xact_lock(hashtext($1))', [`migrate.${schema}`]);
      // Created only when missing: a role that may use a schema made for it, but not create one in
      // the database, is refused CREATE SCHEMA IF NOT EXISTS even when the schema exists.
      const exists = await tx.get('SELECT 1 AS found FROM pg_namespace WHERE nspname = $1', [schema]);
      if (!exists) await tx.run(`CREATE SCHEMA ${quoteIdent(schema)}`);
    }
    await tx.run('CREATE TABLE IF NOT EXISTS app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
    const row = await tx.get<{ value: string }>("SELECT value FROM app_meta WHERE key = 'schema_version'");
    let version = row ? Number(row.value) : await legacyVersion(tx);
    for (; version < steps.length; version++) {
      await execScript(tx, steps[version]);
      await tx.run(
        "INSERT INTO app_meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [String(version + 1)],
      );
    }
  });
}

/** SQLite files made before the version table counted their steps in `user_version`. */
async function legacyVersion(tx: Db): Promise<number> {
  if (tx.engine !== 'sqlite') return 0;
  const row = await tx.get<{ user_version: number }>('PRAGMA user_version');
  return row?.user_version ?? 0;
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

const scripts = new WeakMap<Db, (sql: string) => Promise<void>>();
async function execScript(tx: Db, sql: string): Promise<void> {
  const exec = scripts.get(tx);
  if (!exec) throw new Error('not a transaction of this module');
  await exec(sql);
}

// ---------------------------------------------------------------------------------------------
// SQLite: one connection. Statements are synchronous, so a transaction that awaits must keep every
// other statement out until it ends: they wait for it in `open`.

/** `$1`-style SQL as SQLite runs it: `?` in order, with the parameters reordered to match. */
interface SqliteStatement {
  stmt: Database.Statement;
  order: number[];
}

function openSqlite({ dataDir, name }: OpenSqlOptions): SqlDatabase {
  let file = ':memory:';
  if (dataDir !== ':memory:') {
    mkdirSync(dataDir, { recursive: true });
    file = join(dataDir, `${name}.db`);
  }
  const raw = new Database(file);
  raw.pragma('journal_mode = WAL');
  // FULL, not NORMAL: under WAL, NORMAL may lose transactions we already answered 201 for on a
  // power cut. The cost is one fsync per commit (see README, "Durability").
  raw.pragma('synchronous = FULL');
  raw.pragma('foreign_keys = ON');
  raw.pragma('busy_timeout = 5000');
  // SQLite's lower() folds ASCII only; JavaScript folds "É" too, as PostgreSQL's lower() does.
  raw.function('fold', { deterministic: true }, (s: unknown) => (typeof s === 'string' ? s.toLowerCase() : s));

  // Static SQL only reaches here, so the cache is bounded by the code's statements.
  const statements = new Map<string, SqliteStatement>();
  const prepare = (sql: string): SqliteStatement => {
    let prepared = statements.get(sql);
    if (!prepared) {
      const order: number[] = [];
      const text = sql.replace(/\$(\d+)/g, (_m, n: string) => {
        order.push(Number(n) - 1);
        return '?';
      });
      prepared = { stmt: raw.prepare(text), order };
      statements.set(sql, prepared);
    }
    return prepared;
  };
  const bind = ({ order }: SqliteStatement, params: Params): unknown[] => order.map((i) => sqliteValue(params[i]));

  const direct = {
    all: <T>(sql: string, params: Params = []): T[] => {
      const p = prepare(sql);
      return p.stmt.reader ? (p.stmt.all(...bind(p, params)) as T[]) : (p.stmt.run(...bind(p, params)), []);
    },
    get: <T>(sql: string, params: Params = []): T | undefined => {
      const p = prepare(sql);
      if (!p.stmt.reader) {
        p.stmt.run(...bind(p, params));
        return undefined;
      }
      return p.stmt.get(...bind(p, params)) as T | undefined;
    },
    run: (sql: string, params: Params = []): number => {
      const p = prepare(sql);
      return p.stmt.reader ? (p.stmt.all(...bind(p, params)), 0) : p.stmt.run(...bind(p, params)).changes;
    },
  };

  // Transactions queue on `tail`; a statement outside one waits while one is open.
  let tail: Promise<void> = Promise.resolve();
  let open: Promise<void> | undefined;
  const owner = {};
  const guarded = async <T>(work: () => T): Promise<T> => {
    refuseReentry(owner, name);
    while (open) await open;
    return settle(work);
  };

  const inside: Db = {
    engine: 'sqlite',
    all: (sql, params) => settle(() => direct.all(sql, params)),
    get: (sql, params) => settle(() => direct.get(sql, params)),
    run: (sql, params) => settle(() => direct.run(sql, params)),
    transaction: (fn) => fn(inside),
  };
  scripts.set(inside, (sql) => settle(() => {
    raw.exec(sql);
  }));

  // Group commit: the transactions asked for while the previous ones run (or in the same turn of
  // the event loop) share one BEGIN and one COMMIT, so one fsync makes them all durable. Each runs
  // in a savepoint of its own: one that throws is rolled back alone, as it would have been on its
  // own. None resolves before the COMMIT that holds it. Each runs in its caller's async context
  // (its trace for log lines and spans, its deadline), not in that of the request that began the group.
  interface Queued {
    run: () => Promise<unknown>;
    resolve: (value: unknown) => void;
    reject: (err: unknown) => void;
  }
  let forming: Queued[] | undefined;
  const rollback = () => {
    try {
      if (raw.inTransaction) raw.exec('ROLLBACK');
    } catch {
      // Nothing is left to undo that a failed ROLLBACK could.
    }
  };

  const runGroup = async (group: Queued[]): Promise<void> => {
    const shared = group.length > 1;
    let done: { item: Queued; value: unknown }[] = [];
    // SQLite rolled the whole transaction back (disk full, I/O error): nothing done so far stays.
    const loseDone = () => {
      for (const { item } of done) item.reject(new StorageUnavailableError());
      done = [];
    };
    for (const item of group) {
      try {
        if (!raw.inTransaction) raw.exec('BEGIN IMMEDIATE');
        if (shared) raw.exec('SAVEPOINT grouped');
      } catch (err) {
        if (!raw.inTransaction) loseDone();
        item.reject(storageError(err));
        continue;
      }
      try {
        const value = await item.run();
        if (shared) raw.exec('RELEASE grouped');
        done.push({ item, value });
      } catch (err) {
        try {
          if (raw.inTransaction) raw.exec(shared ? 'ROLLBACK TO grouped; RELEASE grouped' : 'ROLLBACK');
        } catch {
          rollback();
        }
        if (!raw.inTransaction) loseDone();
        item.reject(storageError(err));
      }
    }
    if (raw.inTransaction) {
      try {
        raw.exec('COMMIT');
      } catch (err) {
        rollback();
        for (const { item } of done) item.reject(storageError(err));
        done = [];
      }
    }
    for (const { item, value } of done) item.resolve(value);
  };

  const transaction = <T>(fn: (tx: Db) => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      refuseReentry(owner, name);
      if (!forming) {
        const group: Queued[] = (forming = []);
        const previous = tail;
        let release!: () => void;
        const mine = new Promise<void>((r) => {
          release = r;
        });
        tail = previous.then(() => mine);
        // After the I/O of this turn of the event loop, whose requests may ask for more.
        void previous
          .then(() => new Promise((r) => setImmediate(r)))
          .then(async () => {
            forming = undefined;
            open = mine;
            try {
              await runGroup(group);
            } finally {
              open = undefined;
              release();
            }
          });
      }
      const run = AsyncResource.bind(() => inTransactionOf(owner, () => fn(inside)));
      forming.push({ run, resolve: resolve as (value: unknown) => void, reject });
    });

  return {
    engine: 'sqlite',
    all: (sql, params) => guarded(() => direct.all(sql, params)),
    get: (sql, params) => guarded(() => direct.get(sql, params)),
    // A row write on its own is a transaction of one statement, so that it shares a commit too.
    // Anything else (a PRAGMA, DDL) runs as it is: some may not run inside a transaction.
    run: (sql, params) => {
      let write = false;
      try {
        write = ROW_WRITE.test(sql) && !prepare(sql).stmt.reader;
      } catch {
        // guarded reports it.
      }
      return write ? transaction((tx) => tx.run(sql, params)) : guarded(() => direct.run(sql, params));
    },
    transaction,
    async healthy() {
      try {
        await guarded(() => direct.get('SELECT 1'));
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      await tail;
      raw.close();
    },
  };
}

const ROW_WRITE = /^\s*(INSERT|UPDATE|DELETE|REPLACE|WITH)\b/i;

/** Runs synchronous SQLite work as a promise, with storage failures turned into 503s. */
function settle<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (err) {
    const mapped = storageError(err);
    return Promise.reject(mapped instanceof Error ? mapped : new Error(String(mapped)));
  }
}

function sqliteValue(v: unknown): unknown {
  if (typeof v === 'boolean') return v ? 1 : 0;
  return v === undefined ? null : v;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: a bounded pool; every connection works in the service's schema.
//
// `pg` rather than `postgres` (postgres.js): a pooled client checked out for the length of a
// transaction is exactly what transaction(fn) needs, and the pool's bound, timeouts and dropped
// connections are plain to set and to see. postgres.js spent less client CPU per primary-key
// SELECT when measured side by side (about 30 µs against 40 µs with named statements, 50
// concurrent callers, 10 connections): a few percent of what a product GET costs the service on
// PostgreSQL, and not worth a second way of holding connections.

// int8 (count, sum) and numeric arrive as strings by default; ours stay far below 2^53.
const pgTypes = {
  getTypeParser: (oid: number, format?: string): ((value: string) => unknown) => {
    if (oid === 20 || oid === 1700) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text') as (value: string) => unknown;
  },
};

function openPostgres(url: string, { name, schema = name, poolMax = 10, timeoutMs = 5000 }: OpenSqlOptions): SqlDatabase {
  // The URL's own `options` (libpq's: a role, a time zone) are kept and the schema added to them;
  // left in the URL, they would replace the schema (pg lets the URL win over the settings).
  const target = new URL(url);
  const urlOptions = target.searchParams.get('options');
  target.searchParams.delete('options');
  const pool = new pg.Pool({
    connectionString: target.href,
    max: poolMax,
    connectionTimeoutMillis: timeoutMs,
    idleTimeoutMillis: 30_000,
    query_timeout: timeoutMs,
    statement_timeout: timeoutMs,
    options: [urlOptions, `-c search_path=${quoteIdent(schema)}`].filter(Boolean).join(' '),
    application_name: name,
    types: pgTypes,
  });
  // An idle connection the server dropped (restart, network): the pool discards it and opens a
  // new one on the next query. Without a listener the error would end the process.
  pool.on('error', () => {});

  // Named statements are parsed once per connection; the name only has to be unique per text.
  const names = new Map<string, string>();
  const query = async <T>(client: pg.Pool | pg.PoolClient, sql: string, params: Params = []) => {
    let statement = names.get(sql);
    if (!statement) {
      statement = `s${names.size}`;
      names.set(sql, statement);
    }
    try {
      return await client.query<T & pg.QueryResultRow>({ name: statement, text: sql, values: params as unknown[] });
    } catch (err) {
      throw storageError(err);
    }
  };

  const onClient = (client: pg.Pool | pg.PoolClient): Db => {
    const db: Db = {
      engine: 'postgres',
      all: async <T>(sql: string, params?: Params) => (await query<T>(client, sql, params)).rows,
      get: async <T>(sql: string, params?: Params) => (await query<T>(client, sql, params)).rows[0],
      run: async (sql, params) => (await query(client, sql, params)).rowCount ?? 0,
      transaction: (fn) => fn(db),
    };
    return db;
  };
  const owner = {};
  const top = onClient(pool);

  return {
    engine: 'postgres',
    all: async <T>(sql: string, params?: Params) => {
      refuseReentry(owner, name);
      return top.all<T>(sql, params);
    },
    get: async <T>(sql: string, params?: Params) => {
      refuseReentry(owner, name);
      return top.get<T>(sql, params);
    },
    run: async (sql, params) => {
      refuseReentry(owner, name);
      return top.run(sql, params);
    },
    async transaction<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
      refuseReentry(owner, name);
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw storageError(err);
      }
      // pg-pool takes its own error listener off a client it hands out. Without ours, a connection
      // reset while this transaction holds it (before BEGIN, between statements, while COMMIT's
      // answer is on its way) would be an unhandled 'error' event, and end the process.
      let lost: Error | undefined;
      const onError = (err: Error) => {
        lost ??= err;
      };
      client.on('error', onError);
      const tx = onClient(client);
      scripts.set(tx, async (sql) => {
        await client.query(sql);
      });
      let broken = false;
      let committing = false;
      try {
        await client.query('BEGIN');
        const result = await inTransactionOf(owner, () => fn(tx));
        committing = true;
        await client.query('COMMIT');
        return result;
      } catch (err) {
        // An answer from the server (a SQLSTATE: a serialization failure, a deferred constraint)
        // is a rollback; no answer leaves the commit in doubt.
        if (committing && (lost || !/^[0-9A-Z]{5}$/.test(String((err as { code?: unknown } | null)?.code)))) {
          broken = true;
          throw new CommitInDoubtError();
        }
        if (!lost) {
          try {
            await client.query('ROLLBACK');
          } catch {
            broken = true;
          }
        }
        // The connection is gone, whatever the statement in flight made of it: the store is
        // unavailable (a refusal `fn` made of what it had read stands).
        throw lost && !(err instanceof HttpError) ? new StorageUnavailableError() : storageError(err);
      } finally {
        // A lost connection, or one whose rollback failed, is in an unknown state: the pool closes
        // it rather than hand it out again. Ours comes off after the pool's is back on.
        client.release(lost ?? broken);
        client.removeListener('error', onError);
      }
    },
    async healthy() {
      try {
        await pool.query('SELECT 1');
        return true;
      } catch {
        return false;
      }
    },
    async close() {
      await pool.end();
    },
  };
}
