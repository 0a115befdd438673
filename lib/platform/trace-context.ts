// The one place that owns trace ids: what we accept from clients, what we make, what we pass on,
// and the request's trace context (kept in OpenTelemetry's context, so spans and logs agree).
import { createHash, randomFillSync } from 'node:crypto';
import { context, createContextKey, ROOT_CONTEXT, type Context, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';

export interface TraceContext {
  /** The id users see in X-Trace-Id and look traces up by: the client's own form when it sent one. */
  traceId: string;
  /** The W3C trace id that spans and `traceparent` carry; equal to traceId unless the client chose another form. */
  w3cTraceId: string;
  /** This process's span for the current request. */
  spanId: string;
  /** The caller's span, when a traceparent named it. */
  parentSpanId?: string;
  /**
   * Whether this trace is sampled (exported): the caller's traceparent flag until this process's
   * sampler decides; unknown (taken as sampled) when neither did. Carried on in traceparent.
   */
  sampled?: boolean;
  /** This process's span for the request, when it records one. */
  span?: Span;
}

const TRACE_KEY = createContextKey('msvc.trace');

const CLIENT_TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const W3C_TRACE_ID = /^[0-9a-f]{32}$/;
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
// W3C trace-context: version-traceid-parentid-flags; all-zero ids and version ff are invalid.
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);

// Ids come from a pool of random bytes refilled in bulk: one crypto call per 512 trace ids instead
// of one per id (a quarter of a small request's crypto cost was the call, not the bytes). The bytes
// are still the CSPRNG's, so ids stay unguessable; each byte is used once.
const POOL_BYTES = 8192;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let poolOffset = POOL_BYTES;

function randomHex(bytes: number): string {
  if (poolOffset + bytes > POOL_BYTES) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const hex = pool.toString('hex', poolOffset, poolOffset + bytes);
  poolOffset += bytes;
  // All zeros is the one invalid W3C id; 2^-64 at worst, but a fresh draw costs nothing.
  return hex === ZERO_TRACE || hex === ZERO_SPAN ? randomHex(bytes) : hex;
}

export const newTraceId = (): string => randomHex(16);
export const newSpanId = (): string => randomHex(8);

export function isValidClientTraceId(value: unknown): value is string {
  return typeof value === 'string' && CLIENT_TRACE_ID.test(value);
}

/**
 * The W3C trace id for a user-facing one: 32 hex digits and UUIDs map straight (lower-cased,
 * dashes dropped); any other valid id maps through SHA-256, so every process and /traces/:id
 * agree on it without sharing a table.
 */
export function toW3cTraceId(id: string): string {
  const lower = id.toLowerCase();
  if (W3C_TRACE_ID.test(lower) && lower !== ZERO_TRACE) return lower;
  if (UUID.test(id)) {
    const hex = lower.replaceAll('-', '');
    if (hex !== ZERO_TRACE) return hex;
  }
  return createHash('sha256').update(id).digest('hex').slice(0, 32);
}

function parseTraceparent(value: unknown): { traceId: string; parentSpanId: string; sampled: boolean } | undefined {
  if (typeof value !== 'string') return undefined;
  const m = TRACEPARENT.exec(value.trim());
  if (!m || m[1] === 'ff' || m[2] === ZERO_TRACE || m[3] === ZERO_SPAN) return undefined;
  // The low bit of the flags is "sampled"; the other bits are reserved.
  return { traceId: m[2], parentSpanId: m[3], sampled: (parseInt(m[4], 16) & 1) === 1 };
}

/**
 * The trace context for an incoming request: a valid `X-Trace-Id` wins (users pick it to find
 * their request later), then a valid `traceparent`, else a fresh id. A traceparent of the same
 * trace names the parent span. Invalid values are dropped, never reflected.
 */
export function traceFromHeaders(headers: Record<string, string | string[] | undefined>, makeSpanId = true): TraceContext {
  // A server span replaces the span id with its own: callers that start one skip making it twice.
  const spanId = makeSpanId ? newSpanId() : '';
  const fromParent = headers['traceparent'] === undefined ? undefined : parseTraceparent(headers['traceparent']);
  const clientId = headers['x-trace-id'];
  if (isValidClientTraceId(clientId)) {
    const w3cTraceId = toW3cTraceId(clientId);
    if (fromParent?.traceId !== w3cTraceId) return { traceId: clientId, w3cTraceId, spanId };
    return { traceId: clientId, w3cTraceId, spanId, parentSpanId: fromParent.parentSpanId, sampled: fromParent.sampled };
  }
  if (fromParent) return { traceId: fromParent.traceId, w3cTraceId: fromParent.traceId, spanId, parentSpanId: fromParent.parentSpanId, sampled: fromParent.sampled };
  const id = newTraceId();
  return { traceId: id, w3cTraceId: id, spanId };
}

let contextManagerReady = false;

/** OpenTelemetry's context needs a manager registered once per process; the API's default drops context. */
export function ensureContextManager(): void {
  if (contextManagerReady) return;
  contextManagerReady = context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
}

/**
 * Runs `fn` inside the trace: currentTrace() (with the request's span, when there is one) and logs
 * see it. One context value per request: the span rides on the trace context rather than in a
 * context entry of its own, as each entry copies the context's map.
 */
export function runWithTrace<T>(ctx: TraceContext, fn: () => T, base: Context = context.active()): T {
  ensureContextManager();
  return context.with(base.setValue(TRACE_KEY, ctx), fn);
}

/**
 * `fn`, to be run outside any request's trace: for a timer that outlives the request that armed
 * it (a circuit's half-open, an instance's probe, a fault switch's expiry), whose log lines would
 * otherwise carry that unrelated request's trace id.
 */
export function untraced<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  return (...args) => context.with(ROOT_CONTEXT, () => fn(...args));
}

export function currentTrace(): TraceContext | undefined {
  return context.active().getValue(TRACE_KEY) as TraceContext | undefined;
}

/**
 * Headers that carry the current trace to another of our processes: our X-Trace-Id (the user's
 * form of the id) and the W3C traceparent naming `parentSpanId` (the caller's client span, or
 * else the request's span).
 */
export function outgoingTraceHeaders(ctx: TraceContext | undefined = currentTrace(), parentSpanId?: string): Record<string, string> {
  if (!ctx) return {};
  return { 'x-trace-id': ctx.traceId, traceparent: `00-${ctx.w3cTraceId}-${parentSpanId ?? ctx.spanId}-${ctx.sampled === false ? '00' : '01'}` };
}

/** Re-enters the current context in a callback that a library may call from another one. */
export function bindToTrace<F extends (...args: never[]) => unknown>(fn: F): F {
  ensureContextManager();
  return context.bind(context.active(), fn);
}
