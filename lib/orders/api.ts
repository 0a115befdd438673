// The order service's routes as its OpenAPI document shows them: one entry per route of routes.ts
// (a test checks the two agree), with the schemas that check each request.
import { CALLER_REFUSALS, UNAUTHENTICATED } from '../platform/openapi/common.js';
import type { ApiRoute } from '../platform/openapi/document.js';
import { IdParamsSchema, pageOf } from '../platform/validation.js';
import { CreateOrderSchema, IdempotencyKeySchema, ListOrdersQuerySchema, OrderSchema, OrderStatsSchema, UpdateStatusSchema } from './schema.js';

export const ORDER_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/orders', summary: 'List orders, newest first', query: ListOrdersQuerySchema,
    responses: { 200: { description: 'A page of orders', body: pageOf(OrderSchema) }, 400: { description: 'Bad query' }, ...CALLER_REFUSALS },
  },
  {
    method: 'get', path: '/orders/:id', summary: 'One order', params: IdParamsSchema,
    responses: { 200: { description: 'The order', body: OrderSchema }, 400: { description: 'Not an id' }, ...UNAUTHENTICATED, 404: { description: "No such order, or another user's" } },
  },
  {
    method: 'post', path: '/orders', summary: 'Place an order: the stock of every item is taken at once, or none', body: CreateOrderSchema,
    headers: { 'Idempotency-Key': { schema: IdempotencyKeySchema.optional(), description: 'A repeat with the same key and body answers the same order' } },
    responses: {
      201: { description: 'Created (Location: /orders/{id}); a replay carries Idempotent-Replayed: true', body: OrderSchema },
      400: { description: 'Invalid body or Idempotency-Key' },
      ...CALLER_REFUSALS,
      409: { description: 'INSUFFICIENT_STOCK; IDEMPOTENCY_KEY_IN_USE (Retry-After): a create with this key is still in progress' },
      422: { description: 'UNKNOWN_USER, UNKNOWN_PRODUCT or IDEMPOTENCY_KEY_REUSED' },
      502: { description: 'BAD_GATEWAY: the product service answered something unexpected' },
      503: { description: 'DEPENDENCY_UNAVAILABLE (X-Dependency-Failure): the user or product service is unavailable; SERVICE_UNAVAILABLE: undone after running out of time, or too many keys in flight. Nothing was created' },
      504: { description: "DEADLINE_EXCEEDED: the caller's Request-Timeout ran out; nothing was created" },
    },
  },
  {
    method: 'put', path: '/orders/:id/status', summary: 'Move an order along its workflow', params: IdParamsSchema, body: UpdateStatusSchema,
    responses: {
      200: { description: 'The order', body: OrderSchema },
      400: { description: 'Invalid body or id' },
      ...CALLER_REFUSALS,
      404: { description: "No such order, or another user's" },
      409: { description: 'INVALID_TRANSITION' },
    },
  },
  {
    method: 'delete', path: '/orders/:id', summary: 'Delete a pending order and give its stock back', params: IdParamsSchema,
    responses: { 204: { description: 'Deleted' }, 400: { description: 'Not an id' }, ...UNAUTHENTICATED, 404: { description: "No such order, or another user's" }, 409: { description: 'ORDER_NOT_PENDING' } },
  },
  {
    method: 'get', path: '/stats', summary: 'Orders by status, revenue and average value',
    responses: { 200: { description: 'Stats', body: OrderStatsSchema }, ...CALLER_REFUSALS },
  },
];
