import { z } from 'zod';
import { portVar, serviceShape, urlListVar } from '../platform/config.js';
import { adminTokenVar, authModeOf, authShape, demoSeedShape, internalTokenVar, withDemoSeedRule } from '../platform/identity.js';

export const ProductConfigSchema = z
  .object({
    ...serviceShape,
    ...authShape,
    PORT: portVar(3012),
    // The user service's instances, whose /.well-known/jwks.json verifies tokens unless JWKS_URL
    // says otherwise (asked in turn when one is down).
    USERS_URL: urlListVar('http://127.0.0.1:3011'),
    // The credential the order service shows on /internal/*; required when AUTH_MODE=required.
    INTERNAL_TOKEN: internalTokenVar,
    // Opens /metrics, /spans and /traces in required mode (scrapers), beside an admin's JWT.
    ADMIN_TOKEN: adminTokenVar,
    ...demoSeedShape,
  })
  .superRefine(requireInternalTokenWhenRequired)
  .transform(withDemoSeedRule);

/** Without a service credential, /internal/* would either be open or refuse the order service. */
export function requireInternalTokenWhenRequired(c: { AUTH_MODE?: 'open' | 'required' | undefined; NODE_ENV: string; INTERNAL_TOKEN?: string | undefined }, ctx: z.RefinementCtx): void {
  if (authModeOf(c) === 'required' && c.INTERNAL_TOKEN === undefined) {
    ctx.addIssue({ code: 'custom', path: ['INTERNAL_TOKEN'], message: 'is required when AUTH_MODE is required (the same value in the order and product services)' });
  }
}
