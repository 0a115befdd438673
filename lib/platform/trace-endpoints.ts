// GET /spans (this process's finished spans), GET /traces and GET /traces/:traceId (this
// process's spans merged with those of `remotes`, fetched in parallel; partial when one is down).
// Remotes are asked for their own spans only (/spans), so gateways may list each other as peers
// without a request going round in circles.
import { Router } from 'express';
import { z } from 'zod';
import { HttpError } from './errors.js';
import type { ServiceClient } from './service-client.js';
import { isValidClientTraceId, toW3cTraceId } from './trace-context.js';
import type { SpanRecord, Tracing } from './span-recorder.js';
import { boundedIntQuery, parseQuery } from './validation.js';

interface TraceSummary {
  traceId: string;
  name: string;
  startTime: string;
  durationMs: number;
  spanCount: number;
  services: string[];
  status: 'ok' | 'error';
  /** The root span's request, when it is a server span (absent for a trace begun elsewhere). */
  method?: string;
  path?: string;
  httpStatus?: number;
}

const TraceIdSchema = z.string().refine(isValidClientTraceId, 'must be 1..128 characters of A-Za-z0-9._:-');
export const SpansQuery = z.strictObject({ traceId: TraceIdSchema.optional(), limit: boundedIntQuery(1, 10_000, 1000) });
export const TracesQuery = z.strictObject({
  limit: boundedIntQuery(1, 100, 20),
  // A process's name as its spans carry it: any other name matches no trace, a typo the client should hear of.
  service: z.enum(['gateway', 'user-service', 'product-service', 'order-service'], 'must be gateway, user-service, product-service or order-service').optional(),
  status: z.enum(['ok', 'error']).optional(),
  minDurationMs: boundedIntQuery(0, 3_600_000, 0),
});
/** How many recent spans each process contributes to the trace list. */
const LIST_SPANS = 2000;

interface Gathered {
  spans: SpanRecord[];
  unavailable: string[];
}

/**
 * `remotes`: one client per process to merge, i.e. per instance of each service and per peer
 * gateway (a span that two of them return, say a gateway listed as its own peer, counts once).
 */
export function createTraceRoutes({ tracing, remotes = [] }: { tracing: Tracing; remotes?: ServiceClient[] }): Router {
  const router = Router();

  /** `authorization`: the caller's, passed on, as each process guards its own spans. */
  async function gather(query: { traceId?: string; limit: number }, authorization?: string): Promise<Gathered> {
    const qs = new URLSearchParams({ limit: String(query.limit) });
    if (query.traceId) qs.set('traceId', query.traceId);
    const options = authorization === undefined ? undefined : { headers: { authorization } };
    const results = await Promise.allSettled(remotes.map((r) => r.get<{ spans: SpanRecord[] }>(`/spans?${qs}`, options)));
    const spans = tracing.buffer.query(query);
    const seen = new Set(spans.map((s) => s.spanId));
    const unavailable: string[] = [];
    results.forEach((r, i) => {
      if (r.status !== 'fulfilled' || !Array.isArray(r.value.body?.spans)) return void unavailable.push(remotes[i].name);
      for (const span of r.value.body.spans.slice(0, query.limit)) {
        if (seen.has(span.spanId)) continue;
        seen.add(span.spanId);
        spans.push(span);
      }
    });
    return { spans, unavailable };
  }

  router.get('/spans', (req, res) => {
    const { traceId, limit } = parseQuery(SpansQuery, req.query);
    res.json({ service: tracing.service, spans: tracing.buffer.query({ traceId: traceId && toW3cTraceId(traceId), limit }) });
  });

  router.get('/traces', async (req, res) => {
    const { limit, service, status, minDurationMs } = parseQuery(TracesQuery, req.query);
    const { spans, unavailable } = await gather({ limit: LIST_SPANS }, req.headers.authorization);
    const byTrace = new Map<string, SpanRecord[]>();
    for (const s of spans) {
      const list = byTrace.get(s.traceId);
      if (list) list.push(s);
      else byTrace.set(s.traceId, [s]);
    }
    const traces = [...byTrace.values()]
      .map(summarize)
      .filter((t) => (service === undefined || t.services.includes(service)) && (status === undefined || t.status === status) && t.durationMs >= minDurationMs)
      .sort((a, b) => b.startTime.localeCompare(a.startTime))
      .slice(0, limit);
    res.json({ traces, meta: { complete: unavailable.length === 0, unavailable } });
  });

  router.get('/traces/:traceId', async (req, res) => {
    const parsed = TraceIdSchema.safeParse(req.params.traceId);
    if (!parsed.success) throw new HttpError(400, 'VALIDATION_ERROR', 'Invalid trace id', [{ field: 'traceId', message: 'must be 1..128 characters of A-Za-z0-9._:-' }]);
    const w3cTraceId = toW3cTraceId(parsed.data);
    const { spans, unavailable } = await gather({ traceId: w3cTraceId, limit: 10_000 }, req.headers.authorization);
    const own = spans.filter((s) => s.traceId === w3cTraceId);
    if (own.length === 0) throw new HttpError(404, 'NOT_FOUND', 'Trace not found');
    own.sort((a, b) => a.startMs - b.startMs);
    res.json({
      traceId: parsed.data,
      w3cTraceId,
      spans: own.map(({ alias: _a, ...span }) => span),
      meta: { complete: unavailable.length === 0, unavailable },
    });
  });

  return router;
}

function summarize(spans: SpanRecord[]): TraceSummary {
  const ids = new Set(spans.map((s) => s.spanId));
  const roots = spans.filter((s) => !s.parentSpanId || !ids.has(s.parentSpanId));
  const root = (roots.length ? roots : spans).reduce((a, b) => (b.startMs < a.startMs ? b : a));
  const start = Math.min(...spans.map((s) => s.startMs));
  const end = Math.max(...spans.map((s) => s.startMs + s.durationMs));
  const { 'http.request.method': method, 'url.path': path, 'http.response.status_code': httpStatus } = root.kind === 'server' ? root.attributes : {};
  return {
    traceId: spans.find((s) => s.alias)?.alias ?? root.traceId,
    name: root.name,
    startTime: new Date(start).toISOString(),
    durationMs: Math.round((end - start) * 1000) / 1000,
    spanCount: spans.length,
    services: [...new Set(spans.map((s) => s.service))],
    status: spans.some((s) => s.status === 'error') ? 'error' : 'ok',
    ...(typeof method === 'string' ? { method } : {}),
    ...(typeof path === 'string' ? { path } : {}),
    ...(typeof httpStatus === 'number' ? { httpStatus } : {}),
  };
}
