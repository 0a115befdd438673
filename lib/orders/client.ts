// The typed client other processes (the gateway's aggregates) use to call the order service.
import type { ServiceClient } from '../platform/service-client.js';
import { checkedBody, type CallOptions } from '../platform/typed-client.js';
import { pageOf, type Page } from '../platform/validation.js';
import { OrderSchema, OrderStatsSchema, type Order, type OrderStats, type OrderStatus } from './schema.js';

const OrderPageSchema = pageOf(OrderSchema);

export interface OrdersClient {
  /** GET /orders: newest first, filtered; the service refuses a limit over 100 (400). */
  listOrders(query: { userId?: number; status?: OrderStatus; page?: number; limit?: number }, options?: CallOptions): Promise<Page<Order>>;
  stats(options?: CallOptions): Promise<OrderStats>;
}

export function createOrdersClient(client: ServiceClient): OrdersClient {
  return {
    async listOrders(query, options) {
      const qs = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) if (value !== undefined) qs.set(key, String(value));
      const res = await client.get<unknown>(`/orders${qs.size ? `?${qs}` : ''}`, options);
      return checkedBody(client, OrderPageSchema, res);
    },
    async stats(options) {
      return checkedBody(client, OrderStatsSchema, await client.get<unknown>('/stats', options));
    },
  };
}
