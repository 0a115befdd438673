// Starts what the benchmark measures as a user would run it: the four processes from their entry
// files, the gateway again with one feature off at a time, the bare proxy, and nginx and HAProxy
// where they are installed, each on a free port, all stopped at the end.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { OrderConfigSchema } from '../lib/orders/config.js';
import { ProductConfigSchema } from '../lib/products/config.js';
import { UserConfigSchema } from '../lib/users/config.js';
import { childPids, listeningPorts } from './proc.js';
import { z } from 'zod';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The ports a user's own running system listens on: never touched by the benchmark. */
const USER_PORTS = new Set([3010, 3011, 3012, 3013]);
const TAIL_BYTES = 16 * 1024;
const READY_TIMEOUT_MS = 40_000;
const STOP_TIMEOUT_MS = 5_000;

// Every variable any of the four processes reads, from their config schemas: a user's shell may
// export some of them; the benchmark runs defaults.
const CONFIG_KEYS = [...new Set([GatewayConfigSchema, UserConfigSchema, ProductConfigSchema, OrderConfigSchema].flatMap((s) => Object.keys(objectOf(s).shape)))];

/** The object schema under a schema's refinements and transforms. */
function objectOf(schema: z.ZodType): z.ZodObject {
  if (schema instanceof z.ZodObject) return schema;
  if (schema instanceof z.ZodPipe) return objectOf(schema.in as z.ZodType);
  throw new Error('a config schema is an object, possibly refined or transformed');
}

/** The gateway again with one feature off, for what that feature costs: its variables. */
const FEATURE_OFF = {
  untraced: { OTEL_SDK_DISABLED: 'true' },
  nometrics: { REQUEST_METRICS_DISABLED: 'true' },
  nolimit: { RATE_LIMIT_DISABLED: 'true' },
} as const;
type FeatureOff = keyof typeof FEATURE_OFF;
/** The proxies measured beside the gateway as the reference, where installed. */
export type Reference = 'nginx' | 'haproxy';
export type ProcessName = 'gateway' | FeatureOff | 'users' | 'products' | 'orders' | 'bare' | Reference;

export interface BenchProcess {
  name: ProcessName;
  /** Base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** Every pid whose CPU time is this process's (nginx: master and worker). */
  pids: number[];
  /** The pid whose memory is reported. */
  mainPid: number;
  /** Last lines it printed, for error messages. */
  output: () => string;
  alive: () => boolean;
  stop: () => Promise<void>;
}

/**
 * A free loopback port for nginx, which cannot be told to let the OS choose. Another process may
 * take it before nginx binds it: startNginx then tries again with another.
 */
async function freePort(): Promise<number> {
  for (;;) {
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as { port: number };
    await new Promise((resolve) => server.close(resolve));
    if (!USER_PORTS.has(port)) return port;
  }
}

/** The port a process started with PORT=0 listens on, once it does; fails early if it exits. */
async function boundPort(name: string, spawned: Spawned): Promise<number> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!isAlive(spawned.child)) {
      const code = await spawned.exited;
      throw new Error(`${name} exited (${code}) before it listened:\n${spawned.output().slice(-4000)}`);
    }
    const [port] = listeningPorts(spawned.child.pid!);
    if (port !== undefined) return port;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${name} did not listen within ${READY_TIMEOUT_MS / 1000} s:\n${spawned.output().slice(-4000)}`);
}

interface Spawned {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | string>;
}

function hasTail(): boolean {
  return spawnSync('tail', ['-c', '1'], { input: 'x', stdio: ['pipe', 'ignore', 'ignore'] }).status === 0;
}

function isAlive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null && child.pid !== undefined;
}

async function stopChild(spawned: Spawned, signal: NodeJS.Signals): Promise<void> {
  const { child, exited } = spawned;
  if (!isAlive(child)) return;
  child.kill(signal);
  const timer = new Promise<'timeout'>((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS, 'timeout').unref());
  if ((await Promise.race([exited, timer])) === 'timeout' && isAlive(child)) {
    child.kill('SIGKILL');
    await exited;
  }
}

/**
 * Owns every child process the benchmark starts, from the moment it is spawned, so that an
 * interrupt during start-up stops the half-started ones too.
 */
export class Supervisor {
  private readonly children = new Set<Spawned>();
  /** The `tail` processes that drain the children's output, for pinning them with the system. */
  readonly drainPids = new Set<number>();
  private readonly useTail = hasTail();

  /**
   * Runs a command with stdout and stderr drained into a short tail. Request logs at info go
   * through a pipe, so they cost the process what they cost in production without filling a disk;
   * the pipe is read by a `tail -c` process of its own, not by this one, which is the load
   * generator: reading a few MB/s of other processes' logs here would slow it and blur the
   * latencies it measures, more so in the rounds through the gateway (two processes logging).
   */
  spawn(command: string, args: string[], env: NodeJS.ProcessEnv): Spawned {
    let tail = '';
    const keep = (chunk: Buffer) => {
      tail = (tail + chunk.toString('utf8')).slice(-TAIL_BYTES);
    };
    let child: ChildProcess;
    let drained: Promise<unknown> = Promise.resolve();
    if (this.useTail) {
      const drain = spawn('tail', ['-c', String(TAIL_BYTES)], { stdio: ['pipe', 'pipe', 'ignore'] });
      const drainPid = drain.pid;
      if (drainPid !== undefined) this.drainPids.add(drainPid);
      drain.stdout.on('data', keep);
      // tail prints when its input closes, that is when the child and every copy of the pipe's
      // write end are gone.
      drained = new Promise((resolve) => drain.once('close', () => {
        if (drainPid !== undefined) this.drainPids.delete(drainPid);
        resolve(undefined);
      }));
      child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', drain.stdin, drain.stdin] });
      drain.stdin.destroy();
    } else {
      child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout!.on('data', keep);
      child.stderr!.on('data', keep);
    }
    const exited = new Promise<number | string>((resolve) => {
      child.once('exit', (code, signal) => void drained.then(() => resolve(code ?? signal ?? 'unknown')));
      child.once('error', (err) => {
        keep(Buffer.from(`\n${err.message}\n`));
        resolve('spawn error');
      });
    });
    const spawned = { child, output: () => tail, exited };
    this.children.add(spawned);
    void exited.then(() => this.children.delete(spawned));
    return spawned;
  }

  /** SIGTERM to all (a graceful stop), SIGKILL to any still there after a few seconds. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.children].map((c) => stopChild(c, 'SIGTERM')));
  }

  /** For `process.on('exit')`, where nothing can be awaited. */
  killAllNow(): void {
    for (const { child } of this.children) if (isAlive(child)) child.kill('SIGKILL');
  }
}

/** Polls `url` until it answers 200; fails early if the process exits. */
async function waitUntilReady(name: string, url: string, spawned: Spawned): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (!isAlive(spawned.child)) {
      const code = await spawned.exited;
      throw new Error(`${name} exited (${code}) before it was ready:\n${spawned.output().slice(-4000)}`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      last = `status ${res.status}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  // Its output is read once it has gone.
  await stopChild(spawned, 'SIGKILL');
  throw new Error(`${name} was not ready within ${READY_TIMEOUT_MS / 1000} s (${url}: ${last}):\n${spawned.output().slice(-4000)}`);
}

function benchProcess(name: ProcessName, url: string, spawned: Spawned, pids: number[]): BenchProcess {
  return {
    name,
    url,
    pids,
    mainPid: pids[pids.length - 1],
    output: spawned.output,
    alive: () => isAlive(spawned.child),
    stop: () => stopChild(spawned, 'SIGTERM'),
  };
}

/** Where `npm run build` puts the production build, which the image runs (`node dist/gateway.js`). */
const DIST = join(ROOT, 'dist');
/** What the production build is made from (tsconfig.build.json's files and scripts/build.ts's assets). */
const BUILD_INPUTS = ['gateway.ts', 'user-service.ts', 'product-service.ts', 'order-service.ts', 'lib', 'package.json', 'tsconfig.json', 'tsconfig.build.json'];
const BUILT_ENTRIES = ['gateway', 'user-service', 'product-service', 'order-service'].map((e) => join(DIST, `${e}.js`));

function newestMtimeMs(path: string): number {
  const stat = statSync(path, { throwIfNoEntry: false });
  if (!stat) return 0;
  if (!stat.isDirectory()) return stat.mtimeMs;
  return Math.max(stat.mtimeMs, ...readdirSync(path).map((name) => newestMtimeMs(join(path, name))));
}

let built = false;
/**
 * Brings dist/ up to date with `npm run build` unless every built entry is newer than every
 * source: the processes are measured as the image runs them, plain JavaScript with no module
 * hooks (tsx alone costs a process tens of MB of memory and CPU at every module load).
 */
function ensureProductionBuild(): void {
  if (built) return;
  built = true;
  const oldestOutput = Math.min(...BUILT_ENTRIES.map((e) => statSync(e, { throwIfNoEntry: false })?.mtimeMs ?? 0));
  if (oldestOutput > Math.max(...BUILD_INPUTS.map((i) => newestMtimeMs(join(ROOT, i))))) return;
  process.stderr.write('Building dist/ (npm run build): the benchmark runs the production build.\n');
  // Its output goes to stderr: stdout is the report.
  execFileSync(process.execPath, ['--import', 'tsx', join(ROOT, 'scripts/build.ts')], { cwd: ROOT, stdio: ['ignore', 2, 2] });
}

/**
 * How node runs `entry` (a .ts file relative to the repository's root): its production build in
 * dist/ when it is one of the build's files, else (the bare proxy, another gateway of
 * BENCH_GATEWAY_ENTRY outside lib/) through tsx, as `npm run start:*` would.
 */
function entryArgs(entry: string): string[] {
  const built = join(DIST, entry.replace(/\.ts$/, '.js'));
  return BUILT_ENTRIES.includes(built) || (entry.startsWith('lib/') && existsSync(built)) ? [built] : ['--import', 'tsx', entry];
}

/**
 * The node flags the image gives every process (NODE_OPTIONS in deploy/Dockerfile): the benchmark
 * measures the processes as they run there. Source maps cost the gateway about 8 MB of RSS.
 */
const PRODUCTION_NODE_OPTIONS = ['--enable-source-maps'];

/** `node <entry>` from the production build (see entryArgs), with the image's node flags. */
async function startNodeEntry(
  supervisor: Supervisor, name: ProcessName, entry: string, env: Record<string, string>, readyPath: string, nodeFlags: string[] = [],
): Promise<BenchProcess> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const key of CONFIG_KEYS) delete childEnv[key];
  // The OS chooses the port; the process is found listening on it through /proc.
  Object.assign(childEnv, { LOG_LEVEL: 'info', LOG_PRETTY: 'false', PORT: '0' }, env);
  const spawned = supervisor.spawn(process.execPath, [...PRODUCTION_NODE_OPTIONS, ...nodeFlags, ...entryArgs(entry)], childEnv);
  let url: string;
  try {
    url = `http://127.0.0.1:${await boundPort(name, spawned)}`;
    await waitUntilReady(name, url + readyPath, spawned);
  } catch (err) {
    await stopChild(spawned, 'SIGKILL');
    throw err;
  }
  return benchProcess(name, url, spawned, [spawned.child.pid!]);
}

export interface SystemOptions {
  /** Folder for the services' databases and nginx's and HAProxy's files; the caller removes it. */
  workDir: string;
  /** Start nginx and HAProxy in front of the product service, each where it is installed. */
  withReferences: boolean;
  /** Extra node flags for the gateway, e.g. `--cpu-prof`. */
  gatewayNodeFlags?: string[];
  /** The gateway's entry file; another one measures an alternative behind the same routes. */
  gatewayEntry?: string;
  /** Also start the gateway once with each feature of FEATURE_OFF off. */
  withFeaturesOff?: boolean;
  /** The services keep their data in PostgreSQL here, each in its own schema named `<schemaTag>_<service>`. */
  database?: { url: string; schemaTag: string };
}

export interface BenchSystem {
  processes: BenchProcess[];
  get: (name: ProcessName) => BenchProcess | undefined;
  /** nginx's and HAProxy's versions, or why each is not in the run. */
  referenceNotes: Record<Reference, string>;
}

/**
 * Starts the three services, the gateway (and, when asked, its feature-off copies), the bare proxy
 * and (when asked and installed) nginx and HAProxy. The supervisor owns them all from the moment
 * each is spawned.
 */
export async function startSystem(supervisor: Supervisor, { workDir, withReferences, gatewayNodeFlags = [], gatewayEntry = 'gateway.ts', withFeaturesOff = false, database }: SystemOptions): Promise<BenchSystem> {
  ensureProductionBuild();
  const dataDir = join(workDir, 'data');
  const storage = (service: string): Record<string, string> =>
    database ? { DATA_DIR: dataDir, DATABASE_URL: database.url, DATABASE_SCHEMA: benchSchema(database.schemaTag, service) } : { DATA_DIR: dataDir };
  // Each process learns the others' URLs from its environment: the services it calls start first.
  const services = await Promise.all([
    startNodeEntry(supervisor, 'users', 'user-service.ts', storage('users'), '/health'),
    startNodeEntry(supervisor, 'products', 'product-service.ts', storage('products'), '/health'),
  ]);
  const [usersUrl, productsUrl] = services.map((p) => p.url) as [string, string];
  const orders = await startNodeEntry(supervisor, 'orders', 'order-service.ts', { ...storage('orders'), USERS_URL: usersUrl, PRODUCTS_URL: productsUrl }, '/health');
  const gatewayEnv = {
    USERS_URL: usersUrl,
    PRODUCTS_URL: productsUrl,
    ORDERS_URL: orders.url,
    // Counted on every request like in production; a million per minute never refuses the load
    // generator (the gateway's saturation is a few thousand per second).
    RATE_LIMIT: '1000000',
    // The load generator is one client address whose 200 connections (the connection sweep)
    // stand for many clients: the per-client cap on requests at once must not refuse it.
    MAX_CLIENT_IN_FLIGHT: '1000',
  };
  const processes = [...services, orders, ...await Promise.all([
    startNodeEntry(supervisor, 'gateway', gatewayEntry, gatewayEnv, '/health', gatewayNodeFlags),
    // The same gateway with one feature off each, so one run measures what each feature costs.
    ...(withFeaturesOff ? Object.entries(FEATURE_OFF).map(([name, off]) => startNodeEntry(supervisor, name as FeatureOff, gatewayEntry, { ...gatewayEnv, ...off }, '/health')) : []),
    // Its readiness check goes through to the product service, which is up by now.
    startNodeEntry(supervisor, 'bare', 'bench/bare-proxy.ts', { PRODUCTS_URL: productsUrl }, '/api/products/1'),
  ])];
  const referenceNotes: Record<Reference, string> = { nginx: 'not requested', haproxy: 'not requested' };
  if (withReferences) {
    const productsPort = Number(new URL(productsUrl).port);
    for (const name of ['nginx', 'haproxy'] as const) {
      const binary = findReference(name);
      if (!binary) {
        referenceNotes[name] = 'not installed';
        continue;
      }
      processes.push(await startReference(supervisor, name, binary, join(workDir, name), productsPort));
      referenceNotes[name] = referenceVersion(name, binary);
    }
  }
  return { processes, get: (name) => processes.find((p) => p.name === name), referenceNotes };
}

export const BENCH_SERVICES = ['users', 'products', 'orders'] as const;
export const benchSchema = (tag: string, service: string) => `${tag}_${service}`;

const REFERENCE_DIRS = ['/usr/sbin', '/usr/local/sbin', '/usr/local/bin', '/opt/homebrew/bin', '/opt/homebrew/sbin'];

/** nginx's or HAProxy's binary, from PATH or where packages put it (often not on a non-root PATH). */
export function findReference(name: Reference): string | undefined {
  try {
    execFileSync(name, ['-v'], { stdio: 'ignore' });
    return name;
  } catch {
    return [...REFERENCE_DIRS, ...(name === 'nginx' ? ['/usr/local/nginx/sbin'] : [])].map((d) => join(d, name)).find((p) => existsSync(p));
  }
}

/** "nginx/1.22.1", "HAProxy 2.6.12": what `-v` prints (nginx on stderr), shortened. */
function referenceVersion(name: Reference, binary: string): string {
  const { stdout, stderr } = spawnSync(binary, ['-v'], { encoding: 'utf8' });
  const text = `${stdout ?? ''}${stderr ?? ''}`.trim().split('\n')[0] ?? '';
  const version = name === 'nginx' ? text.replace(/^nginx version:\s*/, '') : text.replace(/^HAProxy version (\S+).*$/, 'HAProxy $1');
  return version || name;
}

/**
 * nginx as a user would put it in front of the product service: one worker (one Node process is
 * what it is compared with), upstream keep-alive, no access log. Every path it writes is under
 * `dir`, so it needs no root and leaves nothing behind.
 */
function nginxConfig(dir: string, listenPort: number, productsPort: number): string {
  return `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  upstream products {
    server 127.0.0.1:${productsPort};
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${listenPort};
    location /api/products/ {
      proxy_pass http://products/products/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
}

/**
 * HAProxy as a user would put it in front of the product service: one thread (as nginx has one
 * worker and the gateway one Node process), keep-alive on both sides with idle upstream
 * connections reused by any client, no log. `-db` keeps it in the foreground, one process.
 */
function haproxyConfig(listenPort: number, productsPort: number): string {
  return `global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 65s
  timeout server 65s
  timeout http-keep-alive 65s
frontend front
  bind 127.0.0.1:${listenPort}
  default_backend products
backend products
  http-request replace-path ^/api/products/(.*) /products/\\1
  server products 127.0.0.1:${productsPort}
`;
}

async function startReference(supervisor: Supervisor, name: Reference, binary: string, dir: string, productsPort: number, attempts = 3): Promise<BenchProcess> {
  try {
    return await startReferenceOn(supervisor, name, binary, dir, await freePort(), productsPort);
  } catch (err) {
    // Most likely its port was taken between choosing and binding it.
    if (attempts <= 1) throw err;
    return startReference(supervisor, name, binary, dir, productsPort, attempts - 1);
  }
}

async function startReferenceOn(supervisor: Supervisor, name: Reference, binary: string, dir: string, port: number, productsPort: number): Promise<BenchProcess> {
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, `${name}.conf`);
  writeFileSync(conf, name === 'nginx' ? nginxConfig(dir, port, productsPort) : haproxyConfig(port, productsPort));
  // nginx -e: the error log before the config is read, else nginx tries /var/log/nginx first.
  const args = name === 'nginx' ? ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf] : ['-db', '-f', conf];
  const spawned = supervisor.spawn(binary, args, process.env);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntilReady(name, `${url}/api/products/1`, spawned);
  } catch (err) {
    await stopChild(spawned, 'SIGKILL');
    throw err;
  }
  const main = spawned.child.pid!;
  // nginx's worker does the work; the master is listed first so that mainPid is the worker.
  return benchProcess(name, url, spawned, [main, ...childPids(main)]);
}
