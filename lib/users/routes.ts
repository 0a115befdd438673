import { Router, type Request } from 'express';
import { notFound } from '../platform/errors.js';
import { forbidden, isAdmin, mayActFor, requireAdmin, type ServiceAuth } from '../platform/identity.js';
import { parseBody, parseId, parseQuery } from '../platform/validation.js';
import { hashPassword, login, type LoginDeps } from './auth.js';
import { CreateUserSchema, ListUsersQuerySchema, LoginSchema, UpdateUserSchema } from './schema.js';
import type { SignupLimit } from './signup-limit.js';
import type { UserStore } from './store.js';

export interface UserRoutesDeps extends Omit<LoginDeps, 'store'> {
  store: UserStore;
  auth: ServiceAuth;
  /** The client a request counts against (the gateway's signed address; see client-address.ts). */
  clientOf: (req: Request) => string;
  signups: SignupLimit;
}

export function createUserRoutes({ store, auth, clientOf, signups, ...loginDeps }: UserRoutesDeps): Router {
  const hashFor = (req: Request, password: string) => loginDeps.hashBudget.run(clientOf(req), () => hashPassword(password, loginDeps.passwordHashCost));

  const router = Router();

  router.get('/users', async (req, res) => {
    requireAdmin(await auth.caller(req, res));
    res.json(await store.list(parseQuery(ListUsersQuerySchema, req.query)));
  });

  router.get('/users/:id', async (req, res) => {
    const caller = await auth.caller(req, res);
    const id = parseId(req.params);
    const user = mayActFor(caller, id) ? await store.get(id) : undefined;
    if (!user) throw notFound('User');
    res.json(user);
  });

  // Open sign-up; only an admin (or, in open mode, anyone without a token) makes an admin.
  router.post('/users', async (req, res) => {
    const caller = await auth.optionalCaller(req, res);
    const { password, ...input } = parseBody(CreateUserSchema, req.body);
    if (input.role === 'admin' && !isAdmin(caller) && !(caller === null && auth.mode === 'open')) throw forbidden('Only an admin may create an admin');
    // An admin making accounts is not a sign-up.
    if (!isAdmin(caller)) signups.take(clientOf(req));
    const user = await store.create({ ...input, ...(password === undefined ? {} : { passwordHash: await hashFor(req, password) }) });
    res.status(201).location(`/users/${user.id}`).json(user);
  });

  router.put('/users/:id', async (req, res) => {
    const caller = await auth.caller(req, res);
    const id = parseId(req.params);
    const { password, ...patch } = parseBody(UpdateUserSchema, req.body);
    if (!mayActFor(caller, id)) throw notFound('User');
    if (patch.role !== undefined) requireAdmin(caller);
    const user = await store.update(id, { ...patch, ...(password === undefined ? {} : { passwordHash: await hashFor(req, password) }) });
    if (!user) throw notFound('User');
    res.json(user);
  });

  router.delete('/users/:id', async (req, res) => {
    requireAdmin(await auth.caller(req, res));
    if (!(await store.remove(parseId(req.params)))) throw notFound('User');
    res.status(204).end();
  });

  router.get('/stats', async (req, res) => {
    requireAdmin(await auth.caller(req, res));
    res.json(await store.stats());
  });

  router.post('/auth/login', async (req, res) => {
    const { email, password } = parseBody(LoginSchema, req.body);
    // RFC 6749 5.1: a token answer is never stored by a cache.
    res.setHeader('Cache-Control', 'no-store');
    res.json(await login({ store, ...loginDeps }, email, password, clientOf(req)));
  });

  // Every key a valid token may carry, and the next one before it signs (see signing-keys.ts).
  router.get('/.well-known/jwks.json', async (_req, res) => {
    res.setHeader('Cache-Control', 'public, max-age=300');
    res.json({ keys: await loginDeps.keys.publicKeys() });
  });

  return router;
}
