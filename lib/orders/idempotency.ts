// Idempotency-Key support: the canonical hash of a create, and the in-process gate that makes a
// second request with a key wait until the first with that key has finished.
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

export interface KeyGate {
  /** Runs `fn` once no other call holds `key`; calls with the same key run one after another. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T>;
  readonly size: number;
}

export function createKeyGate(maxKeys: number): KeyGate {
  const inFlight = new Map<string, Promise<unknown>>();
  return {
    get size() {
      return inFlight.size;
    },
    async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
      // A loop, not an if: several waiters wake together and only the first may take the key.
      for (let holder = inFlight.get(key); holder; holder = inFlight.get(key)) {
        await holder.catch(() => undefined);
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
