import { Router } from 'express';
import { HttpError, notFound } from '../platform/errors.js';
import { forbidden, isAdmin, mayActFor, requireAdmin, type Identity, type ServiceAuth } from '../platform/identity.js';
import { parseBody, parseId, parseQuery } from '../platform/validation.js';
import { scopedKey } from './idempotency.js';
import { CreateOrderSchema, IdempotencyKeySchema, ListOrdersQuerySchema, readCreateOrder, UpdateStatusSchema } from './schema.js';
import { changeOrderStatus, createOrder, deleteOrder, getOrder, listOrders, orderStats, type OrderDeps } from './workflow.js';
import { asCaller } from '../platform/typed-client.js';

/**
 * Who may do what (a null caller is an anonymous one in open mode, unrestricted): a user
 * places orders for itself, sees its own, and cancels or deletes its own while pending; an admin
 * does everything. Another user's order is 404, as if it did not exist.
 */
export function createOrderRoutes(auth: ServiceAuth, deps: OrderDeps): Router {
  const routes = Router();

  /** The order, if the caller may see it. */
  const visibleOrder = async (caller: Identity | null, id: number) => {
    const order = await getOrder(deps, id);
    if (!mayActFor(caller, order.userId)) throw notFound('Order');
    return order;
  };

  routes.get('/orders', async (req, res) => {
    const caller = await auth.caller(req, res);
    const query = parseQuery(ListOrdersQuerySchema, req.query);
    if (caller !== null && !isAdmin(caller)) {
      if (query.userId !== undefined && String(query.userId) !== caller.sub) throw forbidden('Only an admin may list other users\' orders');
      query.userId = ownId(caller);
    }
    res.json(await listOrders(deps, query));
  });

  routes.get('/orders/:id', async (req, res) => {
    const caller = await auth.caller(req, res);
    res.json(await visibleOrder(caller, parseId(req.params)));
  });

  routes.post('/orders', async (req, res) => {
    const caller = await auth.caller(req, res);
    const key = idempotencyKey(req.headers['idempotency-key']);
    const input = readCreateOrder(req.body) ?? parseBody(CreateOrderSchema, req.body);
    if (!mayActFor(caller, input.userId)) throw forbidden('Orders are placed for the caller\'s own userId');
    const { order, replayed } = await createOrder(deps, input, {
      key: key === undefined ? undefined : scopedKey(caller, key),
      callOptions: asCaller(req.headers.authorization),
    });
    if (replayed) res.setHeader('Idempotent-Replayed', 'true');
    res.status(201).location(`/orders/${order.id}`).json(order);
  });

  routes.put('/orders/:id/status', async (req, res) => {
    const caller = await auth.caller(req, res);
    const id = parseId(req.params);
    const { status } = parseBody(UpdateStatusSchema, req.body);
    const order = await visibleOrder(caller, id);
    if (caller === null || isAdmin(caller)) {
      res.json(await changeOrderStatus(deps, id, status));
      return;
    }
    if (status !== 'cancelled') throw forbidden('Only an admin may confirm, ship or deliver an order');
    if (order.status !== 'pending') throw forbidden('Only an admin may cancel an order that is no longer pending');
    res.json(await changeOrderStatus(deps, id, status, 'pending'));
  });

  routes.delete('/orders/:id', async (req, res) => {
    const caller = await auth.caller(req, res);
    const id = parseId(req.params);
    await visibleOrder(caller, id);
    await deleteOrder(deps, id);
    res.status(204).end();
  });

  routes.get('/stats', async (req, res) => {
    requireAdmin(await auth.caller(req, res));
    res.json(await orderStats(deps));
  });

  return routes;
}

/** The caller's user id; a subject that is not one of ours (another identity provider's) owns nothing here. */
function ownId(caller: Identity): number {
  const id = Number(caller.sub);
  return Number.isSafeInteger(id) && id > 0 ? id : -1;
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
