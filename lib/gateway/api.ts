// The gateway's routes as its OpenAPI document shows them: its own (status, debug, dashboard), and
// the /api routes of the route table, each documented by the gateway (its own) or by its service
// (proxied). A test checks them against the router.
import { z } from 'zod';
import { ORDER_API } from '../orders/api.js';
import type { ApiRoute } from '../platform/openapi/document.js';
import { FaultSpecSchema } from '../platform/faults.js';
import { CALLER_REFUSALS, FaultStateSchema, PROCESS_API, TRACE_API, UNAUTHENTICATED } from '../platform/openapi/common.js';
import { IdParamsSchema } from '../platform/validation.js';
import { PRODUCT_API } from '../products/api.js';
import { LOGIN_API, LOGOUT_API, USER_API } from '../users/api.js';
import { UserSchema } from '../users/schema.js';
import { CIRCUIT_ACTIONS } from './debug.js';
import { ROUTE_TABLE, type OwnRouteId, type RouteRow } from './route-table.js';
import { GATEWAY_FEATURES } from './status.js';
import { SERVICE_NAMES, type ServiceName } from './upstreams.js';

const ServiceStatus = z.enum(['healthy', 'recovering', 'unhealthy']);
const CircuitState = z.enum(['CLOSED', 'OPEN', 'HALF_OPEN']);
const FAILURES = ['refused', 'reset', 'timeout', 'bad_response', 'server_error'] as const;

const ServiceHealth = z.object({
  status: ServiceStatus,
  circuitState: CircuitState,
  stats: z.object({ failures: z.number().int(), successes: z.number().int(), rejects: z.number().int(), timeouts: z.number().int(), lastFailure: z.string().nullable() }),
  probe: z.object({ ok: z.boolean(), latencyMs: z.number(), failure: z.enum(FAILURES).optional() }),
  // One per configured URL; with one instance its state follows the circuit (ejected while OPEN).
  instances: z.array(z.object({ url: z.string(), state: z.enum(['up', 'ejected']), outstanding: z.number().int(), consecutiveFailures: z.number().int(), latencyMs: z.number().nullable() })),
});

const Meta = z.object({ complete: z.boolean(), unavailable: z.array(z.enum(SERVICE_NAMES)) });
const Unavailable = z.object({ status: z.literal('unavailable'), circuitState: CircuitState });

/** What a call through the gateway may answer besides the service's own statuses. */
const GATEWAY_FAILURES: ApiRoute['responses'] = {
  408: { description: 'REQUEST_TIMEOUT: the body came too slowly (CLIENT_BODY_TIMEOUT_MS, CLIENT_BODY_TOTAL_MS); the connection is closed' },
  429: { description: 'RATE_LIMITED, or TOO_MANY_IN_FLIGHT: MAX_CLIENT_IN_FLIGHT requests of this client at once (Retry-After)' },
  502: { description: 'BAD_GATEWAY: the service refused or broke the connection' },
  503: { description: 'SERVICE_UNAVAILABLE: its circuit is open; OVERLOADED: MAX_IN_FLIGHT reached (Retry-After)' },
  504: { description: 'GATEWAY_TIMEOUT: no answer within UPSTREAM_TIMEOUT_MS' },
};

const SERVICE_API: Record<ServiceName, readonly ApiRoute[]> = { users: USER_API, products: PRODUCT_API, orders: ORDER_API };

/** A proxied row of the route table, as its service documents the route behind it. */
function proxied(row: RouteRow & { kind: 'proxied' }): ApiRoute {
  const servicePath = row.path.slice('/api'.length);
  const method = row.method.toLowerCase();
  const r = SERVICE_API[row.service].find((d) => d.method === method && d.path === servicePath);
  if (!r) throw new Error(`${row.method} ${row.path}: the ${row.service} service documents no ${row.method} ${servicePath}`);
  return { ...r, path: row.path, summary: `${r.summary} (proxied to the ${row.service} service)`, responses: { ...GATEWAY_FAILURES, ...r.responses } };
}

const OWN_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/', summary: 'What this gateway is and routes to',
    responses: {
      200: {
        description: 'Name, version, services, features',
        body: z.object({
          name: z.string(), version: z.string(),
          // url and instances: for an admin only (the admin surface's rule).
          services: z.array(z.object({ name: z.enum(SERVICE_NAMES), url: z.string().optional(), status: ServiceStatus, instances: z.array(z.string()).optional() })),
          features: z.array(z.enum(GATEWAY_FEATURES)),
        }),
      },
    },
  },
  {
    method: 'get', path: '/health', summary: "Each service's circuit and a fresh probe; always 200",
    responses: {
      200: {
        description: 'Healthy, or degraded when a circuit is not closed, a probe failed, an instance is ejected or the shared rate-limit store is unreachable',
        body: z.object({
          status: z.enum(['healthy', 'degraded']),
          timestamp: z.string(),
          services: z.record(z.enum(SERVICE_NAMES), ServiceHealth),
          rateLimitStore: z.object({ kind: z.literal('redis'), state: z.enum(['connecting', 'up', 'degraded']) }).optional(),
        }),
      },
    },
  },
];

const ADMIN_BEARER = { Authorization: { schema: z.string().optional(), description: "`Bearer <ADMIN_TOKEN>` or an admin's JWT, when ADMIN_TOKEN is set or AUTH_MODE=required; else callers in ADMIN_ALLOW_ADDRESSES (this machine) need none" } };
const ADMIN_REFUSALS: ApiRoute['responses'] = {
  401: { description: 'UNAUTHENTICATED: no or a wrong token' },
  403: { description: "FORBIDDEN: a valid token that is not an admin's; ADDRESS_NOT_ALLOWED: open mode without ADMIN_TOKEN, from an address outside ADMIN_ALLOW_ADDRESSES; CROSS_SITE_REQUEST: a change sent for another site's page" },
};

const ServiceFaults = z.object({
  service: z.enum(SERVICE_NAMES),
  faults: FaultStateSchema.nullable().describe('the first instance to answer; null when none did'),
  instances: z.number().int(),
  reached: z.number().int(),
});

/** The debug routes (lib/gateway/debug.ts), present where debugging is allowed. */
const DEBUG_API: readonly ApiRoute[] = [
  {
    method: 'post', path: '/debug/circuit/:service/:action', summary: 'Open, close or reset a circuit by hand',
    params: z.object({ service: z.enum(SERVICE_NAMES), action: z.enum(CIRCUIT_ACTIONS) }),
    headers: ADMIN_BEARER,
    responses: {
      200: { description: 'The new state', body: z.object({ service: z.enum(SERVICE_NAMES), action: z.enum(CIRCUIT_ACTIONS), newState: CircuitState }) },
      400: { description: 'VALIDATION_ERROR: unknown action' },
      ...ADMIN_REFUSALS,
      404: { description: 'Unknown service' },
    },
  },
  {
    method: 'get', path: '/debug/faults', summary: "Every service's fault switches",
    headers: ADMIN_BEARER,
    responses: { 200: { description: 'Per service', body: z.object({ services: z.array(ServiceFaults) }) }, ...ADMIN_REFUSALS },
  },
  {
    method: 'post', path: '/debug/faults/:service', summary: "Set a service's fault switches on every instance (absent fields off)",
    params: z.object({ service: z.enum(SERVICE_NAMES) }), body: FaultSpecSchema, headers: ADMIN_BEARER,
    responses: {
      200: { description: 'The switches and how many instances took them', body: ServiceFaults },
      400: { description: 'VALIDATION_ERROR' },
      ...ADMIN_REFUSALS,
      404: { description: 'Unknown service' },
      503: { description: 'SERVICE_UNAVAILABLE: no instance took them' },
    },
  },
];

/** The dashboard (lib/gateway/dashboard): a page, its assets, and its event stream. */
const DASHBOARD_API: readonly ApiRoute[] = [
  ...([['/dashboard', 'text/html', 'The live dashboard page'], ['/dashboard/app.js', 'text/javascript', "The dashboard's script"], ['/dashboard/style.css', 'text/css', "The dashboard's style sheet"]] as const)
    .map(([path, mediaType, summary]): ApiRoute => ({ method: 'get', path, summary, responses: { 200: { description: summary, mediaType } } })),
  {
    method: 'get', path: '/dashboard/events', summary: "Server-Sent Events: every second, each service's circuit, windowed traffic and probe, and the rate limiter's refusals",
    headers: ADMIN_BEARER,
    responses: {
      200: { description: 'An endless event stream, one JSON snapshot per `data:` event', mediaType: 'text/event-stream' },
      ...ADMIN_REFUSALS,
      503: { description: 'TOO_MANY_STREAMS (Retry-After: 5)' },
    },
  },
];

/** How the gateway documents each of its own /api routes (the table gives method and path). */
const OWN_ROUTE_DOCS: Record<OwnRouteId, Omit<ApiRoute, 'method' | 'path'>> = {
  login: {
    ...LOGIN_API,
    summary: `${LOGIN_API.summary} (relayed to the user service; LOGIN_RATE_LIMIT per client address)`,
    responses: { ...LOGIN_API.responses, 429: { description: 'RATE_LIMITED: too many logins from this address, or failures for this email (Retry-After)' }, 502: GATEWAY_FAILURES[502], 503: GATEWAY_FAILURES[503], 504: GATEWAY_FAILURES[504] },
  },
  logout: {
    ...LOGOUT_API,
    summary: `${LOGOUT_API.summary} (relayed to the user service)`,
    responses: { ...LOGOUT_API.responses, ...GATEWAY_FAILURES },
  },
  userFull: {
    summary: 'A user with their newest 100 orders', params: IdParamsSchema,
    responses: {
      200: { description: 'orders is null, and meta says so, when the order service is unavailable', body: z.object({ user: UserSchema, orders: z.array(z.looseObject({})).nullable(), meta: Meta }) },
      400: { description: 'Not an id' },
      ...UNAUTHENTICATED,
      404: { description: "No such user, or another user's" },
      429: GATEWAY_FAILURES[429],
      503: { description: 'The user service is unavailable' },
    },
  },
  dashboard: {
    summary: "Every service's stats in one answer",
    responses: {
      200: {
        description: 'A service that is down shows its circuit state instead',
        body: z.object({
          timestamp: z.string(),
          gateway: z.object({ uptime: z.number(), memoryUsage: z.record(z.string(), z.number()) }),
          services: z.record(z.enum(SERVICE_NAMES), z.union([Unavailable, z.looseObject({ service: z.string() })])),
          meta: Meta,
        }),
      },
      ...CALLER_REFUSALS,
      429: GATEWAY_FAILURES[429],
    },
  },
};

/** The /api routes: the table's rows as documented, but the `{/*rest}` ones (the services' other paths, which they answer). */
const API_ROUTES: readonly ApiRoute[] = ROUTE_TABLE.filter((row) => row.method !== 'ANY' && !row.path.endsWith('}')).map((row) =>
  row.kind === 'own' ? { ...OWN_ROUTE_DOCS[row.id], method: row.method.toLowerCase() as ApiRoute['method'], path: row.path } : proxied(row));

/** Every route of the gateway; the debug and trace routes only where the app mounts them. */
export function gatewayApi({ tracing, debug }: { tracing: boolean; debug: boolean }): ApiRoute[] {
  return [
    ...OWN_API,
    ...PROCESS_API,
    ...(tracing ? TRACE_API : []),
    ...DASHBOARD_API,
    ...(debug ? DEBUG_API : []),
    ...API_ROUTES,
  ];
}
