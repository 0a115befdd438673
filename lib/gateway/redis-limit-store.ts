// The rate limiters' shared store: hit counts kept in Redis, so every gateway replica counts
// against the same windows. While Redis cannot be reached the limiters fall back (rate-limit.ts)
// and this store says so: its state, a gauge, one warn line per outage and one info line at the end.
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import type { Logger } from '../platform/logger.js';
import type { GatewayMetrics } from './metrics.js';

/** `connecting`: no answer yet since start; `up`: answering; `degraded`: unreachable, the limiters fall back. */
type LimitStoreState = 'connecting' | 'up' | 'degraded';

export interface LimitStoreStatus {
  kind: 'redis';
  state: LimitStoreState;
}

interface WindowHits {
  hits: number;
  /** When the window ends, in epoch milliseconds. */
  resetMs: number;
}

export interface LimitStore {
  /** Whether increment() should be asked; false while degraded (the caller falls back at once). */
  readonly usable: boolean;
  status: () => LimitStoreStatus;
  /**
   * Counts one hit for `key` in a window of `windowMs` that starts with the key's first hit.
   * Rejects when Redis does not answer within the command timeout (and the store turns degraded).
   */
  increment(key: string, windowMs: number): Promise<WindowHits>;
  close(): Promise<void>;
}

export interface RedisLimitStoreOptions {
  url: string;
  /** Put before every key, so several gateways (or test runs) can keep apart on one Redis. */
  prefix: string;
  commandTimeoutMs: number;
  connectTimeoutMs: number;
  /** Reconnect attempts wait 50 ms, doubling up to this. */
  reconnectMaxMs: number;
  logger: Logger;
  metrics: GatewayMetrics;
}

/**
 * INCR and, for a key new in this window, PEXPIRE, in one atomic step; a key left without an
 * expiry (an INCR whose PEXPIRE never ran) gets one here, so no client is limited for ever.
 * Answers the hits and the milliseconds left in the window.
 */
const HIT_SCRIPT = `
local hits = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if hits == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {hits, ttl}`;

// ioredis (about 13 MB of the gateway's resident memory) is loaded by the first store made, that is
// only when REDIS_URL is set: a gateway that counts in its own memory never pays for it.
let ioredis: typeof import('ioredis') | undefined;
const loadIoredis = (): typeof import('ioredis') => (ioredis ??= createRequire(import.meta.url)('ioredis') as typeof import('ioredis'));

type HitClient = Redis & { gatewayHit(key: string, windowMs: number): Promise<[number, number]> };

/** Keys are prefix + the limiter's name + the client; a client key longer than this is cut. */
const MAX_CLIENT_KEY = 200;

/**
 * Commands are sent only while the store is up (or before its first answer): while degraded no
 * command waits, and every request is decided locally. The offline queue then holds only the
 * commands of the first connection attempt, each bounded by the command timeout and all by the
 * gateway's MAX_IN_FLIGHT. A command that times out on a live connection (Redis stalled, or a
 * network that drops packets) makes the store degraded too, and the connection is dropped and made
 * again: late replies on it cannot be trusted.
 *
 * A new connection is not trusted either until it has answered one hit on a key of its own within
 * the command timeout: a Redis that answers the handshake but not the script (stalled, or behind
 * a link that is slow only for larger commands) would otherwise be declared up at every reconnect
 * and make the next requests wait out the timeout, again and again. Each connection that fails
 * that probe doubles the wait before the next one, as the reconnect back-off does.
 */
export function createRedisLimitStore({ url, prefix, commandTimeoutMs, connectTimeoutMs, reconnectMaxMs, logger, metrics }: RedisLimitStoreOptions): LimitStore {
  const log = logger.child({ component: 'rate-limit-store' });
  let state: LimitStoreState = 'connecting';
  let closed = false;
  /** Connections in a row that connected but did not answer the probe: they lengthen the back-off. */
  let unansweredConnections = 0;

  const { Redis } = loadIoredis();
  const ReplyError = loadIoredis().ReplyError as new () => Error;
  const client = new Redis(url, {
    commandTimeout: commandTimeoutMs,
    connectTimeout: connectTimeoutMs,
    // A command fails at once when the connection is lost, rather than waiting for a reconnect.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableOfflineQueue: true,
    retryStrategy: (attempt: number) => Math.min(50 * 2 ** Math.min(attempt + unansweredConnections, 16), reconnectMaxMs),
    lazyConnect: false,
    // How long close() lets a socket end before destroying it (a refused one never says it closed).
    disconnectTimeout: commandTimeoutMs,
  }) as HitClient;
  client.defineCommand('gatewayHit', { numberOfKeys: 1, lua: HIT_SCRIPT });
  metrics.rateLimitStoreUp(false);

  const up = (): void => {
    if (state === 'up' || closed) return;
    if (state === 'degraded') log.info('rate limit store reachable again: limits are shared across gateways again');
    state = 'up';
    metrics.rateLimitStoreUp(true);
  };

  // Never the URL (it may hold a password); the error's code says enough (ECONNREFUSED, ETIMEDOUT).
  const degraded = (err: unknown): void => {
    if (closed) return;
    if (state !== 'degraded') {
      const e = err as { code?: string; message?: string };
      log.warn({ reason: e.code ?? e.message }, 'rate limit store unreachable: limits are not shared (RATE_LIMIT_STORE_FAILURE decides) until it answers again');
      state = 'degraded';
      metrics.rateLimitStoreUp(false);
    }
  };

  const isTimeout = (err: unknown): boolean => (err as Error).message === 'Command timed out';
  // Redis answered, with an error (a key of the wrong type under our prefix, say): it is reachable.
  const isReply = (err: unknown): boolean => err instanceof ReplyError;
  /** Drops a connection whose replies can no longer be matched to their commands. */
  const dropStalled = (): void => {
    // Several commands may time out on one connection: it counts once.
    if (client.status !== 'ready') return;
    unansweredConnections = Math.min(unansweredConnections + 1, 16);
    client.disconnect(true);
  };

  // The probe is not a request: it is not counted as a failure, and no request waits for it.
  const probe = (): void => {
    const answered = (): void => {
      unansweredConnections = 0;
      up();
    };
    client.gatewayHit(`${prefix}probe`, 1000).then(answered, (err: unknown) => {
      if (isReply(err)) return answered();
      degraded(err);
      if (isTimeout(err)) dropStalled();
    });
  };

  client.on('ready', probe);
  // Every connection failure comes as 'error' (and ioredis prints unhandled ones to stderr).
  client.on('error', degraded);
  client.on('close', () => {
    if (state === 'up') degraded({ code: 'CONNECTION_CLOSED' });
  });

  return {
    get usable() {
      return state !== 'degraded';
    },
    status: () => ({ kind: 'redis', state }),
    increment: async (key, windowMs) => {
      try {
        const [hits, ttl] = await client.gatewayHit(prefix + key.slice(0, MAX_CLIENT_KEY), windowMs);
        return { hits, resetMs: Date.now() + ttl };
      } catch (err) {
        metrics.rateLimitStoreFailure();
        // This request falls back, but the store stays in use.
        if (isReply(err)) throw err;
        degraded(err);
        if (isTimeout(err)) dropStalled();
        throw err;
      }
    },
    // Unanswered commands fail at once (their requests fall back); no reconnect follows.
    close: () => {
      closed = true;
      client.disconnect();
      return Promise.resolve();
    },
  };
}
