import { Router, type Request, type Response } from 'express';
import { notFound } from '../platform/errors.js';
import { requireAdmin, type ServiceAuth } from '../platform/identity.js';
import { parseBody, parseId, parseParams, parseQuery } from '../platform/validation.js';
import {
  CreateProductSchema, ListProductsQuerySchema, readReserve, ReservationParamsSchema, ReserveSchema, StockChangeSchema, UpdateProductSchema,
} from './schema.js';
import type { ProductStore } from './store.js';

export function createProductRoutes(store: ProductStore, auth: ServiceAuth): Router {
  const router = Router();
  // Reads are public and never look at a token; every change is an admin's.
  const admin = async (req: Request, res: Response) => requireAdmin(await auth.caller(req, res));
  // Only the order service, holding the service credential, takes and gives back stock.
  router.use('/internal', (req, res, next) => {
    auth.requireService(req, res);
    next();
  });

  router.get('/products', async (req, res) => {
    res.json(await store.list(parseQuery(ListProductsQuerySchema, req.query)));
  });

  router.get('/products/:id', async (req, res) => {
    const product = await store.get(parseId(req.params));
    if (!product) throw notFound('Product');
    res.json(product);
  });

  router.post('/products', async (req, res) => {
    await admin(req, res);
    const product = await store.create(parseBody(CreateProductSchema, req.body));
    res.status(201).location(`/products/${product.id}`).json(product);
  });

  router.put('/products/:id', async (req, res) => {
    await admin(req, res);
    const id = parseId(req.params);
    const product = await store.update(id, parseBody(UpdateProductSchema, req.body));
    if (!product) throw notFound('Product');
    res.json(product);
  });

  router.patch('/products/:id/stock', async (req, res) => {
    await admin(req, res);
    const id = parseId(req.params);
    res.json(await store.adjustStock(id, parseBody(StockChangeSchema, req.body)));
  });

  router.delete('/products/:id', async (req, res) => {
    await admin(req, res);
    if (!(await store.remove(parseId(req.params)))) throw notFound('Product');
    res.status(204).end();
  });

  router.get('/stats', async (req, res) => {
    await admin(req, res);
    res.json(await store.stats());
  });

  // Internal: the order service takes and gives back stock here (see lib/products/client.ts).
  router.post('/internal/reservations', async (req, res) => {
    const { reservation, created } = await store.reserve(readReserve(req.body) ?? parseBody(ReserveSchema, req.body));
    if (created) res.status(201).location(`/internal/reservations/${reservation.id}`);
    res.json(reservation);
  });

  router.get('/internal/reservations/:id', async (req, res) => {
    const reservation = await store.getReservation(parseParams(ReservationParamsSchema, req.params).id);
    if (!reservation) throw notFound('Reservation');
    res.json(reservation);
  });

  router.delete('/internal/reservations/:id', async (req, res) => {
    const { id } = parseParams(ReservationParamsSchema, req.params);
    res.json({ id, released: await store.release(id) });
  });

  return router;
}
