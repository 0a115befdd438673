// The typed client other processes (the order service) use to call the product service.
import { z } from 'zod';
import type { ServiceClient } from '../platform/service-client.js';
import { checkedBody, type CallOptions } from '../platform/typed-client.js';
import { ProductStatsSchema, ReservationItemSchema, type ProductStats } from './schema.js';

export const HeldReservationSchema = z.object({ id: z.string(), status: z.literal('held'), items: z.array(ReservationItemSchema) });
export type Reservation = z.infer<typeof HeldReservationSchema>;

/**
 * HeldReservationSchema's output for an answer it accepts, read without zod (every order gets
 * one); undefined for any other answer, which the schema then reads and refuses.
 */
export function readHeldReservation(body: unknown): Reservation | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
  const { id, status, items } = body as Record<string, unknown>;
  if (typeof id !== 'string' || status !== 'held' || !Array.isArray(items)) return undefined;
  const read: Reservation['items'] = [];
  for (const item of items as unknown[]) {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) return undefined;
    const { productId, quantity, unitPrice } = item as Record<string, unknown>;
    if (!Number.isSafeInteger(productId) || !Number.isSafeInteger(quantity) || typeof unitPrice !== 'number' || !Number.isFinite(unitPrice)) return undefined;
    read.push({ productId: productId as number, quantity: quantity as number, unitPrice });
  }
  return { id, status, items: read };
}

const ReleaseSchema = z.object({ id: z.string(), released: z.boolean() });

export interface ProductsClient {
  /**
   * Takes the stock of every item at once, or none, priced from the catalog. Repeating a held id
   * returns it without taking stock again. Throws HttpError 422 UNKNOWN_PRODUCT, 409
   * INSUFFICIENT_STOCK, 409 RESERVATION_RELEASED (the id was released) or 409 RESERVATION_MISMATCH
   * (the id holds other items); UpstreamUnavailableError when the service cannot answer.
   */
  reserve(reservationId: string, items: { productId: number; quantity: number }[]): Promise<Reservation>;
  /** Gives the stock back; `released` is true only for the call that did. Safe to repeat, and safe
   * before the reserve ever arrived (that reserve will then take nothing). */
  release(reservationId: string): Promise<{ id: string; released: boolean }>;
  stats(options?: CallOptions): Promise<ProductStats>;
}

/** `internalToken`: the service credential the product service asks of /internal/* callers. */
export function createProductsClient(client: ServiceClient, internalToken?: string): ProductsClient {
  const internal = internalToken === undefined ? undefined : { headers: { authorization: `Bearer ${internalToken}` } };
  const reservationPath = (id: string) => `/internal/reservations/${encodeURIComponent(id)}`;

  return {
    async reserve(reservationId, items) {
      const res = await client.post<unknown>('/internal/reservations', { id: reservationId, items }, internal);
      return readHeldReservation(res.body) ?? checkedBody(client, HeldReservationSchema, res);
    },
    async release(reservationId) {
      const res = await client.request<unknown>('DELETE', reservationPath(reservationId), internal);
      return checkedBody(client, ReleaseSchema, res);
    },
    async stats(options) {
      return checkedBody(client, ProductStatsSchema, await client.get<unknown>('/stats', options));
    },
  };
}
