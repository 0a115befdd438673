// npm run load -- [--rate 50] [--duration 60] [--clients N] [--target http://localhost:3010]
// Demo traffic through the gateway, the way people use the shop: browse and search products, look
// at a user's full profile, place an order (with an Idempotency-Key) and cancel it. Built on undici
// (one keep-alive connection per simulated client, a fixed overall rate); one status line a second,
// a summary at the end; Ctrl+C stops it cleanly. The target may also come from LOAD_TARGET.
//
// Real traffic comes from many clients, and the gateway limits each client address (RATE_LIMIT,
// 100 a minute by default). Against a loopback target every simulated client connects from an
// address of its own (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127.0.0.0/8 to loopback), so
// a plain `npm start` lets the load through. Where those addresses cannot be bound (macOS without
// lo0 aliases) or the target is elsewhere, all clients share one address and the gateway needs a
// higher RATE_LIMIT.
import { randomUUID } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { createServer, isIPv4 } from 'node:net';
import { parseArgs } from 'node:util';
import { Client } from 'undici';
import { LatencyHistogram } from './histogram.js';

// The gateway's default limit (RATE_LIMIT per RATE_WINDOW_MS); clients are sized to send at most
// half of it, so a slow start or a sliding window's overlap does not push one over.
const DEFAULT_LIMIT_PER_MINUTE = 100;
const HEADROOM = 2;
// 127.0.0.2 .. 127.0.0.251: one keep-alive connection each.
const MAX_CLIENTS = 250;
const REQUEST_TIMEOUT_MS = 10_000;
// After Ctrl+C or the end of the run, answers still on their way get this long.
const DRAIN_MS = 3_000;

const { values: args } = parseArgs({
  options: {
    rate: { type: 'string', default: '50' },
    duration: { type: 'string', default: '60' },
    clients: { type: 'string' },
    target: { type: 'string', default: process.env.LOAD_TARGET ?? 'http://localhost:3010' },
    help: { type: 'boolean', default: false },
  },
});

const usage = `usage: npm run load -- [--rate 50 (requests/s)] [--duration 60 (s; 0 = until Ctrl+C)] [--clients N (default rate x 60 / ${DEFAULT_LIMIT_PER_MINUTE} x ${HEADROOM}, at most ${MAX_CLIENTS})] [--target http://localhost:3010]`;
if (args.help) {
  console.log(usage);
  process.exit(0);
}
const wholeNumber = (name: string, value: string, min: number, max = Number.MAX_SAFE_INTEGER): number => {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) {
    console.error(`--${name} must be a whole number from ${min} to ${max} (got ${JSON.stringify(value)})\n${usage}`);
    process.exit(2);
  }
  return n;
};
const rate = wholeNumber('rate', args.rate, 1, 100_000);
const duration = wholeNumber('duration', args.duration, 0);
const wantedClients = args.clients === undefined
  ? Math.min(MAX_CLIENTS, Math.max(1, Math.ceil((rate * 60 * HEADROOM) / DEFAULT_LIMIT_PER_MINUTE)))
  : wholeNumber('clients', args.clients, 1, MAX_CLIENTS);
let target: URL;
try {
  target = new URL(args.target);
  if (target.protocol !== 'http:') throw new Error('not http');
} catch {
  console.error(`--target must be an http:// URL (got ${JSON.stringify(args.target)})`);
  process.exit(2);
}
const base = target.origin;
const port = Number(target.port || 80);

/** The addresses the target's host name stands for, IPv4 loopback first (the one that has room for source addresses). */
async function addressesOf(hostname: string): Promise<string[]> {
  const host = hostname.replace(/^\[(.*)\]$/, '$1');
  const found = (await lookup(host, { all: true })).map((a) => a.address);
  return [...found.filter(isLoopbackV4), ...found.filter((a) => !isLoopbackV4(a))];
}
function isLoopbackV4(address: string): boolean {
  return isIPv4(address) && address.startsWith('127.');
}
const originOf = (address: string): string => `http://${address.includes(':') ? `[${address}]` : address}:${port}`;

/** Whether this machine lets a socket use `address` as its own (checked with a listener that is closed at once). */
function canBind(address: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(0, address, () => server.close(() => resolve(true)));
  });
}

interface Listed {
  data: { id: number; stock?: number; name?: string }[];
}

/** Ids of the rows the traffic uses: the seeded users and the products with stock to spare. */
async function discover(origin: string): Promise<{ users: number[]; products: number[]; words: string[] }> {
  const client = new Client(origin, { connectTimeout: 5000, headersTimeout: 5000, bodyTimeout: 5000 });
  try {
    const get = async (path: string): Promise<Listed> => {
      const res = await client.request({ method: 'GET', path });
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw new Error(`GET ${path} answered ${res.statusCode}`);
      }
      return (await res.body.json()) as Listed;
    };
    const [users, products] = await Promise.all([get('/api/users?limit=100'), get('/api/products?limit=100')]);
    const stocked = products.data.filter((p) => (p.stock ?? 0) >= 20).map((p) => p.id);
    const words = products.data.flatMap((p) => (p.name ?? '').toLowerCase().split(/\W+/)).filter((w) => w.length > 3);
    if (users.data.length === 0 || stocked.length === 0) throw new Error('no users, or no product with 20 in stock: start the services with SEED_DATA=true (the default)');
    return { users: users.data.map((u) => u.id), products: stocked, words: words.length ? words : ['lamp'] };
  } finally {
    await client.close();
  }
}

// The first address of the target that answers is the one the load goes to.
let origin = '';
let rows: Awaited<ReturnType<typeof discover>> | undefined;
let lastError: unknown;
try {
  for (const address of await addressesOf(target.hostname)) {
    try {
      rows = await discover(originOf(address));
      origin = originOf(address);
      break;
    } catch (err) {
      lastError = err;
    }
  }
} catch (err) {
  lastError = err;
}
if (!rows) {
  console.error(`cannot reach the shop at ${base}: ${lastError instanceof Error ? lastError.message : String(lastError)}`);
  process.exit(1);
}
const shop = rows;
const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)];

// Source addresses: one per simulated client on a loopback target where they can be bound.
const sourceAddress = (i: number): string => `127.0.0.${2 + i}`;
const targetAddress = new URL(origin).hostname;
// Where they cannot, the clients keep a connection each but share this machine's address.
let sources: (string | undefined)[] = Array.from({ length: wantedClients }, () => undefined);
let note = '';
if (!isLoopbackV4(targetAddress)) {
  note = `${base} is not an IPv4 loopback address, so every request comes from one client address: start that gateway with a higher RATE_LIMIT (e.g. RATE_LIMIT=100000) or most answers will be 429`;
} else if (!(await canBind(sourceAddress(0))) || !(await canBind(sourceAddress(wantedClients - 1)))) {
  note = `cannot bind ${sourceAddress(0)} here (on macOS: sudo ifconfig lo0 alias 127.0.0.2 up, and so on), so every request comes from one client address: start the gateway with a higher RATE_LIMIT (e.g. RATE_LIMIT=100000 npm start) or most answers will be 429`;
} else {
  sources = Array.from({ length: wantedClients }, (_, i) => sourceAddress(i));
  const perMinute = (rate * 60) / wantedClients;
  if (perMinute > DEFAULT_LIMIT_PER_MINUTE * 0.9) {
    note = `each of the ${wantedClients} clients sends about ${Math.round(perMinute)} requests a minute, near or over the gateway's default limit (${DEFAULT_LIMIT_PER_MINUTE}): start it with a higher RATE_LIMIT`;
  }
}

const from = sources[0] === undefined
  ? `${sources.length} connection${sources.length === 1 ? '' : 's'} from one client address`
  : sources.length > 1 ? `${sources.length} clients (${sources[0]} to ${sources.at(-1)})` : `one client (${sources[0]})`;

interface Step {
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  headers?: Record<string, string>;
  body?: string;
  /** A placed order whose id the next steps use. */
  placesOrder?: boolean;
}

// One pass of a client's session: mostly reads, one order placed, looked at and cancelled (giving
// its stock back). Without an order (the place failed), the later steps browse instead.
const session: ((orderId: number | undefined) => Step)[] = [
  () => ({ method: 'GET', path: '/api/products?page=1&limit=10' }),
  () => ({ method: 'GET', path: `/api/products/${pick(shop.products)}` }),
  () => ({ method: 'GET', path: `/api/products?search=${encodeURIComponent(pick(shop.words))}` }),
  () => ({ method: 'GET', path: `/api/users/${pick(shop.users)}` }),
  () => ({ method: 'GET', path: `/api/users/${pick(shop.users)}/full` }),
  () => ({ method: 'GET', path: '/api/products?category=electronics' }),
  () => ({
    method: 'POST',
    path: '/api/orders',
    headers: { 'content-type': 'application/json', 'idempotency-key': randomUUID() },
    body: JSON.stringify({ userId: pick(shop.users), items: [{ productId: pick(shop.products), quantity: 1 }] }),
    placesOrder: true,
  }),
  (orderId) => ({ method: 'GET', path: orderId ? `/api/orders/${orderId}` : '/api/products' }),
  (orderId) => (orderId ? { method: 'DELETE', path: `/api/orders/${orderId}` } : { method: 'GET', path: '/api/products' }),
];

/** A simulated client: one source address, one connection, one request at a time, its own session. */
interface SimClient {
  client: Client;
  busy: boolean;
  step: number;
  orderId: number | undefined;
}

const clients: SimClient[] = sources.map((localAddress) => ({
  client: new Client(origin, {
    ...(localAddress ? { localAddress } : {}),
    connectTimeout: REQUEST_TIMEOUT_MS,
    headersTimeout: REQUEST_TIMEOUT_MS,
    bodyTimeout: REQUEST_TIMEOUT_MS,
  }),
  busy: false,
  // Spread over the session, so the first second is not all one kind of request.
  step: Math.floor(Math.random() * session.length),
  orderId: undefined,
}));

// Per second and over the whole run: statuses and latencies.
const newPeriod = () => ({ count: 0, statuses: new Map<string, number>(), latency: new LatencyHistogram() });
let second = newPeriod();
const total = { ...newPeriod(), errors: 0, timeouts: 0, missed: 0 };
let inFlight = 0;
let sent = 0;
let warnedLimit = false;

function count(period: { statuses: Map<string, number> }, key: string): void {
  period.statuses.set(key, (period.statuses.get(key) ?? 0) + 1);
}

async function send(sim: SimClient): Promise<void> {
  const step = session[sim.step](sim.orderId);
  sim.step = (sim.step + 1) % session.length;
  if (step.placesOrder) sim.orderId = undefined;
  sim.busy = true;
  inFlight++;
  const t0 = performance.now();
  try {
    const res = await sim.client.request({ method: step.method, path: step.path, headers: step.headers, body: step.body });
    if (step.placesOrder && res.statusCode === 201) {
      const order = (await res.body.json().catch(() => undefined)) as { id?: unknown } | undefined;
      if (typeof order?.id === 'number') sim.orderId = order.id;
    } else {
      await res.body.dump();
    }
    const ms = performance.now() - t0;
    const key = String(res.statusCode);
    for (const period of [second, total]) {
      period.count++;
      count(period, key);
      period.latency.recordMs(ms);
    }
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    if (code.includes('TIMEOUT')) total.timeouts++;
    else total.errors++;
    count(second, 'error');
    count(total, 'error');
  } finally {
    sim.busy = false;
    inFlight--;
  }
}

// Open loop at a fixed overall rate: every tick sends what is due by now on idle clients, round
// robin. A due request with every client still waiting for an answer is counted as missed rather
// than queued, so a stalled system cannot make the generator's memory grow.
const started = performance.now();
const endAt = duration === 0 ? Infinity : started + duration * 1000;
let next = 0;
function tick(): void {
  const now = performance.now();
  if (now >= endAt) {
    void finish();
    return;
  }
  const due = Math.floor(((now - started) / 1000) * rate) + 1 - sent;
  for (let i = 0; i < due; i++) {
    sent++;
    let sim: SimClient | undefined;
    for (let tries = 0; tries < clients.length && !sim; tries++) {
      const candidate = clients[next];
      next = (next + 1) % clients.length;
      if (!candidate.busy) sim = candidate;
    }
    if (sim) void send(sim);
    else total.missed++;
  }
}
const scheduler = setInterval(tick, Math.max(1, Math.min(20, Math.floor(1000 / rate))));

function formatStatuses(statuses: Map<string, number>): string {
  return [...statuses].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}:${v}`).join(' ') || '-';
}

const ticker = setInterval(() => {
  const s = second;
  second = newPeriod();
  const elapsed = Math.round((performance.now() - started) / 1000);
  const sum = s.latency.summary();
  console.log(`${String(elapsed).padStart(4)}s  ${String(s.count).padStart(5)} req/s  ${formatStatuses(s.statuses).padEnd(28)} p50 ${sum.p50Ms.toFixed(1).padStart(6)} ms  p99 ${sum.p99Ms.toFixed(1).padStart(6)} ms`);
  const limited = s.statuses.get('429') ?? 0;
  if (!warnedLimit && limited > s.count / 2) {
    warnedLimit = true;
    console.log(`      most requests are refused by the rate limit (429, per client per window): start the gateway with a higher RATE_LIMIT${sources[0] === undefined ? '' : ', or use more --clients'}`);
  }
}, 1000);

let finishing: Promise<void> | undefined;
function finish(): Promise<void> {
  finishing ??= (async () => {
    clearInterval(scheduler);
    clearInterval(ticker);
    const deadline = performance.now() + DRAIN_MS;
    while (inFlight > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const unanswered = inFlight;
    await Promise.all(clients.map(({ client }) => (unanswered ? client.destroy() : client.close())));
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
    const s = total.latency.summary();
    const seconds = (performance.now() - started) / 1000;
    console.log(`\n${s.count} responses in ${seconds.toFixed(1)} s (${(s.count / seconds).toFixed(1)} req/s) from ${from}, ${total.errors} connection errors, ${total.timeouts} timeouts${total.missed ? `, ${total.missed} not sent (every client was waiting for an answer)` : ''}${unanswered ? `, ${unanswered} unanswered at the end` : ''}`);
    console.log(`statuses: ${formatStatuses(total.statuses)}`);
    console.log(`latency ms: p50 ${s.p50Ms.toFixed(1)}  p90 ${s.p90Ms.toFixed(1)}  p99 ${s.p99Ms.toFixed(1)}  max ${s.maxMs.toFixed(1)}`);
  })();
  return finishing;
}

function stop(): void {
  console.log('\nstopping...');
  void finish();
}
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
console.log(`load on ${base}: ${rate} req/s from ${from}, ${duration === 0 ? 'until Ctrl+C' : `${duration} s`} (Ctrl+C stops)`);
if (note) console.log(note);
tick();
