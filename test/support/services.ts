// The external programs some tests need (PostgreSQL, Redis, Chromium): each is checked once per
// test process, when this module is first imported, so that a machine with only Node runs every
// other test and skips these with one line that says what is missing and how to run them.
// TEST_REQUIRE_SERVICES=1 (CI sets it) turns each such skip into a failing test: CI never skips
// silently.
//
//   describe('x on PostgreSQL', { skip: skipUnless('postgres') }, () => { ... })
//   for (const engine of ENGINES) describe(`x on ${engine}`, { skip: skipUnless(engine) }, ...)
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
/** A database of the tests' own, not 0: a developer's Redis keeps its data in 0. */
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL || 'redis://127.0.0.1:6379/15';
export const CHROMIUM_PATH = process.env.TEST_CHROMIUM_PATH || '/usr/bin/chromium';

/** Long enough for a busy machine's local server, short enough that a dropped packet costs little. */
const PROBE_TIMEOUT_MS = 3_000;

type Dependency = 'postgres' | 'redis' | 'chromium';

/** A URL without its password, for a line that a person reads. */
function shown(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(an unparsable URL)';
  }
}

const why = (err: unknown) => {
  const e = err as { code?: string; message?: string };
  return e.code && e.message && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : (e.message ?? String(err));
};

async function probePostgres(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: PROBE_TIMEOUT_MS });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    return `PostgreSQL is not reachable at ${shown(TEST_DATABASE_URL)} (${why(err)}); to run these, start it there or set TEST_DATABASE_URL`;
  } finally {
    await client.end().catch(() => {});
  }
}

async function probeRedis(): Promise<string | undefined> {
  // No retries and no offline queue: one attempt, its error reported here rather than logged.
  const redis = new Redis(TEST_REDIS_URL, { lazyConnect: true, connectTimeout: PROBE_TIMEOUT_MS, commandTimeout: PROBE_TIMEOUT_MS, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
  // The connection's own error (ECONNREFUSED) says more than the rejection's "Connection is closed".
  let first: unknown;
  redis.on('error', (err) => {
    first ??= err;
  });
  try {
    await redis.connect();
    await redis.ping();
    return undefined;
  } catch (err) {
    return `Redis is not reachable at ${shown(TEST_REDIS_URL)} (${why(first ?? err)}); to run these, start it there or set TEST_REDIS_URL`;
  } finally {
    redis.disconnect();
  }
}

function probeChromium(): string | undefined {
  return existsSync(CHROMIUM_PATH) ? undefined : `Chromium is not at ${CHROMIUM_PATH}; to run these, apt-get install chromium or set TEST_CHROMIUM_PATH`;
}

const [postgres, redis] = await Promise.all([probePostgres(), probeRedis()]);
const missing: Record<Dependency, string | undefined> = { postgres, redis, chromium: probeChromium() };

const REQUIRE_SERVICES = process.env.TEST_REQUIRE_SERVICES === '1';

/** Why `dep` cannot be used here, or undefined when it can. */
function unavailable(dep: Dependency | 'sqlite'): string | undefined {
  return dep === 'sqlite' ? undefined : missing[dep];
}

/**
 * The `skip` option of a suite or test that needs `deps`: false when they are all there, else the
 * reason. With TEST_REQUIRE_SERVICES=1 a failing test with that reason is added next to it, so the
 * run fails at once rather than on each test's connection errors. Call it once per suite, where
 * the suite is declared.
 */
export function skipUnless(...deps: Array<Dependency | 'sqlite'>): string | false {
  const reasons = deps.map(unavailable).filter((r): r is string => r !== undefined);
  if (reasons.length === 0) return false;
  const reason = reasons.join('; ');
  if (REQUIRE_SERVICES) {
    test(`required by TEST_REQUIRE_SERVICES=1: ${deps.join(', ')}`, () => {
      const err = new Error(reason);
      // The reason is the whole story; a stack into this file would only bury it.
      err.stack = `Error: ${reason}`;
      throw err;
    });
  }
  return reason;
}
