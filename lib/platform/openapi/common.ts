// The routes every process serves beside its own: metrics, traces, the document itself, and (for
// the services) the health check of createServiceApp.
import { z } from 'zod';
import { FAULTS_PATH, FaultSpecSchema } from '../faults.js';
import { SpansQuery, TracesQuery } from '../trace-endpoints.js';
import type { ApiRoute } from './document.js';

const SpanSchema = z.object({
  traceId: z.string(),
  spanId: z.string(),
  parentSpanId: z.string().nullable(),
  name: z.string(),
  service: z.string(),
  kind: z.enum(['server', 'client', 'internal']),
  startTime: z.string(),
  durationMs: z.number(),
  status: z.enum(['ok', 'error']),
  attributes: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])),
});

const PartialMeta = z.object({ complete: z.boolean(), unavailable: z.array(z.string()) });

const TraceIdParams = z.object({ traceId: z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/) });

/** A route that reads the caller's token: a bad one (or none, in required mode) is refused. */
export const UNAUTHENTICATED: ApiRoute['responses'] = {
  401: { description: 'UNAUTHENTICATED: no token (required mode), or one that does not verify (WWW-Authenticate: Bearer)' },
};

/** A route only some callers may use (required mode, or any caller with a token). */
export const CALLER_REFUSALS: ApiRoute['responses'] = {
  ...UNAUTHENTICATED,
  403: { description: 'FORBIDDEN: this caller may not do this' },
};

/** The admin surface (/metrics, /spans, /traces) in required mode: an admin's JWT or ADMIN_TOKEN. */
const ADMIN_SURFACE: ApiRoute['responses'] = {
  401: { description: 'UNAUTHENTICATED (required mode): no token, or one that is neither an admin\'s JWT nor ADMIN_TOKEN' },
  403: { description: "FORBIDDEN (required mode): a user's token" },
};

/** /metrics and /openapi.json, which every process serves. */
export const PROCESS_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/metrics', summary: 'Prometheus metrics of this process',
    responses: { 200: { description: 'Text exposition format', mediaType: 'text/plain' }, ...ADMIN_SURFACE },
  },
  {
    method: 'get', path: '/openapi.json', summary: 'This document',
    responses: { 200: { description: 'OpenAPI 3.1 document', body: z.looseObject({ openapi: z.string() }) } },
  },
];

/** /spans, /traces and /traces/:traceId, served by a process that records spans. */
export const TRACE_API: readonly ApiRoute[] = [
  {
    method: 'get', path: '/spans', summary: "This process's finished spans (the newest `limit`, oldest first)", query: SpansQuery,
    responses: {
      200: { description: 'Spans', body: z.object({ service: z.string(), spans: z.array(SpanSchema.extend({ startMs: z.number() })) }) },
      400: { description: 'Bad query' },
      ...ADMIN_SURFACE,
    },
  },
  {
    method: 'get', path: '/traces', summary: 'Recent traces, newest first', query: TracesQuery,
    responses: {
      200: {
        description: 'Trace summaries',
        body: z.object({
          traces: z.array(z.object({
            traceId: z.string(), name: z.string(), startTime: z.string(), durationMs: z.number(), spanCount: z.number().int(),
            services: z.array(z.string()), status: z.enum(['ok', 'error']),
          })),
          meta: PartialMeta,
        }),
      },
      400: { description: 'Bad query' },
      ...ADMIN_SURFACE,
    },
  },
  {
    method: 'get', path: '/traces/:traceId', summary: 'The spans of one trace, oldest first', params: TraceIdParams,
    responses: {
      200: { description: 'The trace', body: z.object({ traceId: z.string(), w3cTraceId: z.string(), spans: z.array(SpanSchema), meta: PartialMeta }) },
      400: { description: 'Malformed trace id' },
      ...ADMIN_SURFACE,
      404: { description: 'No such trace' },
    },
  },
];

/** GET /health of a data-owning service. */
export const serviceHealthApi = (service: string): ApiRoute => ({
  method: 'get', path: '/health', summary: 'Whether the service and its database work',
  responses: {
    200: { description: 'Healthy', body: z.object({ status: z.literal('healthy'), service: z.literal(service) }) },
    503: { description: 'The database cannot be read', body: z.object({ status: z.literal('unhealthy'), service: z.literal(service) }) },
  },
});

/** The fault switches as GET and POST report them (lib/platform/faults.ts). */
export const FaultStateSchema = z.object({
  latencyMs: z.number().int(),
  errorRate: z.number(),
  resetRate: z.number(),
  down: z.boolean(),
  expiresAt: z.string().nullable().describe('when the switches turn off by themselves; null when all are off'),
});

const ADMIN_BEARER = { schema: z.string().optional(), description: '`Bearer <ADMIN_TOKEN>` (or an admin\'s JWT in required mode) when the route is guarded' };

/** GET and POST /internal/faults, served by a service whose fault switches exist. */
export const FAULTS_API: readonly ApiRoute[] = [
  {
    method: 'get', path: FAULTS_PATH, summary: "This service's fault switches",
    headers: { Authorization: ADMIN_BEARER },
    responses: { 200: { description: 'The switches', body: FaultStateSchema }, 401: { description: 'UNAUTHENTICATED: no INTERNAL_TOKEN (when set), or a missing or wrong admin token' }, 403: { description: 'FORBIDDEN: another token than INTERNAL_TOKEN (when set); without it, a caller on another machine, or a token that is not an admin\'s' } },
  },
  {
    method: 'post', path: FAULTS_PATH, summary: 'Replace the fault switches (absent fields off); they switch off by themselves after FAULT_TTL_MS', body: FaultSpecSchema,
    headers: { Authorization: ADMIN_BEARER },
    responses: {
      200: { description: 'The switches now', body: FaultStateSchema },
      400: { description: 'VALIDATION_ERROR' },
      401: { description: 'UNAUTHENTICATED: missing or wrong admin token' },
      403: { description: 'FORBIDDEN: a token that is not an admin\'s' },
    },
  },
];

