import { Router } from 'express';
import { HttpError } from '../platform/errors.js';
import { parseBody, parseId, parseQuery } from '../platform/validation.js';
import { CreateOrderSchema, IdempotencyKeySchema, ListOrdersQuerySchema, UpdateStatusSchema } from './schema.js';
import { changeOrderStatus, createOrder, deleteOrder, getOrder, listOrders, orderStats, type OrderDeps } from './workflow.js';

export function createOrderRoutes(deps: OrderDeps): Router {
  const routes = Router();

  routes.get('/orders', (req, res) => {
    res.json(listOrders(deps, parseQuery(ListOrdersQuerySchema, req.query)));
  });

  routes.get('/orders/:id', (req, res) => {
    res.json(getOrder(deps, parseId(req.params)));
  });

  routes.post('/orders', async (req, res) => {
    const key = idempotencyKey(req.headers['idempotency-key']);
    const input = parseBody(CreateOrderSchema, req.body);
    const { order, replayed } = await createOrder(deps, input, key);
    if (replayed) res.setHeader('Idempotent-Replayed', 'true');
    res.status(201).location(`/orders/${order.id}`).json(order);
  });

  routes.put('/orders/:id/status', async (req, res) => {
    const id = parseId(req.params);
    const { status } = parseBody(UpdateStatusSchema, req.body);
    res.json(await changeOrderStatus(deps, id, status));
  });

  routes.delete('/orders/:id', async (req, res) => {
    await deleteOrder(deps, parseId(req.params));
    res.status(204).end();
  });

  routes.get('/stats', (_req, res) => {
    res.json(orderStats(deps));
  });

  return routes;
}

function idempotencyKey(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  const parsed = IdempotencyKeySchema.safeParse(header);
  if (!parsed.success) {
    throw new HttpError(400, 'VALIDATION_ERROR', 'Invalid Idempotency-Key header', [
      { field: 'Idempotency-Key', message: 'must be 1 to 255 printable ASCII characters' },
    ]);
  }
  return parsed.data;
}
