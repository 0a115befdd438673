// The benchmark is not part of `npm test`; its smoke run is `npm run test:bench` (CI runs it): one
// short round of everything, so that `npm run bench` cannot rot between the times someone runs it in full.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { LatencyHistogram } from '../../bench/histogram.js';
import { buildRows, FEATURE_TARGETS, type Results } from '../../bench/report.js';
import { findReference } from '../../bench/system.js';
import { tempDir } from '../helpers.js';
import { skipUnless } from '../support/services.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Where the smoke run measures its PostgreSQL rows: CI has PostgreSQL here. */
const POSTGRES_URL = process.env.BENCH_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
/** CI (.ci/run) installs nginx and HAProxy: there their rows must be in the run, never skipped. */
const REQUIRE_REFERENCES = process.env.TEST_REQUIRE_SERVICES === '1';

/** The schemas in PostgreSQL whose names begin with `prefix`. */
async function schemasStartingWith(prefix: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    const { rows } = await client.query<{ name: string }>('SELECT schema_name AS name FROM information_schema.schemata WHERE starts_with(schema_name, $1)', [prefix]);
    return rows.map((r) => r.name);
  } finally {
    await client.end();
  }
}

describe('latency histogram', () => {
  test('when values are below 2 ms, then percentiles are exact to the microsecond', () => {
    const h = new LatencyHistogram();
    for (let i = 1; i <= 100; i++) h.recordMs(i / 100);
    assert.equal(h.percentileMs(50), 0.5);
    assert.equal(h.percentileMs(99), 0.99);
    assert.equal(h.summary().maxMs, 1);
  });

  test('when values are large, then percentiles stay within 0.1 %', () => {
    const h = new LatencyHistogram();
    for (let i = 1; i <= 1000; i++) h.recordMs(i * 7.3);
    const p50 = h.percentileMs(50);
    assert.ok(Math.abs(p50 - 3650) / 3650 < 0.001, `p50 ${p50}`);
    assert.ok(Math.abs(h.summary().meanMs - 3653.65) < 0.01);
  });
});

/** `npm run bench -- <flag>` with `env`; its stdout once it has exited 0. */
async function runBench(flag: string, env: Record<string, string>): Promise<string> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.ts', flag], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, `exit ${code}\n${stdout.slice(-3000)}\n${stderr.slice(-3000)}`);
  return stdout;
}

describe('npm run bench -- --smoke', () => {
  const out = tempDir('msvc-bench-smoke-test-');
  after(() => out.remove());

  test('when run, then it prints the table and goals and writes results.json with every row, the PostgreSQL ones last', { timeout: 300_000, skip: skipUnless('postgres') }, async () => {
    const published = join(ROOT, 'bench', 'results.json');
    const publishedAt = existsSync(published) ? statSync(published).mtimeMs : undefined;
    // The default run on SQLite, which ends with the PostgreSQL rows.
    const stdout = await runBench('--smoke', { BENCH_OUT_DIR: out.dir, BENCH_DATABASE_URL: '', BENCH_POSTGRES_URL: POSTGRES_URL });

    assert.match(stdout, /^scenario\s+via\s+mode\s+conns\s+ok\/rounds\s+req\/s\s+p50 ms\s+p99 ms/m);
    assert.match(stdout, /Goals:/);
    assert.match(stdout, /(PASS|MISS)\s+gateway CPU per proxied GET/);

    const results = JSON.parse(readFileSync(join(out.dir, 'results.json'), 'utf8')) as Results;
    assert.equal(results.smoke, true);
    assert.equal(results.machine.cores > 0, true);
    const has = (scenario: string, target: string) => results.rows.some((r) => r.scenario === scenario && r.target === target && r.rps.median > 0);
    for (const target of ['direct', 'gateway', 'untraced', 'bare']) assert.ok(has('get', target), `get via ${target}`);
    assert.ok(has('get-rate', 'direct') && has('get-rate', 'gateway') && has('get-rate', 'untraced'), 'fixed-rate rows');
    assert.ok(has('orders', 'gateway'), 'orders row');
    assert.ok(has('dashboard', 'gateway'), 'dashboard row');
    assert.ok(has('users-full', 'gateway'), 'users/:id/full row');
    // The gateway with every feature on, then with each off in turn.
    for (const target of ['gateway', ...FEATURE_TARGETS.map((f) => f.target)]) assert.ok(has('features', target), `features via ${target}`);
    // nginx and HAProxy in front of the same service: their rows, or one line each saying they are missing.
    for (const reference of ['nginx', 'haproxy'] as const) {
      if (findReference(reference)) {
        assert.ok(has('get', reference), `get via ${reference}`);
      } else {
        assert.ok(!REQUIRE_REFERENCES, `${reference} is not installed (.ci/run installs it)`);
        assert.match(stdout, new RegExp(`^${reference} is not installed: its rows are skipped`, 'm'));
      }
    }
    assert.deepEqual(results.invalidRounds, [], 'every round answered with the expected status');
    assert.ok(has('get-postgres', 'direct') && has('get-postgres', 'gateway'), 'PostgreSQL rows');
    assert.ok(has('orders-postgres', 'gateway'), 'orders on PostgreSQL row');
    assert.equal(results.postgres?.status, 'measured', `PostgreSQL at ${POSTGRES_URL}: ${results.postgres?.detail}`);
    assert.match(stdout, /(PASS|MISS)\s+gateway CPU per proxied GET \/ product service CPU per request, products on PostgreSQL: \d/);
    // The run's schemas go with it.
    assert.match(results.postgres.schemaTag ?? '', /^bench_\d+$/);
    assert.deepEqual(await schemasStartingWith(`${results.postgres.schemaTag}_`), []);
    // The PostgreSQL rounds come last and stay out of the figures of the run on SQLite.
    const onPostgres = new Set(['get-postgres', 'orders-postgres']);
    const firstPostgres = results.rounds.findIndex((r) => onPostgres.has(r.scenario));
    assert.ok(results.rounds.slice(firstPostgres).every((r) => onPostgres.has(r.scenario)));
    // `noauth` rounds go through the gateway itself, sent no token.
    const sqliteGatewayRequests = results.rounds.filter((r) => (r.target === 'gateway' || r.target === 'noauth') && !onPostgres.has(r.scenario)).reduce((a, r) => a + r.load.requests, 0);
    assert.equal(results.memory.gatewayRequests, sqliteGatewayRequests);
    assert.equal(results.goals.length, 16);
    assert.match(stdout, /(PASS|MISS)\s+tracing's cost/);
    assert.match(stdout, /n\/a\s+what each feature costs the gateway per proxied GET .*: auth [+-]\d+ µs, tracing [+-]\d+ µs, metrics [+-]\d+ µs, limiter [+-]\d+ µs/);
    assert.match(stdout, /(PASS|MISS)\s+throughput through the gateway \/ direct \(unpinned, \d+ cores\): \d/);
    assert.match(stdout, /(PASS|MISS)\s+added latency at a fixed \d+ req\/s .*: p99 [+-][\d.]+ ms .*, \d of 1 runs within 5 ms/);
    assert.match(stdout, /(PASS|MISS)\s+gateway CPU per GET \/api\/dashboard \/ per proxied GET: [\d.]+x/);
    assert.match(stdout, /n\/a\s+gateway CPU per GET \/api\/users\/:id\/full \/ per proxied GET: [\d.]+x/);
    for (const engine of ['SQLite', 'PostgreSQL']) {
      assert.match(stdout, new RegExp(`(PASS|MISS)\\s+CPU per order \\(POST /api/orders\\) across the four processes, ${engine}: [\\d.]+ ms .* at [\\d.]+ orders/s`));
    }
    assert.match(stdout, /(PASS|MISS)\s+gateway RSS after the bench: \d+ MB/);
    // A couple of hundred connections in the smoke run; 2000 in the real one.
    assert.equal(results.idleConnections?.connections, 200);
    assert.equal(results.idleConnections?.held, 200, results.idleConnections?.error);
    assert.match(stdout, /(PASS|MISS)\s+gateway RSS per idle keep-alive connection, at 200 connections: -?[\d.]+ KB/);
    assert.match(stdout, /(PASS|MISS|n\/a)\s+gateway memory stays flat over a million requests/);
    for (const row of results.rows.filter((r) => r.target !== 'direct')) assert.ok(row.cpuUs.front!.median > 0, `${row.scenario} ${row.target} front CPU`);
    // The rows written are the rows the rounds give: nothing is computed only at print time.
    assert.deepEqual(JSON.parse(JSON.stringify(buildRows(results.rounds))), results.rows);
    const markdown = readFileSync(join(out.dir, 'RESULTS.md'), 'utf8');
    assert.match(markdown, /^# Benchmark results\n/);
    assert.match(markdown, /^\| GET product, products on PostgreSQL \| gateway \| (pinned|unpinned) \|/m);
    assert.match(markdown, /^- \*\*(PASS|MISS)\*\* gateway CPU per proxied GET \/ product service CPU per request, products on PostgreSQL: /m);
    // A smoke run never overwrites the published figures.
    assert.equal(existsSync(published) ? statSync(published).mtimeMs : undefined, publishedAt);
  });

  test('when the soak runs (1000 requests here), then it writes soak.json with every chunk and a verdict, and leaves the published one alone', { timeout: 90_000 }, async () => {
    const published = join(ROOT, 'bench', 'soak.json');
    const publishedAt = existsSync(published) ? statSync(published).mtimeMs : undefined;
    const stdout = await runBench('--soak', { BENCH_OUT_DIR: out.dir, BENCH_SOAK_REQUESTS: '1000' });
    const soak = JSON.parse(readFileSync(join(out.dir, 'soak.json'), 'utf8')) as { chunks: { requests: number; errors: number; non2xx: number; rssFloorMb: number }[]; pass: boolean; verdict: string };
    assert.equal(soak.chunks.length, 20);
    assert.equal(soak.chunks.at(-1)!.requests, 1000);
    assert.ok(soak.chunks.every((c) => c.errors === 0 && c.non2xx === 0 && c.rssFloorMb > 0));
    assert.equal(typeof soak.pass, 'boolean');
    assert.match(stdout, /(PASS|MISS) gateway memory over 1,000 requests/);
    assert.match(readFileSync(join(out.dir, 'SOAK.md'), 'utf8'), /^# Soak/);
    assert.equal(existsSync(published) ? statSync(published).mtimeMs : undefined, publishedAt);
  });
});
