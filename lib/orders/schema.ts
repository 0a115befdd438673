// The order service's shapes: what clients may send, and what they get back.
import { z } from 'zod';
import { hasOnlyKeys, IdSchema, isIntFrom, PagingShape } from '../platform/validation.js';
import { readItems } from '../products/schema.js';

export const ORDER_STATUSES = ['pending', 'confirmed', 'shipped', 'delivered', 'cancelled'] as const;
const OrderStatusSchema = z.enum(ORDER_STATUSES);
export type OrderStatus = z.infer<typeof OrderStatusSchema>;

/** The workflow of the contract: anything not listed here is 409 INVALID_TRANSITION. */
export const NEXT_STATUSES: Readonly<Record<OrderStatus, readonly OrderStatus[]>> = {
  pending: ['confirmed', 'cancelled'],
  confirmed: ['shipped', 'cancelled'],
  shipped: ['delivered'],
  delivered: [],
  cancelled: [],
};

const PositiveId = z.number().int('must be a positive integer').positive('must be a positive integer').max(Number.MAX_SAFE_INTEGER);

const OrderItemInputSchema = z
  .strictObject({
    productId: PositiveId,
    quantity: z.number().int('must be an integer from 1 to 1000').min(1, 'must be an integer from 1 to 1000').max(1000, 'must be an integer from 1 to 1000'),
    // Older clients send the price they saw; the catalog price at reservation time wins.
    unitPrice: z.unknown().optional(),
  })
  .transform(({ productId, quantity }) => ({ productId, quantity }));

export const CreateOrderSchema = z.strictObject({
  userId: PositiveId,
  items: z.array(OrderItemInputSchema).min(1, 'must have 1 to 50 items').max(50, 'must have 1 to 50 items'),
});
export type CreateOrderInput = z.output<typeof CreateOrderSchema>;

/**
 * CreateOrderSchema's output for a body it accepts, read without zod (which costs each order tens
 * of microseconds); undefined for any other body, which CreateOrderSchema then reads and refuses.
 */
export function readCreateOrder(body: unknown): CreateOrderInput | undefined {
  if (!hasOnlyKeys(body, ['userId', 'items'])) return undefined;
  const { userId } = body;
  if (!isIntFrom(userId, 1, Number.MAX_SAFE_INTEGER)) return undefined;
  // The price older clients send is left out, as OrderItemInputSchema leaves it out.
  const items = readItems(body.items, ['unitPrice']);
  return items && { userId, items };
}

/** 1..255 printable ASCII characters. */
export const IdempotencyKeySchema = z.string().regex(/^[\x20-\x7E]{1,255}$/, 'must be 1 to 255 printable ASCII characters');

export const UpdateStatusSchema = z.strictObject({ status: OrderStatusSchema });

export const ListOrdersQuerySchema = z.strictObject({
  ...PagingShape,
  userId: IdSchema.optional(),
  status: OrderStatusSchema.optional(),
});
export type ListOrdersQuery = z.output<typeof ListOrdersQuerySchema>;

/** An order as the API answers it. Loose: clients keep fields added later and pass them on. */
export const OrderSchema = z.looseObject({
  id: z.number().int().positive(),
  userId: z.number().int().positive(),
  items: z.array(z.object({ productId: z.number().int(), quantity: z.number().int(), unitPrice: z.number() })),
  status: OrderStatusSchema,
  total: z.number(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Order = z.infer<typeof OrderSchema>;

export const OrderStatsSchema = z.looseObject({
  service: z.literal('order-service'),
  totalOrders: z.number().int(),
  statusBreakdown: z.record(OrderStatusSchema, z.number().int()),
  totalRevenue: z.number(),
  averageOrderValue: z.number(),
});
export type OrderStats = z.infer<typeof OrderStatsSchema>;
