import { z } from 'zod';
import { intVar, portVar, serviceShape } from '../platform/config.js';
import { adminTokenVar, authShape } from '../platform/identity.js';
import { DEFAULT_DEMO_PASSWORD, DEFAULT_PASSWORD_HASH_COST, isPasswordHashCost, isUsableSigningKey, MAX_PASSWORD_HASH_COST, MIN_PASSWORD_HASH_COST } from './auth.js';

export const UserConfigSchema = z
  .object({
    ...serviceShape,
    ...authShape,
    PORT: portVar(3011),
    // Opens /metrics, /spans and /traces in required mode (scrapers), beside an admin's JWT.
    ADMIN_TOKEN: adminTokenVar,
    // A PKCS#8 PEM (P-256 or Ed25519; "\n" may be written as \n); unset: with DATABASE_URL the keys
    // kept in the database (shared by every instance, rotated by `npm run rotate-key`), else
    // DATA_DIR/jwt-signing-key.pem, made on first start.
    JWT_PRIVATE_KEY: z.string().min(1).refine(isUsableSigningKey, 'must be a PKCS#8 PEM of a P-256 or Ed25519 private key').optional(),
    // The demo users' password; default `microservices-demo` outside production. In production the
    // demo rows are only seeded when it is set.
    DEMO_PASSWORD: z.string().min(8, 'must be 8 to 128 characters').max(128, 'must be 8 to 128 characters').optional(),
    // Failed logins per email within the window before every attempt is 429.
    LOGIN_MAX_FAILURES: intVar(10, 1, 10_000),
    LOGIN_WINDOW_MS: intVar(15 * 60_000, 1000, 2 ** 31 - 1),
    // scrypt's N for new password hashes (each hash keeps its own, so old ones still verify); the
    // tests set the minimum, production should keep the default or more.
    PASSWORD_HASH_COST: intVar(DEFAULT_PASSWORD_HASH_COST, MIN_PASSWORD_HASH_COST, MAX_PASSWORD_HASH_COST)
      .refine(isPasswordHashCost, `must be a power of two from ${MIN_PASSWORD_HASH_COST} to ${MAX_PASSWORD_HASH_COST}`),
  })
  .transform((c) => {
    const demoPassword = c.DEMO_PASSWORD ?? (c.NODE_ENV === 'production' ? undefined : DEFAULT_DEMO_PASSWORD);
    return { ...c, DEMO_PASSWORD: demoPassword, SEED_DATA: c.SEED_DATA && demoPassword !== undefined };
  });
