import { Router } from 'express';
import { notFound } from '../platform/errors.js';
import { parseBody, parseId, parseQuery } from '../platform/validation.js';
import { CreateUserSchema, ListUsersQuerySchema, UpdateUserSchema } from './schema.js';
import type { UserStore } from './store.js';

export function createUserRoutes(store: UserStore): Router {
  const router = Router();

  router.get('/users', (req, res) => {
    res.json(store.list(parseQuery(ListUsersQuerySchema, req.query)));
  });

  router.get('/users/:id', (req, res) => {
    const user = store.get(parseId(req.params));
    if (!user) throw notFound('User');
    res.json(user);
  });

  router.post('/users', (req, res) => {
    const user = store.create(parseBody(CreateUserSchema, req.body));
    res.status(201).location(`/users/${user.id}`).json(user);
  });

  router.put('/users/:id', (req, res) => {
    const id = parseId(req.params);
    const user = store.update(id, parseBody(UpdateUserSchema, req.body));
    if (!user) throw notFound('User');
    res.json(user);
  });

  router.delete('/users/:id', (req, res) => {
    if (!store.remove(parseId(req.params))) throw notFound('User');
    res.status(204).end();
  });

  router.get('/stats', (_req, res) => {
    res.json(store.stats());
  });

  return router;
}
