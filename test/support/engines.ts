// The engines the store tests run on: SQLite in a temp dir, and PostgreSQL in schemas made for
// one test file and dropped after it. TEST_DATABASE_URL overrides where PostgreSQL is.
import { randomBytes } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import pg from 'pg';
import type { ServiceDatabaseOptions } from '../../lib/platform/config.js';
import { tempDir } from '../helpers.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { TEST_DATABASE_URL } from './services.js';

export { TEST_DATABASE_URL };

export type EngineName = 'sqlite' | 'postgres';
export const ENGINES: readonly EngineName[] = ['sqlite', 'postgres'];

/**
 * Where a test keeps one set of services' data: `options(name)` gives each service its own
 * schema (PostgreSQL) or the shared temp dir (SQLite); `remove()` drops every schema it handed out.
 */
export interface TestStorage {
  engine: EngineName;
  options(service: string, seed?: boolean): ServiceDatabaseOptions;
  remove(): Promise<void>;
}

export function testStorage(engine: EngineName, databaseUrl = TEST_DATABASE_URL): TestStorage {
  const dir = tempDir('msvc-store-');
  const tag = randomBytes(5).toString('hex');
  const schemas = new Set<string>();
  return {
    engine,
    options(service, seed = false) {
      if (engine === 'sqlite') return { dataDir: dir.dir, seed };
      const schema = `t_${tag}_${service.replace(/[^a-z0-9]/g, '')}`;
      schemas.add(schema);
      return { dataDir: dir.dir, seed, databaseUrl, schema, poolMax: 5, timeoutMs: 2000 };
    },
    async remove() {
      dir.remove();
      if (schemas.size === 0) return;
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
      } finally {
        await client.end();
      }
    },
  };
}

/**
 * A TCP relay in front of PostgreSQL that a test can take down (every connection cut, new ones
 * refused) and bring back, to show what a service does while its database is unreachable.
 */
export interface DatabaseOutage {
  url: string;
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

export async function databaseRelay(databaseUrl = TEST_DATABASE_URL): Promise<DatabaseOutage> {
  const target = new URL(databaseUrl);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(Number(target.port || 5432), target.hostname);
        sockets.add(client).add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        client.pipe(upstream).pipe(client);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as { port: number }).port;
        server = s;
        resolve();
      });
    });
  const down = async () => {
    const s = server;
    server = undefined;
    for (const sock of sockets) sock.destroy();
    sockets.clear();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  };
  await listen();
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return { url: url.toString(), down, up: listen, close: down };
}

/**
 * The fault proxy (test/support/fault-proxy.ts) in front of PostgreSQL, for faults finer than an
 * outage: every connection reset at once, or one reset at a given command (BEGIN, COMMIT).
 * `url` is the database URL through it.
 */
export async function databaseFaultProxy(databaseUrl = TEST_DATABASE_URL): Promise<{ proxy: FaultProxy; url: string }> {
  const target = new URL(databaseUrl);
  const proxy = await startFaultProxy(`tcp://${target.hostname}:${target.port || 5432}`);
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(proxy.port);
  return { proxy, url: url.toString() };
}
