// The user service's routes as its OpenAPI document shows them: one entry per route of routes.ts
// (a test checks the two agree), with the schemas that check each request.
import { z } from 'zod';
import { CALLER_REFUSALS, UNAUTHENTICATED } from '../platform/openapi/common.js';
import type { ApiRoute } from '../platform/openapi/document.js';
import { IdParamsSchema, pageOf } from '../platform/validation.js';
import { CreateUserSchema, ListUsersQuerySchema, LoginSchema, UpdateUserSchema, UserSchema, UserStatsSchema } from './schema.js';

/** POST /auth/login's answer (lib/users/auth.ts login). */
const AccessTokenSchema = z.object({ accessToken: z.string(), tokenType: z.literal('Bearer'), expiresIn: z.number().int().describe('seconds') });

/** POST /auth/login, as the user service and the gateway's /api/auth/login answer it. */
export const LOGIN_API: Omit<ApiRoute, 'path'> = {
  method: 'post', summary: 'A signed access token (JWT) for an email and password; Cache-Control: no-store', body: LoginSchema,
  responses: {
    200: { description: 'The token', body: AccessTokenSchema },
    400: { description: 'VALIDATION_ERROR' },
    401: { description: 'INVALID_CREDENTIALS: the same answer for an unknown email, a wrong password and a user without one' },
    429: { description: 'RATE_LIMITED: too many failed logins for this email from this client address (Retry-After)' },
    503: { description: 'OVERLOADED: password hashing is at its budget (Retry-After: 1)' },
  },
};

/** POST /auth/logout, as the user service and the gateway's /api/auth/logout answer it. */
export const LOGOUT_API: Omit<ApiRoute, 'path'> = {
  method: 'post', summary: "Ends every token of the caller (raises its account's token version); Cache-Control: no-store",
  responses: {
    204: { description: 'Logged out: the caller\'s tokens are refused everywhere within TOKEN_VERSION_CACHE_MS' },
    ...UNAUTHENTICATED,
  },
};

const JwksSchema = z.object({ keys: z.array(z.looseObject({ kty: z.string(), kid: z.string(), alg: z.string(), use: z.literal('sig') })) });

export const USER_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/users', summary: 'List users', query: ListUsersQuerySchema,
    responses: { 200: { description: 'A page of users', body: pageOf(UserSchema) }, 400: { description: 'Bad query' }, ...CALLER_REFUSALS },
  },
  {
    method: 'get', path: '/users/:id', summary: 'One user', params: IdParamsSchema,
    responses: { 200: { description: 'The user', body: UserSchema }, 400: { description: 'Not an id' }, ...UNAUTHENTICATED, 404: { description: "No such user, or another user's (required mode)" } },
  },
  {
    method: 'post', path: '/users', summary: 'Create a user', body: CreateUserSchema,
    responses: { 201: { description: 'Created (Location: /users/{id})', body: UserSchema }, 400: { description: 'Invalid body' }, ...CALLER_REFUSALS, 409: { description: 'EMAIL_TAKEN' },
      429: { description: 'RATE_LIMITED: too many sign-ups from this client address (Retry-After)' }, 503: { description: 'OVERLOADED: password hashing is at its budget (Retry-After: 1)' } },
  },
  {
    method: 'put', path: '/users/:id', summary: 'Change some of name, email, role', params: IdParamsSchema, body: UpdateUserSchema,
    responses: { 200: { description: 'The user', body: UserSchema }, 400: { description: 'Invalid body or id' }, ...CALLER_REFUSALS, 404: { description: "No such user, or another user's" }, 409: { description: 'EMAIL_TAKEN' },
      503: { description: 'OVERLOADED: password hashing is at its budget (Retry-After: 1)' } },
  },
  {
    method: 'delete', path: '/users/:id', summary: 'Delete a user', params: IdParamsSchema,
    responses: { 204: { description: 'Deleted' }, 400: { description: 'Not an id' }, ...CALLER_REFUSALS, 404: { description: 'No such user' } },
  },
  {
    method: 'get', path: '/stats', summary: 'Counts of users by role',
    responses: { 200: { description: 'Stats', body: UserStatsSchema }, ...CALLER_REFUSALS },
  },
  { ...LOGIN_API, path: '/auth/login' },
  { ...LOGOUT_API, path: '/auth/logout' },
  {
    method: 'get', path: '/internal/users/:id/token-version', summary: "The account's current token version, which verifiers compare with a token's ver (INTERNAL_TOKEN as Bearer; without one set, callers on this machine only)", params: IdParamsSchema,
    responses: {
      200: { description: 'The version', body: z.object({ id: z.number().int(), tokenVersion: z.number().int() }) },
      400: { description: 'Not an id' },
      401: { description: 'UNAUTHENTICATED: no Authorization (INTERNAL_TOKEN is set)' },
      403: { description: 'FORBIDDEN: anything but Bearer <INTERNAL_TOKEN>; or, without INTERNAL_TOKEN, a caller on another machine' },
      404: { description: 'No such user (deleted): none of its tokens is valid' },
    },
  },
  {
    method: 'get', path: '/.well-known/jwks.json', summary: 'The public keys tokens are verified with: every key a valid token may carry, and the next one (Cache-Control: public, max-age=300)',
    responses: { 200: { description: 'A JSON Web Key Set', body: JwksSchema } },
  },
];
