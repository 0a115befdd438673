// What every service's typed client shares: an answer checked against the callee's schema, and
// the options a call may carry.
import type { z } from 'zod';
import { type RequestOptions, type ServiceClient, type ServiceResponse, UpstreamUnavailableError } from './service-client.js';

/**
 * What a typed call may carry: a signal that gives up on it (a breaker's timeout, a client gone),
 * and headers such as the caller's Authorization, so that the callee applies its rules to the caller.
 */
export type CallOptions = Pick<RequestOptions, 'signal' | 'headers'>;

/** The caller's Authorization as CallOptions headers; none for an anonymous caller. */
export const asCaller = (authorization: string | undefined): CallOptions =>
  authorization === undefined ? {} : { headers: { authorization } };

/** The body of `res` as `schema` reads it; an answer of another shape is the callee's fault (a bad response). */
export function checkedBody<T>(client: ServiceClient, schema: z.ZodType<T>, res: ServiceResponse<unknown>): T {
  const parsed = schema.safeParse(res.body);
  if (!parsed.success) throw new UpstreamUnavailableError(client.name, 'bad_response', res.status);
  return parsed.data;
}
