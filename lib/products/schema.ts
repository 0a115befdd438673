// The product service's shapes: what clients may send and what it answers.
import { z } from 'zod';
import { toCents } from '../platform/money.js';
import { hasOnlyKeys, isIntFrom, PagingShape, PRINTABLE } from '../platform/validation.js';

const MAX_PRICE = 10_000_000;
export const MAX_STOCK = 1_000_000_000;

const hasWholeCents = (price: number) => toCents(price) / 100 === price;

// Descriptions may hold line breaks and tabs; names and categories are PRINTABLE.
// Control characters (less tab and line breaks) are exactly what this refuses.
// eslint-disable-next-line no-control-regex
const PRINTABLE_TEXT = /^[^\p{Cs}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$/u;
const CONTROL_MESSAGE = 'must not contain control characters';

const NameSchema = z.string().trim().min(2, 'must be 2 to 200 characters').max(200, 'must be 2 to 200 characters')
  .regex(PRINTABLE, CONTROL_MESSAGE);
const DescriptionSchema = z.string().trim().max(2000, 'must be at most 2000 characters').regex(PRINTABLE_TEXT, CONTROL_MESSAGE);
// Lower-cased so that "Kitchen" and "kitchen" are one category in filters and stats.
const CategorySchema = z.string().trim().toLowerCase().min(1, 'must be 1 to 50 characters').max(50, 'must be 1 to 50 characters')
  .regex(PRINTABLE, CONTROL_MESSAGE);
const PriceSchema = z.number('must be a number').min(0, 'must not be negative').max(MAX_PRICE, `must be at most ${MAX_PRICE}`)
  .refine(hasWholeCents, 'must have at most 2 decimals');
const StockSchema = z.int('must be a whole number').min(0, 'must not be negative').max(MAX_STOCK, `must be at most ${MAX_STOCK}`);

export const CreateProductSchema = z.strictObject({
  name: NameSchema,
  description: DescriptionSchema.default(''),
  price: PriceSchema,
  stock: StockSchema.default(0),
  category: CategorySchema.default('general'),
});
export type CreateProduct = z.infer<typeof CreateProductSchema>;

export const UpdateProductSchema = z
  .strictObject({
    name: NameSchema.optional(),
    description: DescriptionSchema.optional(),
    price: PriceSchema.optional(),
    category: CategorySchema.optional(),
  })
  .refine((v) => Object.keys(v).length > 0, 'must contain at least one of name, description, price, category');
export type UpdateProduct = z.infer<typeof UpdateProductSchema>;

export const StockChangeSchema = z.strictObject({
  operation: z.enum(['add', 'subtract', 'set'], { message: 'must be "add", "subtract" or "set"' }),
  quantity: StockSchema,
});
export type StockChange = z.infer<typeof StockChangeSchema>;

/** `12`, `12.5`, `12.50` -> cents, parsed from the digits so no floating point is involved. */
const PriceQuery = z.string()
  .regex(/^\d{1,8}(\.\d{1,2})?$/, 'must be a non-negative number with at most 2 decimals')
  .transform((s) => {
    const [whole, frac = ''] = s.split('.');
    return Number(whole) * 100 + Number(frac.padEnd(2, '0'));
  });

export const ListProductsQuerySchema = z
  .strictObject({
    ...PagingShape,
    category: CategorySchema.optional(),
    minPrice: PriceQuery.optional(),
    maxPrice: PriceQuery.optional(),
    search: z.string().trim().min(1, 'must be 1 to 200 characters').max(200, 'must be 1 to 200 characters').regex(PRINTABLE, CONTROL_MESSAGE).optional(),
  })
  .refine((q) => q.minPrice === undefined || q.maxPrice === undefined || q.minPrice <= q.maxPrice, {
    message: 'must not be greater than maxPrice',
    path: ['minPrice'],
  });
/** minPrice and maxPrice are in cents here. */
export type ListProductsQuery = z.infer<typeof ListProductsQuerySchema>;

/** A product as the API answers it. Not strict: clients must tolerate fields added later. */
export const ProductSchema = z.object({
  id: z.number().int().positive(),
  name: z.string(),
  description: z.string(),
  price: z.number(),
  stock: z.number().int(),
  category: z.string(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type Product = z.infer<typeof ProductSchema>;

export const ProductStatsSchema = z.looseObject({
  service: z.literal('product-service'),
  totalProducts: z.number().int(),
  categories: z.number().int(),
  categoryList: z.array(z.string()),
  totalInventoryValue: z.number(),
  lowStockProducts: z.number().int(),
});
export type ProductStats = z.infer<typeof ProductStatsSchema>;

export const LOW_STOCK_BELOW = 10;

// Reservations: the internal step the order service uses to take the stock of all of an order's
// items at once (or none), and to give it back.

const RESERVATION_ID = /^[A-Za-z0-9_:.-]{1,100}$/;
const ReservationIdSchema = z.string().regex(RESERVATION_ID, 'must be 1 to 100 characters of A-Z a-z 0-9 _ : . -');
export const ReservationParamsSchema = z.object({ id: ReservationIdSchema });

export const ReserveSchema = z.strictObject({
  id: ReservationIdSchema,
  items: z
    .array(z.strictObject({
      productId: z.int('must be a positive integer').min(1, 'must be a positive integer'),
      quantity: z.int('must be a whole number from 1 to 1000').min(1, 'must be a whole number from 1 to 1000').max(1000, 'must be a whole number from 1 to 1000'),
    }))
    .min(1, 'must hold 1 to 50 items')
    .max(50, 'must hold 1 to 50 items'),
});
export type ReserveRequest = z.infer<typeof ReserveSchema>;

/**
 * ReserveSchema's items for a list it accepts, read without zod: 1 to 50 items, each a productId
 * and a quantity from 1 to 1000, and no other key but `ignored` ones (left out of what is read).
 * Undefined for any other list. The order service reads its own items with it too: they are the
 * items it reserves.
 */
export function readItems(items: unknown, ignored: readonly string[] = []): ReserveRequest['items'] | undefined {
  if (!Array.isArray(items) || items.length < 1 || items.length > 50) return undefined;
  const read: ReserveRequest['items'] = [];
  for (const item of items as unknown[]) {
    if (!hasOnlyKeys(item, ['productId', 'quantity'], ignored)) return undefined;
    const { productId, quantity } = item;
    if (!isIntFrom(productId, 1, Number.MAX_SAFE_INTEGER) || !isIntFrom(quantity, 1, 1000)) return undefined;
    read.push({ productId, quantity });
  }
  return read;
}

/**
 * ReserveSchema's output for a body it accepts, read without zod (every order sends one);
 * undefined for any other body, which ReserveSchema then reads and refuses.
 */
export function readReserve(body: unknown): ReserveRequest | undefined {
  if (!hasOnlyKeys(body, ['id', 'items'])) return undefined;
  const { id } = body;
  if (typeof id !== 'string' || !RESERVATION_ID.test(id)) return undefined;
  const items = readItems(body.items);
  return items && { id, items };
}

export const ReservationItemSchema = z.object({ productId: z.number().int(), quantity: z.number().int(), unitPrice: z.number() });

export const ReservationSchema = z.object({
  id: z.string(),
  status: z.enum(['held', 'released']),
  items: z.array(ReservationItemSchema),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type ReservationRecord = z.infer<typeof ReservationSchema>;
