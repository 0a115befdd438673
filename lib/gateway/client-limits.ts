// A cap on one client's requests in the gateway at once, so that no one client holds every
// connection to a service (a slow one would, each of its requests holding one while it sends).
import type { Socket } from 'node:net';
import type { Request, Response } from 'express';
import { ipKeyGenerator } from 'express-rate-limit';
import { HttpError } from '../platform/errors.js';
import { onResponseClose } from '../platform/http.js';
import type { Admission } from './front-door.js';

const CLIENT_KEY = Symbol('gateway.inFlightClient');
const COUNTED = Symbol('gateway.countedResponses');
type CountedResponse = Response & { [CLIENT_KEY]?: string };
type TrackedSocket = Socket & { [COUNTED]?: Set<CountedResponse> };

/**
 * A pipeline step: at most `max` requests of one client at once, counted from admission to the response's close;
 * beyond it 429 TOO_MANY_IN_FLIGHT with Retry-After: 1. The client is the verified user (set by
 * the authenticate step) or else the address, as the rate limiter reads them. A client's counter
 * exists only while it has a request in flight, so the map holds at most as many entries as the
 * gateway has requests (MAX_IN_FLIGHT); `maxClients` bounds it regardless. A pipelined answer
 * that never got its socket emits no 'close': each request is also released when its connection
 * closes.
 */
export function clientInFlightLimit({ max, maxClients }: { max: number; maxClients: number }): Admission {
  const counts = new Map<string, number>();

  function release(this: CountedResponse): void {
    const key = this[CLIENT_KEY];
    if (key === undefined) return;
    this[CLIENT_KEY] = undefined;
    (this.req.socket as TrackedSocket)[COUNTED]?.delete(this);
    const n = counts.get(key)! - 1;
    if (n === 0) counts.delete(key);
    else counts.set(key, n);
  }

  function releaseConnection(this: TrackedSocket): void {
    for (const res of this[COUNTED]!) release.call(res);
  }

  return (req: Request, res: Response) => {
    // Gone while admitted: its 'close' has been emitted already, and the proxy will see it gone.
    if (req.socket.destroyed) return undefined;
    const identity = res.locals.identity as { key: string } | undefined;
    const key = identity === undefined ? ipKeyGenerator(req.ip ?? '') : identity.key;
    const n = counts.get(key) ?? 0;
    if (n >= max) return new HttpError(429, 'TOO_MANY_IN_FLIGHT', `At most ${max} requests of one client at once; retry shortly`, undefined, { retryAfter: 1 });
    if (n === 0 && counts.size >= maxClients) return new HttpError(503, 'OVERLOADED', 'The gateway is at capacity; retry shortly', undefined, { retryAfter: 1 });
    counts.set(key, n + 1);
    (res as CountedResponse)[CLIENT_KEY] = key;
    const socket = req.socket as TrackedSocket;
    let counted = socket[COUNTED];
    if (counted === undefined) {
      counted = socket[COUNTED] = new Set();
      socket.once('close', releaseConnection);
    }
    counted.add(res);
    onResponseClose(res, release);
    return undefined;
  };
}
