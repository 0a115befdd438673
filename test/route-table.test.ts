// The route table against Express's router: for any method and request target, the row the table
// picks (which the front door's fast path and the public-route rule read) is the route Express runs
// when the same table is mounted, and the public rows are the contract's public routes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import fc from 'fast-check';
import type { ErrorRequestHandler, Express, Request, RequestHandler, Response } from 'express';
import { createBaseApp } from '../lib/platform/http.js';
import { compileRoutes, mountRoutes, ROUTE_TABLE, ROUTES, type OwnRouteId, type RouteIndex, type RouteRow } from '../lib/gateway/route-table.js';
import { SERVICE_NAMES, type ServiceName } from '../lib/gateway/upstreams.js';
import { USER_API } from '../lib/users/api.js';
import { PRODUCT_API } from '../lib/products/api.js';
import { ORDER_API } from '../lib/orders/api.js';

/** What answered a request: an own route's id, `proxy:<service>`, `none` (no route: the 404/405 handler) or `error`. */
type Decision = string;

const OWN_IDS: OwnRouteId[] = ['login', 'logout', 'dashboard', 'userFull'];

/** Each handler records its name on the request and answers nothing. */
const recorder = (name: string): RequestHandler => (req, _res) => {
  (req as { decision?: string }).decision = name;
};

/** An app with the table mounted as the gateway mounts it, every handler a recorder. */
function recordingApp(index: RouteIndex = ROUTES): Express {
  const app = createBaseApp();
  mountRoutes(app, {
    own: Object.fromEntries(OWN_IDS.map((id) => [id, [recorder(id)]])) as Record<OwnRouteId, RequestHandler[]>,
    proxies: new Map(SERVICE_NAMES.map((s) => [s, recorder(`proxy:${s}`)])),
  }, index);
  app.use(recorder('none'));
  const onError: ErrorRequestHandler = (err: { status?: number }, req, _res, _next) => {
    (req as { decision?: string }).decision = `error ${err.status}`;
  };
  app.use(onError);
  return app;
}

/** The routes the contract (docs/API.md, "Public routes in required mode") lets anyone call under /api, as Express routes. */
function publicRoutesApp(): Express {
  const app = createBaseApp();
  app.post('/api/auth/login', recorder('public'));
  app.post('/api/users', recorder('public'));
  app.get('/api/products{/*rest}', recorder('public'));
  app.use(recorder('private'));
  const onError: ErrorRequestHandler = (err: { status?: number }, req, _res, _next) => {
    (req as { decision?: string }).decision = `error ${err.status}`;
  };
  app.use(onError);
  return app;
}

/** Runs one request through the app's router, in process (Express dispatches synchronously here). */
function dispatch(app: Express, method: string, url: string): Decision {
  const req = new IncomingMessage(new Socket());
  req.method = method;
  req.url = url;
  const res = new ServerResponse(req);
  let fellThrough = false;
  app(req as Request, res as Response, () => {
    fellThrough = true;
  });
  // A target without a path (Node delivers none such) passes the whole router by.
  if (fellThrough) return 'none';
  const decision = (req as { decision?: string }).decision;
  assert.ok(decision !== undefined, `${method} ${url}: the router did not decide synchronously`);
  return decision;
}

const decisionOf = (row: RouteRow | undefined): Decision => (row === undefined ? 'none' : row.kind === 'own' ? row.id : `proxy:${row.service}`);

/** A target as it reaches the front door's routing: no space, control or non-ASCII character (Node refuses them), no `#` (refused as malformed). */
const DELIVERED = /^[\x21-\x22\x24-\x7e]+$/;

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND'] as const;

const segment = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('users', 'products', 'orders', 'auth', 'login', 'logout', 'dashboard', 'full', 'stock', 'status', '1', '42', 'me') },
  { weight: 3, arbitrary: fc.constantFrom('USERS', 'Products', 'ORDERS', 'Login', 'FULL', 'Dashboard', 'uſers', 'ＵＳＥＲＳ') },
  { weight: 3, arbitrary: fc.constantFrom('', '.', '..', '%2e%2e', '%2F', '%31', '%zz', '%', '%E0%A4', 'caf%C3%A9', 'full%20', 'a;b', 'full.json', '~', '\\', 'x\u00a0y', 'a b', '*') },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,12}$/) },
);

const prefix = fc.constantFrom('/api', '/api', '/api', '/API', '/Api', '', '/apix', '//api', '/api/', 'http://gw.example/api', '*');
const query = fc.constantFrom('', '', '', '?', '?x=1', '?a=%zz&b=/api/users/1/full', '?/full', '?search=caf%C3%A9', '??', '?#');

// The routes' own shapes, with a segment changed or added now and then.
const routeLike = fc.tuple(
  fc.constantFrom(['auth', 'login'], ['auth', 'logout'], ['dashboard'], ['users', '1', 'full'], ['users'], ['users', '7'], ['products', '3', 'stock'], ['orders', '9', 'status'], ['products']),
  fc.option(segment),
  fc.nat({ max: 3 }),
).map(([segments, extra, at]) => (extra === null ? segments : [...segments.slice(0, at), extra, ...segments.slice(at)]));

const target = fc.tuple(prefix, fc.oneof(fc.array(segment, { maxLength: 6 }), routeLike), fc.boolean(), query, fc.nat({ max: 20 })).map(([p, segments, trailing, q, repeat]) => {
  // Now and then a very long path: many segments after the rest.
  const long = repeat === 20 ? '/x'.repeat(5000) : '';
  return `${p}${segments.map((s) => `/${s}`).join('')}${long}${trailing ? '/' : ''}${q}`;
});

// Every route of the table as clients send it, tried before the random targets, so each is reached
// in every run; the seed is fixed so that a run is the same on every machine (set FC_SEED to explore).
const EXAMPLES: [string, string][] = [
  ['POST', '/api/auth/login'], ['POST', '/api/auth/logout'], ['GET', '/api/dashboard'], ['GET', '/api/users/1/full'],
  ['GET', '/api/users/1'], ['GET', '/api/products/1'], ['GET', '/api/orders/1'], ['GET', '/nowhere'], ['GET', '/api/users/%zz'],
];
const RUNS = { numRuns: 4000, seed: Number(process.env.FC_SEED ?? 20261204), examples: EXAMPLES };

describe('the route table and the router', () => {
  const app = recordingApp();
  const publicApp = publicRoutesApp();

  test('when any method and target are routed, then the table picks the route Express runs, and the front door takes only what Express proxies to that service', () => {
    const seen = new Set<Decision>();
    let fastTaken = 0;
    fc.assert(
      fc.property(fc.constantFrom(...METHODS), target, (method, url) => {
        const express = dispatch(app, method, url);
        const row = ROUTES.routeOf(method, url);
        if (express.startsWith('error')) {
          // Express decodes a matched route's parameters and refuses a bad escape (400) before
          // running it: the table matched a route there too.
          assert.equal(express, 'error 400', `${method} ${url}`);
          assert.notEqual(row, undefined, `${method} ${url}`);
          assert.match(url, /%/);
        } else {
          assert.equal(decisionOf(row), express, `${method} ${url}`);
        }
        // The front door sees only targets Node's parser takes and it does not refuse as malformed.
        const fast = DELIVERED.test(url) ? ROUTES.fastPathService(method, url) : undefined;
        if (fast !== undefined) assert.equal(express, `proxy:${fast}`, `${method} ${url}: fast path`);
        seen.add(express);
        if (fast !== undefined) fastTaken++;
      }),
      RUNS,
    );
    // The targets reach every route, and the fast path, often enough for the comparison to mean something.
    for (const d of [...OWN_IDS, ...SERVICE_NAMES.map((s) => `proxy:${s}`), 'none', 'error 400']) assert.ok(seen.has(d), `no target reached ${d}`);
    assert.ok(fastTaken > 200, `the fast path was taken ${fastTaken} times`);
  });

  test('when any method and target are asked about, then the table calls public exactly the routes the contract names public', () => {
    fc.assert(
      fc.property(fc.constantFrom(...METHODS), target, (method, url) => {
        const reference = dispatch(publicApp, method, url);
        // A refused escape is a 400 whatever the route; nothing to compare.
        if (reference.startsWith('error')) return;
        assert.equal(ROUTES.isPublic(method, url), reference === 'public', `${method} ${url}`);
      }),
      RUNS,
    );
  });

  test('when a proxied request is sent as clients send them, then the front door takes it, and leaves aggregates, other letter cases and escapes to the router', () => {
    const cases: Array<[string, string, ServiceName | undefined]> = [
      ['GET', '/api/users/1', 'users'],
      ['POST', '/api/orders', 'orders'],
      ['GET', '/api/products?search=caf%C3%A9&page=2', 'products'],
      ['DELETE', '/api/users/1/', 'users'],
      ['GET', '/api/users/1/full', undefined],
      ['HEAD', '/api/users/1/FULL?x', undefined],
      ['POST', '/api/users/1/full', 'users'],
      ['GET', '/API/users/1', undefined],
      ['GET', '/api/users/caf%C3%A9', undefined],
      ['GET', '/api/dashboard', undefined],
      ['POST', '/api/auth/login', undefined],
      ['GET', '/api/usersx', undefined],
    ];
    for (const [method, url, service] of cases) assert.equal(ROUTES.fastPathService(method, url), service, `${method} ${url}`);
  });

  test('when the gateway adds a route of its own under a service, then the front door leaves it to the router and Express runs it, not the proxy', () => {
    const rows: RouteRow[] = [...ROUTE_TABLE.filter((r) => r.kind === 'own' && r.id !== 'userFull'), { method: 'GET', path: '/api/users/:id/summary', service: 'users', kind: 'own', id: 'userFull', public: false, repeatable: true }, ...ROUTE_TABLE.filter((r) => r.kind === 'proxied')];
    const index = compileRoutes(rows);
    assert.equal(index.fastPathService('GET', '/api/users/7/summary'), undefined);
    assert.equal(index.fastPathService('GET', '/api/users/7/full'), 'users');
    assert.equal(dispatch(recordingApp(index), 'GET', '/api/users/7/summary'), 'userFull');
  });

  test('when an own route has no handler that answers it, then the request is a 500 there and never reaches the proxy', () => {
    const own = createBaseApp();
    mountRoutes(own, {
      own: { login: [], logout: [], dashboard: [(_req, _res, next) => next()], userFull: [] },
      proxies: new Map(SERVICE_NAMES.map((s) => [s, recorder(`proxy:${s}`)])),
    });
    own.use(((err: { status?: number }, req, _res, _next) => {
      (req as { decision?: string }).decision = `error ${err.status}`;
    }) as ErrorRequestHandler);
    assert.equal(dispatch(own, 'GET', '/api/dashboard'), 'error 500');
    assert.equal(dispatch(own, 'GET', '/api/users/1/full'), 'error 500');
    assert.equal(dispatch(own, 'GET', '/api/users/1'), 'proxy:users');
  });

  test('when a request may be sent again, then the table says so: idempotent methods, an order POST with Idempotency-Key, no other POST or PATCH', () => {
    const key = { 'idempotency-key': 'k1' };
    assert.equal(ROUTES.mayRepeat('GET', '/api/products/1', {}), true);
    assert.equal(ROUTES.mayRepeat('PUT', '/api/users/1', {}), true);
    assert.equal(ROUTES.mayRepeat('DELETE', '/api/orders/1', {}), true);
    assert.equal(ROUTES.mayRepeat('POST', '/api/orders', key), true);
    assert.equal(ROUTES.mayRepeat('POST', '/api/orders', {}), false);
    // A key named in Connection is dropped on the way (hop-by-hop): the service never sees it.
    assert.equal(ROUTES.mayRepeat('POST', '/api/orders', { ...key, connection: 'keep-alive, IDEMPOTENCY-KEY' }), false);
    assert.equal(ROUTES.mayRepeat('POST', '/api/orders', { ...key, connection: 'keep-alive' }), true);
    assert.equal(ROUTES.mayRepeat('POST', '/api/users', key), false);
    assert.equal(ROUTES.mayRepeat('PATCH', '/api/products/1/stock', {}), false);
    assert.equal(ROUTES.mayRepeat('OPTIONS', '/api/users/anything', {}), true);
    assert.equal(ROUTES.mayRepeat('POST', '/api/users/anything', {}), false);
  });

  test("when a service documents a route under its prefix, then the table has its row (so the gateway's OpenAPI lists it)", () => {
    const apis: Record<ServiceName, typeof USER_API> = { users: USER_API, products: PRODUCT_API, orders: ORDER_API };
    for (const service of SERVICE_NAMES) {
      for (const r of apis[service].filter((d) => d.path === `/${service}` || d.path.startsWith(`/${service}/`))) {
        const row = ROUTE_TABLE.find((x) => x.kind === 'proxied' && x.method === r.method.toUpperCase() && x.path === `/api${r.path}`);
        assert.ok(row, `${r.method.toUpperCase()} /api${r.path} has a row`);
      }
    }
  });
});
