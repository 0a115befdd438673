import { z } from 'zod';
import { intVar, portVar, serviceShape, urlListVar } from '../platform/config.js';
import { adminTokenVar, authShape, demoSeedShape, withDemoSeedRule } from '../platform/identity.js';
import { requireInternalTokenWhenRequired } from '../products/config.js';

export const OrderConfigSchema = z.object({
  ...serviceShape,
  ...authShape,
  // Opens /metrics, /spans and /traces in required mode (scrapers), beside an admin's JWT.
  ADMIN_TOKEN: adminTokenVar,
  ...demoSeedShape,
  PORT: portVar(3013),
  // Each service's instances: one base URL or a comma-separated list (at most 16, no repeats).
  // Calls are balanced over them; a call refused by one (or reset before any answer, when it is
  // safe to repeat) goes to another. The first user-service URL also serves the JWKS.
  USERS_URL: urlListVar('http://127.0.0.1:3011'),
  PRODUCTS_URL: urlListVar('http://127.0.0.1:3012'),
  // With several instances: consecutive failures that take one out of the rotation, and how long
  // it stays out at first (back at its first answered /health probe; the time doubles only while
  // its probes keep failing, up to the max).
  OUTLIER_CONSECUTIVE_FAILURES: intVar(5, 1, 1000),
  OUTLIER_EJECTION_MS: intVar(10_000, 10, 2 ** 31 - 1),
  OUTLIER_MAX_EJECTION_MS: intVar(300_000, 10, 2 ** 31 - 1),
  // Each call to the user or product service gives up after this long (503 to our client).
  UPSTREAM_TIMEOUT_MS: intVar(5000, 1, 600_000),
  // How often stock reservations left behind (products down during a cancel, a timed-out
  // reserve, a crash mid-create) are released again. A row is first retried once it is older
  // than 2 x UPSTREAM_TIMEOUT_MS, so a create still waiting for its reserve is never raced.
  RELEASE_RETRY_MS: intVar(5000, 10, 3_600_000),
  // A create with an Idempotency-Key holds its key this long past its last renewal (renewed every
  // third of it while it runs): a key whose instance died is free again after at most this long,
  // and one pause of a live holder shorter than two thirds of it never loses the key.
  IDEMPOTENCY_KEY_LEASE_MS: intVar(3000, 30, 600_000),
  // How long a repeat waits for the create holding its key before it answers 409
  // IDEMPOTENCY_KEY_IN_USE; never past the caller's Request-Timeout, whichever ends first.
  IDEMPOTENCY_KEY_WAIT_MS: intVar(5000, 0, 600_000),
  // A finished key answers repeats this long after its order was made, then it is deleted (a
  // repeat after that is a new order). 24 h, as payment APIs keep theirs: far past any retry.
  IDEMPOTENCY_KEY_TTL_MS: intVar(24 * 3_600_000, 100, 365 * 24 * 3_600_000),
  // How often expired keys and lapsed claims are deleted, in batches of a few hundred rows.
  RETENTION_INTERVAL_MS: intVar(60_000, 10, 3_600_000),
}).superRefine(requireInternalTokenWhenRequired).transform(withDemoSeedRule);

export type OrderConfig = z.output<typeof OrderConfigSchema>;
