// npm run load -- [--rate 50] [--duration 60] [--connections 10] [--target http://localhost:3010]
// Demo traffic through the gateway, the way people use the shop: browse and search products, look
// at a user's full profile, place an order (with an Idempotency-Key) and cancel it. Built on
// autocannon (keep-alive connections, an overall rate); one status line a second, a summary at the
// end; Ctrl+C stops it cleanly. The target may also come from LOAD_TARGET.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { LatencyHistogram } from './histogram.js';

const { values: args } = parseArgs({
  options: {
    rate: { type: 'string', default: '50' },
    duration: { type: 'string', default: '60' },
    connections: { type: 'string', default: '10' },
    target: { type: 'string', default: process.env.LOAD_TARGET ?? 'http://localhost:3010' },
    help: { type: 'boolean', default: false },
  },
});

const usage = 'usage: npm run load -- [--rate 50 (requests/s)] [--duration 60 (s; 0 = until Ctrl+C)] [--connections 10] [--target http://localhost:3010]';
if (args.help) {
  console.log(usage);
  process.exit(0);
}
const wholeNumber = (name: string, value: string, min: number): number => {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min)) {
    console.error(`--${name} must be a whole number >= ${min} (got ${JSON.stringify(value)})\n${usage}`);
    process.exit(2);
  }
  return n;
};
const rate = wholeNumber('rate', args.rate, 1);
const duration = wholeNumber('duration', args.duration, 0);
const connections = wholeNumber('connections', args.connections, 1);
let target: URL;
try {
  target = new URL(args.target);
} catch {
  console.error(`--target must be a URL (got ${JSON.stringify(args.target)})`);
  process.exit(2);
}
const base = target.origin;

interface Listed {
  data: { id: number; stock?: number; name?: string }[];
}

/** Ids of the rows the traffic uses: the seeded users and the products with stock to spare. */
async function discover(): Promise<{ users: number[]; products: number[]; words: string[] }> {
  const get = async (path: string): Promise<Listed> => {
    const res = await fetch(base + path, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`GET ${path} answered ${res.status}`);
    return (await res.json()) as Listed;
  };
  const [users, products] = await Promise.all([get('/api/users?limit=100'), get('/api/products?limit=100')]);
  const stocked = products.data.filter((p) => (p.stock ?? 0) >= 20).map((p) => p.id);
  const words = products.data.flatMap((p) => (p.name ?? '').toLowerCase().split(/\W+/)).filter((w) => w.length > 3);
  if (users.data.length === 0 || stocked.length === 0) throw new Error('no users, or no product with 20 in stock: start the services with SEED_DATA=true (the default)');
  return { users: users.data.map((u) => u.id), products: stocked, words: words.length ? words : ['lamp'] };
}

let rows: Awaited<ReturnType<typeof discover>>;
try {
  rows = await discover();
} catch (err) {
  console.error(`cannot reach the shop at ${base}: ${(err as Error).message}`);
  process.exit(1);
}
const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)]!;

interface Context {
  orderId?: number;
}

// One pass of a connection's pipeline: mostly reads, one order placed and cancelled.
const requests: autocannon.Request[] = [
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/products?page=1&limit=10` }) },
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/products/${pick(rows.products)}` }) },
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/products?search=${encodeURIComponent(pick(rows.words))}` }) },
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/users/${pick(rows.users)}` }) },
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/users/${pick(rows.users)}/full` }) },
  { method: 'GET', setupRequest: (req) => ({ ...req, path: `/api/products?category=electronics` }) },
  {
    method: 'POST',
    setupRequest: (req, context) => {
      (context as Context).orderId = undefined;
      return {
        ...req,
        path: '/api/orders',
        headers: { 'content-type': 'application/json', 'idempotency-key': randomUUID() },
        body: JSON.stringify({ userId: pick(rows.users), items: [{ productId: pick(rows.products), quantity: 1 }] }),
      };
    },
    onResponse: (status, body, context) => {
      if (status !== 201) return;
      try {
        (context as Context).orderId = (JSON.parse(body) as { id: number }).id;
      } catch {
        // Not an order: nothing to cancel.
      }
    },
  },
  { method: 'GET', setupRequest: (req, context) => ({ ...req, path: (context as Context).orderId ? `/api/orders/${(context as Context).orderId}` : '/api/products' }) },
  {
    // Cancel what was placed, giving its stock back; without an order, browse instead.
    setupRequest: (req, context) => {
      const id = (context as Context).orderId;
      return id ? { ...req, method: 'DELETE', path: `/api/orders/${id}`, headers: {}, body: undefined } : { ...req, method: 'GET', path: '/api/products', headers: {}, body: undefined };
    },
  },
];

// Per second and over the whole run: statuses and latencies (autocannon's own histogram is in whole ms).
let second = { count: 0, statuses: new Map<string, number>(), latency: new LatencyHistogram() };
const total = { statuses: new Map<string, number>(), errors: 0, latency: new LatencyHistogram() };
const started = Date.now();
let warnedLimit = false;

const instance = autocannon(
  { url: base, connections, overallRate: rate, duration: duration === 0 ? 2_000_000 : duration, timeout: 10, requests },
  (err, result) => {
    clearInterval(ticker);
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
    if (err) {
      console.error(`load failed: ${String(err)}`);
      process.exit(1);
    }
    const s = total.latency.summary();
    const seconds = (Date.now() - started) / 1000;
    console.log(`\n${s.count} responses in ${seconds.toFixed(1)} s (${(s.count / seconds).toFixed(1)} req/s), ${total.errors} connection errors, ${result.timeouts} timeouts`);
    console.log(`statuses: ${formatStatuses(total.statuses)}`);
    console.log(`latency ms: p50 ${s.p50Ms.toFixed(1)}  p90 ${s.p90Ms.toFixed(1)}  p99 ${s.p99Ms.toFixed(1)}  max ${s.maxMs.toFixed(1)}`);
  },
);

instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
  const key = String(statusCode);
  second.count++;
  second.statuses.set(key, (second.statuses.get(key) ?? 0) + 1);
  second.latency.recordMs(responseTime);
  total.statuses.set(key, (total.statuses.get(key) ?? 0) + 1);
  total.latency.recordMs(responseTime);
});
instance.on('reqError', () => {
  total.errors++;
  second.statuses.set('error', (second.statuses.get('error') ?? 0) + 1);
});

function formatStatuses(statuses: Map<string, number>): string {
  return [...statuses].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}:${v}`).join(' ') || '-';
}

const ticker = setInterval(() => {
  const s = second;
  second = { count: 0, statuses: new Map(), latency: new LatencyHistogram() };
  const elapsed = Math.round((Date.now() - started) / 1000);
  const sum = s.latency.summary();
  console.log(`${String(elapsed).padStart(4)}s  ${String(s.count).padStart(5)} req/s  ${formatStatuses(s.statuses).padEnd(28)} p50 ${sum.p50Ms.toFixed(1).padStart(6)} ms  p99 ${sum.p99Ms.toFixed(1).padStart(6)} ms`);
  const limited = s.statuses.get('429') ?? 0;
  if (!warnedLimit && limited > s.count / 2) {
    warnedLimit = true;
    console.log('      most requests are refused by the rate limit (429, per client per window): for load, start the gateway with RATE_LIMIT=100000');
  }
}, 1000);

function stop(): void {
  console.log('\nstopping...');
  instance.stop();
}
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
console.log(`load on ${base}: ${rate} req/s over ${connections} connections, ${duration === 0 ? 'until Ctrl+C' : `${duration} s`} (Ctrl+C stops)`);
