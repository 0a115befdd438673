// npm run start:scaled refuses to start, with one line saying what is missing, before it starts
// any process (PostgreSQL or Redis unreachable, a port of its layout taken, a bad setting), and
// stops every process it started when one dies while they start.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { after, describe, test } from 'node:test';
import pg from 'pg';
import { LAST_PORT_OFFSET } from '../../scripts/scaled-layout.js';
import { runToExit, TS_LOADER, type Finished } from '../process.js';
import { skipUnless, TEST_DATABASE_URL, TEST_REDIS_URL } from '../support/services.js';

const POSTGRES = TEST_DATABASE_URL;
const REDIS = TEST_REDIS_URL;
/** The tests that get past the reachability checks need both. */
const skip = skipUnless('postgres', 'redis');

/** A port nothing listens on: bound by the OS, then released. */
async function closedPort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A base port for a layout that is started: below Linux's ephemeral range (32768 and up), so no
 * outgoing connection of a test running beside this one can hold one of its ports.
 */
function layoutBasePort(): number {
  const lowest = 20_000;
  return lowest + Math.floor(Math.random() * (32_768 - LAST_PORT_OFFSET - lowest));
}

const servers: Server[] = [];
after(() => Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve)))));

/** A listener on a port the OS chooses, answering every connection with `reply` (or nothing). */
async function listener(reply?: string): Promise<number> {
  const server = createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => { if (reply !== undefined) socket.end(reply); });
  }).listen(0, '127.0.0.1');
  servers.push(server);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

function startScaled(env: Record<string, string>, { detached = false } = {}): Promise<Finished> {
  return runToExit(['--import', TS_LOADER, 'scripts/start-scaled.ts'], { env, timeoutMs: 60_000, detached });
}

/** `pid, parent pid and command` of each process still in process group `pgid`. */
function groupMembers(pgid: number): string[] {
  try {
    process.kill(-pgid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return [];
    throw err;
  }
  // Listed by ps (the group may empty meanwhile); never an empty list when the kill found one.
  const listed = execFileSync('ps', ['-o', 'pgid=,pid=,ppid=,args=', '-e'], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.trim().split(/\s+/)[0] === String(pgid))
    .map((line) => line.trim().split(/\s+/).slice(1).join(' '));
  return listed.length > 0 ? listed : [`(group ${pgid} was not empty, and emptied before ps listed it)`];
}

function assertOneLine(result: { code: number | null; stdout: string; stderr: string }): string {
  assert.equal(result.code, 1, `exit code (stderr: ${result.stderr})`);
  assert.equal(result.stdout, '', 'nothing started, nothing printed to stdout');
  const lines = result.stderr.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, `one line, got:\n${result.stderr}`);
  assert.match(lines[0], /^start:scaled: /);
  return lines[0];
}

describe('npm run start:scaled refuses to start', { concurrency: true }, () => {
  test('when neither PostgreSQL nor Redis answers, one line names both and the variables to set', async () => {
    const [pgPort, redisPort] = [await closedPort(), await closedPort()];
    const line = assertOneLine(await startScaled({
      DATABASE_URL: `postgres://postgres:secret-password@127.0.0.1:${pgPort}/test`,
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      SCALED_BASE_PORT: String(await closedPort()),
    }));
    assert.match(line, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${pgPort}: refused the connection .*DATABASE_URL=`));
    assert.match(line, new RegExp(`Redis at 127\\.0\\.0\\.1:${redisPort}: refused the connection .*REDIS_URL=`));
    assert.doesNotMatch(line, /secret-password/, 'the password of the URL is not printed');
  });

  test('when only Redis is unreachable, the line names Redis alone', { skip }, async () => {
    const redisPort = await closedPort();
    const line = assertOneLine(await startScaled({ DATABASE_URL: POSTGRES, REDIS_URL: `redis://127.0.0.1:${redisPort}`, SCALED_BASE_PORT: String(await closedPort()) }));
    assert.match(line, /Redis at .*REDIS_URL=/);
    assert.doesNotMatch(line, /PostgreSQL at/);
  });

  test('when the database does not exist, PostgreSQL\'s own reason is given', { skip }, async () => {
    const line = assertOneLine(await startScaled({ DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/no_such_database_for_scaled', REDIS_URL: REDIS, SCALED_BASE_PORT: String(await closedPort()) }));
    assert.match(line, /PostgreSQL at 127\.0\.0\.1:5432: database "no_such_database_for_scaled" does not exist/);
    assert.doesNotMatch(line, /Redis at/);
  });

  test('when REDIS_URL names something that is not Redis, it says so', { skip }, async () => {
    const port = await listener('HTTP/1.1 400 Bad Request\r\n\r\n');
    const line = assertOneLine(await startScaled({ DATABASE_URL: POSTGRES, REDIS_URL: `redis://127.0.0.1:${port}`, SCALED_BASE_PORT: String(await closedPort()) }));
    assert.match(line, new RegExp(`Redis at 127\\.0\\.0\\.1:${port}: answered something that is not Redis`));
  });

  test('when a port of the layout is taken, the line names it and SCALED_BASE_PORT', { skip }, async () => {
    // The held port is the second products instance's: base + 12.
    const held = await listener();
    const line = assertOneLine(await startScaled({ DATABASE_URL: POSTGRES, REDIS_URL: REDIS, SCALED_BASE_PORT: String(held - 12) }));
    assert.match(line, new RegExp(`port .*${held} \\(products-2\\).* already in use.*SCALED_BASE_PORT`));
  });

  test('when a process dies while starting, every other one is stopped and it exits 1', { skip }, async (t) => {
    // The services get as far as their migrations: in a database of this test's own, dropped after it.
    const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    const database = `t_${randomBytes(5).toString('hex')}_scaled`;
    await admin.query(`CREATE DATABASE ${database}`);
    t.after(async () => {
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin.end();
    });
    const url = new URL(TEST_DATABASE_URL);
    url.pathname = `/${database}`;
    // LOGIN_MAX_FAILURES=0 is refused by the user service alone: both of its instances exit at once.
    let result;
    // A base port whose ports happen to hold something of another program's is tried again.
    for (let attempt = 0; attempt < 3; attempt++) {
      // Without tsx's cache each process compiles with a process of its own (esbuild's), which
      // outlives it briefly: what it started must be gone too before start:scaled exits.
      result = await startScaled({ DATABASE_URL: url.href, REDIS_URL: REDIS, SCALED_BASE_PORT: String(layoutBasePort()), LOGIN_MAX_FAILURES: '0', TSX_DISABLE_CACHE: '1' }, { detached: true });
      if (!/already in use/.test(result.stderr)) break;
    }
    assert.ok(result);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    assert.match(result.stdout, /\[scaled +\] [a-z]+-\d exited with code 1 while starting; stopping the others/, `stderr: ${result.stderr}`);
    // Its process group (it led one) is empty: no process it started outlives it.
    assert.deepEqual(groupMembers(result.pid), [], 'processes left in its process group');
  });

  test('when SCALED_BASE_PORT leaves no room for the ports above it, the line names the variable', async () => {
    const line = assertOneLine(await startScaled({ SCALED_BASE_PORT: '65530' }));
    assert.match(line, /invalid configuration: SCALED_BASE_PORT: must be a whole number from 1 to 65522/);
  });
});
