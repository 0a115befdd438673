// A cap on how many requests of one kind run at once: for the routes that fan out to every service.
import type { RequestHandler } from 'express';
import { HttpError } from '../platform/errors.js';

/**
 * Middleware letting at most `max` requests through at once; the rest get a fast 503 OVERLOADED
 * with Retry-After, so a flood of one cheap-looking request cannot multiply into the services.
 */
export function concurrencyBudget(max: number): RequestHandler {
  let running = 0;
  const done = (): void => {
    running--;
  };
  return (_req, res, next) => {
    if (running >= max) throw new HttpError(503, 'OVERLOADED', 'Too many of these requests at once; retry shortly', undefined, { retryAfter: 1 });
    running++;
    res.once('close', done);
    next();
  };
}
