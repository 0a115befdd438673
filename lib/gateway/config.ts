// The gateway's configuration: one zod schema over the environment, parsed once at start.
import express from 'express';
import { z } from 'zod';
import { boolVar, callerShape, commonShape, intVar, MAX_TIMER_MS, portVar, serviceUrlShape, urlListVar } from '../platform/config.js';
import { authShape } from '../platform/identity.js';

const PER_TRY_MESSAGE = 'must be a whole number from 0 to 600000';

const TRUST_PROXY_MESSAGE = 'must be false, a hop count, or a comma-separated list of proxy addresses/subnets';

/**
 * Express `trust proxy` syntax, minus `true`: trusting every hop lets any client pick its own
 * address with X-Forwarded-For and walk past the rate limit.
 */
const trustProxyVar = z
  .string()
  .optional()
  .transform((value, ctx): false | number | string => {
    if (value === undefined || value === 'false') return false;
    if (/^\d{1,3}$/.test(value)) return Number(value) === 0 ? false : Number(value);
    if (value === 'true') {
      ctx.addIssue({ code: 'custom', message: `${TRUST_PROXY_MESSAGE}; true would believe any client's X-Forwarded-For` });
      return z.NEVER;
    }
    try {
      // Express compiles the setting with proxy-addr, which throws on an address it cannot read.
      express().set('trust proxy', value);
    } catch {
      ctx.addIssue({ code: 'custom', message: TRUST_PROXY_MESSAGE });
      return z.NEVER;
    }
    return value;
  });

/**
 * Addresses in Express `trust proxy` syntax (`loopback`, addresses, subnets), compiled to a check.
 * The value is kept as given; `addressCheck` compiles it where it is used.
 */
const addressListVar = (fallback: string) =>
  z.string().default(fallback).superRefine((value, ctx) => {
    // Express reads these as "trust every address" (a hop count, or true): never a list of them.
    if (/^\s*(\d+|true)\s*$/i.test(value)) {
      ctx.addIssue({ code: 'custom', message: 'must list addresses or subnets; a number or true would let every address in' });
      return;
    }
    try {
      addressCheck(value);
    } catch {
      ctx.addIssue({ code: 'custom', message: 'must be a comma-separated list of addresses, subnets or loopback/linklocal/uniquelocal' });
    }
  });

/** Whether an address is in a list of addressListVar's syntax (IPv4-mapped IPv6 addresses match their IPv4 form). */
export function addressCheck(list: string): (address: string | undefined) => boolean {
  // Express compiles the list with proxy-addr, as it does TRUST_PROXY; it throws on a bad entry.
  const trusts = express().set('trust proxy', list).get('trust proxy fn') as (address: string, hop: number) => boolean;
  return (address) => address !== undefined && trusts(address, 0);
}

export const GatewayConfigSchema = z.object({
  ...commonShape,
  ...authShape,
  ...serviceUrlShape,
  ...callerShape,
  PORT: portVar(3010),
  // Other gateways (comma-separated base URLs): /traces asks them for their own spans, so any
  // gateway shows a whole trace whichever gateway served it. Empty: none.
  GATEWAY_PEERS: urlListVar('', { allowEmpty: true }),
  // Requests per client per window on /api/*.
  RATE_LIMIT: intVar(100, 1, 1_000_000),
  RATE_WINDOW_MS: intVar(60_000, 100, MAX_TIMER_MS),
  // true: /api requests count against neither RATE_LIMIT nor ADDRESS_RATE_LIMIT (login attempts
  // still count against LOGIN_RATE_LIMIT). For measuring what the limiter costs, or when a proxy
  // in front already limits.
  RATE_LIMIT_DISABLED: boolVar(false),
  // true: requests are neither counted nor timed for /metrics (http_requests_total,
  // http_request_duration_seconds, gateway_requests_total stay empty); the process's and the
  // upstreams' metrics remain. For measuring what recording them costs.
  REQUEST_METRICS_DISABLED: boolVar(false),
  // Requests per client address per window on /api/*, whoever the caller claims to be, counted
  // before the token is checked: accounts made for the purpose (or refused tokens) do not buy an
  // address more. Unset: 5 x RATE_LIMIT, so a few people behind one office address still work.
  ADDRESS_RATE_LIMIT: z.string().regex(/^\d+$/, 'must be a whole number from 1 to 5000000')
    .transform(Number)
    .refine((n) => n >= 1 && n <= 5_000_000, 'must be a whole number from 1 to 5000000')
    .optional(),
  TRUST_PROXY: trustProxyVar,
  // Consecutive failures (refused, reset, timeout, 5xx) that open a service's circuit.
  CB_FAILURE_THRESHOLD: intVar(3, 1, 1000),
  // How long an open circuit waits before letting trial requests through.
  CB_RESET_TIMEOUT_MS: intVar(30_000, 10, MAX_TIMER_MS),
  // Trial requests a half-open circuit lets through; all must succeed to close it.
  CB_HALF_OPEN_REQUESTS: intVar(2, 1, 100),
  // Each trip soon after the last doubles the open time, up to this.
  CB_MAX_RESET_TIMEOUT_MS: intVar(300_000, 10, MAX_TIMER_MS),
  // Closed this long, a circuit forgets its earlier trips: the next one opens for CB_RESET_TIMEOUT_MS again.
  CB_STABLE_PERIOD_MS: intVar(60_000, 0, MAX_TIMER_MS),
  // While open, the service's /health is asked this often; an answer half-opens the circuit before
  // the open time ends. An ejected instance is asked as often, and is back at its first answer.
  // 0: wait for the open (or ejection) time.
  CB_PROBE_INTERVAL_MS: intVar(2000, 0, MAX_TIMER_MS),
  // After a circuit closes, the share of requests let through ramps from 10 % to all over this time
  // (the rest get 503 with Retry-After). 0: all at once.
  CB_SLOW_START_MS: intVar(5000, 0, MAX_TIMER_MS),
  // At most this many retries per 100 proxied requests (a retry goes out only when the request
  // never reached the service and is safe to repeat).
  RETRY_BUDGET_PERCENT: intVar(20, 0, 100),
  // With several instances, the longest a GET or HEAD waits for one instance's response headers
  // before it is sent to another instead (Envoy's per_try_timeout); sooner when the service
  // usually answers fast (see retry.ts). Unset: a quarter of UPSTREAM_TIMEOUT_MS, so the second
  // try keeps three quarters of the time. 0: a try waits for the whole timeout.
  UPSTREAM_PER_TRY_TIMEOUT_MS: z.string().regex(/^\d+$/, PER_TRY_MESSAGE).transform(Number).refine((n) => n <= 600_000, PER_TRY_MESSAGE).optional(),
  // POST /api/auth/login attempts per client address per window (the user service also limits failures per email).
  LOGIN_RATE_LIMIT: intVar(20, 1, 1_000_000),
  LOGIN_RATE_WINDOW_MS: intVar(60_000, 100, MAX_TIMER_MS),
  // Redis that keeps both rate limits, shared by every gateway replica (redis:// or rediss://,
  // user, password and db number as Redis URLs give them). Unset: each gateway counts on its own.
  REDIS_URL: z.url({ protocol: /^rediss?$/, message: 'must be a redis:// or rediss:// URL' }).optional(),
  // Put before every rate-limit key in Redis, to keep several systems (or test runs) apart on one.
  RATE_LIMIT_REDIS_PREFIX: z.string().min(1).max(100).default('gw:rl:'),
  // While Redis cannot be reached: `local` counts in each gateway (limits per replica); `deny`
  // answers 503 RATE_LIMIT_UNAVAILABLE.
  RATE_LIMIT_STORE_FAILURE: z.enum(['local', 'deny'], { message: 'must be local or deny' }).default('local'),
  // A Redis command slower than this fails: the request is decided as RATE_LIMIT_STORE_FAILURE says.
  REDIS_COMMAND_TIMEOUT_MS: intVar(200, 1, 60_000),
  REDIS_CONNECT_TIMEOUT_MS: intVar(1000, 1, 60_000),
  // Reconnect attempts wait 50 ms, doubling up to this; a stalled Redis is asked this often too.
  REDIS_RECONNECT_MAX_MS: intVar(2000, 10, 600_000),
  // Where a caller without a token may use the admin surface in open mode without ADMIN_TOKEN:
  // the operator's own machine by default. Both the connection's peer and the client's address
  // (as TRUST_PROXY reads it) must be in the list, so a proxy on this machine lets nobody in.
  ADMIN_ALLOW_ADDRESSES: addressListVar('loopback'),
  // Dashboard event streams one client address may hold open (besides 20 for the whole gateway),
  // so one client cannot take every stream.
  DASHBOARD_STREAMS_PER_CLIENT: intVar(5, 1, 20),
  // How long one answer of a service's /stats serves every GET /api/dashboard of the same caller
  // (those in flight share the call); 0 asks the services on every request.
  STATS_TTL_MS: intVar(1000, 0, 60_000),
  // The stale cache: last good GET answers, served with X-Cache: STALE when the service fails. 0 entries turns it off.
  CACHE_MAX_ENTRIES: intVar(1000, 0, 1_000_000),
  CACHE_MAX_AGE_MS: intVar(5 * 60_000, 1000, MAX_TIMER_MS),
  CACHE_MAX_BYTES: intVar(32 * 1024 * 1024, 1024, 2 ** 32),
  // /health asks each service's /health; a probe slower than this counts as failed.
  HEALTH_PROBE_TIMEOUT_MS: intVar(1000, 10, 60_000),
  // Requests the gateway handles at once; beyond it a fast 503 OVERLOADED with Retry-After.
  MAX_IN_FLIGHT: intVar(1000, 1, 1_000_000),
  // /health and /traces requests (each fans out to every service) handled at once, each route apart.
  OBSERVABILITY_MAX_IN_FLIGHT: intVar(4, 1, 1000),
  // A request body must keep arriving: at most this long between two reads (nginx's
  // client_body_timeout), and all of it within CLIENT_BODY_TOTAL_MS; else 408 and its upstream
  // connection is destroyed. A slow client holds a connection to the service while it sends.
  CLIENT_BODY_TIMEOUT_MS: intVar(5000, 10, MAX_TIMER_MS),
  CLIENT_BODY_TOTAL_MS: intVar(15_000, 10, MAX_TIMER_MS),
  // Requests one client (its user when the token was verified, else its address) has in the
  // gateway at once; beyond it 429. Well under a service instance's 256 pooled connections, so
  // that no one client can hold all of them.
  MAX_CLIENT_IN_FLIGHT: intVar(64, 1, 1_000_000),
  // Parsed but unanswered requests (about 3 kB each) and unsent answer bytes of all connections
  // together; past it the heaviest connections are closed first. Bounds what clients that send
  // without reading cost in memory.
  GATEWAY_MAX_BUFFERED_BYTES: intVar(64 * 1024 * 1024, 16 * 1024, 2 ** 32),
});

export type GatewayConfig = z.output<typeof GatewayConfigSchema>;

/** ADDRESS_RATE_LIMIT, or its default: five clients' worth. */
export const addressRateLimitOf = (config: Pick<GatewayConfig, 'ADDRESS_RATE_LIMIT' | 'RATE_LIMIT'>): number => config.ADDRESS_RATE_LIMIT ?? 5 * config.RATE_LIMIT;
