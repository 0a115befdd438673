// The typed client other processes (the order service) use to call the product service.
import { z } from 'zod';
import { type RequestOptions, type ServiceClient, UpstreamUnavailableError } from '../platform/service-client.js';
import { ProductSchema, ProductStatsSchema, ReservationItemSchema, ReservationSchema, type Product, type ProductStats, type ReservationRecord } from './schema.js';

export type { Product, ReservationRecord };

const HeldReservationSchema = z.object({ id: z.string(), status: z.literal('held'), items: z.array(ReservationItemSchema) });
export type Reservation = z.infer<typeof HeldReservationSchema>;

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
  getProduct(id: number): Promise<Product | null>;
  getReservation(reservationId: string): Promise<ReservationRecord | null>;
  stats(options?: Pick<RequestOptions, 'signal'>): Promise<ProductStats>;
}

export function createProductsClient(client: ServiceClient): ProductsClient {
  const parse = <T>(schema: z.ZodType<T>, body: unknown, status: number): T => {
    const parsed = schema.safeParse(body);
    if (!parsed.success) throw new UpstreamUnavailableError(client.name, 'bad_response', status);
    return parsed.data;
  };
  const reservationPath = (id: string) => `/internal/reservations/${encodeURIComponent(id)}`;

  return {
    async reserve(reservationId, items) {
      const res = await client.post<unknown>('/internal/reservations', { id: reservationId, items });
      return parse(HeldReservationSchema, res.body, res.status);
    },
    async release(reservationId) {
      const res = await client.request<unknown>('DELETE', reservationPath(reservationId));
      return parse(ReleaseSchema, res.body, res.status);
    },
    async getProduct(id) {
      const res = await client.get<unknown>(`/products/${id}`, { accept: [404] });
      return res.status === 404 ? null : parse(ProductSchema, res.body, res.status);
    },
    async getReservation(reservationId) {
      const res = await client.get<unknown>(reservationPath(reservationId), { accept: [404] });
      return res.status === 404 ? null : parse(ReservationSchema, res.body, res.status);
    },
    async stats(options) {
      const res = await client.get<unknown>('/stats', { signal: options?.signal });
      return parse(ProductStatsSchema, res.body, res.status);
    },
  };
}
