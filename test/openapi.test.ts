// GET /openapi.json on every process: a valid OpenAPI 3.1 document that lists exactly the routes
// its router registers (every registered route documented, every documented route reachable).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Express } from 'express';
import { Validator } from '@seriousme/openapi-schema-validator';
import { OrderConfigSchema } from '../lib/orders/config.js';
import { openOrderDatabase } from '../lib/orders/db.js';
import { buildOrderService } from '../lib/orders/service.js';
import { parseConfig } from '../lib/platform/config.js';
import type { ServiceDatabaseOptions } from '../lib/platform/config.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createMetrics } from '../lib/platform/metrics.js';
import { openApiPath } from '../lib/platform/openapi/document.js';
import type { ServiceDeps } from '../lib/platform/service-app.js';
import { createProductApp } from '../lib/products/app.js';
import { openProductDatabase } from '../lib/products/db.js';
import { createUserApp } from '../lib/users/app.js';
import { openUserDatabase } from '../lib/users/db.js';
import { deadUrl, startGateway, type StartedGateway } from './gateway-helpers.js';
import { http, memoryLogger, startApp, tempDir, type Started } from './helpers.js';
import { openServiceAuth, openUserAuth } from './support/service-auth.js';

interface Registered {
  method: string;
  path: string;
}

interface RouterLayer {
  route?: { path: string; methods: Record<string, boolean> };
  handle?: { stack?: RouterLayer[] };
  /** The path the layer was registered at (`app.use(path, router)`), as router 2 keeps it. */
  rawPath?: string | string[];
  match(path: string): false | { path: string };
}

/** A registered route with the routers it is mounted in, outermost first. */
interface Found extends Registered {
  mounts: RouterLayer[];
  layer: RouterLayer;
}

/** `/internal/faults` + `/` -> `/internal/faults`; `/` + `/users` -> `/users`. */
const joinPath = (prefix: string, path: string): string => (path === '/' ? prefix || '/' : `${prefix}${path}`);

/** Every route the app's router (and the routers mounted in it, at their mount paths) registers, as Express 5 keeps them. */
function registeredRoutes(app: Express): Found[] {
  const out: Found[] = [];
  const walk = (stack: RouterLayer[], prefix: string, mounts: RouterLayer[]) => {
    for (const layer of stack) {
      if (layer.route) {
        for (const [method, on] of Object.entries(layer.route.methods)) if (on) out.push({ method, path: joinPath(prefix, layer.route.path), mounts, layer });
      } else if (layer.handle?.stack) {
        const mount = typeof layer.rawPath === 'string' && layer.rawPath !== '/' ? layer.rawPath : '';
        walk(layer.handle.stack, `${prefix}${mount}`, [...mounts, layer]);
      }
    }
  };
  walk((app as unknown as { router: { stack: RouterLayer[] } }).router.stack, '', []);
  return out;
}

/** Whether a request for `path` reaches the route: each mount takes its prefix, the route matches the rest. */
function serves(r: Found, path: string): boolean {
  let rest = path;
  for (const mount of r.mounts) {
    const m = mount.match(rest);
    if (!m) return false;
    rest = rest.slice(m.path.length) || '/';
  }
  return r.layer.match(rest) !== false;
}

type Document = { openapi: string; paths: Record<string, Record<string, unknown>> };

function documentedRoutes(doc: Document): Registered[] {
  return Object.entries(doc.paths).flatMap(([path, item]) => Object.keys(item).map((method) => ({ method, path })));
}

/** A concrete path a documented template matches: `/users/{id}` -> `/users/1`. */
const samplePath = (template: string): string => template.replace(/\{(\w+)\}/g, (_m, name: string) => (name === 'id' ? '1' : 'users'));

async function validDocument(base: string): Promise<Document> {
  const r = await http<Document>(base, 'GET', '/openapi.json');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
  const result = await new Validator().validate(r.body);
  assert.equal(result.valid, true, JSON.stringify(result.errors, null, 1)?.slice(0, 2000));
  assert.equal(r.body.openapi, '3.1.0');
  return r.body;
}

function assertMatchesRouter(app: Express, doc: Document): void {
  const registered = registeredRoutes(app);
  const documented = documentedRoutes(doc);
  const isDocumented = new Set(documented.map((d) => `${d.method} ${d.path}`));
  for (const r of registered) {
    if (r.path.includes('*')) {
      // A proxy route (`/api/users{/*splat}`, every method): the service's routes behind it are documented.
      const prefix = r.path.split('{')[0];
      assert.ok(documented.some((d) => d.path.startsWith(`${prefix}/`)), `${r.path} (proxy) has no documented routes`);
      continue;
    }
    assert.ok(isDocumented.has(`${r.method} ${openApiPath(r.path)}`), `${r.method.toUpperCase()} ${r.path} is registered but not documented`);
  }
  for (const d of documented) {
    const path = samplePath(d.path);
    const found = registered.some((r) => r.method === d.method && serves(r, path));
    assert.ok(found, `${d.method.toUpperCase()} ${d.path} is documented but no route serves it`);
  }
}

describe('GET /openapi.json', () => {
  const dir = tempDir();
  const dbs: SqlDatabase[] = [];
  const started: Started[] = [];
  const stops: Array<() => Promise<void>> = [];
  let gw: StartedGateway;
  let dead: Awaited<ReturnType<typeof deadUrl>>;
  const deps = async (service: string, open: (options: ServiceDatabaseOptions) => Promise<SqlDatabase>): Promise<ServiceDeps> => {
    const db = await open({ dataDir: dir.dir, seed: false });
    dbs.push(db);
    return { logger: memoryLogger(service, 'warn').logger, db, metrics: createMetrics(service) };
  };

  before(async () => {
    dead = await deadUrl();
  });
  after(async () => {
    for (const s of started) await s.close();
    for (const stop of stops) await stop();
    await gw?.close();
    await dead?.close();
    for (const db of dbs) await db.close();
    dir.remove();
  });

  const services: Array<[string, () => Promise<Express>]> = [
    ['user service', async () => createUserApp(await deps('user-service', openUserDatabase), openUserAuth())],
    ['product service', async () => createProductApp(await deps('product-service', openProductDatabase), openServiceAuth())],
    ['order service', async () => {
      const config = parseConfig(OrderConfigSchema, { USERS_URL: dead.url, PRODUCTS_URL: dead.url, RELEASE_RETRY_MS: '3600000' });
      const built = buildOrderService(await deps('order-service', openOrderDatabase), config);
      stops.push(built.close);
      return built.app;
    }],
  ];
  for (const [name, build] of services) {
    test(`when the ${name} is asked, then the document is valid OpenAPI 3.1 and lists exactly its routes`, async () => {
      const app = await build();
      const s = await startApp(app);
      started.push(s);
      const doc = await validDocument(s.url);
      assert.ok(doc.paths['/health']?.get && doc.paths['/openapi.json']?.get && doc.paths['/stats']?.get);
      assertMatchesRouter(app, doc);
    });
  }

  test('when the gateway is asked, then its document covers /api/* and its own routes, and matches its router', async () => {
    gw = await startGateway({ USERS_URL: dead.url, PRODUCTS_URL: dead.url, ORDERS_URL: dead.url });
    const doc = await validDocument(gw.url);
    for (const path of ['/api/users', '/api/users/{id}', '/api/products/{id}/stock', '/api/orders/{id}/status', '/api/users/{id}/full', '/api/dashboard', '/health', '/debug/circuit/{service}/{action}']) {
      assert.ok(doc.paths[path], `${path} is documented`);
    }
    assert.equal(doc.paths['/api/internal/reservations'], undefined, 'internal routes are not reachable through the gateway');
    assertMatchesRouter(gw.gateway.app, doc);
  });

  test('when the debug routes and fault switches do not exist (production without ADMIN_TOKEN), then no document lists them', async () => {
    const prod = await startGateway({ USERS_URL: dead.url, PRODUCTS_URL: dead.url, ORDERS_URL: dead.url, NODE_ENV: 'production' });
    stops.push(prod.close);
    const doc = await validDocument(prod.url);
    assert.deepEqual(Object.keys(doc.paths).filter((p) => p.startsWith('/debug')), []);
    assertMatchesRouter(prod.gateway.app, doc);

    const app = createProductApp({ ...(await deps('product-service', openProductDatabase)), faults: null }, openServiceAuth());
    const s = await startApp(app);
    started.push(s);
    const serviceDoc = await validDocument(s.url);
    assert.equal(serviceDoc.paths['/internal/faults'], undefined);
    assertMatchesRouter(app, serviceDoc);
  });

  test('when a document is not OpenAPI 3.1, then the validator says so (the check can fail)', async () => {
    const result = await new Validator().validate({ openapi: '3.1.0', paths: { '/x': { get: { responses: { 200: {} } } } } });
    assert.equal(result.valid, false);
  });
});
