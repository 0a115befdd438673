// The typed client other processes (the gateway's aggregates) use to call the order service.
import type { z } from 'zod';
import { type RequestOptions, type ServiceClient, UpstreamUnavailableError } from '../platform/service-client.js';
import { pageOf, type Page } from '../platform/validation.js';
import { OrderSchema, OrderStatsSchema, type Order, type OrderStats, type OrderStatus } from './schema.js';

const OrderPageSchema = pageOf(OrderSchema);

/** What a call may carry: a signal that gives up on it (a breaker's timeout, a client gone). */
type CallOptions = Pick<RequestOptions, 'signal'>;

export interface OrdersClient {
  /** GET /orders: newest first, filtered; the service refuses a limit over 100 (400). */
  listOrders(query: { userId?: number; status?: OrderStatus; page?: number; limit?: number }, options?: CallOptions): Promise<Page<Order>>;
  stats(options?: CallOptions): Promise<OrderStats>;
}

export function createOrdersClient(client: ServiceClient): OrdersClient {
  const parse = <T>(schema: z.ZodType<T>, body: unknown, status: number): T => {
    const parsed = schema.safeParse(body);
    if (!parsed.success) throw new UpstreamUnavailableError(client.name, 'bad_response', status);
    return parsed.data;
  };
  return {
    async listOrders(query, options) {
      const qs = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) if (value !== undefined) qs.set(key, String(value));
      const res = await client.get<unknown>(`/orders${qs.size ? `?${qs}` : ''}`, { signal: options?.signal });
      return parse(OrderPageSchema, res.body, res.status);
    },
    async stats(options) {
      const res = await client.get<unknown>('/stats', { signal: options?.signal });
      return parse(OrderStatsSchema, res.body, res.status);
    },
  };
}
