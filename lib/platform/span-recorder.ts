// Spans: each process records its spans into a bounded ring that /spans and /traces read, and,
// when an endpoint is configured, hands the sampled ones to OpenTelemetry's BatchSpanProcessor
// and OTLP/HTTP exporter on a timer. A request pays for two small objects per span and a slot
// write; formatting and export happen off its path.
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type AttributeValue, type Link, type Span, type SpanContext, type SpanStatus } from '@opentelemetry/api';
import { ExportResultCode, millisToHrTime, type ExportResult } from '@opentelemetry/core';
import { defaultResource, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  SamplingDecision,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  type Sampler,
} from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import type { SAMPLERS } from './config.js';
import type { Logger } from './logger.js';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import { currentTrace, ensureContextManager, newSpanId, outgoingTraceHeaders, runWithTrace, type TraceContext } from './trace-context.js';

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

export type SamplerName = (typeof SAMPLERS)[number];

/** OpenTelemetry's SDK samplers for a name and ratio (the ratio is read by the *traceidratio ones only). */
export function createSampler(name: SamplerName, ratio = 1): Sampler {
  const root = name.endsWith('always_off') ? new AlwaysOffSampler() : name.endsWith('traceidratio') ? new TraceIdRatioBasedSampler(ratio) : new AlwaysOnSampler();
  return name.startsWith('parentbased_') ? new ParentBasedSampler({ root }) : root;
}

const KINDS: Record<number, SpanRecord['kind']> = { [SpanKind.SERVER]: 'server', [SpanKind.CLIENT]: 'client' };
const NO_LINKS: Link[] = [];
// Where the process's clock started, to turn performance.now() readings into epoch times when read.
const TIME_ORIGIN = performance.timeOrigin;

// An unsampled request's local root decides at its end whether its spans are kept for /traces.
const UNDECIDED = 0;
const KEPT = 1;
const DROPPED = 2;
// Finished child spans one unsampled request may hold while its root is still open.
const MAX_PENDING = 64;

/**
 * A span of this process. It implements OpenTelemetry's Span interface, so code that sets
 * attributes or a status works as with the SDK's spans, but it does only what recording needs:
 * no per-span sampler call for children, no attribute validation copy, no processor fan-out.
 * Once ended it is itself the record that the ring holds.
 */
class RecordedSpan implements Span {
  /** performance.now() at the start; the end is start + durationMs. */
  readonly start = performance.now();
  durationMs = -1;
  error = false;
  statusMessage: string | undefined = undefined;
  /** Local root only: KEPT, DROPPED or UNDECIDED for an unsampled request. */
  decision = UNDECIDED;
  /** Local root of an unsampled request only: its children that ended before it. */
  pending: RecordedSpan[] | undefined = undefined;

  constructor(
    readonly recorder: SpanRecorder,
    readonly traceId: string,
    readonly spanId: string,
    readonly parentSpanId: string | undefined,
    public name: string,
    readonly kind: SpanKind,
    /** Owned by the span from here on: callers hand over a fresh object. */
    readonly attributes: Attributes,
    readonly sampled: boolean,
    /** The request's server span, for a span under it. */
    readonly root: RecordedSpan | undefined,
  ) {}

  spanContext(): SpanContext {
    return { traceId: this.traceId, spanId: this.spanId, traceFlags: this.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE };
  }
  setAttribute(key: string, value?: AttributeValue): this {
    if (this.durationMs < 0 && value !== undefined) this.attributes[key] = value;
    return this;
  }
  setAttributes(attributes: Attributes): this {
    for (const key of Object.keys(attributes)) this.setAttribute(key, attributes[key]);
    return this;
  }
  // Events and links are not recorded: nothing here makes them, and /traces has no place for them.
  addEvent(): this {
    return this;
  }
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(status: SpanStatus): this {
    if (this.durationMs < 0 && status.code === SpanStatusCode.ERROR) {
      this.error = true;
      this.statusMessage = status.message;
    }
    return this;
  }
  updateName(name: string): this {
    if (this.durationMs < 0) this.name = name;
    return this;
  }
  end(): void {
    if (this.durationMs >= 0) return;
    this.durationMs = performance.now() - this.start;
    this.recorder.finish(this);
  }
  isRecording(): boolean {
    return this.durationMs < 0;
  }
  recordException(): void {}

  get startMs(): number {
    return TIME_ORIGIN + this.start;
  }

  toRecord(service: string): SpanRecord {
    const attributes: SpanRecord['attributes'] = {};
    for (const [k, v] of Object.entries(this.attributes)) {
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') attributes[k] = v;
    }
    const alias = attributes[ALIAS_ATTRIBUTE];
    const startMs = this.startMs;
    return {
      traceId: this.traceId,
      spanId: this.spanId,
      parentSpanId: this.parentSpanId ?? null,
      name: this.name,
      service,
      kind: KINDS[this.kind] ?? 'internal',
      startTime: new Date(startMs).toISOString(),
      startMs,
      durationMs: Math.round(this.durationMs * 1000) / 1000,
      status: this.error ? 'error' : 'ok',
      attributes,
      ...(typeof alias === 'string' ? { alias } : {}),
    };
  }

  /** The SDK's view of the span, made only for export. */
  toReadable(resource: Resource): ReadableSpan {
    const startMs = this.startMs;
    const context = this.spanContext();
    return {
      name: this.name,
      kind: this.kind,
      spanContext: () => context,
      // A server span's parent came from another process's traceparent; a client span's is ours.
      parentSpanContext: this.parentSpanId === undefined ? undefined : { traceId: this.traceId, spanId: this.parentSpanId, traceFlags: context.traceFlags, isRemote: this.kind === SpanKind.SERVER },
      startTime: millisToHrTime(startMs),
      endTime: millisToHrTime(startMs + this.durationMs),
      duration: millisToHrTime(this.durationMs),
      status: this.error ? { code: SpanStatusCode.ERROR, message: this.statusMessage } : { code: SpanStatusCode.UNSET },
      attributes: this.attributes,
      links: NO_LINKS,
      events: [],
      ended: true,
      resource,
      instrumentationScope: { name: 'msvc' },
      droppedAttributesCount: 0,
      droppedEventsCount: 0,
      droppedLinksCount: 0,
    };
  }
}

/**
 * Finished spans, newest last: a ring of `maxSpans` slots (a new span takes the oldest one's
 * slot), of which reads serve none older than `maxAgeMs`.
 */
class SpanBuffer {
  private readonly slots: Array<RecordedSpan | undefined>;
  /** Spans written since the start; the next one goes to slot written % maxSpans. */
  written = 0;

  constructor(
    readonly service: string,
    readonly maxSpans: number,
    readonly maxAgeMs: number,
  ) {
    this.slots = new Array<RecordedSpan | undefined>(maxSpans).fill(undefined);
  }

  /** Spans held (at most maxSpans; those past their age go at the next read). */
  get size(): number {
    return Math.min(this.written, this.maxSpans);
  }

  push(span: RecordedSpan): void {
    this.slots[this.written % this.maxSpans] = span;
    this.written++;
  }

  /** The span written as number `seq`, while its slot still holds it. */
  at(seq: number): RecordedSpan | undefined {
    return seq >= this.written - this.maxSpans && seq < this.written ? this.slots[seq % this.maxSpans] : undefined;
  }

  /** Spans of one trace, or the newest `limit` spans, oldest first. */
  query({ traceId, limit = this.maxSpans }: { traceId?: string; limit?: number }): SpanRecord[] {
    const oldest = performance.now() - this.maxAgeMs;
    const out: SpanRecord[] = [];
    for (let seq = this.written - 1; seq >= this.written - this.size && out.length < limit; seq--) {
      const i = seq % this.maxSpans;
      const span = this.slots[i];
      if (span === undefined) break;
      // Spans are written as they end: the first one too old ends the search, and it and every
      // older one are let go.
      if (span.start + span.durationMs < oldest) {
        for (let s = seq; s >= this.written - this.size && this.slots[s % this.maxSpans] !== undefined; s--) this.slots[s % this.maxSpans] = undefined;
        break;
      }
      if (traceId === undefined || span.traceId === traceId) out.push(span.toRecord(this.service));
    }
    return out.reverse();
  }
}

/**
 * Spans handed to the processor per turn of the event loop, and so the size of each batch it
 * exports: a whole second's spans at once (some 1,000 at 500 proxied GETs a second) made one
 * synchronous burst of conversion and serialization that requests arriving meanwhile waited for.
 */
export const EXPORT_SLICE = 128;
/** Batches sent at once when the drain hands the rest over at shutdown (the exporter takes up to 30). */
const EXPORT_CONCURRENCY = 8;

/** Hands the ring's sampled spans to a BatchSpanProcessor, a timer's worth at a time, in slices. */
class ExportDrain {
  private exported = 0;
  private timer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private readonly resource: Resource;

  constructor(
    private readonly buffer: SpanBuffer,
    private readonly processor: BatchSpanProcessor,
    private readonly delayMs: number,
    service: string,
    /** Whether the collector failed the last export. */
    private readonly collectorFailing: () => boolean,
  ) {
    this.resource = defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: service }));
  }

  /** Called for each sampled span written: arms the timer unless it is armed or a drain is under way. */
  wake(): void {
    if (this.timer !== undefined || this.immediate !== undefined) return;
    this.timer = setTimeout(() => this.drainSlice(this.buffer.written), this.delayMs);
    this.timer.unref();
  }

  /**
   * Hands on up to EXPORT_SLICE sampled spans of those written before `until`, and leaves the rest
   * to the next turn of the event loop (after the I/O that waits). Spans written during the drain
   * wait their own delay.
   */
  private drainSlice(until: number): void {
    this.timer = undefined;
    this.immediate = undefined;
    this.take(EXPORT_SLICE, until);
    if (this.exported < until) {
      this.immediate = setImmediate(() => this.drainSlice(until));
      this.immediate.unref();
    } else if (this.exported < this.buffer.written) {
      this.wake();
    }
  }

  /** Hands on at most `count` sampled spans of those written before `until`. */
  private take(count: number, until: number): void {
    // Spans the ring overwrote before the timer came are lost to export (still counted nowhere
    // else): at that rate the processor's own queue would drop them too.
    let seq = Math.max(this.exported, this.buffer.written - this.buffer.maxSpans);
    for (let taken = 0; seq < until && taken < count; seq++) {
      const span = this.buffer.at(seq);
      if (span?.sampled) {
        this.processor.onEnd(span.toReadable(this.resource));
        taken++;
      }
    }
    this.exported = Math.max(this.exported, seq);
  }

  async shutdown(): Promise<void> {
    clearTimeout(this.timer);
    clearImmediate(this.immediate);
    this.timer = undefined;
    this.immediate = undefined;
    // The processor's flush sends all its batches at once, and the exporter refuses more than
    // EXPORT_CONCURRENCY at a time: what is left goes to it that many batches at a time.
    // A collector that failed its last export is not waited for: stopping would sit out the
    // exporter's retries of every batch. That failure was logged when it happened (watchExports),
    // as is one during these last batches: the spans left are lost with the process.
    const until = this.buffer.written;
    try {
      while (this.exported < until && !this.collectorFailing()) {
        this.take(EXPORT_SLICE * EXPORT_CONCURRENCY, until);
        await this.processor.forceFlush();
      }
    } catch {
      // Logged by watchExports.
    }
    try {
      await this.processor.shutdown();
    } catch {
      // Logged by watchExports; the spans the processor still held are lost with the process.
    }
  }
}

export interface TracingOptions {
  service: string;
  /** Base URL of an OTLP/HTTP collector; sampled spans go to `<endpoint>/v1/traces` in batches. */
  otlpEndpoint?: string;
  maxSpans?: number;
  maxAgeMs?: number;
  /** How long finished spans wait to be handed to the exporter (OTEL_BSP_SCHEDULE_DELAY); default 1 s. */
  exportDelayMs?: number;
  /** Which requests are sampled, i.e. exported (OTEL_TRACES_SAMPLER and _ARG); default parentbased_always_on. */
  sampler?: Sampler;
  /**
   * An unsampled request is still kept for /traces when it fails (5xx, refused, aborted) or its
   * server span lasts at least this long (TRACE_SLOW_MS); default 500 ms.
   */
  slowMs?: number;
  /** Says where spans are exported, and warns once when an export fails (again after one succeeds). */
  logger?: Logger;
}

export interface Tracing {
  service: string;
  buffer: SpanBuffer;
  /** Starts the server span of a request and runs `fn` inside it. */
  runServerSpan<T>(ctx: TraceContext, name: string, attributes: Attributes, fn: (span: Span) => T): T;
  /** Hands what is left to the exporter and stops it, if any. */
  shutdown(): Promise<void>;
}

class SpanRecorder implements Tracing {
  readonly buffer: SpanBuffer;
  private readonly drain: ExportDrain | undefined;

  constructor(
    readonly service: string,
    private readonly sampler: Sampler,
    private readonly slowMs: number,
    maxSpans: number,
    maxAgeMs: number,
    drain?: (buffer: SpanBuffer) => ExportDrain,
  ) {
    this.buffer = new SpanBuffer(service, maxSpans, maxAgeMs);
    this.drain = drain?.(this.buffer);
  }

  runServerSpan<T>(ctx: TraceContext, name: string, attributes: Attributes, fn: (span: Span) => T): T {
    const sampled = this.sample(ctx, name, attributes);
    const span = new RecordedSpan(this, ctx.w3cTraceId, newSpanId(), ctx.parentSpanId, name, SpanKind.SERVER, attributes, sampled, undefined);
    ctx.spanId = span.spanId;
    ctx.sampled = sampled;
    ctx.span = span;
    return runWithTrace(ctx, () => fn(span));
  }

  /** The head decision, by OpenTelemetry's sampler: the caller's traceparent is the parent it reads. */
  private sample(ctx: TraceContext, name: string, attributes: Attributes): boolean {
    const parent = ctx.parentSpanId === undefined
      ? ROOT_CONTEXT
      : trace.setSpanContext(ROOT_CONTEXT, { traceId: ctx.w3cTraceId, spanId: ctx.parentSpanId, traceFlags: ctx.sampled === false ? TraceFlags.NONE : TraceFlags.SAMPLED, isRemote: true });
    return this.sampler.shouldSample(parent, ctx.w3cTraceId, name, SpanKind.SERVER, attributes, NO_LINKS).decision === SamplingDecision.RECORD_AND_SAMPLED;
  }

  startChild(root: RecordedSpan, name: string, kind: SpanKind, attributes: Attributes): RecordedSpan {
    // A child shares its request's decision: with a parent-based sampler that is the rule, and a
    // ratio sampler would decide the same on the same trace id.
    return new RecordedSpan(this, root.traceId, newSpanId(), root.spanId, name, kind, attributes, root.sampled, root);
  }

  /** A span ended: into the ring, or held until its unsampled request's root decides. */
  finish(span: RecordedSpan): void {
    if (span.sampled) return this.write(span);
    const root = span.root;
    if (root === undefined) {
      const keep = span.error || span.durationMs >= this.slowMs || span.pending?.some((s) => s.error) === true;
      span.decision = keep ? KEPT : DROPPED;
      if (keep && span.pending) for (const s of span.pending) this.write(s);
      span.pending = undefined;
      if (keep) this.write(span);
    } else if (root.decision === KEPT) {
      this.write(span);
    } else if (root.decision === UNDECIDED) {
      root.pending ??= [];
      if (root.pending.length < MAX_PENDING) root.pending.push(span);
      else if (span.error) root.pending[MAX_PENDING - 1] = span;
    }
  }

  private write(span: RecordedSpan): void {
    this.buffer.push(span);
    if (span.sampled) this.drain?.wake();
  }

  shutdown(): Promise<void> {
    return this.drain?.shutdown() ?? Promise.resolve();
  }
}

export function createTracing({
  service, otlpEndpoint, maxSpans = 10_000, maxAgeMs = 15 * 60_000, exportDelayMs = 1000, sampler = createSampler('parentbased_always_on'), slowMs = 500, logger,
}: TracingOptions): Tracing {
  ensureContextManager();
  let drain: ((buffer: SpanBuffer) => ExportDrain) | undefined;
  if (otlpEndpoint) {
    const url = `${otlpEndpoint.replace(/\/+$/, '')}/v1/traces`;
    const exporter = new OTLPTraceExporter({ url });
    const collectorFailing = watchExports(exporter, url, logger?.child({ component: 'tracing' }));
    // The drain has already waited the delay: the processor sends what it gets at once, a slice
    // to a batch, and holds at most 4096 spans while a collector is slow.
    const processor = new BatchSpanProcessor(exporter, { maxQueueSize: 4096, maxExportBatchSize: EXPORT_SLICE, scheduledDelayMillis: 0 });
    drain = (buffer) => new ExportDrain(buffer, processor, exportDelayMs, service, collectorFailing);
  }
  return new SpanRecorder(service, sampler, slowMs, maxSpans, maxAgeMs, drain);
}

/**
 * Says once where spans go, and warns on the first failed export rather than on every batch (a
 * collector that is down fails once a second); after a success a new failure warns again.
 * Returns whether the last export failed.
 */
function watchExports(exporter: OTLPTraceExporter, url: string, log: Logger | undefined): () => boolean {
  log?.info({ url }, 'exporting spans over OTLP/HTTP');
  let failing = false;
  const send = exporter.export.bind(exporter);
  exporter.export = (spans, done) =>
    send(spans, (result: ExportResult) => {
      if (result.code === ExportResultCode.SUCCESS) {
        if (failing) log?.info({ url }, 'span export works again');
        failing = false;
      } else if (!failing) {
        failing = true;
        log?.warn({ url, reason: result.error?.message }, 'span export failed; spans are still kept for /traces, and export is retried with each batch');
      }
      done(result);
    });
  return () => failing;
}

/** The tracing variables of a process's config. */
export interface TracingConfig {
  OTEL_SDK_DISABLED: boolean;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string;
  OTEL_BSP_SCHEDULE_DELAY: number;
  OTEL_TRACES_SAMPLER: SamplerName;
  OTEL_TRACES_SAMPLER_ARG: number;
  TRACE_SLOW_MS: number;
  TRACE_BUFFER_SPANS: number;
  TRACE_BUFFER_MAX_AGE_MS: number;
}

/** The process's tracing as its config says: none when OTEL_SDK_DISABLED is true. */
export function createTracingFromConfig(service: string, config: TracingConfig, logger?: Logger): Tracing | null {
  if (config.OTEL_SDK_DISABLED) return null;
  return createTracing({
    service,
    otlpEndpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT,
    exportDelayMs: config.OTEL_BSP_SCHEDULE_DELAY,
    sampler: createSampler(config.OTEL_TRACES_SAMPLER, config.OTEL_TRACES_SAMPLER_ARG),
    slowMs: config.TRACE_SLOW_MS,
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
 * The called service's name on a client span. Still in OpenTelemetry's incubating set, whose entry
 * point may change in any release: copied here, as its docs advise.
 */
export const ATTR_PEER_SERVICE = 'peer.service';

class OutgoingCall implements ClientSpan {
  constructor(
    readonly headers: Record<string, string>,
    private readonly span: RecordedSpan,
  ) {}

  end({ status, error }: { status?: number; error?: string }): void {
    const span = this.span;
    if (span.durationMs >= 0) return;
    if (status !== undefined) span.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE] = status;
    if (error !== undefined || (status !== undefined && status >= 500)) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: error ?? `HTTP ${status}` });
      if (error) span.attributes[ATTR_ERROR_TYPE] = error;
    }
    span.end();
  }
}

const UNTRACED_CALL = { end: () => {} };

/**
 * A client span for an outgoing call from inside a traced request; `attributes` becomes the
 * span's own. Outside one (start-up, health probes, a process without tracing) there is nothing
 * to attach it to, and the call only carries the trace headers.
 */
export function startClientSpan(name: string, attributes: Attributes): ClientSpan {
  const ctx = currentTrace();
  const root = ctx?.span;
  if (!(root instanceof RecordedSpan)) return { headers: outgoingTraceHeaders(ctx), ...UNTRACED_CALL };
  const span = root.recorder.startChild(root, name, SpanKind.CLIENT, attributes);
  return new OutgoingCall(outgoingTraceHeaders(ctx, span.spanId), span);
}
