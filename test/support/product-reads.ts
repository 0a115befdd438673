// Reads of the product service that only tests make (the order service never reads a product or a
// reservation back): typed and checked like the client's calls.
import type { ServiceClient } from '../../lib/platform/service-client.js';
import { checkedBody } from '../../lib/platform/typed-client.js';
import { ProductSchema, ReservationSchema, type Product, type ReservationRecord } from '../../lib/products/schema.js';

export interface ProductReads {
  getProduct(id: number): Promise<Product | null>;
  getReservation(reservationId: string): Promise<ReservationRecord | null>;
}

/** `internalToken`: the service credential the product service asks of /internal/* callers. */
export function productReads(client: ServiceClient, internalToken?: string): ProductReads {
  const internal = internalToken === undefined ? {} : { headers: { authorization: `Bearer ${internalToken}` } };
  return {
    async getProduct(id) {
      const res = await client.get<unknown>(`/products/${id}`, { accept: [404] });
      return res.status === 404 ? null : checkedBody(client, ProductSchema, res);
    },
    async getReservation(reservationId) {
      const res = await client.get<unknown>(`/internal/reservations/${encodeURIComponent(reservationId)}`, { ...internal, accept: [404] });
      return res.status === 404 ? null : checkedBody(client, ReservationSchema, res);
    },
  };
}
