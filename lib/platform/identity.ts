// Who is calling: bearer tokens (JWTs signed by the user service, or by an external identity
// provider) verified against a JWKS, the auth mode, the service credential of /internal/* routes,
// and the ownership rules every service applies to the data it holds.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyGetKey } from 'jose';
import { z } from 'zod';
import { intVar, urlList } from './config.js';
import { HttpError } from './errors.js';
import { setBounded } from './bounded-map.js';
import type { Logger } from './logger.js';
import { createTokenVersions, remoteTokenVersions, type TokenVersions } from './token-versions.js';
import { untraced } from './trace-context.js';

export type AuthMode = 'open' | 'required';

/** A verified caller. `sub` is the user id for tokens of our user service. */
export interface Identity {
  sub: string;
  role: string;
  /** The account's token version when the token was issued (0 for a token without `ver`). */
  ver: number;
  /** When the token stops being valid, in ms since the epoch. */
  expMs: number;
  /** `user:<sub>`: the caller's key for per-user limits and caches, made once per token. */
  key: string;
}

export const DEFAULT_ISSUER = 'microservices-demo';
export const DEFAULT_AUDIENCE = 'microservices-demo-api';
export const DEFAULT_ALGORITHMS = ['ES256', 'EdDSA'] as const;

const DEFAULT_TOKEN_TTL_S = 900;
const DEFAULT_JWT_KEY_REFRESH_MS = 30_000;

const httpUrl = z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' });

/** The settings every process reads to verify tokens. */
export const authShape = {
  // open: anonymous requests are unrestricted (a valid token is still honoured); required: a valid
  // token for everything but the public routes. Unset: required when NODE_ENV=production.
  AUTH_MODE: z.enum(['open', 'required'], { message: 'must be open or required' }).optional(),
  // Where the signing keys are published; unset: the user service's /.well-known/jwks.json.
  JWKS_URL: httpUrl.optional(),
  JWT_ISSUER: z.string().min(1).default(DEFAULT_ISSUER),
  JWT_AUDIENCE: z.string().min(1).default(DEFAULT_AUDIENCE),
  // Accepted signing algorithms (comma-separated); never HS* or none.
  JWT_ALGORITHMS: z.string().default(DEFAULT_ALGORITHMS.join(',')).transform((v) => v.split(',').map((a) => a.trim()).filter(Boolean))
    .refine((algs) => algs.length > 0 && algs.every((a) => /^(ES256|ES384|ES512|EdDSA|Ed25519|RS256|RS384|RS512|PS256|PS384|PS512)$/.test(a)), 'must list asymmetric algorithms only (ES256, EdDSA, RS256, ...)'),
  // Lifetime of an access token: the user service issues tokens of this lifetime, and every
  // verifier refuses a token whose exp - iat is longer (a leaked key cannot mint ten-year tokens).
  TOKEN_TTL_S: intVar(DEFAULT_TOKEN_TTL_S, 30, 24 * 3600),
  // How often the signing keys are read again: by each user-service instance from the database
  // (keys kept there), and by every verifier from the JWKS, so a rotated key is known everywhere
  // before it signs (it signs 3 x this after `npm run rotate-key`).
  JWT_KEY_REFRESH_MS: intVar(DEFAULT_JWT_KEY_REFRESH_MS, 100, 3_600_000),
  // How long a verifier uses the user service's answer for an account's token version before
  // asking again: the longest a token still passes after its role or password changed, its user
  // logged out or was deleted. 0: asked for every request that is not already being asked.
  TOKEN_VERSION_CACHE_MS: intVar(2000, 0, 60_000),
  // The service credential, the same in every process: what every service's /internal/* routes
  // need (unset: callers on the service's own machine only), what the order service shows the
  // product service, what verifiers show the user service's token-version route, and the key the
  // gateway signs the client address with for the user service (unset: believed from loopback only).
  INTERNAL_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
};

/**
 * In production the demo rows are seeded only when DEMO_PASSWORD is set: demo orders of users 1..3
 * would otherwise belong to whoever signs up first. The value itself is dropped here.
 */
export const demoSeedShape = {
  // The demo users' password; default `microservices-demo` outside production (the user service).
  DEMO_PASSWORD: z.string().min(8, 'must be 8 to 128 characters').max(128, 'must be 8 to 128 characters').optional(),
};
export function withDemoSeedRule<C extends { SEED_DATA: boolean; NODE_ENV: string; DEMO_PASSWORD?: string | undefined }>({ DEMO_PASSWORD, ...rest }: C): Omit<C, 'DEMO_PASSWORD'> {
  return { ...rest, SEED_DATA: rest.SEED_DATA && (rest.NODE_ENV !== 'production' || DEMO_PASSWORD !== undefined) };
}

export function authModeOf(config: { AUTH_MODE?: AuthMode | undefined; NODE_ENV: string }): AuthMode {
  return config.AUTH_MODE ?? (config.NODE_ENV === 'production' ? 'required' : 'open');
}

/** Default JWKS of our own user service at `usersUrl`. */
export const jwksUrlOf = (config: { JWKS_URL?: string | undefined }, usersUrl: string): string =>
  config.JWKS_URL ?? `${usersUrl}/.well-known/jwks.json`;

export const CLOCK_TOLERANCE_S = 30;

const WWW_AUTHENTICATE_INVALID = 'Bearer error="invalid_token"';

/** 401 with the RFC 6750 challenge set on `res`. */
export function unauthenticated(res: ServerResponse | undefined, message = 'A valid bearer token is required'): HttpError {
  if (res && !res.headersSent) res.setHeader('WWW-Authenticate', WWW_AUTHENTICATE_INVALID);
  return new HttpError(401, 'UNAUTHENTICATED', message);
}

export const forbidden = (message = 'Not allowed for this caller'): HttpError => new HttpError(403, 'FORBIDDEN', message);

/**
 * The token of an `Authorization: Bearer <token>` header (scheme in any letter case), or
 * undefined when the header is absent or uses another scheme.
 */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined || header.length < 8 || header.charCodeAt(6) !== 32) return undefined;
  // "bearer" compared by character codes with the lower-case bit set: no allocation.
  for (let i = 0; i < 6; i++) if ((header.charCodeAt(i) | 0x20) !== BEARER[i]) return undefined;
  const token = header.slice(7).trim();
  return token === '' ? undefined : token;
}
const BEARER = [98, 101, 97, 114, 101, 114];

export interface TokenVerifierOptions {
  keys: JWTVerifyGetKey;
  issuer: string;
  audience: string;
  algorithms: readonly string[];
  /** Longest accepted lifetime (exp - iat) in seconds: TOKEN_TTL_S. */
  maxLifetimeS?: number;
  /** Each account's current token version; absent: tokens are not checked against their account. */
  versions?: TokenVersions;
  /** Verified tokens remembered until their exp; the oldest is forgotten beyond this. */
  maxCached?: number;
}

export interface TokenVerifier {
  /**
   * The identity of an Authorization header already verified, not expired, and whose account's
   * version is known and matches, without any await.
   */
  cached(header: string): Identity | undefined;
  /**
   * Verifies the header's bearer token (signature, alg, iss, aud, exp, nbf, iat, lifetime) and its
   * account's version; throws 401 otherwise.
   */
  verify(header: string, res?: ServerResponse): Promise<Identity>;
  readonly size: number;
}

/**
 * Verifies JWTs with `keys`. The cache is keyed by the whole header value, so a hit costs one Map
 * lookup and one comparison; a token is only cached after its signature checked out.
 */
export function createTokenVerifier({ keys, issuer, audience, algorithms, maxLifetimeS = DEFAULT_TOKEN_TTL_S, versions, maxCached = 10_000 }: TokenVerifierOptions): TokenVerifier {
  const cache = new Map<string, Identity>();
  // maxTokenAge makes jose refuse an iat beyond the clock tolerance in the future (and require iat).
  const options = {
    issuer, audience, algorithms: [...algorithms], clockTolerance: CLOCK_TOLERANCE_S, requiredClaims: ['sub', 'exp', 'iat'], maxTokenAge: maxLifetimeS,
  };

  const cached = (header: string): Identity | undefined => {
    const hit = cache.get(header);
    if (hit === undefined) return undefined;
    if (hit.expMs <= Date.now()) {
      cache.delete(header);
      return undefined;
    }
    return versions === undefined || versions.fresh(hit.sub) === hit.ver ? hit : undefined;
  };

  const signed = async (header: string, res: ServerResponse | undefined): Promise<Identity> => {
    const hit = cache.get(header);
    if (hit !== undefined && hit.expMs > Date.now()) return hit;
    const token = bearerToken(header);
    if (token === undefined) throw unauthenticated(res);
    let payload;
    try {
      ({ payload } = await jwtVerify(token, keys, options));
    } catch (err) {
      // No keys to check against is our outage, not the client's fault.
      if (!(err instanceof errors.JOSEError) || err.code === 'ERR_JWKS_TIMEOUT' || err.code === 'ERR_JWKS_INVALID') {
        throw new HttpError(503, 'SERVICE_UNAVAILABLE', 'Tokens cannot be verified right now', undefined, { retryAfter: 5 });
      }
      // Why it failed (expired, bad signature, unknown key) is not the client's to probe.
      throw unauthenticated(res);
    }
    const { sub, exp, iat, ver = 0 } = payload;
    if (typeof sub !== 'string' || sub === '' || typeof exp !== 'number' || typeof iat !== 'number') throw unauthenticated(res);
    // A token made to live longer than ours do was not made by our rules, whoever signed it.
    if (exp - iat > maxLifetimeS || !Number.isSafeInteger(ver)) throw unauthenticated(res);
    const identity: Identity = {
      sub, role: typeof payload.role === 'string' ? payload.role : 'user', ver: ver as number, expMs: exp * 1000, key: `user:${sub}`,
    };
    setBounded(cache, header, identity, maxCached);
    return identity;
  };

  return {
    cached,
    async verify(header, res) {
      const hit = cached(header);
      if (hit) return hit;
      const identity = await signed(header, res);
      if (versions !== undefined && (await versions.current(identity.sub, identity.ver)) !== identity.ver) {
        // Versions only go up and a gone account never comes back: this token is done for good.
        cache.delete(header);
        throw unauthenticated(res);
      }
      return identity;
    },
    get size() {
      return cache.size;
    },
  };
}

/** How long an unknown key id waits for the JWKS to be fetched again since the last fetch. */
export const JWKS_MIN_REFETCH_MS = 1000;

/**
 * `reload`, for a token that names a key not read yet: callers at once share one run, which
 * starts no sooner than JWKS_MIN_REFETCH_MS after `lastStart()`, so a flood of made-up key ids
 * costs one fetch a second.
 */
export function rereadAtMostOnceASecond(reload: () => Promise<void>, lastStart: () => number): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () =>
    (running ??= (async () => {
      const wait = lastStart() + JWKS_MIN_REFETCH_MS - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      await reload();
    })().finally(() => {
      running = undefined;
    }));
}

/** `get`, asked once more after `reread()` when a token names a key id that `get` lacks. */
export function rereadOnUnknownKey(get: JWTVerifyGetKey, reread: () => Promise<void>): JWTVerifyGetKey {
  return async (header, token) => {
    try {
      return await get(header, token);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
      await reread();
      return get(header, token);
    }
  };
}

export interface RemoteKeysOptions {
  timeoutMs?: number;
  /** Fetched again this often whatever tokens arrive (JWT_KEY_REFRESH_MS): a rotated key is known before it signs. */
  refreshMs?: number;
}

/**
 * A JWKS fetched over HTTP, cached, fetched again every `refreshMs`, and at once when a token
 * names a key id it lacks: one fetch in flight, at most one a second (a token that arrives sooner
 * waits for it rather than being refused; a made-up kid costs its sender that wait).
 */
export function remoteKeys(url: string, { timeoutMs = 5000, refreshMs = DEFAULT_JWT_KEY_REFRESH_MS }: RemoteKeysOptions = {}): JWTVerifyGetKey {
  // jose fetches on a missing key only after its cooldown; that is ours to decide (below), so its
  // own never ends. The age bounds how long an outage of the key's publisher is ridden out.
  const set = createRemoteJWKSet(new URL(url), { timeoutDuration: timeoutMs, cooldownDuration: Infinity, cacheMaxAge: 60 * 60_000 });
  let lastFetch = 0;
  const fetchNow = (): Promise<void> => {
    lastFetch = Date.now();
    return set.reload();
  };
  const refetch = rereadAtMostOnceASecond(fetchNow, () => lastFetch);
  let timer: NodeJS.Timeout | undefined;
  const startRefresh = () => {
    // Started by the first use, so a verifier that never sees a token never fetches.
    // Armed by a request, it runs for the process's life: its fetches carry no request's trace.
    timer = setInterval(untraced(() => {
      if (Date.now() - lastFetch >= refreshMs / 2) fetchNow().catch(() => {});
    }), refreshMs);
    timer.unref();
  };
  const verify = rereadOnUnknownKey(set, refetch);
  return async (header, token) => {
    if (timer === undefined) startRefresh();
    if (!set.fresh) lastFetch = Date.now();
    return verify(header, token);
  };
}

/**
 * The same JWKS published by several instances (every user-service instance serves every key it
 * has read): asked in turn, starting with the one that answered last, so one instance down costs
 * nothing. An instance without the token's key sends the question on too: a key just rotated in
 * may have been read by one instance and not yet by another.
 */
function failoverKeys(urls: readonly string[], options: RemoteKeysOptions = {}): JWTVerifyGetKey {
  const sets = urls.map((url) => remoteKeys(url, options));
  if (sets.length === 1) return sets[0];
  let preferred = 0;
  return async (...args: Parameters<JWTVerifyGetKey>) => {
    let failure: unknown;
    let noMatch: unknown;
    for (let n = 0; n < sets.length; n++) {
      const i = (preferred + n) % sets.length;
      try {
        const key = await sets[i](...args);
        preferred = i;
        return key;
      } catch (err) {
        if (err instanceof errors.JWKSMultipleMatchingKeys) throw err;
        if (err instanceof errors.JWKSNoMatchingKey) noMatch = err;
        else failure = err;
      }
    }
    throw noMatch ?? failure;
  };
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

/** Constant-time check of an Authorization header against `Bearer <secret>`. */
export function bearerMatches(header: string | undefined, expected: Buffer | undefined): boolean {
  if (header === undefined || expected === undefined) return false;
  const token = bearerToken(header);
  return token !== undefined && timingSafeEqual(digest(token), expected);
}

/**
 * Throws unless the Authorization header holds the admin secret (`adminToken`, a secretDigest) or
 * an admin's token: none is 401, another caller's 403. `res`, when given, gets the 401's challenge.
 */
export async function requireAdminToken(header: string | undefined, adminToken: Buffer | undefined, verifier: TokenVerifier | undefined, res?: ServerResponse): Promise<void> {
  // A cross-site form cannot set Authorization: it stops here.
  if (header === undefined) throw unauthenticated(res, 'An admin token is required');
  if (bearerMatches(header, adminToken)) return;
  if (!verifier) throw unauthenticated(res);
  const identity = verifier.cached(header) ?? (await verifier.verify(header, res));
  if (identity.role !== 'admin') throw forbidden('An admin token is required');
}

const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.'));

/**
 * A guard for a route only our own processes call: the service credential as Bearer when one is
 * configured (none: 401, another: 403), else callers on this machine only (403 for the rest).
 */
export function internalCallerGuard(internalToken: string | undefined): (req: IncomingMessage, res: ServerResponse) => void {
  const internal = secretDigest(internalToken);
  return (req, res) => {
    if (internal === undefined) {
      if (!isLoopback(req.socket.remoteAddress)) throw forbidden('The service credential is required');
      return;
    }
    if (bearerMatches(req.headers.authorization, internal)) return;
    if (req.headers.authorization === undefined) throw unauthenticated(res, 'The service credential is required');
    throw forbidden('The service credential is required');
  };
}

/** What bearerMatches compares against; hashing both sides makes the lengths equal. */
export const secretDigest = (secret: string | undefined): Buffer | undefined => (secret === undefined ? undefined : digest(secret));

/** How a service learns its caller: the rules of its mode over a verifier. */
export interface ServiceAuth {
  readonly mode: AuthMode;
  /**
   * The caller of a request: its verified identity, or null for an anonymous request in open mode
   * (which is unrestricted). A bad token is 401 in every mode, and so is
   * no token in required mode.
   */
  caller(req: IncomingMessage, res: ServerResponse): Promise<Identity | null>;
  /** The caller, when the route also serves anonymous callers in every mode (public reads, sign-up). */
  optionalCaller(req: IncomingMessage, res: ServerResponse): Promise<Identity | null>;
  /** Throws unless the request holds the service credential (when one is configured; open mode without one lets all through). */
  requireService(req: IncomingMessage, res: ServerResponse): void;
  /**
   * The service's own admin surface (/metrics, /spans, /traces): open in open mode; in required
   * mode an admin's token or ADMIN_TOKEN as Bearer (none: 401, a user's: 403).
   */
  requireAdminSurface: (req: IncomingMessage, res: ServerResponse) => Promise<void>;
}

export interface ServiceAuthOptions {
  mode?: AuthMode;
  /** Absent: no token can be verified (every bearer token is 401). */
  verifier?: TokenVerifier;
  internalToken?: string | undefined;
  adminToken?: string | undefined;
}

export function createServiceAuth({ mode = 'open', verifier, internalToken, adminToken }: ServiceAuthOptions = {}): ServiceAuth {
  const internal = secretDigest(internalToken);
  const admin = secretDigest(adminToken);
  const identify = async (req: IncomingMessage, res: ServerResponse): Promise<Identity | null> => {
    const header = req.headers.authorization;
    if (header === undefined) return null;
    if (!verifier) throw unauthenticated(res);
    return verifier.cached(header) ?? verifier.verify(header, res);
  };
  return {
    mode,
    async caller(req, res) {
      const identity = await identify(req, res);
      if (identity === null && mode === 'required') throw unauthenticated(res);
      return identity;
    },
    optionalCaller: identify,
    requireService(req, res) {
      if (internal === undefined) {
        if (mode === 'required') throw forbidden('No service credential is configured');
        return;
      }
      if (!bearerMatches(req.headers.authorization, internal)) {
        if (req.headers.authorization === undefined) throw unauthenticated(res, 'The service credential is required');
        throw forbidden('The service credential is wrong');
      }
    },
    async requireAdminSurface(req, res) {
      if (mode !== 'open') await requireAdminToken(req.headers.authorization, admin, verifier, res);
    },
  };
}

export const isAdmin = (caller: Identity | null): boolean => caller?.role === 'admin';

/** Whether the caller may see or change what `ownerId` owns: itself, an admin, or an open-mode anonymous caller. */
export const mayActFor = (caller: Identity | null, ownerId: number | string): boolean =>
  caller === null || caller.role === 'admin' || caller.sub === String(ownerId);

/** 403 unless the caller is an admin (or an open-mode anonymous caller). */
export function requireAdmin(caller: Identity | null): void {
  if (caller !== null && caller.role !== 'admin') throw forbidden('Only an admin may do this');
}

export interface AuthConfig {
  AUTH_MODE?: AuthMode | undefined;
  NODE_ENV: string;
  JWKS_URL?: string | undefined;
  JWT_ISSUER: string;
  JWT_AUDIENCE: string;
  JWT_ALGORITHMS: string[];
  INTERNAL_TOKEN?: string | undefined;
  ADMIN_TOKEN?: string | undefined;
  TOKEN_TTL_S: number;
  JWT_KEY_REFRESH_MS: number;
  TOKEN_VERSION_CACHE_MS: number;
}

/**
 * A verifier over the JWKS the configuration names: JWKS_URL, or by default every instance of our
 * user service in `usersUrls` (a USERS_URL list), each one's /.well-known/jwks.json. Tokens of our
 * own user service (no JWKS_URL) are also checked against their account's current version, asked
 * of the same instances; an external identity provider's accounts are not ours to check.
 */
export function verifierFromConfig(config: AuthConfig, usersUrls: string, logger?: Logger): TokenVerifier {
  const urls = urlList(usersUrls);
  const keyOptions = { refreshMs: config.JWT_KEY_REFRESH_MS };
  const keys = config.JWKS_URL === undefined ? failoverKeys(urls.map((u) => jwksUrlOf(config, u)), keyOptions) : remoteKeys(config.JWKS_URL, keyOptions);
  const versions = config.JWKS_URL === undefined
    ? createTokenVersions({ fetch: remoteTokenVersions(urls, config.INTERNAL_TOKEN, { logger: logger?.child({ component: 'token-versions' }) }), ttlMs: config.TOKEN_VERSION_CACHE_MS })
    : undefined;
  return createTokenVerifier({
    keys, issuer: config.JWT_ISSUER, audience: config.JWT_AUDIENCE, algorithms: config.JWT_ALGORITHMS, maxLifetimeS: config.TOKEN_TTL_S, versions,
  });
}

/** A service's ServiceAuth from its configuration. */
export function serviceAuthFromConfig(config: AuthConfig, usersUrls: string, logger?: Logger): ServiceAuth {
  return createServiceAuth({
    mode: authModeOf(config), verifier: verifierFromConfig(config, usersUrls, logger), internalToken: config.INTERNAL_TOKEN, adminToken: config.ADMIN_TOKEN,
  });
}
