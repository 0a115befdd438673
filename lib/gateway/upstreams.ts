// The three services as the gateway sees them, each built once at start: its URL, one keep-alive
// agent for the proxy, one ServiceClient for aggregation, one for health probes, one breaker.
import { Agent } from 'node:http';
import type { Logger } from '../platform/logger.js';
import { ServiceClient, UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';
import { ServiceBreaker, type CircuitState } from './breakers.js';
import type { GatewayConfig } from './config.js';
import type { GatewayMetrics } from './metrics.js';

export const SERVICE_NAMES = ['users', 'products', 'orders'] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export interface ProbeResult {
  ok: boolean;
  latencyMs: number;
  failure?: UpstreamFailure;
}

export interface Upstream {
  name: ServiceName;
  /** Base URL as configured (shown by GET /). */
  url: string;
  /** Where the proxy sends requests: `localhost` pinned to 127.0.0.1 (Node may try ::1 first). */
  target: string;
  agent: Agent;
  /** UPSTREAM_TIMEOUT_MS: how long a call may wait for the service's answer. */
  timeoutMs: number;
  client: ServiceClient;
  breaker: ServiceBreaker;
  /** GET <service>/health with a short timeout, outside the breaker; concurrent callers share one probe. */
  probe(): Promise<ProbeResult>;
}

// Per service. Enough sockets for a busy gateway, few enough that a stuck service cannot take
// every file descriptor; idle sockets close after 30 s, well before the services' 65 s
// keepAliveTimeout, so we never write to a socket the service is closing (ECONNRESET).
const MAX_SOCKETS = 256;
const MAX_FREE_SOCKETS = 64;
const IDLE_SOCKET_MS = 30_000;

const URL_VARS: Record<ServiceName, 'USERS_URL' | 'PRODUCTS_URL' | 'ORDERS_URL'> = {
  users: 'USERS_URL',
  products: 'PRODUCTS_URL',
  orders: 'ORDERS_URL',
};

export function createUpstreams(config: GatewayConfig, logger: Logger, metrics: GatewayMetrics): Upstream[] {
  const log = logger.child({ component: 'breaker' });
  return SERVICE_NAMES.map((name) => {
    const url = config[URL_VARS[name]];
    const target = pinLoopback(url);
    const probeClient = new ServiceClient({ name, baseUrl: target, timeoutMs: config.HEALTH_PROBE_TIMEOUT_MS, maxResponseBytes: 64 * 1024 });
    let probing: Promise<ProbeResult> | undefined;
    const probe = (): Promise<ProbeResult> => {
      probing ??= runProbe(probeClient).finally(() => {
        probing = undefined;
      });
      return probing;
    };
    const breaker = new ServiceBreaker(
      name,
      {
        failureThreshold: config.CB_FAILURE_THRESHOLD,
        resetTimeoutMs: config.CB_RESET_TIMEOUT_MS,
        halfOpenRequests: config.CB_HALF_OPEN_REQUESTS,
        timeoutMs: config.UPSTREAM_TIMEOUT_MS,
        maxResetTimeoutMs: Math.max(config.CB_MAX_RESET_TIMEOUT_MS, config.CB_RESET_TIMEOUT_MS),
        stablePeriodMs: config.CB_STABLE_PERIOD_MS,
        probeIntervalMs: config.CB_PROBE_INTERVAL_MS,
        slowStartMs: config.CB_SLOW_START_MS,
        retryBudgetRatio: config.RETRY_BUDGET_PERCENT / 100,
      },
      {
        onStateChange: (state: CircuitState, previous: CircuitState) => {
          metrics.circuitState(name, state);
          const line = { service: name, state, previous };
          if (state === 'OPEN') log.warn(line, 'circuit opened');
          else log.info(line, state === 'CLOSED' ? 'circuit closed' : 'circuit half-open');
        },
        onFailure: (kind) => metrics.upstreamFailure(name, kind),
        onReject: () => metrics.circuitRejected(name),
        // An open circuit half-opens as soon as the service answers its /health again.
        probe: async () => (await probe()).ok,
      },
    );
    metrics.circuitState(name, breaker.state);
    return {
      name,
      url,
      target,
      agent: new Agent({ keepAlive: true, maxSockets: MAX_SOCKETS, maxFreeSockets: MAX_FREE_SOCKETS, timeout: IDLE_SOCKET_MS, scheduling: 'lifo' }),
      timeoutMs: config.UPSTREAM_TIMEOUT_MS,
      client: new ServiceClient({ name, baseUrl: target, timeoutMs: config.UPSTREAM_TIMEOUT_MS }),
      breaker,
      probe,
    };
  });
}

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

function pinLoopback(url: string): string {
  const u = new URL(url);
  if (u.hostname === 'localhost') u.hostname = '127.0.0.1';
  return u.toString().replace(/\/+$/, '');
}
