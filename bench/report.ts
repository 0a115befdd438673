// Turns rounds into the published figures: rows of medians (min-max), the goal lines,
// the text table for the terminal and RESULTS.md.
import type { LoadResult } from './load.js';
import type { Machine } from './proc.js';

/**
 * `untraced`, `nometrics`, `nolimit`: the gateway with OTEL_SDK_DISABLED, REQUEST_METRICS_DISABLED
 * or RATE_LIMIT_DISABLED; `noauth`: the gateway itself, sent no token (open mode: nothing to verify).
 */
export type Target = 'direct' | 'gateway' | 'noauth' | 'untraced' | 'nometrics' | 'nolimit' | 'bare' | 'nginx' | 'haproxy';
export type Mode = 'pinned' | 'unpinned';
/**
 * `get-postgres`, `orders-postgres`: the saturation GET rounds and the order rounds again, with
 * the services restarted on PostgreSQL. `features`: GETs with a verified token through the gateway
 * and through its copies with one feature off each.
 */
export type Scenario = 'get' | 'get-rate' | 'features' | 'orders' | 'dashboard' | 'users-full' | 'sweep' | 'get-postgres' | 'orders-postgres';

const SCENARIO_LABEL: Record<Scenario, string> = {
  get: 'GET product',
  'get-rate': 'GET product, fixed rate',
  features: 'GET product with a token, features off in turn',
  orders: 'POST /api/orders',
  dashboard: 'GET /api/dashboard',
  'users-full': 'GET /api/users/2/full',
  sweep: 'GET product, conns sweep',
  'get-postgres': 'GET product, products on PostgreSQL',
  'orders-postgres': 'POST /api/orders, services on PostgreSQL',
};

/** What the table's "via" column says. */
const TARGET_LABEL: Record<Target, string> = {
  direct: 'direct',
  gateway: 'gateway',
  noauth: 'gateway, auth off',
  untraced: 'gateway, tracing off',
  nometrics: 'gateway, metrics off',
  nolimit: 'gateway, limiter off',
  bare: 'bare',
  nginx: 'nginx',
  haproxy: 'HAProxy',
};

/** The features the `features` rounds switch off, each with the target that has it off. */
export const FEATURE_TARGETS = [
  { feature: 'auth', target: 'noauth' },
  { feature: 'tracing', target: 'untraced' },
  { feature: 'metrics', target: 'nometrics' },
  { feature: 'limiter', target: 'nolimit' },
] as const satisfies ReadonlyArray<{ feature: string; target: Target }>;

/** GET scenarios: their rows set the proxy's CPU against the product service's. */
const GET_SCENARIOS: ReadonlySet<Scenario> = new Set(['get', 'get-rate', 'features', 'sweep', 'get-postgres']);
/** Those whose passes have a direct round to set each proxy's throughput against. */
const PAIRED_SCENARIOS: ReadonlySet<Scenario> = new Set(['get', 'get-rate', 'get-postgres']);
/** The order scenarios: their CPU per order is the four processes' together. */
const ORDER_SCENARIOS: ReadonlySet<Scenario> = new Set(['orders', 'orders-postgres']);
/** The rounds of a run on SQLite that restart the services on PostgreSQL, last. */
const ON_POSTGRES: ReadonlySet<Scenario | undefined> = new Set(['get-postgres', 'orders-postgres']);

/** The goals' thresholds, in one place. */
export const GOALS = {
  cpuRatio: 0.8,
  throughput: 0.9,
  p50AddedMs: 2,
  p99AddedMs: 5,
  /** Of GOALS.rateRuns fixed-rate runs, how many must keep the added p99 within p99AddedMs. */
  p99RunsWithin: 4,
  rateRuns: 5,
  aggregateCpu: 3,
  orderCpuMs: 2.4,
  rssAfterMb: 100,
  idleConnections: 2_000,
  idleConnectionKb: 30,
} as const;

/** CPU time per answered request, by process, in µs. */
interface CpuPerRequest {
  /** The proxy the round went through (a gateway, bare, nginx or HAProxy); absent for direct rounds. */
  front?: number;
  products: number;
  users: number;
  orders: number;
}

export interface RoundRecord {
  index: number;
  scenario: Scenario;
  target: Target;
  mode: Mode;
  round: number;
  connections: number;
  /** The fixed rate asked for, in paced rounds. */
  rate?: number;
  path: string;
  load: LoadResult;
  cpuUs: CpuPerRequest;
  /** Share of this process's CPU the load generator used (100 = one full core). */
  loadGeneratorCpuPct: number;
  stealPct: number;
  stolen: boolean;
  /** CPU used by processes other than ours, in percent of the whole machine. */
  foreignCpuPct: number;
  disturbed: boolean;
  gatewayRssMb: { before: number; after: number };
  valid: boolean;
  invalidReason?: string;
}

interface Spread {
  median: number;
  min: number;
  max: number;
}

export interface Row {
  scenario: Scenario;
  target: Target;
  mode: Mode;
  connections: number;
  rate?: number;
  rounds: number;
  validRounds: number;
  rps: Spread;
  p50Ms: Spread;
  p99Ms: Spread;
  errors: number;
  non2xx: number;
  cpuUs: { front?: Spread; products: Spread; users: Spread; orders: Spread };
  /** The proxy's CPU per request over the product service's, in the same rounds. */
  frontPerProductCpu?: Spread;
  /** Throughput over the direct / bare / nginx round of the same pass. */
  vsDirect?: Spread;
  vsBare?: Spread;
  vsNginx?: Spread;
  vsHaproxy?: Spread;
  /** Order scenarios: the four processes' CPU per order together, in µs. */
  cpuUsTotal?: Spread;
  invalidReasons: string[];
}

export interface Goal {
  name: string;
  value: string;
  goal: string;
  pass: boolean | undefined;
}

/**
 * The gateway's RSS, sampled a few times a second from the end of the warm-up to the end of the
 * run. The garbage collector makes it saw up and down by tens of MB, so "flat" compares the
 * floors (the lowest sample) of the first and the last quarter of the run: a leak raises the floor.
 */
export interface GatewayMemory {
  samples: number;
  afterWarmupMb: number;
  /** At the end of the last round. */
  atEndMb: number;
  /** Once the load had stopped for settleS seconds; the goal's figure (absent in older runs). */
  settledMb?: number;
  settleS?: number;
  firstQuarterFloorMb: number;
  lastQuarterFloorMb: number;
  peakMb: number;
  /** Requests the gateway answered in the measured rounds. */
  gatewayRequests: number;
}

/**
 * The PostgreSQL rows of a run on SQLite: measured (the get-postgres rows), or why they are
 * missing. Absent when the whole run is on PostgreSQL (BENCH_DATABASE_URL).
 */
export interface PostgresSection {
  /** `off`: BENCH_POSTGRES_URL=off. */
  status: 'measured' | 'unreachable' | 'off';
  /** host:port/database, without credentials. */
  server?: string;
  /** The server's version when it answered, else its error. */
  detail?: string;
  /** The run's schemas were `<schemaTag>_<service>`, dropped after it. */
  schemaTag?: string;
}

/**
 * What the gateway's memory grows by per idle keep-alive connection: `connections` clients each
 * sent one proxied GET and then held their connection open.
 */
export interface IdleConnections {
  connections: number;
  /** Connections still open when the RSS was read. */
  held: number;
  rssBeforeMb: number;
  rssHeldMb: number;
  perConnectionKb: number;
  /** Why the measurement did not happen or is not complete. */
  error?: string;
}

export interface Results {
  version: 1;
  startedAt: string;
  finishedAt: string;
  elapsedS: number;
  smoke: boolean;
  machine: Machine;
  settings: { durationS: number; rounds: number; rateRuns?: number; warmupS: number; clockTicksPerSecond: number; pinning: string; nginx: string; haproxy?: string; storage?: string };
  fixedRate?: { gatewaySaturationRps: number; rate: number; mode: Mode };
  postgres?: PostgresSection;
  memory: GatewayMemory;
  idleConnections?: IdleConnections;
  keepAlive: { reused: boolean; connectionHeader: string | null };
  rows: Row[];
  goals: Goal[];
  invalidRounds: Array<{ index: number; scenario: Scenario; target: Target; mode: Mode; round: number; reason: string }>;
  stolenRounds: number[];
  disturbedRounds: number[];
  rounds: RoundRecord[];
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function spread(values: number[]): Spread {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return { median: NaN, min: NaN, max: NaN };
  return { median: median(finite), min: Math.min(...finite), max: Math.max(...finite) };
}

const rowKey = (r: Pick<RoundRecord, 'scenario' | 'target' | 'mode' | 'connections'>) => `${r.scenario}|${r.target}|${r.mode}|${r.connections}`;

/**
 * One row per scenario, target, mode and connection count. Medians use the valid rounds only;
 * a row without any valid round shows all of its rounds so the failure stays visible.
 */
export function buildRows(rounds: RoundRecord[]): Row[] {
  const groups = new Map<string, RoundRecord[]>();
  for (const r of rounds) {
    const key = rowKey(r);
    const list = groups.get(key) ?? [];
    list.push(r);
    groups.set(key, list);
  }
  const rows: Row[] = [];
  for (const list of groups.values()) {
    const valid = list.filter((r) => r.valid);
    const use = valid.length ? valid : list;
    const first = list[0];
    const pair = (other: Target): Spread | undefined => {
      if (first.target === other) return undefined;
      const ratios = use.flatMap((r) => {
        const peer = rounds.find((p) => p.valid && p.target === other && p.scenario === r.scenario && p.mode === r.mode
          && p.connections === r.connections && p.round === r.round);
        return peer ? [r.load.rps / peer.load.rps] : [];
      });
      return ratios.length ? spread(ratios) : undefined;
    };
    const hasFront = first.target !== 'direct';
    const total = (r: RoundRecord) => (r.cpuUs.front ?? 0) + r.cpuUs.products + r.cpuUs.users + r.cpuUs.orders;
    rows.push({
      scenario: first.scenario,
      target: first.target,
      mode: first.mode,
      connections: first.connections,
      rate: first.rate,
      rounds: list.length,
      validRounds: valid.length,
      rps: spread(use.map((r) => r.load.rps)),
      p50Ms: spread(use.map((r) => r.load.latency.p50Ms)),
      p99Ms: spread(use.map((r) => r.load.latency.p99Ms)),
      errors: list.reduce((a, r) => a + r.load.errors, 0),
      non2xx: list.reduce((a, r) => a + r.load.non2xx, 0),
      cpuUs: {
        ...(hasFront ? { front: spread(use.map((r) => r.cpuUs.front ?? NaN)) } : {}),
        products: spread(use.map((r) => r.cpuUs.products)),
        users: spread(use.map((r) => r.cpuUs.users)),
        orders: spread(use.map((r) => r.cpuUs.orders)),
      },
      frontPerProductCpu: hasFront && GET_SCENARIOS.has(first.scenario)
        ? spread(use.map((r) => (r.cpuUs.front ?? NaN) / r.cpuUs.products))
        : undefined,
      ...(PAIRED_SCENARIOS.has(first.scenario) ? { vsDirect: pair('direct'), vsBare: pair('bare'), vsNginx: pair('nginx'), vsHaproxy: pair('haproxy') } : {}),
      ...(ORDER_SCENARIOS.has(first.scenario) ? { cpuUsTotal: spread(use.map(total)) } : {}),
      invalidReasons: list.filter((r) => !r.valid).map((r) => `round ${r.round}: ${r.invalidReason}`),
    });
  }
  return rows;
}

/** What the last `npm run bench:soak` concluded (bench/soak.json). */
export interface SoakVerdict {
  pass: boolean;
  verdict: string;
  finishedAt: string;
}

export interface GoalInputs {
  rows: Row[];
  rounds: RoundRecord[];
  cpuMode: Mode;
  memory: Results['memory'];
  keepAlive: Results['keepAlive'];
  fixedRate?: Results['fixedRate'];
  soak?: SoakVerdict;
  postgres?: PostgresSection;
  idleConnections?: IdleConnections;
  cores?: number;
  /** The proxies of reference and their versions, or why they are not in the run. */
  references?: Partial<Record<'nginx' | 'haproxy', string>>;
}

const fmt = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');
const signed = (n: number, digits = 2) => (n >= 0 ? `+${fmt(n, digits)}` : fmt(n, digits));

/** The performance goals, each with its figure and pass or miss. */
export function buildGoals({ rows, rounds, cpuMode, memory, keepAlive, fixedRate, soak, postgres, idleConnections, cores, references = {} }: GoalInputs): Goal[] {
  const row = (scenario: Scenario, target: Target, mode: Mode) =>
    rows.find((r) => r.scenario === scenario && r.target === target && r.mode === mode && r.validRounds > 0);
  const goals: Goal[] = [];

  const otherMode: Mode = cpuMode === 'pinned' ? 'unpinned' : 'pinned';
  /** The gateway's CPU over the product service's in `scenario`: its figure, or undefined without valid rounds. */
  const cpuRatio = (scenario: Scenario) => {
    const cpu = row(scenario, 'gateway', cpuMode)?.frontPerProductCpu;
    const other = row(scenario, 'gateway', otherMode)?.frontPerProductCpu;
    return cpu && { median: cpu.median, value: `${fmt(cpu.median)} (${cpuMode}, ${fmt(cpu.min)}-${fmt(cpu.max)})${other ? `; ${fmt(other.median)} ${otherMode}` : ''}` };
  };
  const cpu = cpuRatio('get');
  goals.push({
    name: 'gateway CPU per proxied GET / product service CPU per request',
    value: cpu?.value ?? 'no valid rounds',
    goal: `<= ${GOALS.cpuRatio}`,
    pass: cpu ? cpu.median <= GOALS.cpuRatio : undefined,
  });
  goals.push(postgresCpu(cpuRatio('get-postgres'), postgres));

  goals.push(tracingCost(rounds, [...new Set(rounds.filter((r) => r.scenario === 'get').map((r) => r.mode))]));
  goals.push(featureCosts(rounds));
  goals.push(referenceCpu(rows, cpuMode, references));

  const thr = row('get', 'gateway', 'unpinned')?.vsDirect;
  goals.push({
    name: `throughput through the gateway / direct (unpinned${cores ? `, ${cores} cores` : ''})`,
    value: thr ? `${fmt(thr.median)} (${fmt(thr.min)}-${fmt(thr.max)})` : 'no valid rounds',
    goal: `>= ${GOALS.throughput}`,
    pass: thr ? thr.median >= GOALS.throughput : undefined,
  });

  goals.push(addedLatency(rounds, fixedRate));

  const aggregate = (scenario: Scenario): { ratio: number; value: string } | undefined => {
    const agg = row(scenario, 'gateway', 'unpinned')?.cpuUs.front;
    const get = row('get', 'gateway', 'unpinned')?.cpuUs.front;
    if (!agg || !get) return undefined;
    const ratio = agg.median / get.median;
    return { ratio, value: `${fmt(ratio)}x: ${fmt(agg.median, 0)} µs of gateway CPU per request vs ${fmt(get.median, 0)} µs per proxied GET (unpinned)` };
  };
  const dashboard = aggregate('dashboard');
  goals.push({
    name: 'gateway CPU per GET /api/dashboard / per proxied GET',
    value: dashboard?.value ?? 'no valid rounds',
    goal: `<= ${GOALS.aggregateCpu}x`,
    pass: dashboard ? dashboard.ratio <= GOALS.aggregateCpu : undefined,
  });
  const full = aggregate('users-full');
  goals.push({
    name: 'gateway CPU per GET /api/users/:id/full / per proxied GET',
    value: full?.value ?? 'no valid rounds',
    goal: 'for information',
    pass: undefined,
  });

  goals.push(orderCost(row('orders', 'gateway', 'unpinned'), postgres ? 'SQLite' : 'PostgreSQL (BENCH_DATABASE_URL)'));
  if (postgres) {
    const measured = row('orders-postgres', 'gateway', 'unpinned');
    goals.push(measured || postgres.status === 'measured'
      ? orderCost(measured, 'PostgreSQL')
      : { ...orderCost(undefined, 'PostgreSQL'), value: postgres.status === 'off' ? 'left out (BENCH_POSTGRES_URL=off)' : `PostgreSQL did not answer at ${postgres.server} (${postgres.detail})` });
  }

  // After the bench is once the load has stopped for a few seconds, where a run records it; the
  // figure at the end of the last round is still shown (and judged in runs without the other).
  const settled = memory.settledMb !== undefined && Number.isFinite(memory.settledMb) && memory.settleS !== undefined;
  const afterMb = settled ? memory.settledMb! : memory.atEndMb;
  goals.push({
    name: 'gateway RSS after the bench',
    value: Number.isFinite(afterMb)
      ? `${fmt(afterMb, 0)} MB ${settled ? `${fmt(memory.settleS!, 0)} s after the last round (${fmt(memory.atEndMb, 0)} MB at its end) ` : ''}after ${memory.gatewayRequests.toLocaleString('en-US')} requests (peak ${fmt(memory.peakMb, 0)} MB)`
      : 'not measured',
    goal: `<= ${GOALS.rssAfterMb} MB${settled ? `, with the load stopped for ${fmt(memory.settleS!, 0)} s` : ''}`,
    pass: Number.isFinite(afterMb) ? afterMb <= GOALS.rssAfterMb : undefined,
  });
  goals.push(idleConnectionCost(idleConnections));

  // A run of a few minutes holds about 100 000 requests through the gateway, while its bounded
  // buffers (10 000 spans, the stale cache, the limiter's window) and V8's heap sizing settle:
  // flatness over a million is what `npm run bench:soak` measures, and its last verdict is quoted.
  goals.push({
    name: 'gateway memory stays flat over a million requests',
    value: soak ? `${soak.verdict.replace(/^(PASS|MISS) /, '')}; npm run bench:soak, ${soak.finishedAt}` : 'no soak on record (bench/soak.json, bench/tmp/soak.json): run npm run bench:soak',
    goal: 'RSS and heap floors <= +10 % from 100k to 1M requests',
    pass: soak?.pass,
  });
  const growth = (memory.lastQuarterFloorMb - memory.firstQuarterFloorMb) / memory.firstQuarterFloorMb;
  goals.push({
    name: 'gateway memory in this run',
    value: `RSS floor ${fmt(memory.firstQuarterFloorMb, 0)} MB in the first quarter of the run -> ${fmt(memory.lastQuarterFloorMb, 0)} MB in the last (${signed(growth * 100, 1)} %), peak ${fmt(memory.peakMb, 0)} MB, over ${memory.gatewayRequests.toLocaleString('en-US')} requests`,
    goal: 'for information: buffers are still filling',
    pass: undefined,
  });

  goals.push({
    name: 'client connections stay keep-alive',
    value: keepAlive.reused ? 'second request reused the socket' : `socket not reused (Connection: ${keepAlive.connectionHeader ?? 'absent'})`,
    goal: 'reused',
    pass: keepAlive.reused,
  });
  return goals;
}

/**
 * The gateway's added latency at half its saturation, paired round by round with the service
 * alone at the same rate: the p99 goal is met when at least GOALS.p99RunsWithin of the
 * GOALS.rateRuns runs keep it within GOALS.p99AddedMs (one run's p99 is one GC pause more or
 * less, so one run of five may miss), and the p50 goal by the median of the runs. A run without
 * a valid pair counts as one that missed; a smoke run of fewer runs needs the same share of them.
 */
function addedLatency(rounds: RoundRecord[], fixedRate: Results['fixedRate']): Goal {
  const paced = rounds.filter((r) => r.scenario === 'get-rate' && r.valid);
  const pairs = paced.filter((r) => r.target === 'gateway').flatMap((g) => {
    const d = paced.find((r) => r.target === 'direct' && r.round === g.round && r.mode === g.mode);
    return d ? [{ p50: g.load.latency.p50Ms - d.load.latency.p50Ms, p99: g.load.latency.p99Ms - d.load.latency.p99Ms }] : [];
  });
  const runs = Math.max(pairs.length, new Set(rounds.filter((r) => r.scenario === 'get-rate' && r.target === 'gateway').map((r) => `${r.mode} ${r.round}`)).size);
  const needed = Math.ceil((runs * GOALS.p99RunsWithin) / GOALS.rateRuns);
  const p50 = spread(pairs.map((p) => p.p50));
  const p99 = spread(pairs.map((p) => p.p99));
  const meeting = pairs.filter((p) => p.p99 <= GOALS.p99AddedMs).length;
  const have = pairs.length > 0;
  return {
    name: `added latency at a fixed ${fixedRate ? `${Math.round(fixedRate.rate)} req/s` : 'rate'} (half the gateway's saturation)`,
    value: have
      ? `p99 ${signed(p99.median)} ms (${signed(p99.min)} to ${signed(p99.max)}), ${meeting} of ${runs} runs within ${GOALS.p99AddedMs} ms; p50 ${signed(p50.median)} ms (${signed(p50.min)} to ${signed(p50.max)})`
      : 'no valid rounds',
    goal: `p99 <= ${GOALS.p99AddedMs} ms in at least ${have ? needed : GOALS.p99RunsWithin} of ${have ? runs : GOALS.rateRuns} runs, p50 <= ${GOALS.p50AddedMs} ms (median of the runs)`,
    pass: have ? meeting >= needed && p50.median <= GOALS.p50AddedMs : undefined,
  };
}

/**
 * What each feature costs the gateway per proxied GET with a verified token: the gateway's CPU per
 * request minus that of its copy with the feature off, paired round by round.
 */
function featureCosts(rounds: RoundRecord[]): Goal {
  const name = "what each feature costs the gateway per proxied GET (gateway CPU with it on - off)";
  const on = rounds.filter((r) => r.valid && r.scenario === 'features' && r.target === 'gateway');
  const parts = FEATURE_TARGETS.flatMap(({ feature, target }) => {
    const diffs = on.flatMap((g) => {
      const off = rounds.find((r) => r.valid && r.scenario === 'features' && r.target === target && r.round === g.round && r.mode === g.mode);
      return off ? [(g.cpuUs.front ?? NaN) - (off.cpuUs.front ?? NaN)] : [];
    });
    return diffs.length ? [`${feature} ${signed(median(diffs), 0)} µs`] : [];
  });
  if (!on.length || !parts.length) return { name, value: 'no valid pair of rounds', goal: 'for information', pass: undefined };
  const all = median(on.map((r) => r.cpuUs.front ?? NaN));
  return { name, value: `${parts.join(', ')} of ${fmt(all, 0)} µs with every feature on (${on[0].mode}, ${on.length} rounds each)`, goal: 'for information', pass: undefined };
}

/** nginx's and HAProxy's CPU per proxied GET beside the gateway's, in the same saturation rounds. */
function referenceCpu(rows: Row[], mode: Mode, references: Partial<Record<'nginx' | 'haproxy', string>>): Goal {
  const front = (target: Target) => rows.find((r) => r.scenario === 'get' && r.target === target && r.mode === mode && r.validRounds > 0)?.cpuUs.front;
  const gateway = front('gateway');
  const parts = (['nginx', 'haproxy'] as const).map((ref) => {
    const cpu = front(ref);
    if (!cpu) return `${TARGET_LABEL[ref]} ${references[ref] ?? 'not measured'}`;
    return `${TARGET_LABEL[ref]} ${fmt(cpu.median, 0)} µs${gateway ? ` (gateway ${fmt(gateway.median / cpu.median)}x)` : ''}`;
  });
  return {
    name: 'CPU per proxied GET of the references',
    value: `${gateway ? `gateway ${fmt(gateway.median, 0)} µs; ` : ''}${parts.join('; ')} (${mode})`,
    goal: 'for information',
    pass: undefined,
  };
}

/** One order through the gateway: the four processes' CPU together (the database server's not counted). */
function orderCost(r: Row | undefined, engine: string): Goal {
  const name = `CPU per order (POST /api/orders) across the four processes, ${engine}`;
  const goal = `<= ${GOALS.orderCpuMs} ms`;
  if (!r?.cpuUsTotal) return { name, value: 'no valid rounds', goal, pass: undefined };
  const ms = r.cpuUsTotal.median / 1000;
  const parts = `gateway ${fmt(r.cpuUs.front?.median ?? NaN, 0)}, users ${fmt(r.cpuUs.users.median, 0)}, products ${fmt(r.cpuUs.products.median, 0)}, orders ${fmt(r.cpuUs.orders.median, 0)} µs`;
  return { name, value: `${fmt(ms)} ms (${parts}) at ${fmt(r.rps.median, 0)} orders/s`, goal, pass: ms <= GOALS.orderCpuMs };
}

function idleConnectionCost(idle: IdleConnections | undefined): Goal {
  const name = `gateway RSS per idle keep-alive connection, at ${(idle?.connections ?? GOALS.idleConnections).toLocaleString('en-US')} connections`;
  const goal = `<= ${GOALS.idleConnectionKb} KB`;
  if (!idle) return { name, value: 'not measured', goal, pass: undefined };
  const measured = Number.isFinite(idle.perConnectionKb) && idle.held > 0;
  const value = measured
    ? `${fmt(idle.perConnectionKb, 1)} KB: ${fmt(idle.rssBeforeMb, 0)} -> ${fmt(idle.rssHeldMb, 0)} MB holding ${idle.held.toLocaleString('en-US')}${idle.error ? ` (${idle.error})` : ''}`
    : `not measured: ${idle.error ?? 'no connection held'}`;
  return { name, value, goal, pass: measured && !idle.error ? idle.perConnectionKb <= GOALS.idleConnectionKb : undefined };
}

/**
 * The same ratio with the product service reading from PostgreSQL, a pooled query over a socket
 * per GET, which costs it more CPU than SQLite's in-process read: the gateway's share must hold there too.
 */
function postgresCpu(cpu: { median: number; value: string } | undefined, postgres: PostgresSection | undefined): Goal {
  const name = 'gateway CPU per proxied GET / product service CPU per request, products on PostgreSQL';
  const goal = `<= ${GOALS.cpuRatio}`;
  const none = (value: string): Goal => ({ name, value, goal, pass: undefined });
  if (!postgres) return none('the whole run is on PostgreSQL (BENCH_DATABASE_URL): the goal above is this one');
  if (postgres.status === 'off') return none('left out (BENCH_POSTGRES_URL=off)');
  if (postgres.status === 'unreachable') return none(`PostgreSQL did not answer at ${postgres.server} (${postgres.detail})`);
  if (!cpu) return none('no valid rounds');
  return { name, value: cpu.value, goal, pass: cpu.median <= GOALS.cpuRatio };
}

/**
 * What tracing costs: the gateway's p50 with tracing on over the same gateway's with tracing off
 * (OTEL_SDK_DISABLED), paired round by round in every saturation GET round, pinned and unpinned
 * (on this machine one pair can swing by 20 % either way: the median of six is steadier than of
 * three); CPU per request and the fixed-rate rounds' p50 are reported beside it.
 */
function tracingCost(rounds: RoundRecord[], modes: Mode[]): Goal {
  const pairs = (scenario: Scenario, m: Mode) => rounds.filter((r) => r.valid && r.scenario === scenario && r.mode === m && r.target === 'gateway').flatMap((on) => {
    const off = rounds.find((r) => r.valid && r.scenario === scenario && r.mode === m && r.target === 'untraced' && r.round === on.round);
    return off ? [{ on, off }] : [];
  });
  const sat = modes.flatMap((m) => pairs('get', m));
  const mode = modes.join(' and ');
  const name = "tracing's cost: the gateway's p50 on a proxied GET with tracing on / off";
  const goal = '<= +10 %';
  if (!sat.length) return { name, value: 'no valid pair of rounds', goal, pass: undefined };
  const p50On = median(sat.map((p) => p.on.load.latency.p50Ms));
  const p50Off = median(sat.map((p) => p.off.load.latency.p50Ms));
  const cost = spread(sat.map((p) => (p.on.load.latency.p50Ms / p.off.load.latency.p50Ms - 1) * 100));
  const cpuOn = median(sat.map((p) => p.on.cpuUs.front ?? NaN));
  const cpuOff = median(sat.map((p) => p.off.cpuUs.front ?? NaN));
  const cpuCost = median(sat.map((p) => ((p.on.cpuUs.front ?? NaN) / (p.off.cpuUs.front ?? NaN) - 1) * 100));
  const paced = pairs('get-rate', 'unpinned');
  const pacedText = paced.length
    ? `; at the fixed rate p50 ${fmt(median(paced.map((p) => p.on.load.latency.p50Ms)))} ms on vs ${fmt(median(paced.map((p) => p.off.load.latency.p50Ms)))} ms off (${signed(median(paced.map((p) => (p.on.load.latency.p50Ms / p.off.load.latency.p50Ms - 1) * 100)), 1)} %)`
    : '';
  return {
    name,
    value: `p50 ${fmt(p50On)} ms on vs ${fmt(p50Off)} ms off at c=50 (${mode}, ${sat.length} pairs of rounds): ${signed(cost.median, 1)} % (${signed(cost.min, 1)} to ${signed(cost.max, 1)}); CPU ${fmt(cpuOn, 0)} vs ${fmt(cpuOff, 0)} µs/req (${signed(cpuCost, 1)} %)${pacedText}`,
    goal,
    pass: cost.median <= 10,
  };
}

const num = (n: number) => {
  if (!Number.isFinite(n)) return '-';
  const abs = Math.abs(n);
  if (abs >= 100) return String(Math.round(n));
  if (abs >= 10) return n.toFixed(1);
  return n.toFixed(2);
};

function cell(s: Spread | undefined, rounds: number): string {
  if (!s || !Number.isFinite(s.median)) return '-';
  return rounds > 1 && s.min !== s.max ? `${num(s.median)} (${num(s.min)}-${num(s.max)})` : num(s.median);
}

export const TABLE_HEADER = [
  'scenario', 'via', 'mode', 'conns', 'ok/rounds', 'req/s', 'p50 ms', 'p99 ms', 'errors/non-2xx',
  'CPU µs/req: front', 'products', 'users', 'orders', 'front/products CPU', 'x direct', 'x bare', 'x nginx', 'x haproxy',
];

export function tableCells(rows: Row[]): string[][] {
  return rows.map((r) => {
    const n = r.validRounds || r.rounds;
    return [
      SCENARIO_LABEL[r.scenario] + (r.rate ? ` @${Math.round(r.rate)}/s` : ''),
      TARGET_LABEL[r.target],
      r.mode,
      String(r.connections),
      `${r.validRounds}/${r.rounds}${r.validRounds < r.rounds ? ' INVALID' : ''}`,
      cell(r.rps, n),
      cell(r.p50Ms, n),
      cell(r.p99Ms, n),
      `${r.errors}/${r.non2xx}`,
      cell(r.cpuUs.front, n),
      cell(r.cpuUs.products, n),
      cell(r.cpuUs.users, n),
      cell(r.cpuUs.orders, n),
      cell(r.frontPerProductCpu, n),
      cell(r.vsDirect, n),
      cell(r.vsBare, n),
      cell(r.vsNginx, n),
      cell(r.vsHaproxy, n),
    ];
  });
}

/** A plain-text table that lines up in a terminal. */
export function textTable(header: string[], body: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

function markdownTable(header: string[], body: string[][]): string {
  const esc = (c: string) => c.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${header.map((_, i) => (i < 3 ? '---' : '---:')).join('|')}|`,
    ...body.map((row) => `| ${row.map(esc).join(' | ')} |`),
  ].join('\n');
}

export function goalLines(goals: Goal[]): string[] {
  return goals.map((g) => `${g.pass === undefined ? 'n/a ' : g.pass ? 'PASS' : 'MISS'}  ${g.name}: ${g.value} (goal ${g.goal})`);
}

function machineLine(r: Results): string {
  const m = r.machine;
  return `${m.cores} cores, ${m.cpuModel}, ${m.memoryGb} GB, Node ${m.node}, ${m.platform}, kernel ${m.kernel}`;
}

/** What every reader needs besides the table: how it was measured, what failed. */
export function notes(r: Results): string[] {
  const lines = [
    `Machine: ${machineLine(r)}`,
    `Rounds: ${r.settings.rounds} x ${r.settings.durationS} s each (the fixed-rate ones ${r.settings.rateRuns ?? r.settings.rounds} x), interleaved (direct, gateway, gateway with tracing off, bare, nginx, HAProxy, direct, ...) after ${r.settings.warmupS} s of warm-up per target; medians (min-max) of valid rounds.`,
    `Pinning: ${r.settings.pinning}. nginx: ${r.settings.nginx}. HAProxy: ${r.settings.haproxy ?? 'not requested'}. Storage: ${r.settings.storage ?? 'SQLite'}.`,
    'CPU: utime+stime from /proc/<pid>/stat before and after each round, divided by the responses of the round; "front" is the process the round went through (a gateway, the bare proxy, nginx or HAProxy).',
    '"Features off in turn" rows: every request carries a demo admin\'s verified token; "gateway, tracing off", "metrics off" and "limiter off" are gateway processes of their own with OTEL_SDK_DISABLED, REQUEST_METRICS_DISABLED or RATE_LIMIT_DISABLED and the same upstreams; "auth off" is the gateway itself in open mode sent no token (nothing to verify).',
    'CPU per order: the gateway\'s, the user, product and order services\' CPU per order together; on PostgreSQL the database server\'s own is not counted.',
  ];
  if (r.idleConnections) {
    const i = r.idleConnections;
    lines.push(`Idle connections: after the rounds on SQLite, ${i.connections} clients each sent one GET /api/products/1 through the gateway and kept the connection open; the gateway's RSS (median of three reads) before, and 2 s after the last one opened while they were held, over the connections held (the heap their requests grew counts as theirs)${i.error ? `; ${i.error}` : ''}.`);
  }
  if (r.fixedRate) {
    lines.push(`Fixed-rate rounds: ${Math.round(r.fixedRate.rate)} req/s, half the gateway's median saturation of ${Math.round(r.fixedRate.gatewaySaturationRps)} req/s (${r.fixedRate.mode}), open loop on keep-alive connections; latency per request, µs resolution.`);
  }
  if (r.postgres) lines.push(postgresNote(r.postgres, r.settings.warmupS));
  if (r.invalidRounds.length) {
    lines.push(`INVALID rounds (left out of the medians): ${r.invalidRounds.length}`);
    for (const i of r.invalidRounds) lines.push(`  #${i.index} ${SCENARIO_LABEL[i.scenario]} via ${TARGET_LABEL[i.target]} (${i.mode}, round ${i.round}): ${i.reason}`);
  } else {
    lines.push('Every round was valid: no errors, every answer had the expected status.');
  }
  if (r.stolenRounds.length) lines.push(`The hypervisor stole CPU (> 1 %) during rounds ${r.stolenRounds.map((i) => `#${i}`).join(', ')}: their figures are less steady.`);
  if (r.disturbedRounds.length) {
    lines.push(`Other processes used over 5 % of the machine during ${r.disturbedRounds.length} of ${r.rounds.length} rounds (${r.disturbedRounds.map((i) => `#${i}`).join(', ')}): their figures are less steady.`);
    // The server's processes are not ours to count, so its work shows up as someone else's.
    const onPostgres = (i: number) => r.settings.storage === 'PostgreSQL' || ON_POSTGRES.has(r.rounds[i - 1]?.scenario);
    if (r.disturbedRounds.some(onPostgres)) lines.push('In rounds with the services on PostgreSQL, the database server\'s own processes count among those others.');
  }
  lines.push(`Elapsed: ${r.elapsedS.toFixed(0)} s.`);
  return lines;
}

function postgresNote(p: PostgresSection, warmupS: number): string {
  const label = `"${SCENARIO_LABEL['get-postgres']}" and "${SCENARIO_LABEL['orders-postgres']}" rows`;
  if (p.status === 'off') return `${label}: left out (BENCH_POSTGRES_URL=off).`;
  if (p.status === 'unreachable') return `${label}: none, PostgreSQL did not answer at ${p.server} (${p.detail}); start it, or set BENCH_POSTGRES_URL (off leaves them out).`;
  return `${label}: after every other round, the system stopped and started again with the three services on PostgreSQL ${p.detail} at ${p.server} (schemas ${p.schemaTag}_*, dropped after the run); ${warmupS} s of warm-up per target, then the saturation GET rounds direct and through the gateway, interleaved, in the same modes, and the order rounds through the gateway.`;
}

/** The row that says why a SQLite run has no PostgreSQL rows, in the table's columns. */
export function postgresMissingRow(p: PostgresSection | undefined, connections: number): string[] | undefined {
  if (!p || p.status === 'measured') return undefined;
  return [SCENARIO_LABEL['get-postgres'], 'gateway', '-', String(connections), p.status === 'off' ? 'off' : 'not reachable', ...Array<string>(TABLE_HEADER.length - 5).fill('-')];
}

export function roundLine(r: RoundRecord, total: number): string {
  const cpu = [
    r.cpuUs.front !== undefined ? `${r.target} ${num(r.cpuUs.front)}` : undefined,
    `products ${num(r.cpuUs.products)}`,
    !GET_SCENARIOS.has(r.scenario) ? `users ${num(r.cpuUs.users)}, orders ${num(r.cpuUs.orders)}` : undefined,
  ].filter(Boolean).join(', ');
  return `[${String(r.index).padStart(String(total).length)}/${total}] ${SCENARIO_LABEL[r.scenario]} via ${TARGET_LABEL[r.target]}, ${r.mode}, c=${r.connections}${r.rate ? ` @${Math.round(r.rate)}/s` : ''}, round ${r.round}: `
    + `${num(r.load.rps)} req/s, p50 ${num(r.load.latency.p50Ms)} ms, p99 ${num(r.load.latency.p99Ms)} ms, CPU µs/req ${cpu}`
    + `${r.stolen ? `, steal ${r.stealPct.toFixed(1)} %` : ''}${r.disturbed ? `, others used ${r.foreignCpuPct.toFixed(0)} % of the machine` : ''}${r.valid ? '' : `  INVALID: ${r.invalidReason}`}`;
}

export function markdownReport(r: Results, body: string[][]): string {
  const goals = goalLines(r.goals).map((l) => `- ${l.replace(/^(PASS|MISS|n\/a )\s+/, '**$1** ')}`);
  const rounds = r.rounds.map((x) => `| ${x.index} | ${SCENARIO_LABEL[x.scenario]} | ${TARGET_LABEL[x.target]} | ${x.mode} | ${x.connections} | ${x.round} | ${num(x.load.rps)} | ${num(x.load.latency.p50Ms)} | ${num(x.load.latency.p99Ms)} | ${x.load.errors}/${x.load.non2xx} | ${x.cpuUs.front === undefined ? '-' : num(x.cpuUs.front)} | ${num(x.cpuUs.products)} | ${num(x.loadGeneratorCpuPct)} | ${x.stealPct.toFixed(1)} | ${x.foreignCpuPct.toFixed(1)} | ${num(x.gatewayRssMb.after)} | ${x.valid ? 'ok' : `INVALID: ${x.invalidReason}`} |`);
  return [
    '# Benchmark results',
    '',
    `Run of \`npm run bench\` finished ${r.finishedAt}${r.smoke ? ' (smoke run: figures are not meaningful)' : ''}.`,
    '',
    markdownTable(TABLE_HEADER, body),
    '',
    '## Goals',
    '',
    ...goals,
    '',
    '## How it was measured',
    '',
    ...notes(r).map((l) => (l.startsWith('  ') ? `  - ${l.trim()}` : `- ${l}`)),
    '',
    '## Every round',
    '',
    '| # | scenario | via | mode | conns | round | req/s | p50 ms | p99 ms | errors/non-2xx | front CPU µs/req | products CPU µs/req | load generator CPU % | steal % | others\' CPU % | gateway RSS MB | |',
    '|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
    ...rounds,
    '',
  ].join('\n');
}
