// The engine layer under every store, on SQLite and on PostgreSQL: migrations and seeds that run
// once however many instances start together, transactions, unique violations, and outages.
import { AsyncLocalStorage } from 'node:async_hooks';
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { HttpError } from '../lib/platform/errors.js';
import { CommitInDoubtError, isUniqueViolation, openSqlDatabase, seedOnce, TransactionReentryError, type Migrations, type SqlDatabase } from '../lib/platform/sql.js';
import pg from 'pg';
import { databaseFaultProxy, databaseRelay, ENGINES, TEST_DATABASE_URL, testStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

const MIGRATIONS: Migrations = {
  // No IF NOT EXISTS: a step run twice fails the open.
  sqlite: ['CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)', 'ALTER TABLE things ADD COLUMN n INTEGER NOT NULL DEFAULT 0'],
  postgres: ['CREATE TABLE things (id integer PRIMARY KEY, name text NOT NULL UNIQUE)', 'ALTER TABLE things ADD COLUMN n integer NOT NULL DEFAULT 0'],
};

for (const engine of ENGINES) {
  describe(`sql on ${engine}`, { skip: skipUnless(engine) }, () => {
    const storage = testStorage(engine);
    const opened: SqlDatabase[] = [];
    const open = async (migrations = MIGRATIONS) => {
      const db = await openSqlDatabase({ ...storage.options('things'), name: 'things', migrations });
      opened.push(db);
      return db;
    };
    after(async () => {
      for (const db of opened) await db.close();
      await storage.remove();
    });

    test('when four instances start at once, then each migration step runs once and the seed is written once', async () => {
      // SQLite instances share a file only within one process here, where one connection's
      // busy wait would block the others': they open one after the other.
      const dbs = engine === 'postgres' ? await Promise.all([open(), open(), open(), open()]) : [await open(), await open(), await open(), await open()];
      let seeded = 0;
      const seed = (db: SqlDatabase) => seedOnce(db, async (tx) => {
        seeded++;
        await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [1, 'seed']);
      });
      const results = engine === 'postgres' ? await Promise.all(dbs.map(seed)) : [await seed(dbs[0]), await seed(dbs[1]), await seed(dbs[2]), await seed(dbs[3])];
      assert.equal(seeded, 1);
      assert.deepEqual(results.filter(Boolean), [true]);
      assert.deepEqual(await dbs[3].all('SELECT id, name, n FROM things'), [{ id: 1, name: 'seed', n: 0 }]);
      // A later start with one more step runs just that step.
      const more = await open({ sqlite: [...MIGRATIONS.sqlite, 'CREATE TABLE extra (x INTEGER)'], postgres: [...MIGRATIONS.postgres, 'CREATE TABLE extra (x integer)'] });
      assert.equal(await more.run('INSERT INTO extra (x) VALUES ($1)', [1]), 1);
    });

    test('when parameters are numbered out of order or repeated, then each binds where it is named', async () => {
      const db = await open();
      const row = await db.get<{ a: string; b: string; c: string }>('SELECT $2 AS a, $1 AS b, $2 AS c', ['one', 'two']);
      assert.deepEqual({ ...row }, { a: 'two', b: 'one', c: 'two' });
      assert.equal((await db.get<{ n: number }>('SELECT count(*) AS n FROM things'))!.n, 1, 'count() is a number on both engines');
    });

    test('when a transaction throws, then none of its writes stay; when it resolves, all do', async () => {
      const db = await open();
      await assert.rejects(db.transaction(async (tx) => {
        await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [10, 'ten']);
        throw new Error('stop');
      }), /stop/);
      assert.equal(await db.get('SELECT id FROM things WHERE id = $1', [10]), undefined);
      await db.transaction(async (tx) => {
        await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [11, 'eleven']);
        await tx.transaction(async (inner) => inner.run('UPDATE things SET n = n + 1 WHERE id = $1', [11]));
      });
      assert.deepEqual({ ...(await db.get<{ n: number }>('SELECT n FROM things WHERE id = $1', [11])) }, { n: 1 });
    });

    // Without the refusal SQLite waits for itself (the timeout fails the test) and PostgreSQL
    // answers from another connection (the rejects fail it).
    test('when a statement inside a transaction goes through the database handle, then it is refused at once and the transaction rolls back', { timeout: 10_000 }, async () => {
      const db = await open();
      for (const misuse of [
        (d: SqlDatabase) => d.get('SELECT id FROM things WHERE id = $1', [30]),
        (d: SqlDatabase) => d.all('SELECT id FROM things'),
        (d: SqlDatabase) => d.run('UPDATE things SET n = n + 1 WHERE id = $1', [30]),
        (d: SqlDatabase) => d.transaction((tx) => tx.run('UPDATE things SET n = n + 1 WHERE id = $1', [30])),
      ]) {
        await assert.rejects(db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [30, 'thirty']);
          await tx.transaction(async (inner) => {
            // Nested, and after an await: the refusal follows the transaction's async context.
            await inner.get('SELECT 1 AS one');
            await misuse(db);
          });
        }), (err: unknown) => err instanceof TransactionReentryError && /use the transaction's handle/.test(err.message));
        assert.equal(await db.get('SELECT id FROM things WHERE id = $1', [30]), undefined, 'rolled back');
      }
    });

    test('when a transaction is open, then statements from outside it, and work it started that runs after it, go through the database handle', { timeout: 10_000 }, async () => {
      const db = await open();
      let letGo!: () => void;
      const held = new Promise<void>((resolve) => {
        letGo = resolve;
      });
      let began!: () => void;
      const begun = new Promise<void>((resolve) => {
        began = resolve;
      });
      let afterwards: Promise<unknown> | undefined;
      const tx = db.transaction(async (t) => {
        await t.run('INSERT INTO things (id, name) VALUES ($1, $2)', [40, 'forty']);
        began();
        await held;
        afterwards = tx.then(() => db.get<{ id: number }>('SELECT id FROM things WHERE id = $1', [40]));
      });
      await begun;
      // From outside: SQLite queues it behind the transaction, PostgreSQL runs it on another connection.
      const outside = db.get('SELECT count(*) AS n FROM things WHERE id = $1', [40]);
      letGo();
      await tx;
      assert.ok(await outside);
      assert.deepEqual({ ...(await afterwards) as object }, { id: 40 });
    });

    test('when two writes race for one unique value, then exactly one wins and the other is a unique violation', async () => {
      const db = await open();
      const results = await Promise.allSettled([20, 21].map((id) => db.transaction((tx) => tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [id, 'same']))));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      const failed = results.find((r) => r.status === 'rejected');
      assert.ok(failed && isUniqueViolation(failed.reason), String(failed?.reason));
    });

    test('when transactions and writes are asked for at once and some fail, then each failure undoes only its own writes', async () => {
      const db = await open();
      await db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [49, 'taken']);
      const results = await Promise.allSettled([
        db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [50, 'fifty']);
          return 'kept';
        }),
        db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [51, 'fifty-one']);
          throw new HttpError(409, 'REFUSED', 'refused');
        }),
        db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [52, 'taken']),
        db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [53, 'fifty-three']),
        db.transaction(async (tx) => {
          await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [54, 'fifty-four']);
          await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [55, 'taken']);
        }),
      ]);
      assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'rejected', 'fulfilled', 'rejected']);
      assert.equal((results[0] as PromiseFulfilledResult<string>).value, 'kept');
      assert.ok(results[1].status === 'rejected' && results[1].reason instanceof HttpError && results[1].reason.code === 'REFUSED');
      assert.ok(results[2].status === 'rejected' && isUniqueViolation(results[2].reason));
      const ids = (await db.all<{ id: number }>('SELECT id FROM things WHERE id BETWEEN 49 AND 59 ORDER BY id')).map((r) => r.id);
      assert.deepEqual(ids, [49, 50, 53]);
    });

    test('when transactions of several requests are asked for at once, then each runs in its own request\'s context (its trace in its log lines, its deadline)', async () => {
      const db = await open();
      const request = new AsyncLocalStorage<string>();
      const seen: (string | undefined)[][] = [];
      const results = await Promise.all(['a', 'b', 'c'].map((name, i) => request.run(name, () => db.transaction(async (tx) => {
        const before = request.getStore();
        await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [60 + i, `context-${name}`]);
        seen.push([name, before, request.getStore()]);
        return request.getStore();
      }))));
      assert.deepEqual(results, ['a', 'b', 'c']);
      for (const [name, before, after] of seen) assert.deepEqual([before, after], [name, name], `the transaction of ${name}`);
    });
  });
}

describe('sql on postgres, while the database is unreachable', { skip: skipUnless('postgres') }, () => {
  const storage = testStorage('postgres');
  after(() => storage.remove());

  test('when the connection is cut, then statements and transactions fail as 503 STORAGE_UNAVAILABLE, and work again once it is back', async () => {
    const relay = await databaseRelay();
    const db = await openSqlDatabase({ ...storage.options('outage'), databaseUrl: relay.url, timeoutMs: 500, name: 'outage', migrations: MIGRATIONS });
    try {
      await db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [1, 'before']);
      await relay.down();
      const unavailable = (err: unknown) => err instanceof HttpError && err.status === 503 && err.code === 'STORAGE_UNAVAILABLE';
      await assert.rejects(db.get('SELECT name FROM things WHERE id = $1', [1]), unavailable);
      await assert.rejects(db.transaction((tx) => tx.run('UPDATE things SET n = 1')), unavailable);
      assert.equal(await db.healthy(), false);
      await relay.up();
      assert.equal(await db.healthy(), true);
      assert.deepEqual({ ...(await db.get<{ name: string }>('SELECT name FROM things WHERE id = $1', [1])) }, { name: 'before' });
    } finally {
      await db.close();
      await relay.close();
    }
  });
});

describe('sql on postgres, when a connection is reset while a transaction holds it', { skip: skipUnless('postgres') }, () => {
  const storage = testStorage('postgres');
  after(() => storage.remove());
  const unavailable = (err: unknown) => err instanceof HttpError && err.status === 503 && err.code === 'STORAGE_UNAVAILABLE';

  // Each reset fails its transaction with a 503 and never reaches uncaughtException (which would
  // fail this file); the next transaction, at once, works on a new connection.
  test('when the reset comes before BEGIN, mid-transaction, while the answer to COMMIT is on its way, or while the client waits between statements, then that call is a 503 and the next one works', async () => {
    const { proxy, url } = await databaseFaultProxy();
    const db = await openSqlDatabase({ ...storage.options('resets'), databaseUrl: url, name: 'resets', migrations: MIGRATIONS });
    const insert = (id: number) => db.transaction(async (tx) => {
      await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [id, `thing ${id}`]);
      await tx.run('UPDATE things SET n = n + 1 WHERE id = $1', [id]);
    });
    const stored = async (id: number) => (await db.get('SELECT id FROM things WHERE id = $1', [id])) !== undefined;
    try {
      const cases = [
        { fault: { kind: 'reset-on-text', matching: 'BEGIN', at: 'request', times: 1 }, committed: false },
        { fault: { kind: 'reset-on-text', matching: 'BEGIN', at: 'next', times: 1 }, committed: false },
        // Committed, but the caller never heard so: in doubt, for the caller to read back.
        { fault: { kind: 'reset-on-text', matching: 'COMMIT', at: 'answer', times: 1 }, committed: true },
      ] as const;
      for (const [i, { fault, committed }] of cases.entries()) {
        proxy.fault = { ...fault };
        await assert.rejects(insert(100 + i), (err) => unavailable(err) && err instanceof CommitInDoubtError === committed, fault.at);
        assert.equal(proxy.fault.kind === 'reset-on-text' && proxy.fault.times, 0, `the ${fault.matching} reset happened`);
        assert.equal(await stored(100 + i), committed, fault.at);
        await insert(200 + i);
        assert.equal(await stored(200 + i), true);
      }

      // Every connection reset while the transaction's client sits idle between two statements.
      proxy.fault = { kind: 'pass' };
      await assert.rejects(db.transaction(async (tx) => {
        await tx.run('INSERT INTO things (id, name) VALUES ($1, $2)', [300, 'three hundred']);
        proxy.resetAll();
        // A new connection through the proxy: by its end, the reset of the old one has arrived.
        assert.equal(await db.healthy(), true);
        await tx.run('UPDATE things SET n = n + 1 WHERE id = $1', [300]);
      }), unavailable);
      assert.equal(await stored(300), false);
      await insert(301);
      assert.equal(await stored(301), true);
    } finally {
      await db.close();
      await proxy.close();
    }
  });
});

describe('sql on postgres, refusals and rights', { skip: skipUnless('postgres') }, () => {
  const storage = testStorage('postgres');
  after(() => storage.remove());

  test('when PostgreSQL refuses a value (a NUL in text, a number out of range), then it is a 400 BAD_REQUEST, not a 500', async () => {
    const db = await openSqlDatabase({ ...storage.options('values'), name: 'values', migrations: MIGRATIONS });
    try {
      const bad = (err: unknown) => err instanceof HttpError && err.status === 400 && err.code === 'BAD_REQUEST';
      await assert.rejects(db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [1, 'a\u0000b']), bad);
      await assert.rejects(db.get('SELECT id FROM things WHERE id = $1', [3_000_000_000]), bad);
    } finally {
      await db.close();
    }
  });

  test('when the role may use a schema made for it but not create schemas, then the service still opens it', async () => {
    const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    const role = `r_${randomBytes(5).toString('hex')}`;
    const schema = `${role}_own`;
    try {
      await admin.query(`CREATE ROLE ${role} NOLOGIN`);
      await admin.query(`CREATE SCHEMA ${schema} AUTHORIZATION ${role}`);
      const url = new URL(TEST_DATABASE_URL);
      url.searchParams.set('options', `-c role=${role}`);
      const db = await openSqlDatabase({ dataDir: ':memory:', databaseUrl: url.href, schema, name: 'things', migrations: MIGRATIONS });
      try {
        assert.equal(await db.run('INSERT INTO things (id, name) VALUES ($1, $2)', [1, 'mine']), 1);
        assert.equal((await db.get<{ who: string }>('SELECT current_user AS who'))!.who, role);
      } finally {
        await db.close();
      }
    } finally {
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.query(`DROP ROLE IF EXISTS ${role}`);
      await admin.end();
    }
  });
});
