// Every /api route of the gateway, once: who answers it, whether anyone may call it, whether it may
// be sent twice. The front door's fast path, the public routes of required mode, the routes mounted
// in Express and the OpenAPI paths are all read from this table.
import { parse } from 'node:url';
import type { IRouter, RequestHandler } from 'express';
import { HttpError } from '../platform/errors.js';
import { isIdempotent } from '../platform/retry.js';
import { SERVICE_NAMES, type ServiceName } from './upstreams.js';
import { connectionNamed } from './forward-headers.js';

/** The routes the gateway answers with handlers of its own (aggregates, the login relay), by id. */
export type OwnRouteId = 'login' | 'logout' | 'dashboard' | 'userFull';

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/**
 * One row of the table.
 * - `method`: GET serves HEAD too, as Express's routes do; ANY: every method.
 * - `path`: an Express 5 pattern made of literal segments, `:param` segments and, last, `{/*rest}`
 *   (the path alone or followed by anything).
 * - `service`: the service that answers it; null when the gateway asks them all.
 * - `kind`: `proxied` is streamed to the service (its row says what the gateway knows of it; the
 *   service's `{/*rest}` row catches whatever the service has that the table does not list);
 *   `own`: the gateway's handlers of that id answer it.
 * - `public`: answered without a token in required mode.
 * - `repeatable`: whether a retry may send it again: always, never, only with an Idempotency-Key,
 *   or (for a `{/*rest}` row) when its method is idempotent (RFC 9110 9.2.2).
 */
export type RouteRow = {
  method: Method | 'ANY';
  path: string;
  service: ServiceName | null;
  public: boolean;
  repeatable: boolean | 'idempotency-key' | 'idempotent-method';
} & ({ kind: 'proxied'; service: ServiceName } | { kind: 'own'; id: OwnRouteId });

// The gateway's own rows are matched (and mounted) before the proxied ones, whatever their place here.
export const ROUTE_TABLE: readonly RouteRow[] = [
  { method: 'POST', path: '/api/auth/login', service: 'users', kind: 'own', id: 'login', public: true, repeatable: false },
  { method: 'POST', path: '/api/auth/logout', service: 'users', kind: 'own', id: 'logout', public: false, repeatable: false },
  { method: 'GET', path: '/api/dashboard', service: null, kind: 'own', id: 'dashboard', public: false, repeatable: true },
  { method: 'GET', path: '/api/users/:id/full', service: 'users', kind: 'own', id: 'userFull', public: false, repeatable: true },

  { method: 'GET', path: '/api/users', service: 'users', kind: 'proxied', public: false, repeatable: true },
  { method: 'POST', path: '/api/users', service: 'users', kind: 'proxied', public: true, repeatable: false },
  { method: 'GET', path: '/api/users/:id', service: 'users', kind: 'proxied', public: false, repeatable: true },
  { method: 'PUT', path: '/api/users/:id', service: 'users', kind: 'proxied', public: false, repeatable: true },
  { method: 'DELETE', path: '/api/users/:id', service: 'users', kind: 'proxied', public: false, repeatable: true },
  { method: 'ANY', path: '/api/users{/*rest}', service: 'users', kind: 'proxied', public: false, repeatable: 'idempotent-method' },

  { method: 'GET', path: '/api/products', service: 'products', kind: 'proxied', public: true, repeatable: true },
  { method: 'POST', path: '/api/products', service: 'products', kind: 'proxied', public: false, repeatable: false },
  { method: 'GET', path: '/api/products/:id', service: 'products', kind: 'proxied', public: true, repeatable: true },
  { method: 'PUT', path: '/api/products/:id', service: 'products', kind: 'proxied', public: false, repeatable: true },
  { method: 'PATCH', path: '/api/products/:id/stock', service: 'products', kind: 'proxied', public: false, repeatable: false },
  { method: 'DELETE', path: '/api/products/:id', service: 'products', kind: 'proxied', public: false, repeatable: true },
  { method: 'GET', path: '/api/products{/*rest}', service: 'products', kind: 'proxied', public: true, repeatable: true },
  { method: 'ANY', path: '/api/products{/*rest}', service: 'products', kind: 'proxied', public: false, repeatable: 'idempotent-method' },

  { method: 'GET', path: '/api/orders', service: 'orders', kind: 'proxied', public: false, repeatable: true },
  { method: 'POST', path: '/api/orders', service: 'orders', kind: 'proxied', public: false, repeatable: 'idempotency-key' },
  { method: 'GET', path: '/api/orders/:id', service: 'orders', kind: 'proxied', public: false, repeatable: true },
  { method: 'PUT', path: '/api/orders/:id/status', service: 'orders', kind: 'proxied', public: false, repeatable: true },
  { method: 'DELETE', path: '/api/orders/:id', service: 'orders', kind: 'proxied', public: false, repeatable: true },
  { method: 'ANY', path: '/api/orders{/*rest}', service: 'orders', kind: 'proxied', public: false, repeatable: 'idempotent-method' },
];

const REST = '{/*rest}';

/** A row with its matcher. */
interface CompiledRow {
  row: RouteRow;
  /**
   * The row's pattern as Express 5 compiles it (path-to-regexp: any letter case, one optional
   * trailing slash), written to run on the request target as sent: a query may follow, and a
   * parameter stops at `?` as the path does. No slicing, so nothing allocated per request.
   */
  target: RegExp;
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function compile(row: RouteRow): CompiledRow {
  const rest = row.path.endsWith(REST);
  const fixed = rest ? row.path.slice(0, -REST.length) : row.path;
  if (!/^(\/(:\w+|[\w.-]+))+$/.test(fixed)) throw new Error(`route ${row.path}: only literal and :param segments, then {/*rest}`);
  const body = fixed.split('/').slice(1).map((segment) => (segment.startsWith(':') ? '\\/[^\\/?]+' : `\\/${escapeRegExp(segment)}`)).join('');
  return { row, target: new RegExp(`^${body}${rest ? '(?:\\/[^?]+)?' : ''}\\/?(?:\\?|$)`, 'i') };
}

function check(rows: readonly RouteRow[]): void {
  for (const row of rows) {
    if (row.kind !== 'proxied') continue;
    const prefix = `/api/${row.service}`;
    if (row.path !== prefix && !row.path.startsWith(`${prefix}/`) && row.path !== `${prefix}${REST}`) throw new Error(`route ${row.path}: a route of ${row.service} lies under ${prefix}`);
    if (!rows.some((r) => r.kind === 'proxied' && r.service === row.service && r.method === 'ANY' && r.path === `${prefix}${REST}`)) throw new Error(`service ${row.service} has no ANY ${prefix}${REST} route`);
  }
}

const rowMethodMatches = (row: RouteRow, method: string): boolean =>
  row.method === method || row.method === 'ANY' || (row.method === 'GET' && method === 'HEAD');

/**
 * The characters for which Express's URL parsing (parseurl) falls back to Node's `url.parse`,
 * which may change the path (backslashes, escapes); a target not starting with `/` (absolute form,
 * `*`) takes that way too.
 */
const REPARSED = /[\t\n\f\r #\u00a0\ufeff]/;

/** The path Express matches routes against, as a target the compiled rows read (a query may follow). */
const routedTarget = (url: string): string => (url.charCodeAt(0) === 47 /* / */ && !REPARSED.test(url) ? url : (parse(url).pathname ?? ''));

/** The table, compiled once: the questions asked of it on every request. */
export interface RouteIndex {
  readonly rows: readonly RouteRow[];
  /** The row Express's router would run for this request (own rows first, then proxied), if any. */
  routeOf(method: string, url: string): RouteRow | undefined;
  /** Whether a request may be answered without a token in required mode. */
  isPublic(method: string, url: string): boolean;
  /**
   * The service whose proxy takes this request on the front door's fast path; undefined: the
   * router decides (another route, another letter case, escapes in the path that Express decodes
   * and may refuse). For a target Node's parser took and the front door did not refuse (no `#`,
   * no space, control or non-ASCII character: nothing Express's URL parsing would rewrite).
   * Nothing allocated.
   */
  fastPathService(method: string, url: string): ServiceName | undefined;
  /** Whether a retry may send the request again. */
  mayRepeat(method: string, url: string, headers: Readonly<Record<string, string | string[] | undefined>>): boolean;
}

export function compileRoutes(rows: readonly RouteRow[]): RouteIndex {
  check(rows);
  // Express runs the gateway's own routes before the proxies (mountRoutes): so does the index.
  const ordered = [...rows.filter((r) => r.kind === 'own'), ...rows.filter((r) => r.kind === 'proxied')].map(compile);
  // Per service: its prefix, and the own rows that could match a path under it (a literal second
  // segment naming another service cannot).
  const services = [...new Set(rows.flatMap((r) => (r.kind === 'proxied' ? [r.service] : [])))].map((name) => ({
    name,
    prefix: `/api/${name}`,
    own: ordered.filter(({ row }) => {
      if (row.kind !== 'own') return false;
      const second = row.path.split('/')[2] ?? '';
      return second.startsWith(':') || second.replace(REST, '').toLowerCase() === name;
    }),
  }));
  const routeOf = (method: string, url: string): RouteRow | undefined => {
    const target = routedTarget(url);
    for (const { row, target: matcher } of ordered) if (rowMethodMatches(row, method) && matcher.test(target)) return row;
    return undefined;
  };

  // The services by the first letter of their name (the sixth character of the target), so that
  // the fast path compares one prefix, as a lookup rather than a search.
  const byFirstLetter: Array<typeof services | undefined> = [];
  for (const service of services) (byFirstLetter[service.name.charCodeAt(0)] ??= []).push(service);

  const fastPathService = (method: string, url: string): ServiceName | undefined => {
    if (url.charCodeAt(1) !== 97 /* a */) return undefined;
    const candidates = byFirstLetter[url.charCodeAt(5)];
    if (candidates === undefined) return undefined;
    for (let i = 0; i < candidates.length; i++) {
      const { prefix, own, name } = candidates[i];
      if (!url.startsWith(prefix)) continue;
      const next = url.charCodeAt(prefix.length);
      if (!(Number.isNaN(next) || next === 47 /* / */ || next === 63) /* ? */) continue;
      // An escape in the path: the router decodes it (and refuses a bad one).
      const escape = url.indexOf('%', prefix.length);
      if (escape !== -1) {
        const query = url.indexOf('?', prefix.length);
        if (query === -1 || escape < query) return undefined;
      }
      for (let j = 0; j < own.length; j++) if (rowMethodMatches(own[j].row, method) && own[j].target.test(url)) return undefined;
      return name;
    }
    return undefined;
  };

  return {
    rows,
    routeOf,
    isPublic: (method, url) => routeOf(method, url)?.public ?? false,
    fastPathService,
    mayRepeat: (method, url, headers) => {
      const repeatable = routeOf(method, url)?.repeatable ?? false;
      if (repeatable === 'idempotent-method') return isIdempotent(method);
      // The key counts only if it reaches the service: one named in Connection is dropped on the way.
      if (repeatable === 'idempotency-key') return headers['idempotency-key'] !== undefined && connectionNamed(headers.connection)?.has('idempotency-key') !== true;
      return repeatable;
    },
  };
}

/** The gateway's routes, compiled once. */
export const ROUTES: RouteIndex = compileRoutes(ROUTE_TABLE);

/** The path of one of the gateway's own routes. */
export function ownRoutePath(id: OwnRouteId): string {
  const row = ROUTE_TABLE.find((r) => r.kind === 'own' && r.id === id);
  if (!row) throw new Error(`no route ${id} in the table`);
  return row.path;
}

/** The path a service's proxy is mounted at: the service alone or followed by anything (Express 5 needs the wildcard named). */
const proxyRoute = (service: ServiceName): string => `/api/${service}${REST}`;

/** What answers each route: the handlers of each own route, the proxy of each service. */
export interface RouteHandlers {
  own: Record<OwnRouteId, RequestHandler[]>;
  proxies: ReadonlyMap<ServiceName, RequestHandler>;
}

/**
 * Mounts every row: the own routes first (each with its handlers), then one proxy route per
 * service, which serves all its rows. An own route whose handlers all pass it on is a 500 here,
 * never a request for the proxy behind it.
 */
export function mountRoutes(router: IRouter, { own, proxies }: RouteHandlers, index: RouteIndex = ROUTES): void {
  for (const row of index.rows) {
    if (row.kind !== 'own') continue;
    const route = router.route(row.path);
    const handlers = [...own[row.id], unanswered(row.id)];
    if (row.method === 'GET') route.get(...handlers);
    else if (row.method === 'POST') route.post(...handlers);
    else if (row.method === 'PUT') route.put(...handlers);
    else if (row.method === 'PATCH') route.patch(...handlers);
    else if (row.method === 'DELETE') route.delete(...handlers);
    else route.all(...handlers);
  }
  for (const service of SERVICE_NAMES) {
    if (!index.rows.some((r) => r.kind === 'proxied' && r.service === service)) continue;
    const proxy = proxies.get(service);
    if (!proxy) throw new Error(`no proxy for ${service}`);
    router.all(proxyRoute(service), proxy);
  }
}

const unanswered = (id: OwnRouteId): RequestHandler => () => {
  throw new HttpError(500, 'INTERNAL_ERROR', `Route ${id} has no handler that answers it`);
};
