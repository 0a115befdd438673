// The /api/* rate limit: RATE_LIMIT requests per RATE_WINDOW_MS per client: per user id for a
// verified caller, per address for anonymous ones.
import type { Request, RequestHandler, Response } from 'express';
import { ipKeyGenerator } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import type { GatewayMetrics } from './metrics.js';

export interface RateLimiterOptions {
  limit: number;
  windowMs: number;
  metrics: GatewayMetrics;
  /** Count every request by its address, verified caller or not (login attempts). */
  byAddress?: boolean;
}

export interface RateLimiter {
  /**
   * Counts the request against its client and sets the rate-limit headers; returns the 429 to
   * answer when the client is over the limit.
   */
  check: (req: Request, res: Response) => HttpError | undefined;
  /** check() as Express middleware, for the routes behind the router. */
  middleware: RequestHandler;
  /** Stops the window timer and forgets every client. */
  close(): void;
  /** The `n` clients with the most requests in their current window, most first (the dashboard). */
  topClients(n: number): { client: string; hits: number }[];
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
 */
export function createRateLimiter({ limit, windowMs, metrics, byAddress = false }: RateLimiterOptions): RateLimiter {
  const counter = new HitCounter(windowMs);
  const limitHeader = String(limit);
  const policy = `${limit};w=${Math.ceil(windowMs / 1000)}`;

  const check = (req: Request, res: Response): HttpError | undefined => {
    const now = Date.now();
    // A verified caller (set by the authenticate step) is one client wherever it calls from;
    // `user:` keys cannot collide with addresses.
    const identity = byAddress ? undefined : (res.locals.identity as { key: string } | undefined);
    const { hits, resetMs } = counter.hit(identity === undefined ? ipKeyGenerator(req.ip ?? '') : identity.key, now);
    const resetSeconds = Math.max(0, Math.ceil((resetMs - now) / 1000));
    const remaining = Math.max(limit - hits, 0);
    if (!res.headersSent) {
      res.setHeader('X-RateLimit-Limit', limitHeader);
      res.setHeader('X-RateLimit-Remaining', String(remaining));
      res.setHeader('X-RateLimit-Reset', String(Math.ceil(resetMs / 1000)));
      res.setHeader('RateLimit-Policy', policy);
      res.setHeader('RateLimit', `limit=${limitHeader}, remaining=${remaining}, reset=${resetSeconds}`);
    }
    if (hits <= limit) return undefined;
    metrics.rateLimited();
    const retryAfter = Math.max(1, resetSeconds);
    if (!res.headersSent) res.setHeader('Retry-After', String(retryAfter));
    return new HttpError(429, 'RATE_LIMITED', 'Too many requests', undefined, { retryAfter });
  };

  const middleware: RequestHandler = (req, res, next) => {
    next(check(req, res));
  };
  return { check, middleware, close: () => counter.close(), topClients: (n) => counter.top(n, Date.now()) };
}
