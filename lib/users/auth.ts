// Login, password hashing, the token signing key and its JWKS.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, scrypt, timingSafeEqual, createHash, type KeyObject } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLocalJWKSet, SignJWT, type JWK, type JWTVerifyGetKey } from 'jose';
import { HttpError } from '../platform/errors.js';
import type { HashBudget } from './hash-budget.js';
import type { LoginLockout } from './lockout.js';
import type { KeyRing } from './signing-keys.js';

/** Default of DEMO_PASSWORD outside production. */
export const DEFAULT_DEMO_PASSWORD = 'microservices-demo';

// scrypt with r=8, p=1 and a cost N (PASSWORD_HASH_COST) of 2^14 by default: 16 MB of memory,
// near 50 ms a login on the demo's shared cores (OWASP's minimum for scrypt is N=2^17 with r=8 p=1
// or an equivalent). Each hash records its own N, r and p, so a hash made at one cost verifies
// under another, and raising the cost only affects hashes made from then on.
export const DEFAULT_PASSWORD_HASH_COST = 2 ** 14;
export const MIN_PASSWORD_HASH_COST = 2 ** 10;
export const MAX_PASSWORD_HASH_COST = 2 ** 17;
const R = 8;
const P = 1;
const KEY_LENGTH = 32;
const SALT_BYTES = 16;

/** Whether `n` is a cost scrypt takes here: a power of two within the bounds above. */
export const isPasswordHashCost = (n: number): boolean => Number.isInteger(n) && n >= MIN_PASSWORD_HASH_COST && n <= MAX_PASSWORD_HASH_COST && (n & (n - 1)) === 0;

// scrypt needs 128 * N * r bytes; twice that leaves room for its own bookkeeping.
const scryptOptions = (N: number, r: number, p: number) => ({ N, r, p, maxmem: 256 * N * r });

/** `scrypt$N$r$p$salt$hash`, salt and hash in base64url: a new per-user salt every time. */
export async function hashPassword(password: string, cost = DEFAULT_PASSWORD_HASH_COST): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const hash = await scryptAsync(password, salt, cost, R, P);
  return encode(cost, R, P, salt, hash);
}

/**
 * Whether `password` matches `stored`. A missing or unreadable hash is checked against a random one
 * of `cost` (the cost new hashes get), so it takes as long as a wrong password, and fails.
 */
export async function verifyPassword(password: string, stored: string | null | undefined, cost = DEFAULT_PASSWORD_HASH_COST): Promise<boolean> {
  const parsed = parseHash(stored);
  const { n, r, p, salt, hash } = parsed ?? { n: cost, r: R, p: P, salt: randomBytes(SALT_BYTES), hash: randomBytes(KEY_LENGTH) };
  const actual = await scryptAsync(password, salt, n, r, p);
  return actual.length === hash.length && timingSafeEqual(actual, hash) && parsed !== undefined;
}

function parseHash(stored: string | null | undefined): { n: number; r: number; p: number; salt: Buffer; hash: Buffer } | undefined {
  const parts = stored?.split('$');
  if (parts?.length !== 6 || parts[0] !== 'scrypt') return undefined;
  const [n, r, p] = parts.slice(1, 4).map(Number);
  // Bounds on what a stored hash may ask for: no row can make a login take a second or a gigabyte.
  if (!isPasswordHashCost(n) || r !== R || p !== P) return undefined;
  return { n, r, p, salt: Buffer.from(parts[4], 'base64url'), hash: Buffer.from(parts[5], 'base64url') };
}

function encode(n: number, r: number, p: number, salt: Buffer, hash: Buffer): string {
  return `scrypt$${n}$${r}$${p}$${salt.toString('base64url')}$${hash.toString('base64url')}`;
}

function scryptAsync(password: string, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_LENGTH, scryptOptions(N, r, p), (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** The key tokens are signed with, and its public half as a JWK. */
export interface SigningKey {
  alg: 'ES256' | 'EdDSA';
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
}

export const SIGNING_KEY_FILE = 'jwt-signing-key.pem';

/**
 * The signing key: from `privateKeyPem` (JWT_PRIVATE_KEY, a PKCS#8 PEM of a P-256 or Ed25519 key),
 * else from DATA_DIR/jwt-signing-key.pem, made there (mode 0600) on the first start. A data dir of
 * `:memory:` gets a key that lives as long as the process.
 */
export function loadSigningKey(dataDir: string, privateKeyPem?: string): SigningKey {
  if (privateKeyPem !== undefined) return toSigningKey(createPrivateKey(privateKeyPem.replace(/\\n/g, '\n')));
  if (dataDir === ':memory:') return toSigningKey(generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey);
  const file = join(dataDir, SIGNING_KEY_FILE);
  try {
    return toSigningKey(createPrivateKey(readFileSync(file, 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  try {
    // wx: two processes starting on one data dir cannot both write; the loser reads the winner's.
    writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    chmodSync(file, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return toSigningKey(createPrivateKey(readFileSync(file, 'utf8')));
  }
  return toSigningKey(privateKey);
}

/** Whether JWT_PRIVATE_KEY holds a key we can sign with (checked at start, with the rest of the configuration). */
export function isUsableSigningKey(pem: string): boolean {
  try {
    loadSigningKey(':memory:', pem);
    return true;
  } catch {
    return false;
  }
}

/** A private key as the service signs with it; its kid is the RFC 7638 thumbprint of the public key. */
export function toSigningKey(privateKey: KeyObject): SigningKey {
  const type = privateKey.asymmetricKeyType;
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' }) as JWK;
  let alg: SigningKey['alg'];
  let members: Record<string, string>;
  if (type === 'ec' && jwk.crv === 'P-256') {
    alg = 'ES256';
    members = { crv: jwk.crv, kty: 'EC', x: jwk.x!, y: jwk.y! };
  } else if (type === 'ed25519') {
    alg = 'EdDSA';
    members = { crv: 'Ed25519', kty: 'OKP', x: jwk.x! };
  } else {
    throw new Error('the signing key must be a P-256 (ES256) or Ed25519 (EdDSA) private key');
  }
  // RFC 7638 thumbprint: the required members in lexical order, no spaces.
  const kid = createHash('sha256').update(JSON.stringify(members)).digest('base64url');
  return { alg, kid, privateKey, publicJwk: { ...members, kid, alg, use: 'sig' } };
}

/** The key set to verify our own tokens without asking ourselves over HTTP. */
export const localKeys = (key: SigningKey): JWTVerifyGetKey => createLocalJWKSet({ keys: [key.publicJwk] });

export interface TokenSettings {
  issuer: string;
  audience: string;
  ttlS: number;
}

/** `tokenVersion`: the user's token version (sessions.ts), the `ver` claim every verifier checks. */
export function issueToken(key: SigningKey, user: { id: number; role: string; tokenVersion?: number }, { issuer, audience, ttlS }: TokenSettings): Promise<string> {
  return new SignJWT({ role: user.role, ver: user.tokenVersion ?? 0 })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setSubject(String(user.id))
    .setIssuer(issuer)
    .setAudience(audience)
    .setIssuedAt()
    .setExpirationTime(`${ttlS}s`)
    .sign(key.privateKey);
}

const invalidCredentials = (): HttpError => new HttpError(401, 'INVALID_CREDENTIALS', 'Email or password is wrong');

export interface LoginDeps {
  store: { credentials(email: string): Promise<{ id: number; role: string; passwordHash: string | null; tokenVersion?: number } | undefined> };
  keys: KeyRing;
  token: TokenSettings;
  lockout: LoginLockout;
  hashBudget: HashBudget;
  /** scrypt's N for new hashes (PASSWORD_HASH_COST), and for the stand-in hash of an unknown email. */
  passwordHashCost: number;
}

/**
 * A token for the right email and password. A wrong password, an unknown email and a user without
 * a password all get the same 401 after the same scrypt work, so the answer tells no one which
 * emails exist.
 */
export async function login({ store, keys, token, lockout, hashBudget, passwordHashCost }: LoginDeps, email: string, password: string, client: string): Promise<{ accessToken: string; tokenType: 'Bearer'; expiresIn: number }> {
  const attempt = await lockout.attempt(email.toLowerCase(), client);
  const credentials = await store.credentials(email);
  const matches = await hashBudget.run(client, () => verifyPassword(password, credentials?.passwordHash, passwordHashCost));
  if (!credentials || !matches) throw invalidCredentials();
  await lockout.succeed(attempt);
  return { accessToken: await issueToken(await keys.signingKey(), credentials, token), tokenType: 'Bearer', expiresIn: token.ttlS };
}
