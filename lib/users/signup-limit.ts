// Sign-ups per client address: each account made is one more per-user rate-limit bucket at the
// gateway and one more email to count failures on, so one address must not make them in bulk.
import { HttpError } from '../platform/errors.js';

export interface SignupLimitOptions {
  /** Sign-ups per client per window. */
  limit: number;
  windowMs: number;
  /** Clients with a window of their own. */
  maxClients: number;
}

interface Window {
  count: number;
  resetMs: number;
}

/**
 * A fixed window per client, kept in this process (with several instances each counts its own
 * share). An active window is never dropped to make room: when `maxClients` windows are active, the
 * clients without one share a single window of `limit` sign-ups, which is stricter, never looser.
 */
export function createSignupLimit({ limit, windowMs, maxClients }: SignupLimitOptions) {
  // In the order the windows began, so the ones that ended are at the front.
  const windows = new Map<string, Window>();
  let shared: Window = { count: 0, resetMs: 0 };

  const windowOf = (client: string, now: number): Window => {
    let window = windows.get(client);
    if (window !== undefined && window.resetMs <= now) {
      windows.delete(client);
      window = undefined;
    }
    if (window !== undefined) return window;
    for (const [key, w] of windows) {
      if (w.resetMs > now) break;
      windows.delete(key);
    }
    if (windows.size >= maxClients) {
      if (shared.resetMs <= now) shared = { count: 0, resetMs: now + windowMs };
      return shared;
    }
    window = { count: 0, resetMs: now + windowMs };
    windows.set(client, window);
    return window;
  };

  return {
    /** Counts a sign-up by `client`; throws 429 with Retry-After past the limit. */
    take(client: string, now = Date.now()): void {
      const window = windowOf(client, now);
      if (window.count >= limit) {
        const retryAfter = Math.max(1, Math.ceil((window.resetMs - now) / 1000));
        throw new HttpError(429, 'RATE_LIMITED', 'Too many sign-ups from this address, retry later', undefined, { retryAfter });
      }
      window.count++;
    },
  };
}
export type SignupLimit = ReturnType<typeof createSignupLimit>;
