// The user service's routes as its OpenAPI document shows them: one entry per route of routes.ts
// (a test checks the two agree), with the schemas that check each request.
import type { ApiRoute } from '../platform/openapi/document.js';
import { IdParamsSchema, pageOf } from '../platform/validation.js';
import { CreateUserSchema, ListUsersQuerySchema, UpdateUserSchema, UserSchema, UserStatsSchema } from './schema.js';

export const USER_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/users', summary: 'List users', query: ListUsersQuerySchema,
    responses: { 200: { description: 'A page of users', body: pageOf(UserSchema) }, 400: { description: 'Bad query' } },
  },
  {
    method: 'get', path: '/users/:id', summary: 'One user', params: IdParamsSchema,
    responses: { 200: { description: 'The user', body: UserSchema }, 400: { description: 'Not an id' }, 404: { description: 'No such user' } },
  },
  {
    method: 'post', path: '/users', summary: 'Create a user', body: CreateUserSchema,
    responses: { 201: { description: 'Created (Location: /users/{id})', body: UserSchema }, 400: { description: 'Invalid body' }, 409: { description: 'EMAIL_TAKEN' } },
  },
  {
    method: 'put', path: '/users/:id', summary: 'Change some of name, email, role', params: IdParamsSchema, body: UpdateUserSchema,
    responses: { 200: { description: 'The user', body: UserSchema }, 400: { description: 'Invalid body or id' }, 404: { description: 'No such user' }, 409: { description: 'EMAIL_TAKEN' } },
  },
  {
    method: 'delete', path: '/users/:id', summary: 'Delete a user', params: IdParamsSchema,
    responses: { 204: { description: 'Deleted' }, 400: { description: 'Not an id' }, 404: { description: 'No such user' } },
  },
  {
    method: 'get', path: '/stats', summary: 'Counts of users by role',
    responses: { 200: { description: 'Stats', body: UserStatsSchema } },
  },
];
