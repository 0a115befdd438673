// A cap on one client's requests in the gateway at once, so that no one client holds every
// connection to a service (a slow one would, each of its requests holding one while it sends).
import type { Request, Response } from 'express';
import { ipKeyGenerator } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import type { Admission } from './front-door.js';

const CLIENT_KEY = Symbol('gateway.inFlightClient');
type CountedResponse = Response & { [CLIENT_KEY]?: string };

/**
 * A pipeline step: at most `max` requests of one client at once, counted from admission to the response's close;
 * beyond it 429 TOO_MANY_IN_FLIGHT with Retry-After: 1. The client is the verified user (set by
 * the authenticate step) or else the address, as the rate limiter reads them. A client's counter
 * exists only while it has a request in flight, so the map holds at most as many entries as the
 * gateway has requests (MAX_IN_FLIGHT); `maxClients` bounds it regardless.
 */
export function clientInFlightLimit({ max, maxClients }: { max: number; maxClients: number }): Admission {
  const counts = new Map<string, number>();

  function release(this: CountedResponse): void {
    const key = this[CLIENT_KEY]!;
    const n = counts.get(key)! - 1;
    if (n === 0) counts.delete(key);
    else counts.set(key, n);
  }

  return (req: Request, res: Response) => {
    const identity = res.locals.identity as { key: string } | undefined;
    const key = identity === undefined ? ipKeyGenerator(req.ip ?? '') : identity.key;
    const n = counts.get(key) ?? 0;
    if (n >= max) return new HttpError(429, 'TOO_MANY_IN_FLIGHT', `At most ${max} requests of one client at once; retry shortly`, undefined, { retryAfter: 1 });
    if (n === 0 && counts.size >= maxClients) return new HttpError(503, 'OVERLOADED', 'The gateway is at capacity; retry shortly', undefined, { retryAfter: 1 });
    counts.set(key, n + 1);
    (res as CountedResponse)[CLIENT_KEY] = key;
    res.once('close', release);
    return undefined;
  };
}
