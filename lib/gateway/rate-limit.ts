// The /api/* rate limit: RATE_LIMIT requests per RATE_WINDOW_MS per client.
import type { Request, RequestHandler, Response } from 'express';
import { ipKeyGenerator, MemoryStore } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import type { GatewayMetrics } from './metrics.js';

export interface RateLimiterOptions {
  limit: number;
  windowMs: number;
  metrics: GatewayMetrics;
}

export interface RateLimiter {
  /**
   * Counts the request against its client and sets the rate-limit headers; resolves with the 429
   * to answer when the client is over the limit.
   */
  check(req: Request, res: Response): Promise<HttpError | undefined>;
  /** check() as Express middleware, for the routes behind the router. */
  middleware: RequestHandler;
  /** Stops the store's window timer. */
  close(): void;
}

/**
 * The client is `req.ip` grouped as express-rate-limit groups it (IPv6 by /56): the socket
 * address, unless the app's `trust proxy` setting names proxies whose X-Forwarded-For we believe.
 *
 * express-rate-limit's MemoryStore does the counting: it keeps a client only while it is active
 * (every window it drops the clients not seen in the previous one), so it holds at most the
 * clients of the last two windows. Its middleware is not used: it awaits five times and sets the
 * headers one validation at a time on every request, and the gateway's proxied requests do not go
 * through Express's router at all. The headers are the ones it sends with `legacyHeaders: true`
 * and `standardHeaders: 'draft-7'`: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (Unix seconds),
 * `RateLimit-Policy: 100;w=60` and `RateLimit: limit=100, remaining=99, reset=60`.
 */
export function createRateLimiter({ limit, windowMs, metrics }: RateLimiterOptions): RateLimiter {
  const store = new MemoryStore();
  store.init({ windowMs } as Parameters<MemoryStore['init']>[0]);
  const limitHeader = String(limit);
  const policy = `${limit};w=${Math.ceil(windowMs / 1000)}`;

  const check = async (req: Request, res: Response): Promise<HttpError | undefined> => {
    const { totalHits, resetTime } = await store.increment(ipKeyGenerator(req.ip ?? ''));
    const resetMs = resetTime?.getTime() ?? Date.now() + windowMs;
    const resetSeconds = Math.max(0, Math.ceil((resetMs - Date.now()) / 1000));
    const remaining = Math.max(limit - totalHits, 0);
    if (!res.headersSent) {
      res.setHeader('X-RateLimit-Limit', limitHeader);
      res.setHeader('X-RateLimit-Remaining', String(remaining));
      res.setHeader('X-RateLimit-Reset', String(Math.ceil(resetMs / 1000)));
      res.setHeader('RateLimit-Policy', policy);
      res.setHeader('RateLimit', `limit=${limitHeader}, remaining=${remaining}, reset=${resetSeconds}`);
    }
    if (totalHits <= limit) return undefined;
    metrics.rateLimited();
    const retryAfter = Math.max(1, resetSeconds);
    res.setHeader('Retry-After', String(retryAfter));
    return new HttpError(429, 'RATE_LIMITED', 'Too many requests', undefined, { retryAfter });
  };

  const middleware: RequestHandler = (req, res, next) => {
    check(req, res).then(next, next);
  };
  return { check, middleware, close: () => store.shutdown() };
}
