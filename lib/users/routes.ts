import { Router, type Request, type Response } from 'express';
import { notFound } from '../platform/errors.js';
import { forbidden, isAdmin, mayActFor, requireAdmin, unauthenticated, type ServiceAuth } from '../platform/identity.js';
import { parseBody, parseId, parseQuery } from '../platform/validation.js';
import { hashPassword, login, type LoginDeps } from './auth.js';
import { CreateUserSchema, ListUsersQuerySchema, LoginSchema, UpdateUserSchema } from './schema.js';
import { withTokenVersion, type SessionStore } from './sessions.js';
import type { SignupLimit } from './signup-limit.js';
import type { UserStore } from './store.js';

export interface UserRoutesDeps extends Omit<LoginDeps, 'store'> {
  store: UserStore;
  sessions: SessionStore;
  auth: ServiceAuth;
  /** Guards the routes only our own processes call (internalCallerGuard). */
  internalOnly: (req: Request, res: Response) => void;
  /** The client a request counts against (the gateway's signed address; see client-address.ts). */
  clientOf: (req: Request) => string;
  signups: SignupLimit;
}

export function createUserRoutes({ store, sessions, auth, internalOnly, clientOf, signups, ...loginDeps }: UserRoutesDeps): Router {
  const hashFor = (req: Request, password: string) => loginDeps.hashBudget.run(clientOf(req), () => hashPassword(password, loginDeps.passwordHashCost));

  const router = Router();
  const loginStore = { credentials: withTokenVersion(sessions, (email) => store.credentials(email)) };

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
    const before = patch.role === undefined ? undefined : await store.get(id);
    const user = await store.update(id, { ...patch, ...(password === undefined ? {} : { passwordHash: await hashFor(req, password) }) });
    if (!user) throw notFound('User');
    // After the write: a login racing it reads the version before the role (withTokenVersion).
    if (password !== undefined || (before !== undefined && before.role !== user.role)) await sessions.revokeAll(id);
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
    res.json(await login({ store: loginStore, ...loginDeps }, email, password, clientOf(req)));
  });

  // Ends every token of the caller (all its sessions): one version per user, no list to keep.
  router.post('/auth/logout', async (req, res) => {
    const caller = await auth.optionalCaller(req, res);
    if (caller === null) throw unauthenticated(res);
    await sessions.revokeAll(Number(caller.sub));
    res.setHeader('Cache-Control', 'no-store');
    res.status(204).end();
  });

  // What every verifier asks to learn whether a token's `ver` is still its account's.
  router.get('/internal/users/:id/token-version', async (req, res) => {
    internalOnly(req, res);
    const id = parseId(req.params);
    const version = await sessions.version(id);
    if (version === undefined) throw notFound('User');
    res.setHeader('Cache-Control', 'no-store');
    res.json({ id, tokenVersion: version });
  });

  // Every key a valid token may carry, and the next one before it signs (see signing-keys.ts).
  router.get('/.well-known/jwks.json', async (_req, res) => {
    res.setHeader('Cache-Control', 'public, max-age=300');
    res.json({ keys: await loginDeps.keys.publicKeys() });
  });

  return router;
}
