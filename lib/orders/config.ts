import { z } from 'zod';
import { callerShape, intVar, portVar, retentionShape, serviceShape, serviceUrlShape } from '../platform/config.js';
import { authShape, demoSeedShape, withDemoSeedRule } from '../platform/identity.js';
import { requireInternalTokenWhenRequired } from '../products/config.js';

export const OrderConfigSchema = z.object({
  ...serviceShape,
  ...authShape,
  ...demoSeedShape,
  PORT: portVar(3013),
  USERS_URL: serviceUrlShape.USERS_URL,
  PRODUCTS_URL: serviceUrlShape.PRODUCTS_URL,
  // A call that gives up after UPSTREAM_TIMEOUT_MS is a 503 to the order's client.
  ...callerShape,
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
  ...retentionShape,
}).superRefine(requireInternalTokenWhenRequired).transform(withDemoSeedRule);

export type OrderConfig = z.output<typeof OrderConfigSchema>;
