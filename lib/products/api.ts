// The product service's routes as its OpenAPI document shows them: one entry per route of
// routes.ts (a test checks the two agree), with the schemas that check each request.
import { z } from 'zod';
import { CALLER_REFUSALS } from '../platform/openapi/common.js';
import type { ApiRoute } from '../platform/openapi/document.js';
import { IdParamsSchema, pageOf } from '../platform/validation.js';
import {
  CreateProductSchema, ListProductsQuerySchema, ProductSchema, ProductStatsSchema, ReservationParamsSchema, ReservationSchema,
  ReserveSchema, StockChangeSchema, UpdateProductSchema,
} from './schema.js';

/** /internal/* once INTERNAL_TOKEN is set: the order service's credential, and nothing else. */
const INTERNAL_REFUSALS: ApiRoute['responses'] = {
  401: { description: 'UNAUTHENTICATED: no Authorization (INTERNAL_TOKEN is set)' },
  403: { description: 'FORBIDDEN: anything but Bearer <INTERNAL_TOKEN>' },
};

export const PRODUCT_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/products', summary: 'List products', query: ListProductsQuerySchema,
    responses: { 200: { description: 'A page of products', body: pageOf(ProductSchema) }, 400: { description: 'Bad query' } },
  },
  {
    method: 'get', path: '/products/:id', summary: 'One product', params: IdParamsSchema,
    responses: { 200: { description: 'The product', body: ProductSchema }, 400: { description: 'Not an id' }, 404: { description: 'No such product' } },
  },
  {
    method: 'post', path: '/products', summary: 'Create a product', body: CreateProductSchema,
    responses: { 201: { description: 'Created (Location: /products/{id})', body: ProductSchema }, 400: { description: 'Invalid body' }, ...CALLER_REFUSALS },
  },
  {
    method: 'put', path: '/products/:id', summary: 'Change some of name, description, price, category', params: IdParamsSchema, body: UpdateProductSchema,
    responses: { 200: { description: 'The product', body: ProductSchema }, 400: { description: 'Invalid body or id' }, ...CALLER_REFUSALS, 404: { description: 'No such product' } },
  },
  {
    method: 'patch', path: '/products/:id/stock', summary: 'Add, subtract or set the stock', params: IdParamsSchema, body: StockChangeSchema,
    responses: {
      200: { description: 'The new stock', body: z.object({ id: z.number().int(), stock: z.number().int() }) },
      400: { description: 'Invalid body or id' },
      ...CALLER_REFUSALS,
      404: { description: 'No such product' },
      409: { description: 'INSUFFICIENT_STOCK or STOCK_LIMIT_EXCEEDED; stock unchanged' },
    },
  },
  {
    method: 'delete', path: '/products/:id', summary: 'Delete a product', params: IdParamsSchema,
    responses: { 204: { description: 'Deleted' }, 400: { description: 'Not an id' }, ...CALLER_REFUSALS, 404: { description: 'No such product' } },
  },
  {
    method: 'get', path: '/stats', summary: 'Catalog and inventory figures',
    responses: { 200: { description: 'Stats', body: ProductStatsSchema }, ...CALLER_REFUSALS },
  },
  {
    method: 'post', path: '/internal/reservations', summary: 'Take the stock of every item at once (order service only)', body: ReserveSchema,
    responses: {
      200: { description: 'Already held under this id: nothing taken again', body: ReservationSchema },
      201: { description: 'Held', body: ReservationSchema },
      400: { description: 'Invalid body' },
      ...INTERNAL_REFUSALS,
      409: { description: 'INSUFFICIENT_STOCK, RESERVATION_RELEASED or RESERVATION_MISMATCH' },
      422: { description: 'UNKNOWN_PRODUCT' },
    },
  },
  {
    method: 'get', path: '/internal/reservations/:id', summary: 'One reservation (order service only)', params: ReservationParamsSchema,
    responses: { 200: { description: 'The reservation', body: ReservationSchema }, 400: { description: 'Malformed id' }, ...INTERNAL_REFUSALS, 404: { description: 'No such reservation' } },
  },
  {
    method: 'delete', path: '/internal/reservations/:id', summary: 'Give the stock back (order service only; safe to repeat)', params: ReservationParamsSchema,
    responses: { 200: { description: '`released` is true only for the call that released it', body: z.object({ id: z.string(), released: z.boolean() }) }, 400: { description: 'Malformed id' }, ...INTERNAL_REFUSALS },
  },
];
