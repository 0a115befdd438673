// Forwards /api/<service>[/...] to the service as /<service>[/...]: bodies streamed both ways (a
// GET's small answer is sent whole, with its head), every call through the service's breaker,
// failed GETs answered from the stale cache.
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { HttpError, sendError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import { hasBody, onResponseClose } from '../platform/http.js';
import { DEPENDENCY_HEADER, UpstreamUnavailableError } from '../platform/service-client.js';
import { classifyUpstreamError, type UpstreamFailure } from '../platform/upstream-errors.js';
import { ATTR_HTTP_REQUEST_METHOD } from '@opentelemetry/semantic-conventions';
import { ATTR_PEER_SERVICE, startClientSpan, type ClientSpan } from '../platform/span-recorder.js';
import { CircuitOpenError, ClientGoneError, type BreakerCall } from './breakers.js';
import { identityOf } from './auth.js';
import { connectionNamed, isUpstreamOnly, upstreamRequestHeaders, type ClientAddressHeaders } from './forward-headers.js';
import type { GatewayMetrics } from './metrics.js';
import type { UpstreamTry } from './retry.js';
import { mayRetry } from '../platform/retry.js';
import { ROUTES } from './route-table.js';
import { staleCacheKey, type StaleCache } from './stale-cache.js';
import type { GatewayInstance, Upstream } from './upstreams.js';

export interface ServiceProxyOptions {
  upstream: Upstream;
  cache: StaleCache;
  metrics: GatewayMetrics;
  logger: Logger;
  /** Whether `trust proxy` is set, so that req.ips names proxies we believe. */
  trustsProxies: boolean;
  /** The signed X-Client-Address headers for the client's address (the user service counts logins by it); absent: none sent. */
  clientAddress?: ClientAddressHeaders;
  /** How fast a request body must arrive (CLIENT_BODY_TIMEOUT_MS, CLIENT_BODY_TOTAL_MS). */
  bodyLimits: BodyLimits;
}

interface BodyLimits {
  /** Longest wait between two reads of the body. */
  idleMs: number;
  /** Longest time for the whole body, from the request's start. */
  totalMs: number;
}

/** Upstream statuses a cached answer may stand in for, as for our own 502/503/504. */
const STALE_STATUSES = new Set([502, 503, 504]);
/** Response headers naming a URL the client may follow, rewritten from the service's paths to the gateway's. */
const LOCATION_HEADERS = new Set(['location', 'content-location']);

/**
 * Where an exchange stands. The call's outcome is decided once, by `finish`, on the way out of
 * `pending` or `streaming`, by whichever of Node's events comes first (the answer's end, the
 * client's close, the breaker's timeout, an error); events after that find it decided.
 *
 *   pending    nothing answered yet: the call is going out (or its retry is)
 *   streaming  the service's answer is on its way to the client; decided when its body ends
 *   failed     decided, nothing sent yet: the handler answers (an error or a stale copy)
 *   answered   decided, and an answer sent or on its way
 *   gone       the client left: nothing more is sent
 */
export type ExchangeState = 'pending' | 'streaming' | 'failed' | 'answered' | 'gone';

/**
 * How the call ended, for its instance, its breaker and its span: answered (`dependency`: with a
 * 5xx blaming the service's dependency, no outcome for the service), a failure of the service, or
 * the client's doing (nothing learned about the service).
 */
export type Outcome = 'success' | 'dependency' | 'client_closed' | 'client_stalled' | UpstreamFailure;

/** Whether the call is sent again, and where: another instance, or the same one on a connection of its own. */
type Retry = 'none' | 'other' | 'fresh';

/** One client request on its way through the proxy (exported for its tests, which race its events). */
export class Exchange {
  state: ExchangeState = 'pending';
  retry: Retry = 'none';
  proxyReq?: ClientRequest;
  proxyRes?: IncomingMessage;
  /** The client span of the call to the service, once the breaker let it through. */
  span?: ClientSpan;
  /** The service's answer is read whole before anything of it is sent (onWholeEnd). */
  whole = false;
  /** The service's answer's body so far, when it is sent whole. */
  answer?: Buffer | Buffer[];
  /** The service's answer is a 5xx that blames its dependency (DEPENDENCY_HEADER). */
  dependencyFault = false;
  /** The breaker's call; its outcome is always reported by `finish`. */
  call?: BreakerCall;
  /** The instance the current attempt goes to. */
  instance?: GatewayInstance;
  /** The current attempt, while it is counted in its instance's outstanding requests. */
  try?: UpstreamTry;
  /** The request body read so far, kept while it may have to be sent again (undefined: not kept). */
  keptBody?: Buffer[];
  /** performance.now() when the call went out, for the time left on a retry. */
  startedAt = 0;
  /** The whole body, read before the call went out (readSmallBody). */
  body?: Buffer;
  /** performance.now() when the proxy took the request; the body's total time counts from here. */
  readonly arrivedAt = performance.now();
  /** performance.now() when the body had all arrived, if it was still arriving when the call went out. */
  bodyEndedAt?: number;
  /** Ends the body's timers (set while they run). */
  stopBodyTimers?: () => void;
  /** Settle the breaker's run: at the answer's headers, or with the error the handler answers. */
  resolve: () => void = noop;
  reject: (err: Error) => void = noop;

  constructor(
    readonly req: Request,
    readonly res: Response,
    readonly cacheKey: string | undefined,
    readonly upstream: Upstream,
  ) {}

  /**
   * The call's one outcome, reported to the attempt's instance, the breaker and the span together;
   * the first caller decides, later ones are ignored.
   */
  finish(outcome: Outcome): void {
    const state = this.state;
    if (state !== 'pending' && state !== 'streaming') return;
    this.state = outcome === 'client_closed' ? 'gone' : state === 'streaming' ? 'answered' : 'failed';
    // Decided: a body still arriving is timed no more (nor the exchange kept alive by its timers).
    this.stopBodyTimers?.();
    const answered = outcome === 'success' || outcome === 'dependency';
    const failure = answered || outcome === 'client_closed' || outcome === 'client_stalled' ? undefined : outcome;
    this.endAttempt(answered, failure);
    const call = this.call;
    if (call) {
      if (outcome === 'success') call.succeed();
      else if (failure) call.fail(failure);
      else call.neutral();
    }
    this.span?.end({ status: this.proxyRes?.statusCode, error: answered ? undefined : outcome });
  }

  /** The current attempt's outcome for its instance (its outlier state), once; a retry may follow. */
  endAttempt(answered: boolean, failure?: UpstreamFailure): void {
    const t = this.try;
    if (!t) return;
    this.try = undefined;
    const { instances, breaker, tries } = this.upstream;
    tries.ended(t);
    instances.end(t.instance, answered);
    // While the circuit tests the service, one failure takes the instance out again.
    if (failure) instances.fail(t.instance, failure, breaker.state !== 'CLOSED');
  }

  /**
   * Sends the call: `resolve` when the service's response headers arrive, `reject` when the call
   * fails (the breaker's run's ends).
   */
  start(cancellation: BreakerCall, forward: (ex: Exchange) => void, service: string, resolve: () => void, reject: (err: Error) => void): void {
    this.resolve = resolve;
    this.reject = reject;
    this.upstream.retries.deposit();
    // Gone while waiting for the limiter or the breaker: its 'close' has already been emitted.
    if (this.req.socket.destroyed) {
      this.state = 'gone';
      reject(new ClientGoneError());
      return;
    }
    this.call = cancellation;
    cancellation.defer();
    this.startedAt = performance.now();
    cancellation.onAbort(() => this.onTimeout());
    (this.res as Response & Carrier)[EXCHANGE] = this;
    onResponseClose(this.res, onClientClose);
    // One client span per call that really goes out (not for circuit-open answers): the
    // service's server span hangs under it through the traceparent it carries.
    this.span = startClientSpan(`${this.req.method} ${service}`, { [ATTR_PEER_SERVICE]: service, [ATTR_HTTP_REQUEST_METHOD]: this.req.method });
    forward(this);
  }

  /** The breaker gave up on the call (it rejected the run already): nothing more goes out for it. */
  onTimeout(): void {
    if (this.state !== 'pending') return;
    this.finish('timeout');
    this.proxyReq?.destroy();
  }

  onClientClose(): void {
    // Every byte was written: the answer's own end reports the outcome.
    if (this.res.writableFinished) return;
    this.finish('client_closed');
    this.state = 'gone';
    this.reject(new ClientGoneError());
    this.proxyReq?.destroy();
    this.proxyRes?.destroy();
  }
}

function noop(): void {}

// Node's objects of one exchange (the client's response, the call, the service's answer) point
// to it, so that their listeners are functions made once, not closures made per request.
const EXCHANGE = Symbol('gateway.exchange');
interface Carrier {
  [EXCHANGE]?: Exchange;
}

function onClientClose(this: Response): void {
  (this as Response & Carrier)[EXCHANGE]!.onClientClose();
}

/** Times the body as it arrives: `idleMs` between reads, `totalMs` in all; a body too slow ends the call. */
function watchBody(ex: Exchange, { idleMs, totalMs }: BodyLimits): void {
  const { req } = ex;
  if (req.complete || ex.stopBodyTimers) return;
  const tooSlow = (total: boolean) => {
    if (req.complete || ex.state !== 'pending') return;
    // Held back because the service does not read it: that wait is the service's (its timeout).
    if (!total && ex.proxyReq?.writableNeedDrain) return void idle.refresh();
    ex.stopBodyTimers!();
    req.unpipe();
    ex.finish('client_stalled');
    ex.reject(new ClientGoneError(true));
    // Half a request went out on it: the connection is destroyed, never pooled for another.
    ex.proxyReq?.destroy();
  };
  const idle = setTimeout(tooSlow, idleMs, false);
  const total = setTimeout(tooSlow, Math.max(1, totalMs - (performance.now() - ex.arrivedAt)), true);
  const onData = () => idle.refresh();
  const onEnd = () => {
    ex.bodyEndedAt = performance.now();
    ex.stopBodyTimers!();
  };
  ex.stopBodyTimers = () => {
    clearTimeout(idle);
    clearTimeout(total);
    req.off('data', onData);
    req.off('end', onEnd);
  };
  req.on('data', onData);
  req.once('end', onEnd);
}

/**
 * Reads a small body whole, under the same limits as watchBody, before the service is called (as
 * nginx's proxy_request_buffering does): a client that sends it slowly holds no connection to the
 * service meanwhile. Rejects with ClientGoneError, `stalled` when the body came too slowly.
 * No call is out yet: nothing is reported.
 */
function readSmallBody(ex: Exchange, { idleMs, totalMs }: BodyLimits): Promise<Buffer> {
  const { req } = ex;
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const done = (err?: Error) => {
      clearTimeout(idle);
      clearTimeout(total);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      if (err) reject(err);
      else resolve(Buffer.concat(chunks));
    };
    const tooSlow = () => {
      ex.state = 'failed';
      done(new ClientGoneError(true));
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      idle.refresh();
    };
    const onEnd = () => {
      ex.bodyEndedAt = performance.now();
      done();
    };
    const onClose = () => {
      ex.state = 'gone';
      done(new ClientGoneError());
    };
    const idle = setTimeout(tooSlow, idleMs);
    const total = setTimeout(tooSlow, Math.max(1, totalMs - (performance.now() - ex.arrivedAt)));
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onClose);
  });
}

/** A body small enough to be read whole before the call: a Content-Length up to MAX_KEPT_BODY_BYTES. */
function isSmallBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return length !== undefined && req.headers['transfer-encoding'] === undefined && Number(length) <= MAX_KEPT_BODY_BYTES;
}

/**
 * The service answered while the body is still arriving: the rest is not forwarded, the answer is
 * the client's last on its connection, and the connection to the service, which carries half a
 * request, is destroyed once the answer is read rather than held until the client is done.
 */
function dropBody(ex: Exchange, proxyRes: IncomingMessage): void {
  ex.stopBodyTimers?.();
  ex.req.unpipe();
  if (!ex.res.headersSent) ex.res.setHeader('Connection', 'close');
  const proxyReq = ex.proxyReq!;
  if (proxyRes.complete) proxyReq.destroy();
  else proxyRes.once('end', () => proxyReq.destroy());
}

/**
 * A GET's 2xx answer announced by Content-Length up to this size is read whole, then sent with its
 * head in one go (res.end), without a pipe's listeners and flowing: the usual answer, one read.
 */
const WHOLE_ANSWER_BYTES = 16 * 1024;

function isSmallWholeAnswer(req: Request, status: number, headers: IncomingMessage['headers']): boolean {
  if (req.method !== 'GET' || status < 200 || status > 299 || status === 204) return false;
  const length = headers['content-length'];
  return length !== undefined && headers['transfer-encoding'] === undefined && Number(length) <= WHOLE_ANSWER_BYTES;
}

function onWholeData(this: IncomingMessage & Carrier, chunk: Buffer): void {
  const ex = this[EXCHANGE]!;
  if (ex.answer === undefined) ex.answer = chunk;
  else if (Array.isArray(ex.answer)) ex.answer.push(chunk);
  else ex.answer = [ex.answer, chunk];
}

// A retry to the same instance waits up to this long (a random share of it).
const RETRY_JITTER_MS = 25;
// Methods that change nothing (RFC 9110 9.2.1): a late answer to them is only late.
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** The proxy's side of the one retry rule (platform/retry.ts): a failed try before any answer. */
function mayRetryTry(ex: Exchange, failure: UpstreamFailure): boolean {
  if (ex.retry !== 'none') return false;
  const { req, upstream } = ex;
  return mayRetry({
    repeatable: ROUTES.mayRepeat(req.method, req.originalUrl ?? req.url, req.headers),
    failure,
    answered: false,
    reusedSocket: ex.proxyReq?.reusedSocket === true,
    severalInstances: !upstream.instances.single,
    // Its body, if any, was kept for it (keepBody) or read whole before the call.
    replayable: !hasBody(req.headers) || ex.body !== undefined || ex.keptBody !== undefined,
  });
}

// A body larger than this is not kept, and its request not retried.
const MAX_KEPT_BODY_BYTES = 64 * 1024;

/** Keeps a copy of the body as it streams to the service, for a retry. */
function keepBody(ex: Exchange): void {
  const kept: Buffer[] = [];
  let size = 0;
  ex.keptBody = kept;
  const onData = (chunk: Buffer) => {
    size += chunk.length;
    if (size <= MAX_KEPT_BODY_BYTES) return void kept.push(chunk);
    ex.keptBody = undefined;
    ex.req.off('data', onData);
  };
  ex.req.on('data', onData);
  ex.req.once('end', () => ex.req.off('data', onData));
}

/** The retry's body: what was read already, then the rest as it arrives. */
function resendBody(ex: Exchange, proxyReq: ClientRequest): void {
  const { req } = ex;
  req.unpipe();
  for (const chunk of ex.keptBody ?? []) proxyReq.write(chunk);
  ex.keptBody = undefined;
  if (req.readableEnded) proxyReq.end();
  else req.pipe(proxyReq);
}

export function createServiceProxy({ upstream, cache, metrics, logger, trustsProxies, bodyLimits, clientAddress }: ServiceProxyOptions): RequestHandler {
  const log = logger.child({ component: 'proxy', upstream: upstream.name });
  const mount = `/api/${upstream.name}`;
  const servicePrefix = `/${upstream.name}`;
  const route = `${mount}/*`;

  const serveStale = (ex: Exchange): boolean => {
    const entry = ex.cacheKey === undefined ? undefined : cache.get(ex.cacheKey);
    if (!entry || ex.res.headersSent) return false;
    const { res } = ex;
    res.status(200);
    res.setHeader('Content-Type', entry.contentType);
    res.setHeader('Content-Length', String(entry.body.length));
    res.setHeader('X-Cache', 'STALE');
    res.setHeader('Age', String(Math.floor((Date.now() - entry.storedAt) / 1000)));
    res.end(entry.body);
    ex.state = 'answered';
    metrics.staleResponse(upstream.name);
    return true;
  };

  const instances = upstream.instances;
  const tries = upstream.tries;
  const origins = instances.list.map((i) => i.origin);
  /** A Location into the service (`/users/4`, or absolute at an instance's address) as the client must follow it: `/api/users/4`. */
  const gatewayLocation = (location: string): string => {
    const origin = origins.find((o) => location.startsWith(o));
    const path = origin ? location.slice(origin.length) || '/' : location;
    if (!path.startsWith(servicePrefix)) return location;
    const after = path.charCodeAt(servicePrefix.length);
    // Only the service's own prefix: `/users`, `/users/4`, `/users?x`, never `/usersfoo`.
    if (Number.isNaN(after) || after === 47 /* / */ || after === 63 /* ? */ || after === 35 /* # */) return mount + path.slice(servicePrefix.length);
    return location;
  };
  const timeoutMs = upstream.timeoutMs;
  const requestTimeout = String(timeoutMs);
  // The service is told timeoutMs and answers by then (a little before): a request that may change
  // something waits this much longer for that answer, so that a change committed just in time (an
  // order) is answered as done, not 504 while it exists. A busy machine can take that long to
  // bring the answer back; a service that keeps no deadline is still cut off.
  const answerGraceMs = Math.min(1000, Math.ceil(timeoutMs / 4));

  function onAnswerClose(this: IncomingMessage & Carrier): void {
    const ex = this[EXCHANGE]!;
    // The call's one outcome, now that its answer has ended (unless a 5xx decided it already):
    // a body cut short is the service's failure, whatever its headers said.
    ex.finish(!this.complete ? 'reset' : ex.dependencyFault ? 'dependency' : 'success');
    if (this.complete || ex.state === 'gone') return;
    log.warn({ status: this.statusCode }, 'service broke off its response');
    // Nothing of an answer read whole has gone out: the client gets a stale copy or the truth, a 502.
    if (ex.whole && !ex.res.headersSent) {
      if (!serveStale(ex)) sendError(ex.res, toProxyError(upstream.name, new UpstreamUnavailableError(upstream.name, 'reset')));
      return;
    }
    // The service died after its headers went out: cut the client off rather than let it wait
    // for the rest of a body that will never come.
    ex.res.destroy();
  }

  /**
   * The answer's head and body once its body has all arrived, in one write; one cut short never
   * comes (onAnswerClose answers it). `this` carries its exchange.
   */
  function onWholeEnd(this: IncomingMessage & Carrier): void {
    const ex = this[EXCHANGE]!;
    if (ex.res.destroyed || ex.res.headersSent) return;
    copyHead(ex.res, this);
    const { answer } = ex;
    ex.res.end(Array.isArray(answer) ? Buffer.concat(answer) : answer);
  }

  /** The service's status and headers onto the client's response, but hop-by-hop ones. */
  const copyHead = (res: Response, proxyRes: IncomingMessage): void => {
    res.statusCode = proxyRes.statusCode ?? 502;
    if (proxyRes.statusMessage) res.statusMessage = proxyRes.statusMessage;
    const headers = proxyRes.headers;
    const named = connectionNamed(headers.connection);
    for (const name in headers) {
      const value = headers[name];
      if (value === undefined || isUpstreamOnly(name, named)) continue;
      res.setHeader(name, LOCATION_HEADERS.has(name) ? gatewayLocation(value as string) : value);
    }
    // A 204 has no body, and says no length (RFC 9110 8.6): one a service sent is not passed on.
    if (res.statusCode === 204) res.removeHeader('content-length');
  };

  function onCallResponse(this: ClientRequest & Carrier, proxyRes: IncomingMessage): void {
    onResponse(this[EXCHANGE]!, proxyRes);
  }

  function onCallError(this: ClientRequest & Carrier, err: Error): void {
    onError(this[EXCHANGE]!, err);
  }

  const onResponse = (ex: Exchange, proxyRes: IncomingMessage) => {
    const { req, res } = ex;
    tries.answered(ex.try);
    // An upstream body that breaks off is handled on 'close' below; without a listener its
    // 'error' would be thrown.
    proxyRes.on('error', noop);
    if (ex.state !== 'pending') {
      proxyRes.destroy();
      return;
    }
    ex.proxyRes = proxyRes;
    ex.state = 'streaming';
    if (!req.complete) dropBody(ex, proxyRes);
    const status = proxyRes.statusCode ?? 502;
    const dependencyFault = (ex.dependencyFault = status >= 500 && proxyRes.headers[DEPENDENCY_HEADER] !== undefined);
    if (status >= 500 && !dependencyFault) {
      // Passed through unchanged (or a stale copy instead), but a failure for the breaker, counted
      // now: the breaker learns it before the rejection below reaches it.
      ex.finish('server_error');
      ex.reject(new UpstreamUnavailableError(upstream.name, 'server_error', status));
      if (req.method === 'GET' && STALE_STATUSES.has(status) && serveStale(ex)) return void proxyRes.resume();
    } else {
      if (ex.cacheKey !== undefined && cache.wants(ex.cacheKey, proxyRes)) cache.capture(ex.cacheKey, proxyRes);
      ex.resolve();
    }
    (proxyRes as IncomingMessage & Carrier)[EXCHANGE] = ex;
    proxyRes.on('close', onAnswerClose);
    if (res.headersSent) return;
    if (isSmallWholeAnswer(req, status, proxyRes.headers)) {
      ex.whole = true;
      // For the request line of a client that leaves before the body is in.
      res.statusCode = status;
      proxyRes.on('data', onWholeData);
      proxyRes.on('end', onWholeEnd);
      return;
    }
    copyHead(res, proxyRes);
    proxyRes.pipe(res);
  };

  const onError = (ex: Exchange, err: Error) => {
    // Decided already (the breaker's timeout, the client gone, its body too slow), or answered
    // (our own cut of a connection whose answer arrived): the response's 'close' reports that.
    if (ex.state !== 'pending') return;
    // A client that hung up makes the upstream call fail too (its 'close' may not have come yet):
    // that is no upstream failure.
    if (ex.req.socket.destroyed) {
      ex.finish('client_closed');
      return ex.reject(new ClientGoneError());
    }
    const failure = classifyUpstreamError(err);
    ex.endAttempt(false, failure);
    if (mayRetryTry(ex, failure) && upstream.retries.withdraw()) return retry(ex);
    ex.finish(failure);
    ex.reject(new UpstreamUnavailableError(upstream.name, failure));
  };

  // Retry hook: once, to another instance when there is one; else after a random pause, on a
  // connection of its own (a pooled one may be the next to be found closed).
  const retry = (ex: Exchange) => {
    metrics.upstreamRetry(upstream.name);
    const other = instances.pick(ex.instance);
    if (other) {
      ex.retry = 'other';
      ex.instance = other;
      setImmediate(forward, ex);
    } else {
      ex.retry = 'fresh';
      setTimeout(forward, Math.random() * RETRY_JITTER_MS, ex);
    }
  };

  // The try's instance has not answered within the per-try timeout: the request goes to another
  // instance if the retry budget allows (else it waits on), and the slow one is not blamed for a
  // failure, only weighed as slow.
  const tryTimedOut = (ex: Exchange) => {
    if (ex.state !== 'pending' || ex.retry !== 'none' || !instances.hasTimelyOther(ex.instance!) || !upstream.retries.withdraw()) return;
    metrics.tryTimeout(upstream.name, ex.instance!.url);
    tries.giveUp(ex.try!, ex.proxyReq);
    ex.endAttempt(false);
    retry(ex);
  };

  const forward = (ex: Exchange) => {
    const { req } = ex;
    if (ex.state !== 'pending') return;
    const instance = (ex.instance ??= instances.pick()!);
    const headers = upstreamRequestHeaders(req, trustsProxies, instance.host, ex.span!.headers, clientAddress);
    // Deadline: how long we will still wait, so the service can give up (and undo) before we do.
    headers.push('request-timeout', ex.retry !== 'none' ? String(Math.max(1, timeoutMs - Math.round(performance.now() - ex.startedAt))) : requestTimeout);
    const proxyReq = httpRequest({
      hostname: instance.hostname,
      port: instance.port,
      method: req.method,
      // The route keeps the full path; the service's is /api/users/1?x -> /users/1?x.
      path: servicePrefix + req.url.slice(mount.length),
      headers,
      agent: ex.retry === 'fresh' ? false : instance.agent,
    });
    ex.proxyReq = proxyReq;
    instances.begin(instance);
    instance.sent.inc();
    ex.try = tries.start(instance, ex.retry === 'none' && (req.method === 'GET' || req.method === 'HEAD') && !hasBody(req.headers), () => tryTimedOut(ex));
    // 'response' comes once: a plain listener spares a once-wrapper per request.
    (proxyReq as ClientRequest & Carrier)[EXCHANGE] = ex;
    proxyReq.on('response', onCallResponse);
    proxyReq.on('error', onCallError);
    if (!hasBody(req.headers)) proxyReq.end();
    else if (ex.body !== undefined) proxyReq.end(ex.body);
    else if (ex.retry !== 'none') resendBody(ex, proxyReq);
    else {
      keepBody(ex);
      watchBody(ex, bodyLimits);
      req.pipe(proxyReq);
    }
  };

  // The call's failure, to answer: an error, or a stale copy.
  const answerFailure = (ex: Exchange, err: unknown, next: (err: unknown) => void): void => {
    const { res } = ex;
    // Answered already (or about to be), or nobody to answer.
    if (ex.state !== 'pending' && ex.state !== 'failed') return;
    let failure: HttpError;
    try {
      failure = toProxyError(upstream.name, err);
    } catch (unexpected) {
      return next(unexpected);
    }
    if (failure.status >= 502 && serveStale(ex)) return;
    if (err instanceof UpstreamUnavailableError) {
      // Classified already: one line, no stack.
      const durationMs = Math.round(performance.now() - ex.arrivedAt);
      log.warn({ failure: err.failure, durationMs, traceId: res.locals.trace?.traceId }, 'proxy failed');
    }
    if (err instanceof CircuitOpenError) res.setHeader('Retry-After', String(err.retryAfterSeconds));
    // The rest of a stalled body is not worth reading.
    if (failure.status === 408) res.setHeader('Connection', 'close');
    sendError(res, failure);
  };

  // The call through the breaker. No promise on the way: a GET without a body goes out in the
  // handler's own turn.
  const call = (ex: Exchange, next: (err: unknown) => void): void => {
    const { req } = ex;
    // The service's time starts once the client has sent its body (the body's own limits end a
    // client that is too slow), unless the body is stuck because the service stopped reading it.
    const clientDoneAt = (): number | undefined => {
      if (req.complete) return ex.bodyEndedAt ?? 0;
      return ex.proxyReq?.writableNeedDrain ? 0 : undefined;
    };
    const graceMs = SAFE_METHODS.has(req.method) ? 0 : answerGraceMs;
    upstream.breaker.runWith((cancellation, resolve, reject) => ex.start(cancellation, forward, upstream.name, resolve, reject), { clientDoneAt, graceMs }, (err) => answerFailure(ex, err, next));
  };

  return (req, res, next) => {
    res.locals.route = route;
    res.locals.proxiedTo = upstream.name;
    // A verified caller's answer is kept under its id: it may be that caller's alone.
    const cacheKey = staleCacheKey(req, identityOf(res)?.key);
    const ex = new Exchange(req, res, cacheKey, upstream);
    if (req.complete || !hasBody(req.headers) || !isSmallBody(req)) return call(ex, next);
    readSmallBody(ex, bodyLimits).then((body) => {
      ex.body = body;
      call(ex, next);
    }, (err: unknown) => answerFailure(ex, err, next));
  };
}

/** The contract's answer for a call that did not get through. */
function toProxyError(service: string, err: unknown): HttpError {
  if (err instanceof CircuitOpenError) return err;
  if (err instanceof ClientGoneError) {
    return new HttpError(408, 'REQUEST_TIMEOUT', 'The request body did not arrive in time');
  }
  if (err instanceof UpstreamUnavailableError) {
    switch (err.failure) {
      case 'timeout':
        return new HttpError(504, 'GATEWAY_TIMEOUT', `Service ${service} did not answer in time`);
      case 'refused':
        return new HttpError(502, 'BAD_GATEWAY', `Service ${service} refused the connection`);
      case 'bad_response':
        return new HttpError(502, 'BAD_GATEWAY', `Service ${service} sent an invalid response`);
      default:
        return new HttpError(502, 'BAD_GATEWAY', `Service ${service} closed the connection`);
    }
  }
  throw err;
}
