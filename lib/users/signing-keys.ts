// The keys tokens are signed with: one fixed key (JWT_PRIVATE_KEY, or the PEM file under DATA_DIR),
// or keys kept in the database, shared by every instance and rotated without logging anyone out.
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { createLocalJWKSet, type JWK, type JWTVerifyGetKey } from 'jose';
import { rereadAtMostOnceASecond, rereadOnUnknownKey } from '../platform/identity.js';
import type { Logger } from '../platform/logger.js';
import type { Db } from '../platform/sql.js';
import { localKeys, toSigningKey, type SigningKey } from './auth.js';

/** The keys one instance signs with and publishes. */
export interface KeyRing {
  /** The key new tokens are signed with. */
  signingKey(): Promise<SigningKey>;
  /** The public halves of every key a valid token may carry, and of the next one: the JWKS. */
  publicKeys(): Promise<JWK[]>;
  /** Our own tokens, checked in this process against `publicKeys`. */
  verifyKeys: JWTVerifyGetKey;
  /** Stops reading the database; waits for a read under way. */
  close(): Promise<void>;
}

/** One key for the life of the process. */
export function staticKeyRing(key: SigningKey): KeyRing {
  return {
    signingKey: () => Promise.resolve(key),
    publicKeys: () => Promise.resolve([key.publicJwk]),
    verifyKeys: localKeys(key),
    close: () => Promise.resolve(),
  };
}

/** A key as the table keeps it: when it starts signing, in ms since the epoch. */
export interface StoredKey {
  kid: string;
  activeFromMs: number;
}

/**
 * Which keys are in use at `now`, from the stored ones: the signing key is the newest whose time
 * has come; a key stays published until `retainMs` after a newer one took over (tokens it signed
 * live that long), and a key whose time has not yet come is published already, so that every
 * verifier can know it before the first token it signs.
 */
export function keysInUse<K extends StoredKey>(stored: readonly K[], now: number, retainMs: number): { signing: K | undefined; published: K[] } {
  const newestFirst = [...stored].sort((a, b) => b.activeFromMs - a.activeFromMs || (a.kid < b.kid ? 1 : -1));
  const index = newestFirst.findIndex((k) => k.activeFromMs <= now);
  // Only keys of the future (a clock behind the one that rotated): the oldest of them signs.
  const signingIndex = index === -1 ? newestFirst.length - 1 : index;
  const published = newestFirst.filter((k, i) => i <= signingIndex || newestFirst[i - 1].activeFromMs + retainMs > now);
  return { signing: newestFirst[signingIndex], published };
}

interface KeyRow {
  kid: string;
  private_key: string;
  active_from_ms: number;
}

// The newest keys only: with rotations pruned, far fewer are ever stored.
const MAX_KEYS_READ = 50;

export interface StoredKeyRingOptions {
  /** How often the keys are read again, so a rotation reaches this instance without a restart. */
  refreshMs: number;
  /** How long a key stays published after a newer one started signing: token lifetime + clock tolerance. */
  retainMs: number;
  logger?: Logger | undefined;
  /** This instance's clock (tests give one that runs ahead). */
  now?: () => number;
}

/**
 * How long after `npm run rotate-key` a new key starts signing: one refresh for every instance to
 * read and publish it, one for every verifier to fetch the JWKS again, and one more as a margin
 * (a verifier that meets it earlier fetches at once anyway).
 */
export const activationDelayMs = (refreshMs: number): number => 3 * refreshMs;

/**
 * The keys kept in the database's `signing_keys` table, shared by every instance. Reads them once
 * before it resolves (making the first one when there is none: one instance does it, under a lock,
 * and the others read it), then again every `refreshMs`. While the database cannot be read the
 * keys read last stay in use.
 */
export async function startStoredKeyRing(db: Db, { refreshMs, retainMs, logger, now = Date.now }: StoredKeyRingOptions): Promise<KeyRing> {
  const parsed = new Map<string, SigningKey>();
  let keys: (SigningKey & StoredKey)[] = [];
  let failing = false;

  const load = async () => {
    let rows = await db.all<KeyRow>('SELECT kid, private_key, active_from_ms FROM signing_keys ORDER BY active_from_ms DESC, kid DESC LIMIT $1', [MAX_KEYS_READ]);
    if (rows.length === 0) {
      await createFirstKey(db);
      rows = await db.all<KeyRow>('SELECT kid, private_key, active_from_ms FROM signing_keys ORDER BY active_from_ms DESC, kid DESC LIMIT $1', [MAX_KEYS_READ]);
    }
    // A key is parsed once; its time is taken from each read.
    const next = rows.map((r) => ({ ...(parsed.get(r.kid) ?? toSigningKey(createPrivateKey(r.private_key))), activeFromMs: r.active_from_ms }));
    parsed.clear();
    for (const k of next) parsed.set(k.kid, k);
    keys = next;
  };

  await load();
  let inFlight: Promise<void> | undefined;
  let lastLoad = Date.now();
  const reload = () => {
    lastLoad = Date.now();
    inFlight ??= load().then(
      () => {
        if (failing) logger?.info('signing keys read again');
        failing = false;
      },
      (err: unknown) => {
        // One line per outage: the keys read last stay in use meanwhile.
        if (!failing) logger?.warn({ err: { message: (err as Error).message } }, 'cannot read the signing keys; the last ones read stay in use');
        failing = true;
      },
    ).finally(() => {
      inFlight = undefined;
    });
    return inFlight;
  };
  const timer = setInterval(() => void reload(), refreshMs);
  timer.unref();
  // A token of a key this instance has not read yet (another instance, its clock ahead, signs with
  // it already): the keys are read again at once, at most once a second, and the token waits.
  const reread = rereadAtMostOnceASecond(reload, () => lastLoad);

  const inUse = () => keysInUse(keys, now(), retainMs);
  // The published keys change with time alone, so the set is looked at per call and made again
  // only when its members changed.
  let verifySet = { kids: '', get: createLocalJWKSet({ keys: [] }) };
  const localKey: JWTVerifyGetKey = (header, token) => {
    const published = inUse().published;
    const kids = published.map((k) => k.kid).join(' ');
    if (kids !== verifySet.kids) verifySet = { kids, get: createLocalJWKSet({ keys: published.map((k) => k.publicJwk) }) };
    return verifySet.get(header, token);
  };
  const verifyKeys = rereadOnUnknownKey(localKey, reread);
  return {
    signingKey: () => Promise.resolve(inUse().signing!),
    publicKeys: () => Promise.resolve(inUse().published.map((k) => k.publicJwk)),
    verifyKeys,
    async close() {
      clearInterval(timer);
      await inFlight;
    },
  };
}

const newPrivateKeyPem = (): string => generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

async function createFirstKey(db: Db): Promise<void> {
  await db.transaction(async (tx) => {
    // Instances starting together on an empty table: the first makes the key, the others find it.
    if (tx.engine === 'postgres') await tx.run("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.signing_keys'))");
    if (await tx.get('SELECT 1 AS found FROM signing_keys LIMIT 1')) return;
    await insertKey(tx, newPrivateKeyPem(), Date.now());
  });
}

async function insertKey(tx: Db, pem: string, activeFromMs: number): Promise<string> {
  const { kid } = toSigningKey(createPrivateKey(pem));
  await tx.run('INSERT INTO signing_keys (kid, private_key, created_ms, active_from_ms) VALUES ($1, $2, $3, $4)', [kid, pem, Date.now(), activeFromMs]);
  return kid;
}

export interface Rotation {
  /** The new key's id. */
  kid: string;
  /** When it starts signing, in ms since the epoch. */
  activeFromMs: number;
  /** Keys deleted because no valid token can carry them any more. */
  removed: string[];
}

/**
 * Adds a new key that starts signing after `activateAfterMs` (at least one refresh of every
 * instance, so each publishes it before any token carries it), and deletes the keys whose
 * retention has ended. Nobody is logged out: the older keys stay published for `retainMs` after
 * the new one took over.
 */
export async function rotateSigningKey(db: Db, { activateAfterMs, retainMs }: { activateAfterMs: number; retainMs: number }): Promise<Rotation> {
  return db.transaction(async (tx) => {
    if (tx.engine === 'postgres') await tx.run("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.signing_keys'))");
    const now = Date.now();
    const activeFromMs = now + activateAfterMs;
    const kid = await insertKey(tx, newPrivateKeyPem(), activeFromMs);
    const stored = (await tx.all<{ kid: string; active_from_ms: number }>('SELECT kid, active_from_ms FROM signing_keys')).map((r) => ({ kid: r.kid, activeFromMs: r.active_from_ms }));
    const kept = new Set(keysInUse(stored, now, retainMs).published.map((k) => k.kid));
    const removed = stored.filter((k) => !kept.has(k.kid)).map((k) => k.kid);
    for (const old of removed) await tx.run('DELETE FROM signing_keys WHERE kid = $1', [old]);
    return { kid, activeFromMs, removed };
  });
}
