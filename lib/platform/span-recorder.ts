// Spans: one OpenTelemetry tracer provider per app, a bounded buffer of finished spans that
// /spans and /traces read, and OTLP/HTTP export when an endpoint is configured.
import { context, createContextKey, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Context, type Span, type SpanContext, type Tracer } from '@opentelemetry/api';
import { ExportResultCode, hrTimeToMilliseconds, type ExportResult } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  type IdGenerator,
  type ReadableSpan,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import type { Logger } from './logger.js';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import { currentTrace, ensureContextManager, newSpanId, newTraceId, outgoingTraceHeaders, runWithTrace, type TraceContext } from './trace-context.js';

/** A finished span as /spans and /traces serve it. */
export interface SpanRecord {
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  service: string;
  kind: 'server' | 'client' | 'internal';
  startTime: string;
  /** Milliseconds since the epoch, for sorting and merging. */
  startMs: number;
  durationMs: number;
  status: 'ok' | 'error';
  attributes: Record<string, string | number | boolean>;
  /** The client's own form of the trace id, when it chose one. */
  alias?: string;
}

export const ALIAS_ATTRIBUTE = 'trace.alias';

// What a dropped slot holds until the next compaction, so the span itself can be collected now.
const DROPPED: SpanRecord = {
  traceId: '', spanId: '', parentSpanId: null, name: '', service: '', kind: 'internal', startTime: '', startMs: 0, durationMs: 0, status: 'ok', attributes: {},
};

/**
 * A finished span as the buffer keeps it: the few fields /spans needs, taken from the SDK's span
 * when it ends, so that the span object itself dies young instead of being kept (with its
 * context, times, events and links) by the thousand in the old generation. The conversion to a
 * SpanRecord (attribute copy, ISO date) is paid when /spans or /traces read it.
 */
class FinishedSpan {
  constructor(
    readonly traceId: string,
    readonly spanId: string,
    readonly parentSpanId: string | null,
    readonly name: string,
    readonly kind: SpanRecord['kind'],
    readonly startMs: number,
    readonly durationMs: number,
    readonly error: boolean,
    /** The SDK span's own attribute object: nothing writes to it once the span has ended. */
    readonly attributes: Attributes,
    readonly service: string,
  ) {}

  static of(span: ReadableSpan, service: string): FinishedSpan {
    const ctx = span.spanContext();
    return new FinishedSpan(
      ctx.traceId,
      ctx.spanId,
      span.parentSpanContext?.spanId ?? null,
      span.name,
      KINDS[span.kind] ?? 'internal',
      hrTimeToMilliseconds(span.startTime),
      Math.round(hrTimeToMilliseconds(span.duration) * 1000) / 1000,
      span.status.code === SpanStatusCode.ERROR,
      span.attributes,
      service,
    );
  }

  toRecord(): SpanRecord {
    const attributes: SpanRecord['attributes'] = {};
    for (const [k, v] of Object.entries(this.attributes)) {
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') attributes[k] = v;
    }
    const alias = attributes[ALIAS_ATTRIBUTE];
    return {
      traceId: this.traceId,
      spanId: this.spanId,
      parentSpanId: this.parentSpanId,
      name: this.name,
      service: this.service,
      kind: this.kind,
      startTime: new Date(this.startMs).toISOString(),
      startMs: this.startMs,
      durationMs: this.durationMs,
      status: this.error ? 'error' : 'ok',
      attributes,
      ...(typeof alias === 'string' ? { alias } : {}),
    };
  }
}

/** Finished spans, newest last, bounded by count and by age. */
export class SpanBuffer {
  private readonly spans: Array<SpanRecord | FinishedSpan> = [];
  private head = 0;

  constructor(
    readonly maxSpans: number,
    readonly maxAgeMs: number,
  ) {}

  get size(): number {
    return this.spans.length - this.head;
  }

  /** A span from the SDK, converted to a SpanRecord only if it is read. */
  pushSpan(span: ReadableSpan, service: string): void {
    this.add(FinishedSpan.of(span, service));
  }

  /** Spans of one trace, or the newest `limit` spans. */
  query({ traceId, limit = this.maxSpans }: { traceId?: string; limit?: number }): SpanRecord[] {
    this.prune(Date.now());
    const out: SpanRecord[] = [];
    for (let i = this.spans.length - 1; i >= this.head && out.length < limit; i--) {
      let s = this.spans[i];
      if (traceId !== undefined && s.traceId !== traceId) continue;
      if (s instanceof FinishedSpan) this.spans[i] = s = s.toRecord();
      out.push(s);
    }
    return out.reverse();
  }

  private add(entry: SpanRecord | FinishedSpan): void {
    this.spans.push(entry);
    this.prune(Date.now());
  }

  private prune(now: number): void {
    const oldest = now - this.maxAgeMs;
    while (this.size > this.maxSpans || (this.size > 0 && this.spans[this.head].startMs < oldest)) this.spans[this.head++] = DROPPED;
    // Compact now and then, so dropping the head stays O(1) on average.
    if (this.head > 1024 && this.head * 2 > this.spans.length) {
      this.spans.splice(0, this.head);
      this.head = 0;
    }
  }
}

const KINDS: Record<number, SpanRecord['kind']> = { [SpanKind.SERVER]: 'server', [SpanKind.CLIENT]: 'client' };

class BufferProcessor implements SpanProcessor {
  constructor(
    private readonly buffer: SpanBuffer,
    private readonly service: string,
  ) {}
  onStart(): void {}
  onEnd(span: ReadableSpan): void {
    this.buffer.pushSpan(span, this.service);
  }
  forceFlush(): Promise<void> {
    return Promise.resolve();
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

// The SDK makes a root span's trace id with its IdGenerator. Our root spans must carry the id we
// chose from X-Trace-Id, so the server-span code hands it over here just before the synchronous
// startSpan call that consumes it.
let nextTraceId: string | undefined;
// Fresh ids come from trace-context.ts's pooled CSPRNG bytes, like the ids made without a span.
class ChosenTraceIdGenerator implements IdGenerator {
  generateTraceId(): string {
    const id = nextTraceId ?? newTraceId();
    nextTraceId = undefined;
    return id;
  }
  generateSpanId(): string {
    return newSpanId();
  }
}

export interface TracingOptions {
  service: string;
  /** Base URL of an OTLP/HTTP collector; spans go to `<endpoint>/v1/traces` in batches. */
  otlpEndpoint?: string;
  maxSpans?: number;
  maxAgeMs?: number;
  /** How long finished spans wait to be exported in a batch (OTEL_BSP_SCHEDULE_DELAY); default 1 s. */
  exportDelayMs?: number;
  /** Says where spans are exported, and warns once when an export fails (again after one succeeds). */
  logger?: Logger;
}

export interface Tracing {
  service: string;
  buffer: SpanBuffer;
  /** Starts the server span of a request and runs `fn` inside it. */
  runServerSpan<T>(ctx: TraceContext, name: string, attributes: Attributes, fn: (span: Span) => T): T;
  /** Flushes and stops the exporter, if any. */
  shutdown(): Promise<void>;
}

const TRACING_KEY = createContextKey('msvc.tracing');

interface TracingWithTracer extends Tracing {
  tracer: Tracer;
}

export function createTracing({ service, otlpEndpoint, maxSpans = 10_000, maxAgeMs = 15 * 60_000, exportDelayMs = 1000, logger }: TracingOptions): Tracing {
  ensureContextManager();
  const buffer = new SpanBuffer(maxSpans, maxAgeMs);
  const spanProcessors: SpanProcessor[] = [new BufferProcessor(buffer, service)];
  if (otlpEndpoint) {
    const url = `${otlpEndpoint.replace(/\/+$/, '')}/v1/traces`;
    const exporter = new OTLPTraceExporter({ url });
    if (logger) watchExports(exporter, url, logger.child({ component: 'tracing' }));
    spanProcessors.push(new BatchSpanProcessor(exporter, { maxQueueSize: 4096, scheduledDelayMillis: exportDelayMs }));
  }
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: service }),
    idGenerator: new ChosenTraceIdGenerator(),
    spanProcessors,
  });
  const tracer = provider.getTracer('msvc');
  // Requests arrive outside any context: the one with this tracing in it is made once.
  let rootWithTracing: Context | undefined;
  const tracing: TracingWithTracer = {
    service,
    buffer,
    tracer,
    runServerSpan(ctx, name, attributes, fn) {
      const active = context.active();
      let parent = active === ROOT_CONTEXT ? (rootWithTracing ??= ROOT_CONTEXT.setValue(TRACING_KEY, tracing)) : active.setValue(TRACING_KEY, tracing);
      if (ctx.parentSpanId) {
        const remote: SpanContext = { traceId: ctx.w3cTraceId, spanId: ctx.parentSpanId, traceFlags: TraceFlags.SAMPLED, isRemote: true };
        parent = trace.setSpanContext(parent, remote);
      } else {
        nextTraceId = ctx.w3cTraceId;
      }
      const span = tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
      nextTraceId = undefined;
      ctx.spanId = span.spanContext().spanId;
      // One context switch for the trace, the span and this tracing, not one each.
      return runWithTrace(ctx, () => fn(span), span, parent);
    },
    shutdown: () => provider.shutdown(),
  };
  return tracing;
}

/**
 * Says once where spans go, and warns on the first failed export rather than on every batch (a
 * collector that is down fails once a second); after a success a new failure warns again.
 */
function watchExports(exporter: OTLPTraceExporter, url: string, log: Logger): void {
  log.info({ url }, 'exporting spans over OTLP/HTTP');
  let failing = false;
  const send = exporter.export.bind(exporter);
  exporter.export = (spans, done) =>
    send(spans, (result: ExportResult) => {
      if (result.code === ExportResultCode.SUCCESS) {
        if (failing) log.info({ url }, 'span export works again');
        failing = false;
      } else if (!failing) {
        failing = true;
        log.warn({ url, reason: result.error?.message }, 'span export failed; spans are still kept for /traces, and export is retried with each batch');
      }
      done(result);
    });
}

/** The process's tracing as its config says: none when OTEL_SDK_DISABLED is true. */
export function createTracingFromConfig(
  service: string,
  config: { OTEL_SDK_DISABLED: boolean; OTEL_EXPORTER_OTLP_ENDPOINT?: string; OTEL_BSP_SCHEDULE_DELAY: number; TRACE_BUFFER_SPANS: number; TRACE_BUFFER_MAX_AGE_MS: number },
  logger?: Logger,
): Tracing | null {
  if (config.OTEL_SDK_DISABLED) return null;
  return createTracing({
    service,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
    exportDelayMs: config.OTEL_BSP_SCHEDULE_DELAY,
    maxSpans: config.TRACE_BUFFER_SPANS,
    maxAgeMs: config.TRACE_BUFFER_MAX_AGE_MS,
    logger,
  });
}

export interface ClientSpan {
  /** Headers for the outgoing call: trace id and a traceparent naming this span. */
  headers: Record<string, string>;
  /** Ends the span: a status >= 500 or an error marks it failed. */
  end(result: { status?: number; error?: string }): void;
}

/**
 * A client span for an outgoing call from inside a traced request. Outside one (start-up, health
 * probes) there is nothing to attach it to, and the call only carries the trace headers.
 */
/**
 * The called service's name on a client span. Still in OpenTelemetry's incubating set, whose entry
 * point may change in any release: copied here, as its docs advise.
 */
export const ATTR_PEER_SERVICE = 'peer.service';

export function startClientSpan(name: string, attributes: Attributes): ClientSpan {
  const tracing = context.active().getValue(TRACING_KEY) as TracingWithTracer | undefined;
  const ctx = currentTrace();
  if (!tracing || !ctx) return { headers: outgoingTraceHeaders(ctx), end: () => {} };
  const span = tracing.tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes }, context.active());
  const headers = outgoingTraceHeaders(ctx, span.spanContext().spanId);
  let ended = false;
  return {
    headers,
    end({ status, error }) {
      if (ended) return;
      ended = true;
      if (status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      if (error !== undefined || (status !== undefined && status >= 500)) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: error ?? `HTTP ${status}` });
        if (error) span.setAttribute(ATTR_ERROR_TYPE, error);
      }
      span.end();
    },
  };
}
