import { z } from 'zod';
import { intVar, portVar, retentionShape, serviceShape, serviceUrlShape } from '../platform/config.js';
import { authModeOf, authShape, demoSeedShape, withDemoSeedRule } from '../platform/identity.js';

export const ProductConfigSchema = z
  .object({
    ...serviceShape,
    ...authShape,
    PORT: portVar(3012),
    USERS_URL: serviceUrlShape.USERS_URL,
    ...demoSeedShape,
    // A released reservation (or the tombstone of a release that came first) is kept this long,
    // then deleted: a reserve of its id arriving later would take stock that no order owns. So
    // it must outlast every reserve still on its way: the order service's UPSTREAM_TIMEOUT_MS
    // (at most 10 min, retries included) and what a stalled process adds. 1 h leaves a margin.
    RESERVATION_RETENTION_MS: intVar(3_600_000, 100, 365 * 24 * 3_600_000),
    ...retentionShape,
  })
  .superRefine(requireInternalTokenWhenRequired)
  .transform(withDemoSeedRule);

export type ProductConfig = z.output<typeof ProductConfigSchema>;

/** Without a service credential, /internal/* would either be open or refuse the order service. */
export function requireInternalTokenWhenRequired(c: { AUTH_MODE?: 'open' | 'required' | undefined; NODE_ENV: string; INTERNAL_TOKEN?: string | undefined }, ctx: z.RefinementCtx): void {
  if (authModeOf(c) === 'required' && c.INTERNAL_TOKEN === undefined) {
    ctx.addIssue({ code: 'custom', path: ['INTERNAL_TOKEN'], message: 'is required when AUTH_MODE is required (the same value in the order and product services)' });
  }
}
