// The order-integrity chaos run: concurrent orders with Idempotency-Key retries against the order
// service while a fault proxy disturbs its calls to the product service and the order and product
// services are killed with SIGKILL and restarted; then the release worker's wait, and the check:
//   for every product, initial stock = stock + the quantities of live (not cancelled) orders;
//   every order acknowledged with 201 is there, as acknowledged; stock was never seen below 0.
//
//   npm run chaos -- --seed 7 [--seed 8 ...] [--duration 20000] [--concurrency 16]
//
// The seed fixes every choice (orders, faults, kills, pauses); the timing of the machine still
// varies, so two runs of one seed disturb the same way but not at the same instants.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnService, type ChildService } from '../process.js';
import { startFaultProxy, type Fault, type FaultProxy } from '../support/fault-proxy.js';
import { http } from '../helpers.js';

export interface ChaosOptions {
  seed: number;
  durationMs: number;
  concurrency?: number;
  /** Progress lines go here (default: nowhere). */
  log?: (line: string) => void;
}

export interface ChaosCounts {
  seed: number;
  attempts: number;
  created: number;
  replayed: number;
  insufficientStock: number;
  unavailable: number;
  /** 409 IDEMPOTENCY_KEY_IN_USE: the key's first create was still running; retried. */
  keyInUse: number;
  deadline: number;
  otherStatus: number;
  networkErrors: number;
  gaveUp: number;
  cancels: number;
  faults: number;
  ordersKilled: number;
  productsKilled: number;
  liveOrders: number;
  cancelledOrders: number;
  pendingReleasesLeft: number;
  lowestStockSeen: number;
}

export interface ChaosResult {
  counts: ChaosCounts;
  /** Each broken invariant, in words; empty when all held. */
  violations: string[];
}

/** mulberry32: a small seeded PRNG, enough to make a run's choices repeatable. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A call of the run's clients: a lost answer must not hold a client for long. */
const call = (base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
  http(base, method, path, { body, headers, timeoutMs: 5_000 });

const PRODUCTS = 4;
const RETRY_GRACE_MS = 2_000;
const INITIAL_STOCK = 500;
// Short timeouts keep the release worker's wait (2 x UPSTREAM_TIMEOUT_MS) short.
const SERVICE_ENV = { UPSTREAM_TIMEOUT_MS: '600', RELEASE_RETRY_MS: '100', SEED_DATA: 'false', STOP_TIMEOUT_MS: '2000' };

export async function runChaos({ seed, durationMs, concurrency = 16, log = () => undefined }: ChaosOptions): Promise<ChaosResult> {
  // Two streams: the disturbances draw from their own, so the clients' timing (how many orders a
  // machine places meanwhile) does not change which faults and kills a seed brings.
  const streams = { clients: prng(seed), chaos: prng(seed ^ 0x5bd1e995) };
  const random = streams.clients;
  const pick = <T>(list: readonly T[], from = random): T => list[Math.floor(from() * list.length)];
  const between = (lo: number, hi: number, from = random) => Math.floor(lo + from() * (hi - lo + 1));
  const dataDir = mkdtempSync(join(tmpdir(), `msvc-chaos-${seed}-`));
  const children = new Set<ChildService>();
  const proxies: FaultProxy[] = [];
  const counts: ChaosCounts = {
    seed, attempts: 0, created: 0, replayed: 0, insufficientStock: 0, unavailable: 0, keyInUse: 0, deadline: 0, otherStatus: 0, networkErrors: 0,
    gaveUp: 0, cancels: 0, faults: 0, ordersKilled: 0, productsKilled: 0, liveOrders: 0, cancelledOrders: 0, pendingReleasesLeft: 0,
    lowestStockSeen: INITIAL_STOCK,
  };
  const violations: string[] = [];
  const spawn = async (entry: string, env: Record<string, string>) => {
    const child = await spawnService(entry, { DATA_DIR: dataDir, ...SERVICE_ENV, ...env });
    children.add(child);
    return child;
  };
  const kill = async (child: ChildService) => {
    children.delete(child);
    await child.stop('SIGKILL');
  };

  try {
    // The two start side by side (each has its own database file in the data dir); both are
    // waited for, so one that starts after the other failed is still stopped at the end.
    const started = await Promise.allSettled([spawn('user-service.ts', {}), spawn('product-service.ts', {})]);
    for (const s of started) if (s.status === 'rejected') throw s.reason;
    const [users, firstProducts] = started.map((s) => (s as PromiseFulfilledResult<ChildService>).value);
    let products = firstProducts;
    // Stable addresses for processes that restart on a new port: the order service reaches the
    // product service through the fault proxy, and the clients reach the order service through
    // a proxy that only passes bytes.
    const toProducts = await startFaultProxy(products.url);
    proxies.push(toProducts);
    const ordersEnv = { USERS_URL: users.url, PRODUCTS_URL: toProducts.url };
    let orders = await spawn('order-service.ts', ordersEnv);
    const toOrders = await startFaultProxy(orders.url);
    proxies.push(toOrders);

    const userIds: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await call(users.url, 'POST', '/users', { name: `Chaos User ${i}`, email: `chaos-${seed}-${i}@example.com` });
      userIds.push(r.body.id as number);
    }
    const productIds: number[] = [];
    for (let i = 0; i < PRODUCTS; i++) {
      const r = await call(products.url, 'POST', '/products', { name: `Chaos Product ${i}`, price: 1.25 + i, stock: INITIAL_STOCK, category: 'chaos' });
      productIds.push(r.body.id as number);
    }

    const end = Date.now() + durationMs;
    const acknowledged = new Map<number, unknown>();
    let keyCounter = 0;

    // One client: orders with a key each, retried with the same key until a definite answer.
    const client = async (worker: number) => {
      while (Date.now() < end) {
        const key = `chaos-${seed}-${worker}-${keyCounter++}`;
        const items = productIds.filter(() => random() < 0.5).map((productId) => ({ productId, quantity: between(1, 3) }));
        if (items.length === 0) items.push({ productId: pick(productIds), quantity: 1 });
        const body = { userId: pick(userIds), items };
        let settled = false;
        // Retries stop soon after the run's end: a key left unsettled counts as given up (the check
        // below does not depend on it), and a client stuck behind timeouts cannot hold the run.
        for (let attempt = 0; attempt < 20 && !settled && Date.now() < end + RETRY_GRACE_MS; attempt++) {
          counts.attempts++;
          try {
            const r = await call(toOrders.url, 'POST', '/orders', body, { 'idempotency-key': key });
            if (r.status === 201) {
              counts.created++;
              if (r.headers.get('idempotent-replayed') === 'true') counts.replayed++;
              acknowledged.set(r.body.id as number, r.body);
              settled = true;
              if (random() < 0.15) {
                counts.cancels++;
                await call(toOrders.url, 'PUT', `/orders/${r.body.id}/status`, { status: 'cancelled' }).catch(() => undefined);
              }
            } else if (r.status === 409 && r.body?.code === 'INSUFFICIENT_STOCK') {
              counts.insufficientStock++;
              settled = true;
            } else if (r.status === 409 && r.body?.code === 'IDEMPOTENCY_KEY_IN_USE') {
              counts.keyInUse++;
            } else if (r.status === 503) {
              counts.unavailable++;
            } else if (r.status === 504) {
              counts.deadline++;
            } else {
              counts.otherStatus++;
              if (r.status < 500) {
                violations.push(`unexpected ${r.status} ${JSON.stringify(r.body)}`);
                settled = true;
              }
            }
          } catch {
            counts.networkErrors++;
          }
          if (!settled) await sleep(between(20, 120));
        }
        if (!settled) counts.gaveUp++;
      }
    };

    // Stock must never be seen below zero.
    const watch = async () => {
      while (Date.now() < end) {
        for (const id of productIds) {
          try {
            const r = await call(toProducts.url, 'GET', `/products/${id}`);
            if (r.status === 200) counts.lowestStockSeen = Math.min(counts.lowestStockSeen, r.body.stock as number);
          } catch {
            // down for now
          }
        }
        await sleep(50);
      }
    };

    const FAULTS: (() => Fault)[] = [
      () => ({ kind: 'latency', ms: between(50, 500, streams.chaos) }),
      () => ({ kind: 'blackhole' }),
      () => ({ kind: 'reset-before-response' }),
      () => ({ kind: 'reset-after-headers' }),
      () => ({ kind: 'status', status: 503 }),
      () => ({ kind: 'flap', upMs: between(100, 300, streams.chaos), downMs: between(100, 300, streams.chaos) }),
    ];
    // The disturbances, one after another: a fault for a while, or a kill -9 and a restart.
    // Disturbances begin once the system has placed an order, so that a slow start-up does not
    // leave a short run with nothing but a dead service to show.
    const chaos = async () => {
      while (counts.created === 0 && Date.now() < end - 300) await sleep(10);
      while (Date.now() < end - 300) {
        await sleep(between(100, 400, streams.chaos));
        const roll = streams.chaos();
        if (roll < 0.5) {
          counts.faults++;
          toProducts.fault = pick(FAULTS, streams.chaos)();
          await sleep(between(100, 600, streams.chaos));
          toProducts.fault = { kind: 'pass' };
        } else if (roll < 0.75) {
          counts.ordersKilled++;
          await kill(orders);
          await sleep(between(50, 300, streams.chaos));
          orders = await spawn('order-service.ts', ordersEnv);
          toOrders.target = orders.url;
        } else {
          counts.productsKilled++;
          await kill(products);
          await sleep(between(50, 300, streams.chaos));
          products = await spawn('product-service.ts', {});
          toProducts.target = products.url;
        }
        log(`seed ${seed}: ${counts.faults} faults, ${counts.ordersKilled} + ${counts.productsKilled} kills, ${counts.created} orders`);
      }
    };

    await Promise.all([...Array.from({ length: concurrency }, (_, i) => client(i)), watch(), chaos()]);
    toProducts.fault = { kind: 'pass' };

    // The release worker's wait: whatever a crash or a timeout left held goes back.
    const waitUntil = Date.now() + 20_000;
    for (;;) {
      const metrics = (await call(orders.url, 'GET', '/metrics')).text;
      counts.pendingReleasesLeft = Number(/^orders_pending_releases(?:\{[^}]*\})? (\d+)/m.exec(metrics)?.[1] ?? NaN);
      if (counts.pendingReleasesLeft === 0 || Date.now() > waitUntil) break;
      await sleep(100);
    }
    if (counts.pendingReleasesLeft !== 0) violations.push(`${counts.pendingReleasesLeft} reservations still held after the release worker's wait`);

    // Every order, as the order service has it.
    const all: { id: number; status: string; items: { productId: number; quantity: number }[] }[] = [];
    for (let page = 1; ; page++) {
      const r = await call(orders.url, 'GET', `/orders?limit=100&page=${page}`);
      all.push(...(r.body.data as typeof all));
      if (page * 100 >= (r.body.meta.total as number)) break;
    }
    const byId = new Map(all.map((o) => [o.id, o]));
    for (const [id, ack] of acknowledged) {
      const order = byId.get(id);
      if (!order) violations.push(`order ${id} was acknowledged with 201 and is gone`);
      else {
        const { status: _s, updatedAt: _u, ...kept } = order as unknown as Record<string, unknown>;
        const { status: _s2, updatedAt: _u2, ...acked } = ack as Record<string, unknown>;
        if (JSON.stringify(kept) !== JSON.stringify(acked)) violations.push(`order ${id} differs from its 201`);
      }
    }
    const live = all.filter((o) => o.status !== 'cancelled');
    counts.liveOrders = live.length;
    counts.cancelledOrders = all.length - live.length;
    for (const productId of productIds) {
      const stock = (await call(products.url, 'GET', `/products/${productId}`)).body.stock as number;
      const held = live.reduce((sum, o) => sum + o.items.filter((i) => i.productId === productId).reduce((s, i) => s + i.quantity, 0), 0);
      counts.lowestStockSeen = Math.min(counts.lowestStockSeen, stock);
      if (stock + held !== INITIAL_STOCK) violations.push(`product ${productId}: stock ${stock} + live orders ${held} != initial ${INITIAL_STOCK}`);
    }
    if (counts.lowestStockSeen < 0) violations.push(`stock seen at ${counts.lowestStockSeen}`);
    return { counts, violations };
  } finally {
    await Promise.all([...children].map((c) => c.stop('SIGKILL')));
    for (const p of proxies) await p.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

function parseArgs(argv: string[]): { seeds: number[]; durationMs: number; concurrency: number } {
  const seeds: number[] = [];
  let durationMs = 20_000;
  let concurrency = 16;
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    const number = Number(value);
    const valid = value !== undefined && Number.isInteger(number) && number >= 0;
    switch (argv[i]) {
      case '--seed':
        if (!valid) throw new Error('--seed takes a whole number');
        seeds.push(number);
        break;
      case '--duration':
        if (!valid || number < 1000) throw new Error('--duration takes milliseconds, at least 1000');
        durationMs = number;
        break;
      case '--concurrency':
        if (!valid || number < 1 || number > 256) throw new Error('--concurrency takes 1..256');
        concurrency = number;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
    i++;
  }
  return { seeds: seeds.length ? seeds : [1], durationMs, concurrency };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let options: ReturnType<typeof parseArgs>;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).message}\nusage: npm run chaos -- --seed N [--seed M ...] [--duration ms] [--concurrency n]\n`);
    process.exit(2);
  }
  let failed = false;
  for (const seed of options.seeds) {
    const { counts, violations } = await runChaos({ seed, durationMs: options.durationMs, concurrency: options.concurrency, log: (l) => process.stderr.write(`${l}\n`) });
    process.stdout.write(`${JSON.stringify(counts)}\n`);
    process.stdout.write(violations.length ? `seed ${seed}: INVARIANT BROKEN\n  ${violations.join('\n  ')}\n` : `seed ${seed}: invariant held\n`);
    failed ||= violations.length > 0;
  }
  process.exit(failed ? 1 : 0);
}
