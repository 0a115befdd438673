// npm run start:scaled: two gateways and two instances of every service on one machine, all on one
// PostgreSQL database (DATABASE_URL) and one Redis (REDIS_URL). Checks both answer before starting
// anything; prefixes each process's output with its name; restarts a process that dies once all are
// up (as an orchestrator would); Ctrl+C or SIGTERM drains and stops every process and exits 0.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { z } from 'zod';
import { ConfigError, intVar, parseConfig } from '../lib/platform/config.js';
import {
  CONTROLLED_KEYS, DEFAULT_BASE_PORT, LAST_PORT_OFFSET, runDirOf, scaledProcesses, stateFileOf,
  type ScaledProcess, type ScaledState,
} from './scaled-layout.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** How long each reachability check waits. */
const CHECK_TIMEOUT_MS = 3000;
/** The children's own STOP_TIMEOUT_MS is 10 s by default; past this they are killed. */
const STOP_GRACE_MS = 15_000;
const DUPLICATE_SIGNAL_MS = 1000;
/** After the kill at STOP_GRACE_MS, how long processes of theirs may take to be gone. */
const LEFTOVER_WAIT_MS = 2000;

const ScaledConfigSchema = z.object({
  HOST: z.string().min(1).default('127.0.0.1'),
  // First gateway's port; the layout uses it and the next 23 (see scaled-layout.ts).
  SCALED_BASE_PORT: intVar(DEFAULT_BASE_PORT, 1, 65_535 - LAST_PORT_OFFSET),
  // Every process must answer its /health within this time of the start.
  SCALED_START_TIMEOUT_MS: intVar(60_000, 1000, 600_000),
  DATABASE_URL: z.string().regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// or postgresql:// URL').default(DEFAULT_DATABASE_URL),
  REDIS_URL: z.url({ protocol: /^rediss?$/, message: 'must be a redis:// or rediss:// URL' }).default(DEFAULT_REDIS_URL),
  INTERNAL_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
});

const say = (line: string) => process.stdout.write(`${tag('scaled')}${line}\n`);
const fail = (line: string): never => {
  process.stderr.write(`start:scaled: ${line}\n`);
  process.exit(1);
};

let config: z.output<typeof ScaledConfigSchema>;
try {
  config = parseConfig(ScaledConfigSchema);
} catch (err) {
  if (err instanceof ConfigError) fail(`invalid configuration: ${err.message}`);
  throw err;
}

// ---- Before starting anything: PostgreSQL, Redis, and the ports.

/** host:port of a URL, without user or password. */
function whereOf(url: string, defaultPort: number): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || defaultPort}`;
  } catch {
    return 'an unreadable address';
  }
}

function describeNetError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ECONNREFUSED') return 'refused the connection';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'cannot be found (unknown host)';
  if (code === 'ETIMEDOUT' || code === 'TIMEOUT') return `did not answer within ${CHECK_TIMEOUT_MS / 1000} s`;
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'closed the connection';
  return ((err as Error).message || String(err)).split('\n')[0];
}

async function checkPostgres(url: string): Promise<string | undefined> {
  const where = `PostgreSQL at ${whereOf(url, 5432)}:`;
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CHECK_TIMEOUT_MS, query_timeout: CHECK_TIMEOUT_MS });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return undefined;
  } catch (err) {
    const timedOut = /timeout/i.test((err as Error).message);
    return `${where} ${timedOut ? `did not answer within ${CHECK_TIMEOUT_MS / 1000} s` : describeNetError(err)}`;
  } finally {
    await client.end().catch(() => {});
  }
}

/** A RESP array of bulk strings, as redis-cli sends commands. */
const resp = (...args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/** PING over a raw socket (AUTH first when the URL has a password): no Redis client needed. */
async function checkRedis(url: string): Promise<string | undefined> {
  const where = `Redis at ${whereOf(url, 6379)}:`;
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const port = Number(u.port || 6379);
  const commands: string[][] = [];
  if (u.password) commands.push(u.username ? ['AUTH', decodeURIComponent(u.username), decodeURIComponent(u.password)] : ['AUTH', decodeURIComponent(u.password)]);
  commands.push(['PING']);
  const socket: Socket = u.protocol === 'rediss:' ? tlsConnect({ host, port, servername: host }) : netConnect({ host, port });
  socket.setTimeout(CHECK_TIMEOUT_MS);
  try {
    return await new Promise<string | undefined>((resolve) => {
      let buffered = '';
      socket.once(u.protocol === 'rediss:' ? 'secureConnect' : 'connect', () => socket.write(commands.map((c) => resp(...c)).join('')));
      socket.on('data', (chunk: Buffer) => {
        buffered += chunk.toString('latin1');
        if (buffered.length > 4096) return resolve(`${where} answered something that is not Redis`);
        const lines = buffered.split('\r\n');
        for (const line of lines.slice(0, -1)) {
          if (line.startsWith('-')) return resolve(`${where} answered ${JSON.stringify(line.slice(1, 120))}`);
          if (line === '+PONG') return resolve(undefined);
          if (line !== '+OK') return resolve(`${where} answered something that is not Redis`);
        }
      });
      socket.once('timeout', () => resolve(`${where} did not answer within ${CHECK_TIMEOUT_MS / 1000} s`));
      socket.once('error', (err) => resolve(`${where} ${describeNetError(err)}`));
      socket.once('end', () => resolve(`${where} closed the connection`));
    });
  } finally {
    socket.destroy();
  }
}

/** Whether `port` can be bound on `host` right now (bound and released at once). */
function portFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

const [postgresProblem, redisProblem] = await Promise.all([checkPostgres(config.DATABASE_URL), checkRedis(config.REDIS_URL)]);
const problems: string[] = [];
if (postgresProblem) problems.push(`${postgresProblem} (start it, or set DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/DATABASE)`);
if (redisProblem) problems.push(`${redisProblem} (start it, or set REDIS_URL=redis://[:PASSWORD@]HOST:PORT)`);
if (problems.length > 0) fail(`needs PostgreSQL and Redis: ${problems.join('; ')}`);

const runDir = runDirOf(config.SCALED_BASE_PORT);
const processes = scaledProcesses({
  basePort: config.SCALED_BASE_PORT,
  host: config.HOST,
  databaseUrl: config.DATABASE_URL,
  redisUrl: config.REDIS_URL,
  internalToken: config.INTERNAL_TOKEN ?? randomBytes(24).toString('hex'),
  runDir,
});

const taken: string[] = [];
for (const p of processes) if (!(await portFree(p.port, config.HOST))) taken.push(`${p.port} (${p.name})`);
if (taken.length > 0) {
  fail(`port ${taken.join(', ')} already in use: stop what holds it (npm start?), or set SCALED_BASE_PORT (now ${config.SCALED_BASE_PORT}; the processes use it up to ${config.SCALED_BASE_PORT + LAST_PORT_OFFSET})`);
}

// ---- The processes.

const COLORS: Record<string, number> = { gateway: 36, users: 32, products: 33, orders: 35, scaled: 1 };
const width = Math.max(...processes.map((p) => p.name.length));
function tag(name: string): string {
  const label = `[${name.padEnd(width)}] `;
  const color = COLORS[name.replace(/-\d+$/, '')];
  return process.stdout.isTTY && color ? `\x1b[${color}m${label}\x1b[0m` : label;
}

// The inherited environment minus what the layout sets per process; pretty logs as `npm start` has them.
const baseEnv: NodeJS.ProcessEnv = { ...process.env, LOG_PRETTY: process.env.LOG_PRETTY || 'true' };
for (const key of CONTROLLED_KEYS) delete baseEnv[key];

interface Running {
  spec: ScaledProcess;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  startedAt: number;
}

const running = new Map<string, Running>();
let stopping = false;
let allUp = false;

/** Prefixes each line of `stream` with the process's name; a line longer than 64 kB is cut into pieces. */
function relay(stream: NodeJS.ReadableStream, out: NodeJS.WriteStream, prefix: string): void {
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    if (partial.length > 65_536) {
      lines.push(partial);
      partial = '';
    }
    if (lines.length > 0) out.write(lines.map((l) => `${prefix}${l}\n`).join(''));
  });
  stream.on('end', () => {
    if (partial !== '') out.write(`${prefix}${partial}\n`);
    partial = '';
  });
}

function start(spec: ScaledProcess): Running {
  // node --import tsx (not the tsx command): the pid is the server itself, so a kill -9 reaches it.
  const child = spawn(process.execPath, ['--import', 'tsx', spec.entry], {
    cwd: ROOT,
    env: { ...baseEnv, ...spec.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const prefix = tag(spec.name);
  relay(child.stdout, process.stdout, prefix);
  relay(child.stderr, process.stderr, prefix);
  const exited = once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
  child.on('error', (err) => say(`${spec.name}: ${err.message}`));
  const entry: Running = { spec, child, exited, startedAt: Date.now() };
  running.set(spec.name, entry);
  void exited.then((how) => onExit(entry, how));
  return entry;
}

function describeExit({ code, signal }: { code: number | null; signal: NodeJS.Signals | null }): string {
  return signal ? `was killed (${signal})` : `exited with code ${code}`;
}

/** Consecutive quick deaths per process, for the restart delay. */
const quickDeaths = new Map<string, number>();
const restartTimers = new Set<NodeJS.Timeout>();

function onExit(entry: Running, how: { code: number | null; signal: NodeJS.Signals | null }): void {
  if (running.get(entry.spec.name) === entry) running.delete(entry.spec.name);
  if (stopping) return;
  if (!allUp) {
    say(`${entry.spec.name} ${describeExit(how)} while starting; stopping the others`);
    void stopAll(1);
    return;
  }
  const deaths = Date.now() - entry.startedAt < 30_000 ? (quickDeaths.get(entry.spec.name) ?? 0) + 1 : 1;
  quickDeaths.set(entry.spec.name, deaths);
  const delayMs = Math.min(30_000, 1000 * 2 ** (deaths - 1));
  say(`${entry.spec.name} ${describeExit(how)}; starting it again in ${delayMs / 1000} s`);
  writeState();
  const timer = setTimeout(() => {
    restartTimers.delete(timer);
    if (stopping) return;
    start(entry.spec);
    writeState();
  }, delayMs);
  restartTimers.add(timer);
}

const stateFile = stateFileOf(config.SCALED_BASE_PORT);
function writeState(): void {
  const state: ScaledState = {
    pid: process.pid,
    processes: processes.map((p) => ({ name: p.name, service: p.service, port: p.port, url: p.url, pid: running.get(p.name)?.child.pid ?? null })),
  };
  // Written aside and renamed, so a reader never sees half a file.
  writeFileSync(`${stateFile}.tmp`, `${JSON.stringify(state, null, 2)}\n`);
  renameSync(`${stateFile}.tmp`, stateFile);
}

function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(`${url}/health`, { timeout: 1000, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(false));
    req.end();
  });
}

// ---- What our processes started themselves.
// A process run under tsx has a process of its own (esbuild's service), which exits only once it
// sees its parent gone: it outlives the child we waited for by milliseconds (far more on a busy
// machine), orphaned, in our process group. We exit only after those too.

interface ProcessRow {
  pid: number;
  ppid: number;
  pgid: number;
}

/** Every process's pid, parent and group (from /proc on Linux, else ps); undefined if neither can tell. */
function processTable(): ProcessRow[] | undefined {
  if (existsSync('/proc/self/stat')) {
    const rows: ProcessRow[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      } catch {
        continue; // gone meanwhile
      }
      // "pid (comm) state ppid pgrp ...", and comm may hold spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      rows.push({ pid: Number(name), ppid: Number(fields[1]), pgid: Number(fields[2]) });
    }
    return rows;
  }
  const ps = spawnSync('ps', ['-A', '-o', 'pid=,ppid=,pgid='], { encoding: 'utf8', timeout: CHECK_TIMEOUT_MS });
  if (ps.status !== 0 || typeof ps.stdout !== 'string') return undefined;
  return ps.stdout.split('\n')
    .map((line) => line.trim().split(/\s+/).map(Number))
    .filter((f) => f.length === 3 && f.every(Number.isInteger) && f[0] !== ps.pid)
    .map(([pid, ppid, pgid]) => ({ pid, ppid, pgid }));
}

/**
 * The processes our children started, directly or not, that may outlive them: the descendants of
 * `alive` (our children still running), and the orphans of our process group (parent gone, so
 * adopted by init), which a child that already exited left behind.
 */
function grandchildren(alive: number[]): Set<number> {
  const found = new Set<number>();
  const table = processTable();
  const self = table?.find((r) => r.pid === process.pid);
  if (!table || !self) return found;
  const ancestors = new Set(alive);
  for (let grew = true; grew;) {
    grew = false;
    for (const r of table) {
      if (ancestors.has(r.ppid) && !ancestors.has(r.pid)) {
        ancestors.add(r.pid);
        found.add(r.pid);
        grew = true;
      }
    }
  }
  for (const r of table) if (r.pgid === self.pgid && r.ppid === 1 && r.pid !== process.pid) found.add(r.pid);
  return found;
}

/** Whether `pid` is still there (a zombie not yet reaped by init counts, as it does for kill -0). */
function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let stopPromise: Promise<never> | undefined;
function stopAll(exitCode: 0 | 1): Promise<never> {
  stopPromise ??= (async () => {
    stopping = true;
    const startedAt = Date.now();
    for (const timer of restartTimers) clearTimeout(timer);
    const entries = [...running.values()];
    const alive = entries.map((e) => e.child).filter((child) => child.exitCode === null && child.signalCode === null);
    // Found before our children exit: theirs are then adopted by init and no longer theirs.
    const theirs = grandchildren(alive.flatMap((child) => (child.pid === undefined ? [] : [child.pid])));
    for (const child of alive) child.kill('SIGTERM');
    const killer = setTimeout(() => {
      say(`still running after ${STOP_GRACE_MS / 1000} s: killing ${[...running.keys()].join(', ') || `${[...theirs].filter(exists).length} processes they started`}`);
      for (const { child } of running.values()) child.kill('SIGKILL');
      for (const pid of theirs) if (exists(pid)) process.kill(pid, 'SIGKILL');
    }, STOP_GRACE_MS);
    const results = await Promise.all(entries.map(async (e) => ({ name: e.spec.name, how: await e.exited })));
    // Those a child started after the first look (it was still loading) are orphans by now.
    for (const pid of grandchildren([])) theirs.add(pid);
    // Every process we started, and every one they started, is gone before we are.
    while ([...theirs].some(exists) && Date.now() < startedAt + STOP_GRACE_MS + LEFTOVER_WAIT_MS) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    clearTimeout(killer);
    // A process stopped by our SIGTERM before it had its handlers (still loading) stopped cleanly too.
    const unclean = results.filter(({ how }) => how.code !== 0 && how.signal !== 'SIGTERM');
    for (const { name, how } of unclean) if (exitCode === 0) say(`${name} ${describeExit(how)} while stopping`);
    rmSync(runDir, { recursive: true, force: true });
    const code = exitCode === 0 && unclean.length === 0 ? 0 : 1;
    if (code === 0) say('stopped');
    process.exit(code);
  })();
  return stopPromise;
}

let firstSignalAt = 0;
const onSignal = (signal: NodeJS.Signals) => {
  if (firstSignalAt === 0) {
    firstSignalAt = Date.now();
    say(`${signal}: stopping every process (they finish what they are answering)`);
    void stopAll(0);
    return;
  }
  // Ctrl+C reaches us from the terminal and again relayed by tsx; only a later one means "now".
  if (Date.now() - firstSignalAt < DUPLICATE_SIGNAL_MS) return;
  say(`${signal} again: killing every process`);
  for (const { child } of running.values()) child.kill('SIGKILL');
  process.exit(1);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
// Should this process die of a bug, its children must not outlive it.
process.on('exit', () => {
  for (const { child } of running.values()) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
});

rmSync(runDir, { recursive: true, force: true });
mkdirSync(runDir, { recursive: true });
say(`starting ${processes.length} processes on PostgreSQL ${whereOf(config.DATABASE_URL, 5432)} and Redis ${whereOf(config.REDIS_URL, 6379)}`);
for (const spec of processes) start(spec);

const deadline = Date.now() + config.SCALED_START_TIMEOUT_MS;
const waiting = new Set(processes.map((p) => p.name));
while (waiting.size > 0 && !stopping) {
  if (Date.now() > deadline) {
    say(`${[...waiting].join(', ')} did not answer /health within ${config.SCALED_START_TIMEOUT_MS / 1000} s (SCALED_START_TIMEOUT_MS); stopping everything`);
    await stopAll(1);
  }
  await Promise.all(processes.filter((p) => waiting.has(p.name)).map(async (p) => {
    if (await healthy(p.url)) waiting.delete(p.name);
  }));
  if (waiting.size > 0) await new Promise((resolve) => setTimeout(resolve, 200));
}
if (!stopping) {
  allUp = true;
  writeState();
  const gateways = processes.filter((p) => p.service === 'gateway').map((p) => p.url);
  say(`all ${processes.length} up: gateways ${gateways.join(' and ')}; ${processes.filter((p) => p.service !== 'gateway').map((p) => `${p.name} :${p.port}`).join(', ')}`);
  say(`state (pids) in ${stateFile}; npm run scaled:check runs the acceptance checks; Ctrl+C stops everything`);
}
