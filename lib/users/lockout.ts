// Failed logins, counted per (email, client): the guesser is locked out, the account's owner is
// not. Kept in the database, so every instance of the service counts against one limit.
import { setTimeout as sleep } from 'node:timers/promises';
import { HttpError } from '../platform/errors.js';
import type { Db } from '../platform/sql.js';

const FULL_RECOUNT_MS = 1000;

export interface LockoutOptions {
  /** Failures of one client on one email within the window before that client's attempts on it are 429. */
  maxFailures: number;
  windowMs: number;
  /** Rows kept, about (instances prune on their own count): never an active one to make room. */
  maxRows: number;
  /** Failures on one email from every client together within the window before each attempt on it waits. */
  slowdownAfter: number;
  /** The wait grows by this for each failure past `slowdownAfter`... */
  slowdownStepMs: number;
  /** ...up to this; also the wait of an attempt that finds no room to be counted. */
  slowdownMaxMs: number;
}

/** What `attempt` decided, for `succeed`. */
export interface LoginAttempt {
  email: string;
  client: string;
  /** Whether the attempt has a row (false: the table was full of active rows). */
  counted: boolean;
  /** How long it waited before its password was checked, in ms. */
  delayedMs: number;
}

/**
 * A client that reaches `maxFailures` on an email is refused (429, the right password too: it would
 * tell the guesser it was right) until its window ends; another client on the same email is not.
 * Many clients guessing one email make every attempt on it wait (up to `slowdownMaxMs`), the
 * owner's too, but the owner's right password is never refused. Each attempt is counted before its
 * password is checked (one guarded upsert), so racing attempts on several instances cannot pass
 * `maxFailures` together; a right password clears that client's count.
 *
 * Rows of windows that ended are deleted; an active row is never dropped to make room. When
 * `maxRows` active rows are held, an attempt by a client that has no row on that email is not
 * counted: it waits `slowdownMaxMs` instead, and the gateway's per-address login limit is what
 * bounds it. (Each counted failure costs the attacker one scrypt check in the hash budget, so
 * filling the table takes `maxRows` checks within one window.)
 */
export function createLoginLockout(db: Db, options: LockoutOptions) {
  const { maxFailures, windowMs, maxRows, slowdownAfter, slowdownStepMs, slowdownMaxMs } = options;
  // Rows in the table as this instance last counted them, plus the ones it made since.
  let rows: number | undefined;
  let madeSinceCount = 0;
  let countedAt = -Infinity;
  // Counted again this often (and whenever the table looks full), so that rows made by other
  // instances and windows that ended are seen without a count on every attempt.
  const recountEvery = Math.max(1, Math.min(64, Math.floor(maxRows / 8)));

  const refuse = (resetMs: number, now: number) => {
    const retryAfter = Math.max(1, Math.ceil((resetMs - now) / 1000));
    return new HttpError(429, 'RATE_LIMITED', 'Too many failed logins for this account from this address, retry later', undefined, { retryAfter });
  };
  const recount = async (now: number): Promise<number> => {
    await db.run('DELETE FROM login_attempts WHERE reset_ms <= $1', [now]);
    madeSinceCount = 0;
    countedAt = now;
    rows = (await db.get<{ n: number }>('SELECT count(*) AS n FROM login_attempts'))!.n;
    return rows;
  };
  const hasRoom = async (now: number): Promise<boolean> => {
    // Full, it counts again at most once a second: a spray at a full table costs no scan per attempt.
    const full = rows !== undefined && rows >= maxRows;
    if (rows === undefined || (full && now - countedAt >= FULL_RECOUNT_MS) || (!full && madeSinceCount >= recountEvery)) await recount(now);
    return rows! < maxRows;
  };
  const slowdown = (total: number): number =>
    total < slowdownAfter ? 0 : Math.min(slowdownMaxMs, slowdownStepMs * (total - slowdownAfter + 1));

  return {
    /**
     * Waits as the email's failures ask, then counts an attempt by `client` on `email` (lower-cased
     * by the caller); throws 429 when that client is over its limit on it.
     */
    async attempt(email: string, client: string, now = Date.now()): Promise<LoginAttempt> {
      const seen = (await db.get<{ total: number | null; mine: number | null; mine_reset: number | null }>(
        `SELECT SUM(CASE WHEN reset_ms > $3 THEN failures ELSE 0 END) AS total,
                MAX(CASE WHEN address = $2 AND reset_ms > $3 THEN failures END) AS mine,
                MAX(CASE WHEN address = $2 THEN reset_ms END) AS mine_reset
         FROM login_attempts WHERE email = $1`,
        [email, client, now],
      ))!;
      // A read first, so that a guesser already refused costs no write and no wait.
      if (seen.mine !== null && seen.mine >= maxFailures) throw refuse(seen.mine_reset!, now);
      const counted = seen.mine_reset !== null || (await hasRoom(now));
      const delayedMs = counted ? slowdown(seen.total ?? 0) : slowdownMaxMs;
      if (delayedMs > 0) await sleep(delayedMs);
      const at = now + delayedMs;
      if (!counted) return { email, client, counted, delayedMs };
      const row = (await db.get<{ failures: number; reset_ms: number }>(
        `INSERT INTO login_attempts (email, address, failures, reset_ms) VALUES ($1, $2, 1, $4)
         ON CONFLICT (email, address) DO UPDATE SET
           failures = CASE WHEN login_attempts.reset_ms <= $3 THEN 1 ELSE login_attempts.failures + 1 END,
           reset_ms = CASE WHEN login_attempts.reset_ms <= $3 THEN $4 ELSE login_attempts.reset_ms END
         RETURNING failures, reset_ms`,
        [email, client, at, at + windowMs],
      ))!;
      if (seen.mine_reset === null) {
        rows = (rows ?? 0) + 1;
        madeSinceCount++;
      }
      if (row.failures > maxFailures) throw refuse(row.reset_ms, at);
      return { email, client, counted, delayedMs };
    },
    /** The password was right: that client's count on that email starts again. */
    async succeed({ email, client, counted }: LoginAttempt): Promise<void> {
      if (counted) await db.run('DELETE FROM login_attempts WHERE email = $1 AND address = $2', [email, client]);
    },
  };
}
export type LoginLockout = ReturnType<typeof createLoginLockout>;
