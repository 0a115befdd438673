// The /api/* rate limits: RATE_LIMIT requests per RATE_WINDOW_MS per client (per user id for a
// verified caller, per address for anonymous ones), and ADDRESS_RATE_LIMIT per address whoever
// the caller is (a limiter made `byAddress`). Counted in this process, or in Redis (shared by
// every gateway) when a store is given.
import type { Request, RequestHandler, Response } from 'express';
import { ipKeyGenerator } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import type { GatewayMetrics } from './metrics.js';
import type { LimitStore } from './redis-limit-store.js';

/** What a limiter does while its shared store is unreachable: count in this process, or refuse with 503. */
type StoreFailureMode = 'local' | 'deny';

interface SharedCounting {
  store: LimitStore;
  /** Keeps this limiter's keys apart from the other limiters' in the store ('api', 'login'). */
  name: string;
  onFailure: StoreFailureMode;
}

export interface RateLimiterOptions {
  limit: number;
  windowMs: number;
  metrics: GatewayMetrics;
  /** Count every request by its address, verified caller or not (login attempts). */
  byAddress?: boolean;
  /** Absent: counted in this process only, synchronously. */
  shared?: SharedCounting;
}

export interface RateLimiter {
  /**
   * Counts the request against its client and notes its rate-limit headers (sendRateLimitHeaders
   * sets them); returns the 429 to answer when the client is over the limit. Synchronous without a shared store; with one, a
   * promise while the store is reachable.
   */
  check: (req: Request, res: Response) => HttpError | undefined | Promise<HttpError | undefined>;
  /** check() as Express middleware, for the routes behind the router. */
  middleware: RequestHandler;
  /** Stops the window timer and forgets every client (the shared store is closed by its owner). */
  close(): void;
  /** The `n` clients with the most requests in their current window, most first (the dashboard). */
  topClients(n: number): { client: string; hits: number }[];
}

/** The headers of the limit closest to refusing a request, until sendRateLimitHeaders sets them. */
interface DueHeaders {
  limit: string;
  policy: string;
  remaining: number;
  /** X-RateLimit-Reset: when the window ends, in Unix seconds. */
  reset: string;
  resetSeconds: number;
}

/**
 * Sets the rate-limit headers that the limits which counted the request are due (those of the one
 * closest to refusing it). Every limit of a request counts it before this is called once: each
 * header set once rather than once per limit. Call before anything else may answer or set headers.
 */
export function sendRateLimitHeaders(res: Response): void {
  const due = res.locals.rateLimitDue as DueHeaders | undefined;
  if (due === undefined) return;
  res.locals.rateLimitDue = undefined;
  if (res.headersSent) return;
  res.setHeader('X-RateLimit-Limit', due.limit);
  res.setHeader('X-RateLimit-Remaining', String(due.remaining));
  res.setHeader('X-RateLimit-Reset', due.reset);
  res.setHeader('RateLimit-Policy', due.policy);
  res.setHeader('RateLimit', `limit=${due.limit}, remaining=${due.remaining}, reset=${due.resetSeconds}`);
}

interface Client {
  hits: number;
  resetMs: number;
}

/**
 * Hits per client in a window that starts with the client's first request, as express-rate-limit's
 * MemoryStore counts them, but synchronously: its `increment` is async and hands back its live
 * counter, so pipelined requests (Node emits them all before any await resumes) all read the last
 * count, and a client within its limit was refused. Every window the clients not seen since the
 * previous one are dropped: at most the clients of the last two windows are held.
 */
class HitCounter {
  private current = new Map<string, Client>();
  private previous = new Map<string, Client>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly windowMs: number) {
    this.timer = setInterval(() => {
      this.previous = this.current;
      this.current = new Map();
    }, windowMs);
    this.timer.unref();
  }

  /** Counts one hit. The client's own record is returned (no copy per request): read it at once. */
  hit(key: string, now: number): Readonly<Client> {
    let client = this.current.get(key);
    if (!client) {
      client = this.previous.get(key);
      if (client) this.previous.delete(key);
      else client = { hits: 0, resetMs: now + this.windowMs };
      this.current.set(key, client);
    }
    if (client.resetMs <= now) {
      client.hits = 0;
      client.resetMs = now + this.windowMs;
    }
    client.hits++;
    return client;
  }

  top(n: number, now: number): { client: string; hits: number }[] {
    const top: { client: string; hits: number }[] = [];
    for (const [client, { hits, resetMs }] of this.current) {
      if (resetMs <= now || (top.length === n && hits <= top[n - 1].hits)) continue;
      top.push({ client, hits });
      top.sort((a, b) => b.hits - a.hits);
      if (top.length > n) top.pop();
    }
    return top;
  }

  close(): void {
    clearInterval(this.timer);
    this.current.clear();
    this.previous.clear();
  }
}

/**
 * An anonymous client is `req.ip` grouped by express-rate-limit's `ipKeyGenerator` (IPv6 by /56): the
 * socket address, unless the app's `trust proxy` setting names proxies whose X-Forwarded-For we
 * believe. The headers are the ones express-rate-limit sends with `legacyHeaders: true` and
 * `standardHeaders: 'draft-7'`: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (Unix seconds),
 * `RateLimit-Policy: 100;w=60` and `RateLimit: limit=100, remaining=99, reset=60`. Its middleware
 * is not used: it awaits five times per request, and proxied requests skip Express's router.
 *
 * With a shared store the window and headers are the same, counted by the store; every hit is
 * counted here too (this gateway's share), which is what decides while the store is unreachable
 * (or a 503 with `onFailure: 'deny'`) and what the dashboard's top clients show.
 */
export function createRateLimiter({ limit, windowMs, metrics, byAddress = false, shared }: RateLimiterOptions): RateLimiter {
  const counter = new HitCounter(windowMs);
  const limitHeader = String(limit);
  const policy = `${limit};w=${Math.ceil(windowMs / 1000)}`;
  // Every client of one window start shares its X-RateLimit-Reset value.
  let lastResetAt = -1;
  let lastReset = '';

  // A verified caller (set by the authenticate step) is one client wherever it calls from;
  // `user:` keys cannot collide with addresses.
  const clientOf = (req: Request, res: Response): string => {
    const identity = byAddress ? undefined : (res.locals.identity as { key: string } | undefined);
    return identity === undefined ? ipKeyGenerator(req.ip ?? '') : identity.key;
  };

  const decide = (res: Response, hits: number, resetMs: number, now: number): HttpError | undefined => {
    const resetSeconds = Math.max(0, Math.ceil((resetMs - now) / 1000));
    const remaining = Math.max(limit - hits, 0);
    // Several limits may count one request (its address's, its client's, the logins'): the
    // headers show the one closest to refusing it, the later one on a tie.
    const shown = res.locals.rateLimitRemaining as number | undefined;
    if (!res.headersSent && (shown === undefined || remaining <= shown)) {
      res.locals.rateLimitRemaining = remaining;
      const resetAt = Math.ceil(resetMs / 1000);
      if (resetAt !== lastResetAt) {
        lastResetAt = resetAt;
        lastReset = String(resetAt);
      }
      const due: DueHeaders = { limit: limitHeader, policy, remaining, reset: lastReset, resetSeconds };
      res.locals.rateLimitDue = due;
    }
    if (hits <= limit) return undefined;
    metrics.rateLimited();
    const retryAfter = Math.max(1, resetSeconds);
    if (!res.headersSent) res.setHeader('Retry-After', String(retryAfter));
    return new HttpError(429, 'RATE_LIMITED', 'Too many requests', undefined, { retryAfter });
  };

  const checkLocally = (req: Request, res: Response): HttpError | undefined => {
    const now = Date.now();
    const { hits, resetMs } = counter.hit(clientOf(req, res), now);
    return decide(res, hits, resetMs, now);
  };

  const check = shared === undefined ? checkLocally : checkShared(shared, counter, clientOf, decide, windowMs);

  const middleware: RequestHandler = (req, res, next) => {
    const refused = check(req, res);
    if (refused instanceof Promise) {
      refused.then((err) => {
        sendRateLimitHeaders(res);
        next(err);
      }, next);
      return;
    }
    sendRateLimitHeaders(res);
    next(refused);
  };
  return { check, middleware, close: () => counter.close(), topClients: (n) => counter.top(n, Date.now()) };
}

const storeUnavailable = (): HttpError =>
  new HttpError(503, 'RATE_LIMIT_UNAVAILABLE', 'The rate limiter is unavailable; retry shortly', undefined, { retryAfter: 1 });

/** check() over a shared store, falling back to this process's count (or a 503) while it is unreachable. */
function checkShared(
  { store, name, onFailure }: SharedCounting,
  counter: HitCounter,
  clientOf: (req: Request, res: Response) => string,
  decide: (res: Response, hits: number, resetMs: number, now: number) => HttpError | undefined,
  windowMs: number,
): (req: Request, res: Response) => HttpError | undefined | Promise<HttpError | undefined> {
  return (req, res) => {
    const now = Date.now();
    const client = clientOf(req, res);
    // The counter's record is live: read it now.
    const { hits, resetMs } = counter.hit(client, now);
    const fallBack = (): HttpError | undefined => (onFailure === 'deny' ? storeUnavailable() : decide(res, hits, resetMs, Date.now()));
    if (!store.usable) return fallBack();
    return store.increment(`${name}:${client}`, windowMs).then((shared) => decide(res, shared.hits, shared.resetMs, Date.now()), fallBack);
  };
}
