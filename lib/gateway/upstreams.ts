// The three services as the gateway sees them, each built once at start: its instances (each
// with its own keep-alive agent, outlier state and /health probe), one ServiceClient for
// aggregation over them, and one breaker.
import type { Agent } from 'node:http';
import { Instance, InstanceSet, pinLoopback } from '../platform/balancer.js';
import { urlList } from '../platform/config.js';
import { keepAliveAgent } from '../platform/http-transport.js';
import type { Logger } from '../platform/logger.js';
import { RetryBudget } from '../platform/retry.js';
import { RETRY_TOKENS_PER_INSTANCE, ServiceClient, UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';
import { ServiceBreaker, type CircuitState } from './breakers.js';
import type { GatewayConfig } from './config.js';
import type { GatewayMetrics } from './metrics.js';
import { TryPolicy } from './retry.js';

export const SERVICE_NAMES = ['users', 'products', 'orders'] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export interface ProbeResult {
  ok: boolean;
  latencyMs: number;
  failure?: UpstreamFailure;
}

/** One instance of a service: where the proxy connects, its pool, and its probe. */
export class GatewayInstance extends Instance {
  readonly hostname: string;
  readonly port: string;
  /** The Host header the instance is sent. */
  readonly host: string;
  readonly origin: string;
  readonly agent: Agent;
  /** Counts requests sent to it (gateway_upstream_requests_total). */
  readonly sent: { inc(): void };
  /** GET <instance>/health with a short timeout, outside the breaker; concurrent callers share one probe. */
  readonly probe: () => Promise<ProbeResult>;

  constructor(url: string, name: string, config: GatewayConfig, metrics: GatewayMetrics) {
    const target = pinLoopback(url);
    super(url, target);
    const u = new URL(target);
    this.hostname = u.hostname;
    this.port = u.port || '80';
    this.host = u.host;
    this.origin = u.origin;
    this.agent = keepAliveAgent();
    this.sent = metrics.instanceRequests(name, url);
    const probeClient = new ServiceClient({ name, baseUrl: target, timeoutMs: config.HEALTH_PROBE_TIMEOUT_MS, maxResponseBytes: 64 * 1024, agentOf: () => this.agent });
    let probing: Promise<ProbeResult> | undefined;
    this.probe = () => {
      probing ??= runProbe(probeClient).finally(() => {
        probing = undefined;
      });
      return probing;
    };
  }
}

export interface Upstream {
  name: ServiceName;
  /** Base URL(s) as configured, comma-separated (shown by GET /). */
  url: string;
  /** The first instance's address: `localhost` pinned to 127.0.0.1 (Node may try ::1 first). */
  target: string;
  /** Its instances; with one, the breaker alone decides and nothing is ever ejected. */
  instances: InstanceSet<GatewayInstance>;
  /** UPSTREAM_TIMEOUT_MS: how long a call may wait for the service's answer. */
  timeoutMs: number;
  /** Calls over the instances, balanced and sharing their outlier state. */
  client: ServiceClient;
  /** The proxy's per-try timeouts over the instances (none with one instance). */
  tries: TryPolicy;
  /** The retries the proxy and `client` may spend on the service, together (RETRY_BUDGET_PERCENT). */
  retries: RetryBudget;
  breaker: ServiceBreaker;
  /**
   * The service's probe: its instance's, or with several, every instance's at once (ok when one
   * answers), short and outside the breaker.
   */
  probe(): Promise<ProbeResult>;
  /** Stops timers and closes the pools. */
  close(): void;
}

const URL_VARS: Record<ServiceName, 'USERS_URL' | 'PRODUCTS_URL' | 'ORDERS_URL'> = {
  users: 'USERS_URL',
  products: 'PRODUCTS_URL',
  orders: 'ORDERS_URL',
};

export function createUpstreams(config: GatewayConfig, logger: Logger, metrics: GatewayMetrics): Upstream[] {
  const log = logger.child({ component: 'breaker' });
  return SERVICE_NAMES.map((name) => {
    const url = config[URL_VARS[name]];
    const list = urlList(url).map((u) => new GatewayInstance(u, name, config, metrics));
    const single = list.length === 1;
    const probeAll = async (upOnly: boolean): Promise<ProbeResult> => {
      const results = await Promise.all(list.map((i) => (upOnly && i.state !== 'up' ? Promise.resolve(undefined) : i.probe())));
      const answered = results.filter((r): r is ProbeResult => r !== undefined);
      if (answered.length === 0) return { ok: false, latencyMs: 0, failure: 'refused' };
      const ok = answered.filter((r) => r.ok);
      if (ok.length) return { ok: true, latencyMs: Math.min(...ok.map((r) => r.latencyMs)) };
      return answered[0];
    };
    const probe = single ? list[0].probe : () => probeAll(false);
    // With several instances the breaker follows them: it opens when the last one is ejected
    // (not after its own count of failures), and closes as soon as one is back. An ejected
    // instance is probed as often as an open circuit, so that it is back within two probe
    // intervals of answering again, whatever its ejection time.
    const instances = new InstanceSet<GatewayInstance>(
      list,
      {
        consecutiveFailures: config.OUTLIER_CONSECUTIVE_FAILURES,
        ejectionMs: config.OUTLIER_EJECTION_MS,
        maxEjectionMs: Math.max(config.OUTLIER_EJECTION_MS, config.OUTLIER_MAX_EJECTION_MS),
        probeIntervalMs: config.CB_PROBE_INTERVAL_MS,
        slowStartMs: config.CB_SLOW_START_MS,
      },
      {
        probe: async (i) => (await i.probe()).ok,
        onStateChange: (i) => {
          metrics.instanceUp(name, i.url, i.state === 'up');
          // `upstream`, not `service`: every line's `service` is the process that writes it.
          if (i.state === 'up') log.info({ upstream: name, instance: i.url }, `${name} instance ${i.url} back`);
          else log.warn({ upstream: name, instance: i.url, consecutiveFailures: i.consecutiveFailures }, `${name} instance ${i.url} ejected`);
        },
        onAllOut: () => {
          if (breaker.state !== 'OPEN') breaker.forceOpen();
        },
        onBack: () => breaker.instanceBack(),
        onFailure: single ? undefined : (i, kind) => metrics.upstreamFailure(name, kind, i.url),
      },
    );
    const breaker = new ServiceBreaker(
      name,
      {
        failureThreshold: single ? config.CB_FAILURE_THRESHOLD : Number.POSITIVE_INFINITY,
        resetTimeoutMs: config.CB_RESET_TIMEOUT_MS,
        halfOpenRequests: config.CB_HALF_OPEN_REQUESTS,
        timeoutMs: config.UPSTREAM_TIMEOUT_MS,
        maxResetTimeoutMs: Math.max(config.CB_MAX_RESET_TIMEOUT_MS, config.CB_RESET_TIMEOUT_MS),
        stablePeriodMs: config.CB_STABLE_PERIOD_MS,
        probeIntervalMs: config.CB_PROBE_INTERVAL_MS,
        slowStartMs: config.CB_SLOW_START_MS,
      },
      {
        onStateChange: (state: CircuitState, previous: CircuitState) => {
          metrics.circuitState(name, state);
          const line = { upstream: name, state, previous, ...(single ? { instance: list[0].url } : {}) };
          if (state === 'OPEN') log.warn(line, `${name} circuit opened`);
          else log.info(line, `${name} circuit ${state === 'CLOSED' ? 'closed' : 'half-open'}`);
        },
        // With several instances, failures are counted per instance (with its label) instead.
        onFailure: single ? (kind) => metrics.upstreamFailure(name, kind) : undefined,
        onReject: () => metrics.circuitRejected(name),
        // An open circuit half-opens as soon as the service answers its /health again; with
        // several instances, as soon as an instance still in the rotation does (one that was
        // ejected comes back through its own probe).
        probe: single ? async () => (await probe()).ok : async () => (await probeAll(true)).ok,
      },
    );
    // With several instances it starts full, as a client's own does: an instance lost in the first
    // seconds fails every call in flight on it, and each may go to another. A lone instance's
    // retries go back to it, so they wait to be earned.
    const cap = RETRY_TOKENS_PER_INSTANCE * list.length;
    const retries = new RetryBudget({ ratio: config.RETRY_BUDGET_PERCENT / 100, cap, initial: list.length > 1 ? cap : 1 });
    metrics.circuitState(name, breaker.state);
    for (const i of list) metrics.instanceUp(name, i.url, true);
    return {
      name,
      url,
      target: list[0].target,
      instances,
      timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      client: new ServiceClient({ name, instances: instances as unknown as InstanceSet, timeoutMs: config.UPSTREAM_TIMEOUT_MS, retries, agentOf: poolOf }),
      tries: new TryPolicy(instances, single ? 0 : (config.UPSTREAM_PER_TRY_TIMEOUT_MS ?? Math.floor(config.UPSTREAM_TIMEOUT_MS / 4))),
      retries,
      breaker,
      probe,
      close: () => {
        breaker.shutdown();
        instances.shutdown();
        for (const i of list) i.agent.destroy();
      },
    };
  });
}

/** An instance's pool, the proxy's: a client over the instances shares it. */
const poolOf = (instance: Instance): Agent => (instance as GatewayInstance).agent;

async function runProbe(client: ServiceClient): Promise<ProbeResult> {
  const started = performance.now();
  const latency = () => Math.round((performance.now() - started) * 10) / 10;
  try {
    await client.get('/health');
    return { ok: true, latencyMs: latency() };
  } catch (err) {
    return { ok: false, latencyMs: latency(), failure: err instanceof UpstreamUnavailableError ? err.failure : 'bad_response' };
  }
}
