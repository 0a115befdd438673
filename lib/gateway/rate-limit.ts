// The /api/* rate limit: RATE_LIMIT requests per RATE_WINDOW_MS per client.
import type { RequestHandler } from 'express';
import { MemoryStore, rateLimit } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import type { GatewayMetrics } from './metrics.js';

export interface RateLimiterOptions {
  limit: number;
  windowMs: number;
  logger: Logger;
  metrics: GatewayMetrics;
}

export interface RateLimiter {
  middleware: RequestHandler;
  /** Stops the store's window timer. */
  close(): void;
}

/**
 * The client is `req.ip` (express-rate-limit's default key, IPv6 grouped by /56): the socket
 * address, unless the app's `trust proxy` setting names proxies whose X-Forwarded-For we believe.
 *
 * The MemoryStore keeps a client only while it is active: every window it drops the clients not
 * seen in the previous one, so it holds at most the clients of the last two windows.
 */
export function createRateLimiter({ limit, windowMs, logger, metrics }: RateLimiterOptions): RateLimiter {
  const store = new MemoryStore();
  const middleware = rateLimit({
    windowMs,
    limit,
    store,
    // X-RateLimit-Limit / -Remaining / -Reset; v8 sends Reset as Unix seconds, as the contract says.
    legacyHeaders: true,
    // draft-7 gives `RateLimit-Policy: 100;w=60` and `RateLimit: limit=100, remaining=99, reset=60`;
    // draft-8 would hash the client key (SHA-256) on every request for its partition key.
    standardHeaders: 'draft-7',
    // Clients may send X-Forwarded-For or Forwarded; ignoring them (unless TRUST_PROXY) is the point,
    // not a misconfiguration to warn about.
    validate: { xForwardedForHeader: false, forwardedHeader: false },
    logger: logger.child({ component: 'rate-limit' }),
    handler: (req, res, next) => {
      metrics.rateLimited();
      const resetTime = (req as typeof req & { rateLimit?: { resetTime?: Date } }).rateLimit?.resetTime;
      const retryAfter = Math.max(1, Math.ceil(((resetTime?.getTime() ?? Date.now() + windowMs) - Date.now()) / 1000));
      res.setHeader('Retry-After', String(retryAfter));
      next(new HttpError(429, 'RATE_LIMITED', 'Too many requests', undefined, { retryAfter }));
    },
  });
  return { middleware, close: () => store.shutdown() };
}
