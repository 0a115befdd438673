// npm run scaled:check: the acceptance checks of the scaled-out system that can be made from outside,
// against a running `npm run start:scaled` (open mode): orders racing for the last units through both
// gateways, one client's rate limit across both gateways, tokens and traces across instances, a kill -9
// of a product-service instance under looping clients, and last a kill -9 of every process while
// orders are placed (start:scaled starts them again). Prints a table; exits 0 when every check passed.
// Linux: each client sends from an address of its own in 127.0.0.0/8, as the gateways limit per address.
import { randomInt } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { ConfigError, intVar, parseConfig } from '../lib/platform/config.js';
import { DEFAULT_BASE_PORT, LAST_PORT_OFFSET, portOf, stateFileOf, type ScaledState } from './scaled-layout.js';

const Schema = z.object({
  SCALED_BASE_PORT: intVar(DEFAULT_BASE_PORT, 1, 65_535 - LAST_PORT_OFFSET),
  // The gateways' base URLs, comma-separated; unset: the two of start:scaled's layout.
  SCALED_GATEWAYS: z.string().optional(),
  // Where start:scaled wrote its processes' pids; unset: its default for SCALED_BASE_PORT.
  SCALED_STATE_FILE: z.string().optional(),
  // How long the looping clients run; the kill comes after a third of it.
  SCALED_CHECK_LOOP_MS: intVar(6000, 1000, 600_000),
});

let config: z.output<typeof Schema>;
try {
  config = parseConfig(Schema);
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`scaled:check: invalid configuration: ${err.message}\n`);
    process.exit(1);
  }
  throw err;
}

const gateways = (config.SCALED_GATEWAYS ?? [0, 1].map((i) => `http://127.0.0.1:${portOf(config.SCALED_BASE_PORT, 'gateway', i)}`).join(','))
  .split(',').map((u) => u.trim().replace(/\/+$/, '')).filter(Boolean);
const stateFile = config.SCALED_STATE_FILE ?? stateFileOf(config.SCALED_BASE_PORT);
const runId = `${Date.now().toString(36)}${randomInt(1000)}`;

interface Answer { status: number; headers: IncomingHttpHeaders; body: unknown }
interface CallOptions { body?: unknown; headers?: Record<string, string>; localAddress?: string; agent?: Agent; timeoutMs?: number }

/** One HTTP call; rejects on a network error or after `timeoutMs`. */
function call(base: string, method: string, path: string, { body, headers = {}, localAddress, agent, timeoutMs = 10_000 }: CallOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(`${base}${path}`, {
      method,
      localAddress,
      agent: agent ?? false,
      timeout: timeoutMs,
      headers: payload === undefined ? headers : { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch { /* not JSON: kept as text */ }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
      });
      res.on('error', reject);
    });
    req.once('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'TIMEOUT' })));
    req.once('error', reject);
    req.end(payload);
  });
}

/** An address of 127.0.0.0/8 no earlier client of this run had: a client of its own for the rate limit. */
const usedAddresses = new Set<string>(['127.0.0.1']);
function freshAddress(): string {
  for (;;) {
    const address = `127.${randomInt(1, 255)}.${randomInt(0, 256)}.${randomInt(1, 255)}`;
    if (!usedAddresses.has(address)) {
      usedAddresses.add(address);
      return address;
    }
  }
}

const countBy = <T>(items: T[], key: (item: T) => string): Record<string, number> => {
  const counts: Record<string, number> = {};
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1;
  return counts;
};
const showCounts = (counts: Record<string, number>) => Object.entries(counts).sort().map(([k, n]) => `${n}x${k}`).join(' ') || 'none';
const errorName = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;
const field = (body: unknown, key: string): unknown => (body !== null && typeof body === 'object' ? (body as Record<string, unknown>)[key] : undefined);
const codeOf = (body: unknown): string => {
  const code = field(body, 'code');
  return typeof code === 'string' ? code : '';
};

interface Row { check: string; expected: string; got: string; pass: boolean | null }
const rows: Row[] = [];

function fatal(line: string): never {
  process.stderr.write(`scaled:check: ${line}\n`);
  process.exit(1);
}

// ---- The gateways answer, in open mode.

for (const gateway of gateways) {
  try {
    const health = await call(gateway, 'GET', '/health', { timeoutMs: 5000 });
    if (health.status !== 200) fatal(`${gateway}/health answered ${health.status}`);
  } catch (err) {
    fatal(`no gateway answers at ${gateway} (${errorName(err)}): start one with npm run start:scaled, or set SCALED_GATEWAYS`);
  }
}
if (gateways.length < 2) fatal(`SCALED_GATEWAYS names ${gateways.length} gateway; the checks need two`);
const [gwA, gwB] = gateways as [string, string];
const via = (i: number) => gateways[i % gateways.length];

// ---- 40 orders racing for 10 units, through both gateways.

const setupAddress = freshAddress();
const user = await call(gwA, 'POST', '/api/users', { body: { name: 'Scaled Check', email: `scaled-check-${runId}@example.com` }, localAddress: setupAddress });
if (user.status === 401) fatal('the gateway wants a token (AUTH_MODE=required): run start:scaled in open mode for this check');
if (user.status !== 201) fatal(`POST /api/users answered ${user.status} ${JSON.stringify(user.body).slice(0, 200)}`);
const product = await call(gwB, 'POST', '/api/products', { body: { name: `Scaled check ${runId}`, price: 1.5, stock: 10, category: 'scaled-check' }, localAddress: setupAddress });
if (product.status !== 201) fatal(`POST /api/products answered ${product.status} ${JSON.stringify(product.body).slice(0, 200)}`);
const userId = field(user.body, 'id') as number;
const productId = field(product.body, 'id') as number;

{
  const orderAddress = freshAddress();
  const outcomes = await Promise.all(Array.from({ length: 40 }, (_, i) =>
    call(via(i), 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, localAddress: orderAddress })
      .then((a) => (a.status === 409 ? `409 ${codeOf(a.body)}` : String(a.status)), errorName)));
  const counts = countBy(outcomes, (o) => o);
  const stocks = await Promise.all([gwA, gwB].map((g) => call(g, 'GET', `/api/products/${productId}`, { localAddress: orderAddress }).then((a) => field(a.body, 'stock'), errorName)));
  const listed = await call(gwA, 'GET', `/api/orders?userId=${userId}&limit=100`, { localAddress: orderAddress }).then((a) => field(field(a.body, 'meta'), 'total'), errorName);
  rows.push({
    check: '40 racing orders for 10 units, both gateways',
    expected: '10x201 30x409 INSUFFICIENT_STOCK; stock 0 on both; 10 orders listed',
    got: `${showCounts(counts)}; stock ${stocks.map(String).join('/')}; ${String(listed)} listed`,
    pass: counts['201'] === 10 && counts['409 INSUFFICIENT_STOCK'] === 30 && stocks.every((s) => s === 0) && listed === 10,
  });
}

// ---- One client's rate limit across both gateways.

let limit = 100;
{
  const address = freshAddress();
  const agents = [new Agent({ keepAlive: true, maxSockets: 5 }), new Agent({ keepAlive: true, maxSockets: 5 })];
  const first = await call(gwA, 'GET', '/api/products?limit=1', { localAddress: address, agent: agents[0] });
  limit = Number(first.headers['x-ratelimit-limit']);
  if (!Number.isInteger(limit) || limit < 1) {
    rows.push({ check: 'RATE_LIMIT across both gateways, one client', expected: 'an X-RateLimit-Limit header', got: `none (status ${first.status})`, pass: false });
    limit = 100;
  } else if (limit > 1000) {
    rows.push({ check: 'RATE_LIMIT across both gateways, one client', expected: 'RATE_LIMIT=100', got: `RATE_LIMIT is ${limit}: start start:scaled with RATE_LIMIT=100 for this check`, pass: false });
  } else {
    const extra = 20;
    const statuses = [String(first.status)];
    let next = 1;
    // Ten at a time, alternating gateways, so both count the same client concurrently.
    await Promise.all(Array.from({ length: 10 }, async () => {
      while (next < limit + extra) {
        const i = next++;
        statuses.push(await call(via(i), 'GET', '/api/products?limit=1', { localAddress: address, agent: agents[i % 2] }).then((a) => String(a.status), errorName));
      }
    }));
    for (const agent of agents) agent.destroy();
    const counts = countBy(statuses, (s) => s);
    rows.push({
      check: `RATE_LIMIT=${limit} across both gateways, one client, ${limit + extra} requests`,
      expected: `${limit}x200 ${extra}x429`,
      got: showCounts(counts),
      pass: counts['200'] === limit && counts['429'] === extra && Object.keys(counts).length === 2,
    });
  }
}

// ---- A token from either user-service instance works through both gateways.

{
  const address = freshAddress();
  const password = process.env.DEMO_PASSWORD || 'microservices-demo';
  // Four logins, balanced over the user-service instances; each token used on both gateways.
  const logins = await Promise.all([0, 1, 2, 3].map((i) => call(via(i), 'POST', '/api/auth/login', { body: { email: 'alice@example.com', password }, localAddress: address }).catch(() => undefined)));
  const tokens = logins.map((a) => field(a?.body, 'accessToken')).filter((t): t is string => typeof t === 'string');
  const decode = (part: string | undefined): unknown => JSON.parse(Buffer.from(part ?? '', 'base64url').toString() || '{}');
  const kids = new Set(tokens.map((t) => String(field(decode(t.split('.')[0]), 'kid'))));
  const uses = await Promise.all(tokens.flatMap((token) => gateways.map((g) =>
    call(g, 'GET', `/api/users/${String(field(decode(token.split('.')[1]), 'sub'))}`, { headers: { authorization: `Bearer ${token}` }, localAddress: address }).then((a) => String(a.status), errorName))));
  rows.push({
    check: 'tokens from 4 logins (demo user alice), each used through both gateways',
    expected: '4 logins, 8x200',
    got: `${tokens.length} logins (${logins.map((a) => a?.status ?? 'error').join(' ')}), ${showCounts(countBy(uses, (u) => u))}; ${kids.size} signing key(s)`,
    pass: tokens.length === 4 && uses.length === 8 && uses.every((u) => u === '200'),
  });
}

// ---- A trace served through one gateway, shown whole by the other.

{
  const traceId = `scaled-check-${runId}`;
  await call(gwA, 'GET', `/api/products/${productId}`, { headers: { 'x-trace-id': traceId }, localAddress: setupAddress });
  let services: string[] = [];
  for (const until = Date.now() + 5000; Date.now() < until;) {
    const trace = await call(gwB, 'GET', `/traces/${traceId}`).catch(() => undefined);
    const spans = field(trace?.body, 'spans');
    services = Array.isArray(spans) ? [...new Set(spans.map((span) => String(field(span, 'service'))))].sort() : [];
    if (services.includes('gateway') && services.includes('product-service')) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  rows.push({
    check: 'a trace through the first gateway, read from the second',
    expected: 'spans of gateway and product-service',
    got: services.length ? `spans of ${services.join(', ')}` : 'not found',
    pass: services.includes('gateway') && services.includes('product-service'),
  });
}

// ---- kill -9 of a product-service instance under 20 looping clients.

const readState = (): ScaledState | undefined => (existsSync(stateFile) ? (JSON.parse(readFileSync(stateFile, 'utf8')) as ScaledState) : undefined);
const alive = (pid: number | null): pid is number => {
  if (pid === null) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const healthy = (url: string) => call(url, 'GET', '/health', { timeoutMs: 2000 }).then((a) => a.status === 200, () => false);

const killCheck = 'kill -9 of one product-service instance under 20 looping clients';
const state = readState();
const productsUp = state === undefined ? [] : (await Promise.all(state.processes.filter((p) => p.service === 'products' && alive(p.pid)).map(async (p) => ((await healthy(p.url)) ? p : undefined)))).filter((p) => p !== undefined);
if (state === undefined) {
  rows.push({ check: killCheck, expected: '0 failed GETs', got: `not run: no state file at ${stateFile} (npm run start:scaled writes it; or set SCALED_STATE_FILE)`, pass: false });
} else if (productsUp.length < 2) {
  rows.push({ check: killCheck, expected: '0 failed GETs', got: `not run: ${productsUp.length} product-service instance(s) up, two needed`, pass: false });
} else {
  const victim = productsUp[0];
  // Paced so that no client reaches its rate limit within the run.
  const intervalMs = Math.max(20, Math.ceil(config.SCALED_CHECK_LOOP_MS / Math.max(1, Math.floor(limit * 0.8))));
  const failures: string[] = [];
  let ok = 0;
  let stale = 0;
  let running = true;
  const clients = Array.from({ length: 20 }, async (_, c) => {
    const address = freshAddress();
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    // A search no one made before: never answered from the gateway's stale cache, so a failure shows.
    for (let n = 0; running; n++) {
      const started = Date.now();
      try {
        const a = await call(via(c), 'GET', `/api/products?search=scaled-${runId}-${c}-${n}&limit=1`, { localAddress: address, agent });
        if (a.status === 200) ok++;
        else failures.push(`${a.status} ${codeOf(a.body)}`.trim());
        if (a.headers['x-cache'] === 'STALE') stale++;
      } catch (err) {
        failures.push(errorName(err));
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, intervalMs - (Date.now() - started))));
    }
    agent.destroy();
  });
  await new Promise((resolve) => setTimeout(resolve, Math.round(config.SCALED_CHECK_LOOP_MS / 3)));
  process.kill(victim.pid!, 'SIGKILL');
  const killedAt = Date.now();
  await new Promise((resolve) => setTimeout(resolve, config.SCALED_CHECK_LOOP_MS - Math.round(config.SCALED_CHECK_LOOP_MS / 3)));
  running = false;
  await Promise.all(clients);
  rows.push({
    check: `${killCheck} (${victim.name}, pid ${victim.pid})`,
    expected: '0 failed GETs',
    got: `${ok} x 200, ${failures.length} failed${failures.length ? ` (${showCounts(countBy(failures, (f) => f))})` : ''}${stale ? `, ${stale} stale` : ''}`,
    pass: failures.length === 0 && ok > 0,
  });
  // start:scaled starts a dead process again; how long that took, for the record.
  let back = 'not back within 60 s';
  while (Date.now() - killedAt < 60_000) {
    const again = readState()?.processes.find((p) => p.name === victim.name);
    if (again && again.pid !== victim.pid && alive(again.pid) && (await healthy(again.url))) {
      back = `back after ${((Date.now() - killedAt) / 1000).toFixed(1)} s (pid ${again.pid})`;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  rows.push({ check: `${victim.name} started again by start:scaled`, expected: 'back, answering /health', got: back, pass: back.startsWith('back') });
}

// ---- kill -9 of every process while orders are being placed: every acknowledged order survives.

const everythingCheck = 'kill -9 of all 8 processes while 5 clients place orders';
const before = readState();
if (before === undefined || before.processes.some((p) => !alive(p.pid))) {
  rows.push({ check: everythingCheck, expected: 'every acknowledged order there after', got: `not run: ${before === undefined ? `no state file at ${stateFile}` : 'not every process is up'}`, pass: false });
} else {
  const address = freshAddress();
  const stock = 1000;
  const made = await call(gwA, 'POST', '/api/products', { body: { name: `Scaled check durability ${runId}`, price: 2, stock, category: 'scaled-check' }, localAddress: address });
  const buyer = await call(gwB, 'POST', '/api/users', { body: { name: 'Scaled Check Buyer', email: `scaled-check-buyer-${runId}@example.com` }, localAddress: address });
  const durableProduct = field(made.body, 'id') as number;
  const buyerId = field(buyer.body, 'id') as number;
  const acknowledged: number[] = [];
  let placing = true;
  const placers = Array.from({ length: 5 }, async (_, c) => {
    const from = freshAddress();
    while (placing) {
      const answer = await call(via(c), 'POST', '/api/orders', { body: { userId: buyerId, items: [{ productId: durableProduct, quantity: 1 }] }, localAddress: from, timeoutMs: 5000 }).catch(() => undefined);
      if (answer?.status === 201) acknowledged.push(field(answer.body, 'id') as number);
      // Paced under the rate limit; a refused call (everything down) waits as long.
      await new Promise((resolve) => setTimeout(resolve, 60));
    }
  });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  for (const p of before.processes) process.kill(p.pid!, 'SIGKILL');
  const killedAt = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 300));
  placing = false;
  await Promise.all(placers);
  // start:scaled starts every one again; then each acknowledged order is read back.
  let backAfter: number | undefined;
  while (Date.now() - killedAt < 90_000) {
    const now = readState();
    const up = now !== undefined && now.processes.every((p) => alive(p.pid) && !before.processes.some((b) => b.pid === p.pid));
    if (up && (await Promise.all(now.processes.map((p) => healthy(p.url)))).every(Boolean)) {
      backAfter = Date.now() - killedAt;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  if (backAfter === undefined) {
    rows.push({ check: everythingCheck, expected: 'every acknowledged order there after', got: 'not every process back within 90 s', pass: false });
  } else {
    const found = await Promise.all(acknowledged.map((id, i) => call(via(i), 'GET', `/api/orders/${id}`, { localAddress: address }).then((a) => a.status === 200 && field(a.body, 'userId') === buyerId, () => false)));
    const missing = acknowledged.filter((_, i) => !found[i]);
    rows.push({
      check: everythingCheck,
      expected: 'every acknowledged order there after',
      got: `${acknowledged.length} acknowledged, ${acknowledged.length - missing.length} there after the restart (all back in ${(backAfter / 1000).toFixed(1)} s)${missing.length ? `; missing ${missing.slice(0, 10).join(', ')}` : ''}`,
      pass: acknowledged.length > 0 && missing.length === 0,
    });
  }
}

// ---- The table.

const headers = ['check', 'expected', 'got', 'result'];
const cells = rows.map((r) => [r.check, r.expected, r.got, r.pass === null ? '-' : r.pass ? 'PASS' : 'FAIL']);
const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
const line = (c: string[]) => `| ${c.map((v, i) => v.padEnd(widths[i])).join(' | ')} |`;
process.stdout.write(`${[line(headers), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n')}\n`);
process.stdout.write('Not checked here: PostgreSQL stopped and started again (503 STORAGE_UNAVAILABLE, then healing without a restart).\n');
process.exitCode = rows.every((r) => r.pass !== false) ? 0 : 1;
