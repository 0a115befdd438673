// Idempotency-Key support: the canonical hash of a create, the in-process gate that makes a
// second request with a key wait until the first with that key has finished (or its time is
// up), and the renewal that keeps a live create's claim on its key.
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
 * The key as stored: an authenticated caller's keys are its own (another user sending the same
 * key gets no replay of this caller's order); anonymous keys (open mode) stay as they were sent.
 */
export const scopedKey = (caller: Identity | null, key: string): string => (caller === null ? key : `user:${caller.sub}:${key}`);

/**
 * The answer to a repeat that met its key still held by a create in progress (on any instance):
 * a conflict with the state of the key, not a fault of ours, so no breaker counts it. The create
 * may still make the order; a repeat after Retry-After gets it.
 */
export const keyInUse = (): HttpError =>
  new HttpError(409, 'IDEMPOTENCY_KEY_IN_USE', 'An order with this Idempotency-Key is still in progress; retry after Retry-After', undefined, { retryAfter: 1 });

export interface KeyGate {
  /**
   * Runs `fn` once no other call holds `key`; calls with the same key run one after another. A
   * call still waiting at `waitUntil` (Date.now() ms) gives up with keyInUse().
   */
  run<T>(key: string, fn: () => Promise<T>, waitUntil?: number): Promise<T>;
  readonly size: number;
}

export function createKeyGate(maxKeys: number): KeyGate {
  const inFlight = new Map<string, Promise<unknown>>();
  return {
    get size() {
      return inFlight.size;
    },
    async run<T>(key: string, fn: () => Promise<T>, waitUntil = Infinity): Promise<T> {
      // A loop, not an if: several waiters wake together and only the first may take the key.
      for (let holder = inFlight.get(key); holder; holder = inFlight.get(key)) {
        if (!(await settlesBefore(holder, waitUntil))) throw keyInUse();
      }
      if (inFlight.size >= maxKeys) {
        throw new HttpError(503, 'SERVICE_UNAVAILABLE', 'Too many orders in progress, retry shortly', undefined, { retryAfter: 1 });
      }
      const running = fn();
      inFlight.set(key, running);
      try {
        return await running;
      } finally {
        inFlight.delete(key);
      }
    },
  };
}

/** True once `p` settles, false if `at` (Date.now() ms) comes first. */
async function settlesBefore(p: Promise<unknown>, at: number): Promise<boolean> {
  if (at === Infinity) {
    await p.catch(() => undefined);
    return true;
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, at - Date.now()), false);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
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
