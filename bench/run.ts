// `npm run bench`: what the gateway costs per request, measured beside the service alone, a bare
// Express proxy, nginx and HAProxy, in interleaved rounds; what each of its features costs (the
// gateway again with one off at a time); the aggregates, orders, and its memory per idle
// connection; then (on SQLite, when PostgreSQL answers) the GET and order rounds again with the
// services on PostgreSQL. Prints the table and the performance goals and
// writes results.json and RESULTS.md to bench/tmp/ (ignored by git); `--record` writes them to
// bench/ instead, where the committed figures are, so that a run on a laptop never changes
// tracked files by accident. `--smoke` (or BENCH_SMOKE=1) is the quick
// version the test suite runs so this cannot rot; `--profile` records the gateway's hot path;
// `--soak` (npm run bench:soak) sends a million requests through the gateway and tracks its memory.
import pg from 'pg';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import { parseConfig, ConfigError } from '../lib/platform/config.js';
import { IDLE_SHRINK_MS } from '../lib/platform/server.js';
import { closedLoop, pacedLoop, type LoadResult, type LoadSpec } from './load.js';
import { clockTicksPerSecond, cpuTicks, describeMachine, foreignPercent, hasTaskset, hostCpu, rssBytes, setAffinity, stealPercent } from './proc.js';
import { hotFunctions } from './profile.js';
import {
  buildGoals, buildRows, FEATURE_TARGETS, goalLines, GOALS, markdownReport, median, notes, postgresMissingRow, roundLine, tableCells, textTable, TABLE_HEADER,
  type GatewayMemory, type IdleConnections, type Mode, type PostgresSection, type Results, type RoundRecord, type Scenario, type SoakVerdict, type Target,
} from './report.js';
import { soak } from './soak.js';
import { BENCH_SERVICES, benchSchema, ROOT, startSystem, Supervisor, type BenchProcess, type BenchSystem, type ProcessName, type Reference } from './system.js';

const seconds = z.string().regex(/^\d+(\.\d+)?$/, 'must be a number of seconds')
  .transform(Number).refine((n) => n >= 0.5 && n <= 600, 'must be from 0.5 to 600 seconds').optional();

const OptionsSchema = z.object({
  BENCH_SMOKE: z.enum(['0', '1', 'true', 'false']).optional().transform((v) => v === '1' || v === 'true'),
  BENCH_PROFILE: z.enum(['0', '1', 'true', 'false']).optional().transform((v) => v === '1' || v === 'true'),
  BENCH_SOAK_REQUESTS: z.string().regex(/^\d+$/, 'must be a whole number from 1000 to 100000000').transform(Number)
    .refine((n) => n >= 1000 && n <= 100_000_000, 'must be a whole number from 1000 to 100000000').default(1_000_000),
  BENCH_DURATION_S: seconds,
  BENCH_WARMUP_S: seconds,
  BENCH_ROUNDS: z.string().regex(/^\d+$/, 'must be a whole number from 1 to 20').transform(Number)
    .refine((n) => n >= 1 && n <= 20, 'must be a whole number from 1 to 20').optional(),
  BENCH_OUT_DIR: z.string().min(1).optional(),
  // Another gateway implementation behind the same routes, to compare before choosing one.
  // Every request carries a demo admin's token (logged in through the gateway): what verifying costs.
  BENCH_TOKEN: z.enum(['0', '1', 'true', 'false']).optional().transform((v) => v === '1' || v === 'true'),
  // The services keep their data in PostgreSQL at this URL (schemas of the run's own, dropped
  // after it), to measure what the database costs the product service and the gateway.
  BENCH_DATABASE_URL: z.string().regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// URL').optional(),
  // A run on SQLite ends with the saturation GET rounds again, the services restarted on the
  // PostgreSQL here, when it answers; `off` leaves them out. Unused with BENCH_DATABASE_URL.
  BENCH_POSTGRES_URL: z.string().regex(/^(off|postgres(ql)?:\/\/\S+)$/, 'must be a postgres:// URL or off')
    .default('postgres://postgres@127.0.0.1:5432/postgres').transform((v) => (v === 'off' ? undefined : v)),
  BENCH_GATEWAY_ENTRY: z.string().regex(/\.ts$/, 'must be a .ts entry file relative to the repository root').default('gateway.ts'),
});

interface Options {
  smoke: boolean;
  profile: boolean;
  soak: boolean;
  soakRequests: number;
  durationS: number;
  warmupS: number;
  rounds: number;
  outDir?: string;
  /** `--record`: the report replaces the committed one in bench/. */
  record: boolean;
  gatewayEntry: string;
  token: boolean;
  databaseUrl?: string;
  /** Where a run on SQLite measures the PostgreSQL rows; undefined: BENCH_POSTGRES_URL=off. */
  postgresUrl?: string;
}

function readOptions(argv: string[], env: NodeJS.ProcessEnv): Options {
  const known = new Set(['--smoke', '--profile', '--soak', '--record']);
  const unknown = argv.filter((a) => !known.has(a));
  if (unknown.length) throw new ConfigError(`unknown argument ${unknown[0]} (known: --smoke, --profile, --soak, --record)`);
  const raw = parseConfig(OptionsSchema, env);
  const smoke = raw.BENCH_SMOKE || argv.includes('--smoke');
  return {
    smoke,
    profile: raw.BENCH_PROFILE || argv.includes('--profile'),
    soak: argv.includes('--soak'),
    soakRequests: raw.BENCH_SOAK_REQUESTS,
    durationS: raw.BENCH_DURATION_S ?? (smoke ? 1 : 5),
    warmupS: raw.BENCH_WARMUP_S ?? (smoke ? 0.5 : 2),
    rounds: raw.BENCH_ROUNDS ?? (smoke ? 1 : 3),
    outDir: raw.BENCH_OUT_DIR,
    record: argv.includes('--record'),
    gatewayEntry: raw.BENCH_GATEWAY_ENTRY,
    token: raw.BENCH_TOKEN,
    databaseUrl: raw.BENCH_DATABASE_URL,
    postgresUrl: raw.BENCH_POSTGRES_URL,
  };
}

const GET_CONNECTIONS = 50;
const benchSchemaTag = `bench_${process.pid}`;
/** The PostgreSQL databases the run has made schemas in: dropped after it, however it ends. */
const schemaUrls = new Set<string>();
const POSTGRES_TARGETS = ['direct', 'gateway'] as const;
const POSTGRES_PROBE_TIMEOUT_MS = 2_000;
/** Stopping the system and starting it on PostgreSQL, for the time estimate. */
const RESTART_S = 5;
const WRITE_CONNECTIONS = 10;
/** The aggregates run at the GET rounds' concurrency, so their CPU compares with a proxied GET's. */
const AGGREGATE_CONNECTIONS = GET_CONNECTIONS;
/** The user whose GET /api/users/:id/full is measured: one demo order, never the write rounds' (user 1). */
const FULL_USER_ID = 2;
/** Idle keep-alive connections held to measure the gateway's memory per connection (a few hundred in a smoke run). */
const SMOKE_IDLE_CONNECTIONS = 200;
/** Connections opened at once while building up the idle ones. */
const IDLE_OPEN_BATCH = 50;
/**
 * How long the load stays stopped before the gateway's RSS "after the bench" is read: the gateway
 * gives a busy spell's heap back once idle (collectWhenIdle, done within IDLE_SHRINK_MS); the
 * figure at the end of the last round is reported beside it.
 */
const SETTLE_MS = IDLE_SHRINK_MS + 3_000;
/** A smoke run only checks that the readings are made. */
const SMOKE_SETTLE_MS = 1_000;
/** How long the idle connections are held before the RSS is read (under the gateway's keep-alive timeout). */
const IDLE_HOLD_MS = 2_000;
const REFERENCES: readonly Reference[] = ['nginx', 'haproxy'];
const SWEEP_CONNECTIONS = [1, 10, 200];
const STEAL_FLAG_PCT = 1;
/** Other processes using more than this share of the machine during a round disturb it. */
const FOREIGN_FLAG_PCT = 5;
/** Between rounds, so that one round's closing connections are not the next one's load. */
const PAUSE_MS = 300;
const SMOKE_PAUSE_MS = 50;
/** Stock of the product the write rounds order: never the reason a round fails. */
const BENCH_STOCK = 1_000_000_000;

const log = (line = '') => process.stdout.write(`${line}\n`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Pinning {
  available: boolean;
  note: string;
  apply: (mode: Mode) => void;
}

/** Load generator on CPU 0, the system on the others; unpinned: everyone anywhere. */
function pinning(system: BenchSystem, supervisor: Supervisor, cores: number): Pinning {
  const all = `0-${cores - 1}`;
  const rest = cores === 2 ? '1' : `1-${cores - 1}`;
  const apply = (mode: Mode) => {
    setAffinity(process.pid, mode === 'pinned' ? '0' : all);
    for (const p of system.processes) for (const pid of p.pids) setAffinity(pid, mode === 'pinned' ? rest : all);
    // The processes draining their logs belong with them, off the load generator's core.
    for (const pid of supervisor.drainPids) {
      try {
        setAffinity(pid, mode === 'pinned' ? rest : all);
      } catch {
        // It exited in between: nothing to pin.
      }
    }
  };
  if (cores < 2) return { available: false, note: 'not possible on one core', apply: () => {} };
  if (!hasTaskset()) return { available: false, note: 'taskset not installed: unpinned rounds only', apply: () => {} };
  try {
    apply('unpinned');
  } catch (err) {
    return { available: false, note: `taskset refused (${(err as Error).message.split('\n')[0]}): unpinned rounds only`, apply: () => {} };
  }
  return { available: true, note: `saturation GET rounds both pinned with taskset (load generator on CPU 0, system on CPU ${rest}) and unpinned; all other rounds unpinned`, apply };
}

async function json(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, {
    method,
    headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON: keep the text for the message.
  }
  return { status: res.status, body: parsed };
}

/** Alice's access token (the demo admin, DEMO_PASSWORD's default), from the gateway's login. */
async function demoAdminToken(gatewayUrl: string): Promise<string> {
  const res = await json('POST', `${gatewayUrl}/api/auth/login`, { email: 'alice@example.com', password: 'microservices-demo' });
  const token = (res.body as { accessToken?: unknown })?.accessToken;
  if (res.status !== 200 || typeof token !== 'string') throw new Error(`BENCH_TOKEN: login failed: ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`);
  return token;
}

/**
 * One proxied read and one order through the gateway before any load: a gateway that cannot
 * answer them fails here with its answer, rather than as rounds of errors.
 */
async function preflight(getUrl: string, ordersUrl: string, orderBody: string, headers: Record<string, string> = {}): Promise<void> {
  await preflightRead(getUrl, headers);
  const order = await json('POST', ordersUrl, JSON.parse(orderBody), headers);
  if (order.status !== 201) throw new Error(`POST /api/orders through the gateway answered ${order.status}: ${JSON.stringify(order.body).slice(0, 300)}`);
}

/** A proxied read through the gateway, waiting out breakers that saw a service still starting. */
async function preflightRead(getUrl: string, headers: Record<string, string> = {}): Promise<void> {
  const deadline = Date.now() + 10_000;
  let read = await json('GET', getUrl, undefined, headers);
  // Breakers may have seen a service still starting: give them a moment, not a failed run.
  while (read.status !== 200 && Date.now() < deadline) {
    await sleep(250);
    read = await json('GET', getUrl, undefined, headers);
  }
  if (read.status !== 200) throw new Error(`GET ${new URL(getUrl).pathname} through the gateway answered ${read.status}: ${JSON.stringify(read.body).slice(0, 300)}`);
}

/** A product with stock for every order of the run, made on the product service; the order rounds' body. */
async function benchOrderBody(productsUrl: string): Promise<string> {
  const created = await json('POST', `${productsUrl}/products`, {
    name: 'Benchmark stock', description: 'Ordered by the write rounds of npm run bench', price: 1, stock: BENCH_STOCK, category: 'bench',
  });
  const productId = (created.body as { id?: unknown })?.id;
  if (created.status !== 201 || typeof productId !== 'number') {
    throw new Error(`could not create the benchmark's product: ${created.status} ${JSON.stringify(created.body).slice(0, 300)}`);
  }
  return JSON.stringify({ userId: 1, items: [{ productId, quantity: 1 }] });
}

/** host:port/database: where a PostgreSQL URL points, never its credentials. */
function serverOf(url: string): string {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}`;
  } catch {
    return 'the URL given';
  }
}

/** Whether PostgreSQL answers a query at `url` within a couple of seconds: its version, or why not. */
async function probePostgres(url: string): Promise<{ ok: true; version: string } | { ok: false; reason: string }> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: POSTGRES_PROBE_TIMEOUT_MS, query_timeout: POSTGRES_PROBE_TIMEOUT_MS });
  try {
    await client.connect();
    const { rows } = await client.query<{ version: string }>("SELECT current_setting('server_version') AS version");
    // "15.20 (Debian 15.20-0+deb12u1)": the number is enough for the report.
    return { ok: true, version: rows[0].version.split(' ')[0] };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, reason: e.message.split('\n')[0] || e.code || e.name };
  } finally {
    await client.end().catch(() => {});
  }
}

/** Two requests on one keep-alive socket: the second must reuse it. */
function checkKeepAlive(url: string): Promise<Results['keepAlive']> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const once = () => new Promise<{ reused: boolean; connection: string | null }>((resolve, reject) => {
    const req = request(url, { agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ reused: req.reusedSocket, connection: res.headers.connection ?? null }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
  return once().then(async (first) => {
    await sleep(10);
    const second = await once();
    agent.destroy();
    return { reused: second.reused, connectionHeader: second.connection ?? first.connection };
  });
}

/**
 * The gateway's RSS per idle keep-alive connection: `count` clients each send one proxied GET on a
 * socket of their own (IDLE_OPEN_BATCH at a time) and keep it open; the RSS while they are held
 * is set against the RSS before, over the connections still open then.
 */
/** A process's RSS in MB: the median of three readings 100 ms apart. */
async function readRss(pid: number): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) {
    samples.push((rssBytes(pid) ?? NaN) / 2 ** 20);
    await sleep(100);
  }
  return median(samples);
}

async function holdIdleConnections(gateway: BenchProcess, url: string, headers: Record<string, string>, count: number, holdMs: number): Promise<IdleConnections> {
  const rssBeforeMb = await readRss(gateway.mainPid);
  const agents: Agent[] = [];
  const open = () => new Promise<void>((resolve, reject) => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    agents.push(agent);
    const req = request(url, { agent, headers }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`answered ${res.statusCode}`))));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
  let error: string | undefined;
  try {
    for (let opened = 0; opened < count; opened += IDLE_OPEN_BATCH) {
      await Promise.all(Array.from({ length: Math.min(IDLE_OPEN_BATCH, count - opened) }, open));
    }
  } catch (err) {
    error = `stopped after ${agents.length} connections: ${(err as Error).message}`;
  }
  // Each answered socket returns to its agent's free list, where it stays open until destroyed.
  // The gateway gives a busy spell's heap back only after a minute idle, longer than it keeps an
  // idle connection: the heap their requests grew counts as theirs, so the figure is an upper bound.
  await sleep(holdMs);
  const rssHeldMb = await readRss(gateway.mainPid);
  const held = agents.reduce((n, a) => n + Object.values(a.freeSockets).reduce((m, list) => m + (list?.length ?? 0), 0), 0);
  for (const agent of agents) agent.destroy();
  if (held < count && !error) error = `${count - held} connections closed before the RSS was read`;
  return { connections: count, held, rssBeforeMb, rssHeldMb, perConnectionKb: held > 0 ? ((rssHeldMb - rssBeforeMb) * 1024) / held : NaN, ...(error ? { error } : {}) };
}

const RSS_SAMPLE_MS = 250;
/** A full run takes about 4 minutes: this holds 40 minutes of samples. */
const MAX_RSS_SAMPLES = 10_000;

/** Samples a process's RSS (MB) until stopped. */
function sampleRss(pid: number): { stop: () => number[] } {
  const samples: number[] = [];
  const take = () => {
    const bytes = rssBytes(pid);
    if (bytes !== undefined && samples.length < MAX_RSS_SAMPLES) samples.push(bytes / 2 ** 20);
  };
  take();
  const timer = setInterval(take, RSS_SAMPLE_MS);
  return {
    stop: () => {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** CPU other processes use over one second: a busy machine gives unsteady figures. */
async function othersLoad(system: BenchSystem, tickUs: number): Promise<number> {
  const ownTicks = () => system.processes.flatMap((p) => p.pids).reduce((sum, pid) => sum + (cpuTicks(pid) ?? 0), 0)
    + (process.cpuUsage().user + process.cpuUsage().system) / tickUs;
  const host0 = hostCpu();
  const own0 = ownTicks();
  await sleep(1_000);
  return foreignPercent(host0, hostCpu(), ownTicks() - own0);
}

interface RoundSpec {
  scenario: Scenario;
  target: Target;
  mode: Mode;
  round: number;
  spec: LoadSpec;
  rate?: number;
  expectStatus: string;
}

const FRONT: Record<Target, ProcessName | undefined> = {
  direct: undefined, gateway: 'gateway', noauth: 'gateway', untraced: 'untraced', nometrics: 'nometrics', nolimit: 'nolimit', bare: 'bare', nginx: 'nginx', haproxy: 'haproxy',
};
/** The features rounds' targets: the gateway with every feature on, then each with one off. */
const FEATURE_ROUND_TARGETS: readonly Target[] = ['gateway', ...FEATURE_TARGETS.map((f) => f.target)];

function invalidReason(load: LoadResult, expect: string): string | undefined {
  const problems: string[] = [];
  if (load.requests === 0) problems.push('no responses');
  if (load.errors > 0) problems.push(`${load.errors} errors${load.timeouts ? ` (${load.timeouts} timeouts)` : ''}`);
  const unexpected = Object.entries(load.statuses).filter(([code]) => code !== expect);
  if (unexpected.length) problems.push(`expected only ${expect}, got ${Object.entries(load.statuses).map(([c, n]) => `${c}: ${n}`).join(', ')}`);
  return problems.length ? problems.join('; ') : undefined;
}

class Runner {
  private readonly tickUs: number;

  constructor(
    private readonly system: BenchSystem,
    private readonly plannedRounds: number,
    private readonly signal: AbortSignal,
    clockTicks: number,
    private readonly pauseMs: number,
    /** Another runner's list, for a second system whose rounds continue the numbering. */
    readonly rounds: RoundRecord[] = [],
  ) {
    this.tickUs = 1e6 / clockTicks;
  }

  private ticks(): Map<number, number> {
    const m = new Map<number, number>();
    for (const p of this.system.processes) for (const pid of p.pids) m.set(pid, cpuTicks(pid) ?? NaN);
    return m;
  }

  private cpuUsPerRequest(name: ProcessName, before: Map<number, number>, after: Map<number, number>, requests: number): number {
    const p = this.system.get(name);
    if (!p || requests === 0) return NaN;
    const ticks = p.pids.reduce((sum, pid) => sum + (after.get(pid)! - before.get(pid)!), 0);
    return (ticks * this.tickUs) / requests;
  }

  private gatewayRssMb(): number {
    return (rssBytes(this.system.get('gateway')!.mainPid) ?? NaN) / 2 ** 20;
  }

  async run(r: RoundSpec): Promise<RoundRecord> {
    await sleep(this.pauseMs);
    const rssBefore = this.gatewayRssMb();
    const host0 = hostCpu();
    const self0 = process.cpuUsage();
    const t0 = performance.now();
    const ticks0 = this.ticks();
    const load = r.rate ? await pacedLoop({ ...r.spec, rate: r.rate }, this.signal) : await closedLoop(r.spec, this.signal);
    const ticks1 = this.ticks();
    const elapsedUs = (performance.now() - t0) * 1000;
    const self1 = process.cpuUsage(self0);
    const host1 = hostCpu();
    const steal = stealPercent(host0, host1);
    let ownTicks = (self1.user + self1.system) / this.tickUs;
    for (const [pid, t] of ticks1) ownTicks += t - ticks0.get(pid)!;
    const foreign = foreignPercent(host0, host1, ownTicks);
    if (this.signal.aborted) throw new Error('interrupted');
    for (const p of this.system.processes) {
      if (!p.alive()) throw new Error(`${p.name} exited during a round; its last output:\n${p.output().slice(-3000)}`);
    }
    const front = FRONT[r.target];
    const reason = invalidReason(load, r.expectStatus);
    const record: RoundRecord = {
      index: this.rounds.length + 1,
      scenario: r.scenario,
      target: r.target,
      mode: r.mode,
      round: r.round,
      connections: r.spec.connections,
      ...(r.rate ? { rate: r.rate } : {}),
      path: new URL(r.spec.url).pathname,
      load,
      cpuUs: {
        ...(front ? { front: this.cpuUsPerRequest(front, ticks0, ticks1, load.requests) } : {}),
        products: this.cpuUsPerRequest('products', ticks0, ticks1, load.requests),
        users: this.cpuUsPerRequest('users', ticks0, ticks1, load.requests),
        orders: this.cpuUsPerRequest('orders', ticks0, ticks1, load.requests),
      },
      loadGeneratorCpuPct: ((self1.user + self1.system) / elapsedUs) * 100,
      stealPct: steal,
      stolen: steal > STEAL_FLAG_PCT,
      foreignCpuPct: foreign,
      disturbed: foreign > FOREIGN_FLAG_PCT,
      gatewayRssMb: { before: rssBefore, after: this.gatewayRssMb() },
      valid: reason === undefined,
      ...(reason ? { invalidReason: reason } : {}),
    };
    this.rounds.push(record);
    log(roundLine(record, this.plannedRounds));
    return record;
  }
}

/** Fixed-rate runs: GOALS.rateRuns, so the p99 goal can say how many met it; BENCH_ROUNDS in a smoke run. */
const rateRunsOf = (o: Options) => (o.smoke ? o.rounds : GOALS.rateRuns);

function plannedRoundCount(o: Options, targets: number, modes: number, withPostgres: boolean): number {
  const get = o.rounds * targets * modes;
  const features = o.rounds * FEATURE_ROUND_TARGETS.length;
  const rate = rateRunsOf(o) * 3;
  const writes = o.rounds * 3;
  const sweep = o.smoke ? 0 : SWEEP_CONNECTIONS.length;
  const postgres = withPostgres ? o.rounds * (POSTGRES_TARGETS.length * modes + 1) : 0;
  return get + features + rate + writes + sweep + postgres;
}

async function bench(o: Options, supervisor: Supervisor, workDir: string, signal: AbortSignal): Promise<void> {
  const startedAt = new Date();
  const machine = describeMachine();
  const clockTicks = clockTicksPerSecond();
  log(`Benchmark${o.smoke ? ' (smoke)' : ''}: ${machine.cores} cores, ${machine.cpuModel}, Node ${machine.node}`);
  log('Starting the gateway (and again with tracing, metrics or the limiter off), the three services, the bare proxy, nginx and HAProxy...');
  const database = o.databaseUrl ? { url: o.databaseUrl, schemaTag: benchSchemaTag } : undefined;
  if (database) log(`The services keep their data in PostgreSQL (BENCH_DATABASE_URL), schemas ${database.schemaTag}_*.`);
  if (database) schemaUrls.add(database.url);
  // Asked before anything starts, so that the plan and the time estimate count its rounds.
  const probe = !database && o.postgresUrl ? await probePostgres(o.postgresUrl) : undefined;
  let postgres: PostgresSection | undefined;
  if (!database) {
    const server = o.postgresUrl ? serverOf(o.postgresUrl) : undefined;
    postgres = !probe ? { status: 'off' }
      : probe.ok ? { status: 'measured', server, detail: probe.version, schemaTag: benchSchemaTag }
      : { status: 'unreachable', server, detail: probe.reason };
  }
  const system = await startSystem(supervisor, { workDir, withReferences: true, gatewayEntry: o.gatewayEntry, withFeaturesOff: true, database });
  const gateway = system.get('gateway')!;
  const products = system.get('products')!;
  const pin = pinning(system, supervisor, machine.cores);
  const modes: Mode[] = pin.available ? ['pinned', 'unpinned'] : ['unpinned'];
  const targets: Target[] = ['direct', 'gateway', 'untraced', 'bare', ...REFERENCES.filter((r) => system.get(r))];
  const withPostgres = postgres?.status === 'measured';
  const planned = plannedRoundCount(o, targets.length, modes.length, withPostgres);
  const estimateS = planned * (o.durationS + (o.smoke ? SMOKE_PAUSE_MS : PAUSE_MS) / 1000 + 0.2) + (targets.length + FEATURE_ROUND_TARGETS.length + 3) * o.warmupS + 10
    + (withPostgres ? (POSTGRES_TARGETS.length + 1) * o.warmupS + RESTART_S : 0);
  log(`Pinning: ${pin.note}. nginx: ${system.referenceNotes.nginx}. HAProxy: ${system.referenceNotes.haproxy}.`);
  for (const ref of REFERENCES) {
    if (!system.get(ref)) log(`${ref} is not installed: its rows are skipped (apt-get install ${ref}).`);
  }
  if (postgres?.status === 'measured') log(`PostgreSQL ${postgres.detail} answers at ${postgres.server} (BENCH_POSTGRES_URL): its GET rounds come last, schemas ${benchSchemaTag}_*.`);
  if (postgres?.status === 'unreachable') log(`PostgreSQL did not answer at ${postgres.server} (${postgres.detail}): no PostgreSQL rows (BENCH_POSTGRES_URL).`);
  log(`${planned} rounds of ${o.durationS} s (BENCH_DURATION_S), ${o.rounds} of each (BENCH_ROUNDS): about ${Math.ceil(estimateS / 10) * 10} s.`);
  log();

  const orderBody = await benchOrderBody(products.url);
  const auth: Record<string, string> = o.token ? { authorization: `Bearer ${await demoAdminToken(gateway.url)}` } : {};
  if (o.token) log('Every request carries a demo admin\'s token (BENCH_TOKEN=1).');
  const productUrl = (name: ProcessName) => (system.get(name) ? `${system.get(name)!.url}/api/products/1` : '');
  const urls: Record<Target, string> = {
    direct: `${products.url}/products/1`,
    gateway: productUrl('gateway'),
    noauth: productUrl('gateway'),
    untraced: productUrl('untraced'),
    nometrics: productUrl('nometrics'),
    nolimit: productUrl('nolimit'),
    bare: productUrl('bare'),
    nginx: productUrl('nginx'),
    haproxy: productUrl('haproxy'),
  };
  const getSpec = (t: Target, connections = GET_CONNECTIONS): LoadSpec => ({ url: urls[t], connections, durationS: o.durationS, headers: auth });
  // Auth has work to do only when a token comes: every features round but `noauth` carries one.
  const featureToken = o.token ? auth : { authorization: `Bearer ${await demoAdminToken(gateway.url)}` };
  const featureSpec = (t: Target): LoadSpec => ({ ...getSpec(t), headers: t === 'noauth' ? {} : featureToken });
  const ordersSpec: LoadSpec = {
    url: `${gateway.url}/api/orders`, method: 'POST', body: orderBody, headers: { ...auth, 'content-type': 'application/json' },
    connections: WRITE_CONNECTIONS, durationS: o.durationS,
  };
  const dashboardSpec: LoadSpec = { url: `${gateway.url}/api/dashboard`, connections: AGGREGATE_CONNECTIONS, durationS: o.durationS, headers: auth };
  const fullSpec: LoadSpec = { url: `${gateway.url}/api/users/${FULL_USER_ID}/full`, connections: AGGREGATE_CONNECTIONS, durationS: o.durationS, headers: auth };

  await preflight(urls.gateway, `${gateway.url}/api/orders`, orderBody);
  await preflight(urls.untraced, `${system.get('untraced')!.url}/api/orders`, orderBody);
  for (const t of FEATURE_ROUND_TARGETS) await preflightRead(featureSpec(t).url, featureSpec(t).headers);
  await preflightRead(fullSpec.url, auth);
  await preflightRead(dashboardSpec.url, auth);
  const keepAlive = await checkKeepAlive(urls.gateway);
  const busy = o.smoke ? 0 : await othersLoad(system, 1e6 / clockTicks);
  if (busy > FOREIGN_FLAG_PCT) {
    log(`Other processes are using ${busy.toFixed(0)} % of this machine: the figures will be unsteady (rounds where it happens are flagged).`);
  }

  // Warm-up: JIT, connection pools and SQLite caches settle before anything is measured.
  log('Warming up...');
  for (const t of targets) await closedLoop({ ...getSpec(t), durationS: o.warmupS }, signal);
  for (const t of FEATURE_ROUND_TARGETS) await closedLoop({ ...featureSpec(t), durationS: o.warmupS }, signal);
  await closedLoop({ ...ordersSpec, durationS: o.warmupS }, signal);
  await closedLoop({ ...dashboardSpec, durationS: o.warmupS }, signal);
  await closedLoop({ ...fullSpec, durationS: o.warmupS }, signal);
  await pacedLoop({ ...getSpec('gateway'), durationS: Math.min(1, o.warmupS), rate: 500 }, signal);
  if (signal.aborted) throw new Error('interrupted');

  const runner = new Runner(system, planned, signal, clockTicks, o.smoke ? SMOKE_PAUSE_MS : PAUSE_MS);
  const rss = sampleRss(system.get('gateway')!.mainPid);

  await saturationRounds({ runner, pin, modes, rounds: o.rounds, scenario: 'get', targets, spec: (t) => getSpec(t) });
  // In the mode of the CPU goal: what each feature adds to the gateway's CPU per request.
  await saturationRounds({ runner, pin, modes: modes.slice(0, 1), rounds: o.rounds, scenario: 'features', targets: FEATURE_ROUND_TARGETS, spec: featureSpec });

  // The rest runs unpinned, as a user runs it: pinned, the whole system shares one core and every
  // garbage collection of one delays the others, which makes latency tails measure the sharing.
  pin.apply('unpinned');
  // The gateway's saturation as the goals define it: gateway and service sharing one core
  // (pinned). Half of the unpinned figure would load both cores: at a fixed rate, with fewer
  // requests per wake-up, each costs about twice the CPU it costs at saturation.
  const saturationMode = modes[0];
  const saturation = median(runner.rounds.filter((r) => r.scenario === 'get' && r.target === 'gateway' && r.mode === saturationMode && r.valid).map((r) => r.load.rps));
  let fixedRate: Results['fixedRate'];
  if (Number.isFinite(saturation) && saturation > 0) {
    fixedRate = { gatewaySaturationRps: saturation, rate: Math.max(1, Math.round(saturation / 2)), mode: saturationMode };
    for (let round = 1; round <= rateRunsOf(o); round++) {
      for (const target of ['direct', 'gateway', 'untraced'] as const) {
        await runner.run({ scenario: 'get-rate', target, mode: 'unpinned', round, spec: getSpec(target), rate: fixedRate.rate, expectStatus: '200' });
      }
    }
  } else {
    log('No valid saturation round through the gateway: the fixed-rate rounds are skipped.');
  }

  if (!o.smoke) {
    for (const connections of SWEEP_CONNECTIONS) {
      await runner.run({ scenario: 'sweep', target: 'gateway', mode: 'unpinned', round: 1, spec: getSpec('gateway', connections), expectStatus: '200' });
    }
  }

  for (let round = 1; round <= o.rounds; round++) {
    await runner.run({ scenario: 'orders', target: 'gateway', mode: 'unpinned', round, spec: ordersSpec, expectStatus: '201' });
    await runner.run({ scenario: 'dashboard', target: 'gateway', mode: 'unpinned', round, spec: dashboardSpec, expectStatus: '200' });
    await runner.run({ scenario: 'users-full', target: 'gateway', mode: 'unpinned', round, spec: fullSpec, expectStatus: '200' });
  }
  const rssSamples = rss.stop();
  const settleMs = o.smoke ? SMOKE_SETTLE_MS : SETTLE_MS;
  log(`Gateway RSS ${(rssSamples[rssSamples.length - 1] ?? NaN).toFixed(0)} MB at the end of the rounds; reading it again with the load stopped for ${settleMs / 1000} s...`);
  await sleep(settleMs);
  const settledMb = await readRss(gateway.mainPid);
  const idleConnections = await holdIdleConnections(gateway, urls.gateway, auth, o.smoke ? SMOKE_IDLE_CONNECTIONS : GOALS.idleConnections, IDLE_HOLD_MS);
  log(`Idle connections: ${idleConnections.held} of ${idleConnections.connections} held, gateway RSS ${idleConnections.rssBeforeMb.toFixed(0)} -> ${idleConnections.rssHeldMb.toFixed(0)} MB, ${idleConnections.perConnectionKb.toFixed(1)} KB each${idleConnections.error ? ` (${idleConnections.error})` : ''}.`);

  // Every figure but the PostgreSQL rows and their goal comes from the rounds so far.
  const sqliteRounds = [...runner.rounds];
  const quarter = Math.max(1, Math.floor(rssSamples.length / 4));
  const memory: GatewayMemory = {
    samples: rssSamples.length,
    afterWarmupMb: rssSamples[0] ?? NaN,
    atEndMb: rssSamples[rssSamples.length - 1] ?? NaN,
    settledMb,
    settleS: settleMs / 1000,
    firstQuarterFloorMb: Math.min(...rssSamples.slice(0, quarter)),
    lastQuarterFloorMb: Math.min(...rssSamples.slice(-quarter)),
    peakMb: Math.max(...rssSamples),
    gatewayRequests: sqliteRounds.filter((r) => FRONT[r.target] === 'gateway').reduce((a, r) => a + r.load.requests, 0),
  };

  if (withPostgres) {
    await postgresRounds({
      o, supervisor, signal, url: o.postgresUrl!, workDir: join(workDir, 'postgres'), cores: machine.cores, sqlite: system,
      runner: (pgSystem) => new Runner(pgSystem, planned, signal, clockTicks, o.smoke ? SMOKE_PAUSE_MS : PAUSE_MS, runner.rounds),
    });
  }

  const rounds = runner.rounds;
  const rows = buildRows(rounds);
  const finishedAt = new Date();
  const results: Results = {
    version: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: finishedAt.toISOString(),
    elapsedS: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    smoke: o.smoke,
    machine,
    settings: {
      durationS: o.durationS, rounds: o.rounds, rateRuns: rateRunsOf(o), warmupS: o.warmupS, clockTicksPerSecond: clockTicks, pinning: pin.note,
      nginx: system.referenceNotes.nginx, haproxy: system.referenceNotes.haproxy, storage: database ? 'PostgreSQL' : 'SQLite',
    },
    ...(fixedRate ? { fixedRate } : {}),
    ...(postgres ? { postgres } : {}),
    memory,
    idleConnections,
    keepAlive,
    rows,
    goals: buildGoals({
      rows, rounds: sqliteRounds, cpuMode: modes[0], memory, keepAlive, fixedRate, soak: latestSoak(), postgres, idleConnections, cores: machine.cores, references: system.referenceNotes,
    }),
    invalidRounds: rounds.filter((r) => !r.valid).map((r) => ({ index: r.index, scenario: r.scenario, target: r.target, mode: r.mode, round: r.round, reason: r.invalidReason ?? '' })),
    stolenRounds: rounds.filter((r) => r.stolen).map((r) => r.index),
    disturbedRounds: rounds.filter((r) => r.disturbed).map((r) => r.index),
    rounds,
  };

  const body = tableCells(rows);
  for (const ref of REFERENCES) {
    if (!system.get(ref)) body.push(['GET product', ref, '-', String(GET_CONNECTIONS), system.referenceNotes[ref], ...Array<string>(TABLE_HEADER.length - 5).fill('-')]);
  }
  const missing = postgresMissingRow(postgres, GET_CONNECTIONS);
  if (missing) body.push(missing);
  log();
  log(textTable(TABLE_HEADER, body));
  log();
  log('Goals:');
  for (const line of goalLines(results.goals)) log(`  ${line}`);
  log();
  for (const line of notes(results)) log(line);

  const outDir = o.outDir ?? (o.smoke ? mkdtempSync(join(tmpdir(), 'msvc-bench-smoke-')) : reportDir(o));
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(outDir, 'RESULTS.md'), markdownReport(results, body));
  log(`Wrote ${join(outDir, 'results.json')} and ${join(outDir, 'RESULTS.md')}.`);
}

interface PostgresRoundsSpec {
  o: Options;
  supervisor: Supervisor;
  signal: AbortSignal;
  url: string;
  workDir: string;
  cores: number;
  /** The system on SQLite, stopped first. */
  sqlite: BenchSystem;
  runner: (system: BenchSystem) => Runner;
}

/**
 * The saturation GET rounds, direct and through the gateway, with the services on PostgreSQL. The
 * system on SQLite stops first: on 2 cores its idle processes' timers and garbage collections
 * would land in these rounds' CPU figures.
 */
async function postgresRounds({ o, supervisor, signal, url, workDir, cores, sqlite, runner: makeRunner }: PostgresRoundsSpec): Promise<void> {
  log();
  log(`Restarting the system with the services on PostgreSQL (${serverOf(url)}, schemas ${benchSchemaTag}_*)...`);
  await Promise.all(sqlite.processes.map((p) => p.stop()));
  schemaUrls.add(url);
  const system = await startSystem(supervisor, { workDir, withReferences: false, gatewayEntry: o.gatewayEntry, database: { url, schemaTag: benchSchemaTag } });
  const gatewayUrl = system.get('gateway')!.url;
  const urls: Record<(typeof POSTGRES_TARGETS)[number], string> = {
    direct: `${system.get('products')!.url}/products/1`,
    gateway: `${gatewayUrl}/api/products/1`,
  };
  // The user service on PostgreSQL signs with keys of its own: the first system's token is not valid here.
  const headers: Record<string, string> = o.token ? { authorization: `Bearer ${await demoAdminToken(gatewayUrl)}` } : {};
  const spec = (target: (typeof POSTGRES_TARGETS)[number]): LoadSpec => ({ url: urls[target], connections: GET_CONNECTIONS, durationS: o.durationS, headers });
  const orderBody = await benchOrderBody(system.get('products')!.url);
  const ordersSpec: LoadSpec = {
    url: `${gatewayUrl}/api/orders`, method: 'POST', body: orderBody, headers: { ...headers, 'content-type': 'application/json' },
    connections: WRITE_CONNECTIONS, durationS: o.durationS,
  };
  await preflight(urls.gateway, ordersSpec.url, orderBody, headers);
  const pin = pinning(system, supervisor, cores);
  const modes: Mode[] = pin.available ? ['pinned', 'unpinned'] : ['unpinned'];
  log('Warming up...');
  for (const t of POSTGRES_TARGETS) await closedLoop({ ...spec(t), durationS: o.warmupS }, signal);
  await closedLoop({ ...ordersSpec, durationS: o.warmupS }, signal);
  if (signal.aborted) throw new Error('interrupted');
  const runner = makeRunner(system);
  await saturationRounds({ runner, pin, modes, rounds: o.rounds, scenario: 'get-postgres', targets: POSTGRES_TARGETS, spec });
  pin.apply('unpinned');
  for (let round = 1; round <= o.rounds; round++) {
    await runner.run({ scenario: 'orders-postgres', target: 'gateway', mode: 'unpinned', round, spec: ordersSpec, expectStatus: '201' });
  }
}

interface SaturationRoundsSpec<T extends Target> {
  runner: Runner;
  pin: Pinning;
  modes: readonly Mode[];
  rounds: number;
  scenario: Scenario;
  targets: readonly T[];
  spec: (target: T) => LoadSpec;
}

/** The saturation GET rounds: in each pinning mode, `rounds` passes over the targets in turn. */
async function saturationRounds<T extends Target>({ runner, pin, modes, rounds, scenario, targets, spec }: SaturationRoundsSpec<T>): Promise<void> {
  for (const mode of modes) {
    pin.apply(mode);
    for (let round = 1; round <= rounds; round++) {
      for (const target of targets) await runner.run({ scenario, target, mode, round, spec: spec(target), expectStatus: '200' });
    }
  }
}

/** Where a run's report goes: bench/ with `--record` (the committed one), else bench/tmp/ (ignored). */
function reportDir(o: Options): string {
  return o.record ? join(ROOT, 'bench') : join(ROOT, 'bench', 'tmp');
}

/**
 * The verdict of the last `npm run bench:soak`: the later of the one on record (bench/soak.json)
 * and the one a run without `--record` left in bench/tmp/soak.json.
 */
function latestSoak(): SoakVerdict | undefined {
  let latest: SoakVerdict | undefined;
  for (const dir of [join(ROOT, 'bench'), join(ROOT, 'bench', 'tmp')]) {
    try {
      const raw = JSON.parse(readFileSync(join(dir, 'soak.json'), 'utf8')) as Partial<SoakVerdict>;
      if (typeof raw.pass !== 'boolean' || typeof raw.verdict !== 'string' || typeof raw.finishedAt !== 'string') continue;
      if (!latest || Date.parse(raw.finishedAt) > Date.parse(latest.finishedAt)) latest = { pass: raw.pass, verdict: raw.verdict, finishedAt: raw.finishedAt };
    } catch {
      // none there
    }
  }
  return latest;
}

/** `--profile`: the gateway under `node --cpu-prof` while it proxies GET /api/products/1. */
async function profile(o: Options, supervisor: Supervisor, workDir: string, signal: AbortSignal): Promise<void> {
  const profileDir = join(workDir, 'profile');
  const system = await startSystem(supervisor, {
    workDir, withReferences: false, gatewayEntry: o.gatewayEntry, gatewayNodeFlags: ['--cpu-prof', '--cpu-prof-dir', profileDir],
  });
  const url = `${system.get('gateway')!.url}/api/products/1`;
  log(`Profiling the gateway: ${o.warmupS} s warm-up, then ${o.durationS * 3} s of GET /api/products/1 at c=${GET_CONNECTIONS}...`);
  await closedLoop({ url, connections: GET_CONNECTIONS, durationS: o.warmupS }, signal);
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const load = await closedLoop({ url, connections: GET_CONNECTIONS, durationS: o.durationS * 3 }, signal);
  const toUs = Number(process.hrtime.bigint() / 1000n);
  log(`${Math.round(load.rps)} req/s, p50 ${load.latency.p50Ms.toFixed(2)} ms, p99 ${load.latency.p99Ms.toFixed(2)} ms, errors ${load.errors}, non-2xx ${load.non2xx}`);
  // The profile is written when the gateway exits normally, which a graceful stop is.
  await system.get('gateway')!.stop();
  const file = readdirSync(profileDir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) throw new Error('the gateway wrote no profile (did it exit on its own?)');
  const keep = join(ROOT, 'bench', 'tmp');
  mkdirSync(keep, { recursive: true });
  copyFileSync(join(profileDir, file), join(keep, 'gateway.cpuprofile'));
  const { totalMs, functions, modules } = hotFunctions(join(profileDir, file), ROOT, 15, { fromUs, toUs });
  log(`\nTop ${functions.length} functions by self time while under load (${(totalMs / 1000).toFixed(1)} s of CPU on the main thread, idle left out):`);
  log(textTable(['self %', 'self ms', 'function', 'where'], functions.map((f) => [f.selfPct.toFixed(1), f.selfMs.toFixed(0), f.name, f.where])));
  log('\nSelf time by module:');
  log(textTable(['self %', 'self ms', 'module'], modules.map((m) => [m.selfPct.toFixed(1), m.selfMs.toFixed(0), m.module])));
  log(`\nFull profile: ${join(keep, 'gateway.cpuprofile')} (open it in Chrome DevTools or speedscope).`);
}

async function main(): Promise<void> {
  let options: Options;
  try {
    options = readOptions(process.argv.slice(2), process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`bench: ${err.message}\n`);
    process.exit(2);
  }
  const supervisor = new Supervisor();
  const workDir = mkdtempSync(join(tmpdir(), 'msvc-bench-'));
  const abort = new AbortController();
  let cleaning: Promise<void> | undefined;
  const cleanup = () => (cleaning ??= (async () => {
    abort.abort();
    await supervisor.stopAll();
    rmSync(workDir, { recursive: true, force: true });
    for (const url of schemaUrls) await dropBenchSchemas(url);
  })());
  // Last resort when something exits the process early: nothing may outlive the benchmark.
  process.on('exit', () => {
    supervisor.killAllNow();
    rmSync(workDir, { recursive: true, force: true });
  });
  const interrupt = (signal: NodeJS.Signals) => {
    // The terminal sends Ctrl+C to every process in the group, tsx relays it once more: stop once.
    if (abort.signal.aborted) return;
    process.stderr.write(`\n${signal}: stopping everything the benchmark started...\n`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', interrupt);
  process.on('SIGTERM', interrupt);
  try {
    if (options.soak) {
      await soak({ requests: options.soakRequests, chunks: 20, connections: GET_CONNECTIONS, outDir: options.outDir ?? reportDir(options) }, supervisor, workDir, abort.signal);
    } else {
      await (options.profile ? profile : bench)(options, supervisor, workDir, abort.signal);
    }
  } catch (err) {
    if (abort.signal.aborted) return;
    process.stderr.write(`bench failed: ${(err as Error).message}\n`);
    process.exitCode = 1;
  } finally {
    if (!abort.signal.aborted) await cleanup();
  }
}

/** The run's PostgreSQL schemas (BENCH_DATABASE_URL, BENCH_POSTGRES_URL) go with it. */
async function dropBenchSchemas(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
    for (const service of BENCH_SERVICES) await client.query(`DROP SCHEMA IF EXISTS "${benchSchema(benchSchemaTag, service)}" CASCADE`);
  } catch (err) {
    process.stderr.write(`bench: could not drop the schemas ${benchSchemaTag}_*: ${(err as Error).message}\n`);
  } finally {
    await client.end().catch(() => {});
  }
}

await main();
