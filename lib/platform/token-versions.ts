// Each user's current token version, as the user service keeps it: a token whose `ver` is not the
// account's current one (the role or password changed, the user logged out) or whose account is
// gone is refused. Verifiers ask the user service and remember the answer for a short time, which
// bounds how long a revoked token still passes.
import { HttpError } from './errors.js';
import type { Logger } from './logger.js';
import { setBounded } from './bounded-map.js';
import { ServiceClient, withoutDeadline } from './service-client.js';

/** The current version of account `sub`; null when there is no such account. */
export type FetchTokenVersion = (sub: string) => Promise<number | null>;

export interface TokenVersions {
  /** The version known from an answer younger than the TTL (null: no account), or undefined: ask. */
  fresh(sub: string): number | null | undefined;
  /**
   * The current version, asked when the one known is older than the TTL or below `atLeast` (a
   * token newer than the answer: versions only go up, so the answer is out of date); one question
   * per account at a time.
   */
  current(sub: string, atLeast?: number): Promise<number | null>;
  readonly size: number;
}

export interface TokenVersionsOptions {
  fetch: FetchTokenVersion;
  /** How long an answer is used without asking again: the longest a revoked token still passes. */
  ttlMs: number;
  /**
   * While nobody can be asked, the last answer stays in use this long after it came (then 503):
   * revocations are made through the user service, so while no instance answers, few can happen.
   */
  maxStaleMs?: number;
  maxEntries?: number;
}

const unavailable = (): HttpError => new HttpError(503, 'SERVICE_UNAVAILABLE', 'Tokens cannot be verified right now', undefined, { retryAfter: 5 });

export function createTokenVersions({ fetch, ttlMs, maxStaleMs = 30_000, maxEntries = 10_000 }: TokenVersionsOptions): TokenVersions {
  const known = new Map<string, { version: number | null; at: number }>();
  // Bounded by `known`'s bound in practice: one question per account that is being verified.
  const asking = new Map<string, Promise<number | null>>();

  const fresh = (sub: string): number | null | undefined => {
    const entry = known.get(sub);
    return entry !== undefined && Date.now() - entry.at < ttlMs ? entry.version : undefined;
  };

  const ask = (sub: string): Promise<number | null> => {
    let pending = asking.get(sub);
    if (pending) return pending;
    pending = fetch(sub).then(
      (version) => {
        setBounded(known, sub, { version, at: Date.now() }, maxEntries);
        return version;
      },
      () => {
        const last = known.get(sub);
        if (last !== undefined && Date.now() - last.at < maxStaleMs) return last.version;
        throw unavailable();
      },
    ).finally(() => asking.delete(sub));
    setBounded(asking, sub, pending, maxEntries);
    return pending;
  };

  return {
    fresh,
    current(sub, atLeast = 0) {
      const version = fresh(sub);
      return version === undefined || (version !== null && version < atLeast) ? ask(sub) : Promise.resolve(version);
    },
    get size() {
      return known.size;
    },
  };
}

/** The user service's route that answers an account's token version (internal: INTERNAL_TOKEN or loopback). */
const tokenVersionPath = (id: string): string => `/internal/users/${id}/token-version`;

/**
 * Asks the user service's instances in turn, from the one that answered last; only an instance
 * that gave no usable answer is skipped. Subjects that are not user ids of ours have no account.
 */
export function remoteTokenVersions(usersUrls: readonly string[], internalToken: string | undefined, { timeoutMs = 2000, logger }: { timeoutMs?: number; logger?: Logger | undefined } = {}): FetchTokenVersion {
  const clients = usersUrls.map((url) => new ServiceClient({ name: 'users', baseUrl: url, timeoutMs }));
  const headers: Record<string, string> = internalToken === undefined ? {} : { authorization: `Bearer ${internalToken}` };
  let preferred = 0;
  let failing = false;
  return async (sub) => {
    if (!/^[1-9]\d{0,15}$/.test(sub)) return null;
    let failure: unknown;
    for (let n = 0; n < clients.length; n++) {
      const i = (preferred + n) % clients.length;
      try {
        // One answer serves every request waiting for it: none's deadline is its own.
        const res = await withoutDeadline(() => clients[i].get<{ tokenVersion?: unknown }>(tokenVersionPath(sub), { headers, accept: [404] }));
        preferred = i;
        if (res.status === 404) return null;
        if (typeof res.body?.tokenVersion !== 'number') throw new Error('no tokenVersion in the answer');
        if (failing) logger?.info('token versions answered again');
        failing = false;
        return res.body.tokenVersion;
      } catch (err) {
        failure = err;
      }
    }
    // One line per outage. A 401 or 403 here is a missing or different INTERNAL_TOKEN.
    if (!failing) {
      const { status, message } = failure as { status?: number; message?: string };
      logger?.warn({ err: { status, message } }, 'cannot ask the user service for token versions (its INTERNAL_TOKEN and ours must match); tokens are refused with 503 once the last answers are 30 s old');
    }
    failing = true;
    throw failure;
  };
}
