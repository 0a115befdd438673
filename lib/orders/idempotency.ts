// Idempotency-Key support: the key's name, the canonical hash of a create, the bound on creates
// with a key in progress, and the renewal that keeps a live create's claim on its key (the claim
// itself, which makes a second create with the key wait for the first, is the store's).
import { createHash } from 'node:crypto';
import { HttpError } from '../platform/errors.js';
import type { Identity } from '../platform/identity.js';
import type { CreateOrderInput } from './schema.js';

/** Same order request, same hash: key order and the ignored `unitPrice` do not matter. */
export function hashOrderRequest(input: CreateOrderInput): string {
  const canonical = JSON.stringify([input.userId, input.items.map((i) => [i.productId, i.quantity])]);
  return createHash('sha256').update(canonical).digest('hex');
}

/**
 * The key's name as stored: an authenticated caller's keys are its own (an admin's key for a user
 * is not that user's key), anonymous keys (open mode) stay as they were sent; the store files
 * every key under the order's user too. A name, not a gate.
 */
export const scopedKey = (caller: Identity | null, key: string): string => (caller === null ? key : `user:${caller.sub}:${key}`);

/**
 * The answer to a repeat that met its key still held by a create in progress (on any instance):
 * a conflict with the state of the key, not a fault of ours, so no breaker counts it. The create
 * may still make the order; a repeat after Retry-After gets it.
 */
export const keyInUse = (): HttpError =>
  new HttpError(409, 'IDEMPOTENCY_KEY_IN_USE', 'An order with this Idempotency-Key is still in progress; retry after Retry-After', undefined, { retryAfter: 1 });

export interface KeyedCreates {
  /** Runs `fn` as one of this process's creates with a key, or throws 503 when there are `max` already. */
  run<T>(fn: () => Promise<T>): Promise<T>;
  readonly size: number;
}

/**
 * A bound on this process's creates with a key in progress, those waiting for their key
 * included: each waiter asks the database again every poll. A bound only: it makes no create wait
 * for another. The claim in the database is the one authority over a key, in this process as
 * across instances; a second gate in memory would only repeat it.
 */
export function createKeyedCreates(max: number): KeyedCreates {
  let size = 0;
  return {
    get size() {
      return size;
    },
    async run<T>(fn: () => Promise<T>): Promise<T> {
      if (size >= max) {
        throw new HttpError(503, 'SERVICE_UNAVAILABLE', 'Too many orders in progress, retry shortly', undefined, { retryAfter: 1 });
      }
      size++;
      try {
        return await fn();
      } finally {
        size--;
      }
    },
  };
}

export interface ClaimRenewal {
  /** Stops renewing; a renewal under way may still land, which is harmless. */
  stop(): void;
}

/**
 * Keeps a claim alive while its create runs: `renew` every `everyMs` (the next one only after the
 * last has ended, so a slow database never piles them up). `onLost` hears that the claim is no
 * longer this holder's (it lapsed and another create took it: renewing stops), or, with the
 * error, that one renewal failed (the next is tried as planned).
 */
export function renewClaim(renew: () => Promise<boolean>, everyMs: number, onLost: (err?: unknown) => void): ClaimRenewal {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    let err: unknown;
    const held = await renew().catch((e: unknown) => {
      err = e;
      return undefined;
    });
    if (stopped) return;
    // The create goes on either way: the key's unique row still allows one order.
    if (held === false) {
      onLost();
      return;
    }
    if (held === undefined) onLost(err);
    schedule();
  };
  const schedule = () => {
    timer = setTimeout(() => void tick(), everyMs);
    // A create in progress keeps the process busy already; this timer alone should not.
    timer.unref();
  };
  schedule();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
