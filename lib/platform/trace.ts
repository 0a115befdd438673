// The one place that owns trace ids: what we accept from clients, what we make, what we pass on.
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';

export interface TraceContext {
  /** The id users see in X-Trace-Id and look traces up by. */
  traceId: string;
  /** This process's span for the current request. */
  spanId: string;
  /** The span of the caller, when a traceparent told us. */
  parentSpanId?: string;
}

const storage = new AsyncLocalStorage<TraceContext>();

const CLIENT_TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
// W3C trace-context: version-traceid-parentid-flags; all-zero ids are invalid.
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);

export const newTraceId = (): string => randomBytes(16).toString('hex');
export const newSpanId = (): string => randomBytes(8).toString('hex');

export function isValidClientTraceId(value: unknown): value is string {
  return typeof value === 'string' && CLIENT_TRACE_ID.test(value);
}

export function parseTraceparent(value: unknown): { traceId: string; parentSpanId: string } | undefined {
  if (typeof value !== 'string') return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m || m[1] === 'ff' || m[2] === ZERO_TRACE || m[3] === ZERO_SPAN) return undefined;
  return { traceId: m[2]!, parentSpanId: m[3]! };
}

/**
 * The trace context for an incoming request: a valid `X-Trace-Id` wins (users pick it to find
 * their request later), then a valid `traceparent`, else a fresh id. Invalid values are dropped,
 * never reflected.
 */
export function traceFromHeaders(headers: Record<string, string | string[] | undefined>): TraceContext {
  const fromParent = parseTraceparent(headers['traceparent']);
  const clientId = headers['x-trace-id'];
  if (isValidClientTraceId(clientId)) {
    const parentSpanId = fromParent && fromParent.traceId === clientId.toLowerCase() ? fromParent.parentSpanId : undefined;
    return { traceId: clientId, spanId: newSpanId(), parentSpanId: parentSpanId ?? spanIdHeader(headers) };
  }
  if (fromParent) return { traceId: fromParent.traceId, spanId: newSpanId(), parentSpanId: fromParent.parentSpanId };
  return { traceId: newTraceId(), spanId: newSpanId() };
}

// Our own processes send X-Parent-Span-Id beside X-Trace-Id when the trace id is not W3C-shaped.
function spanIdHeader(headers: Record<string, string | string[] | undefined>): string | undefined {
  const v = headers['x-parent-span-id'];
  return typeof v === 'string' && /^[0-9a-f]{16}$/.test(v) ? v : undefined;
}

export function runWithTrace<T>(ctx: TraceContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

export function currentTrace(): TraceContext | undefined {
  return storage.getStore();
}

/**
 * Headers that carry the current trace to another of our processes. The traceparent is only
 * valid when the trace id is 32 hex digits; our own X-Trace-Id carries any other form.
 */
export function outgoingTraceHeaders(ctx: TraceContext | undefined = storage.getStore()): Record<string, string> {
  if (!ctx) return {};
  const headers: Record<string, string> = { 'x-trace-id': ctx.traceId, 'x-parent-span-id': ctx.spanId };
  if (/^[0-9a-f]{32}$/.test(ctx.traceId)) headers['traceparent'] = `00-${ctx.traceId}-${ctx.spanId}-01`;
  return headers;
}

/** Re-enters the current trace context in a callback that a library may call from another one. */
export function bindToTrace<F extends (...args: never[]) => unknown>(fn: F): F {
  const ctx = storage.getStore();
  if (!ctx) return fn;
  return ((...args: Parameters<F>) => storage.run(ctx, () => fn(...args))) as F;
}
