// Forwards /api/<service>[/...] to the service as /<service>[/...]: bodies streamed both ways,
// every call through the service's breaker, failed GETs answered from the stale cache.
import { request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { HttpError, sendError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import { hasBody } from '../platform/http.js';
import { CLIENT_ADDRESS_HEADER, CLIENT_ADDRESS_SIGNATURE_HEADER } from '../platform/client-address.js';
import { DEPENDENCY_HEADER, UpstreamUnavailableError } from '../platform/service-client.js';
import { classifyUpstreamError, type UpstreamFailure } from '../platform/upstream-errors.js';
import { ATTR_HTTP_REQUEST_METHOD } from '@opentelemetry/semantic-conventions';
import { ATTR_PEER_SERVICE, startClientSpan, type ClientSpan } from '../platform/span-recorder.js';
import { CircuitOpenError, ClientGoneError, type BreakerCall } from './breakers.js';
import { identityOf } from './auth.js';
import type { GatewayMetrics } from './metrics.js';
import type { UpstreamTry } from './retry.js';
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
  clientAddress?: (address: string) => Record<string, string>;
  /** How fast a request body must arrive (CLIENT_BODY_TIMEOUT_MS, CLIENT_BODY_TOTAL_MS). */
  bodyLimits: BodyLimits;
}

export interface BodyLimits {
  /** Longest wait between two reads of the body. */
  idleMs: number;
  /** Longest time for the whole body, from the request's start. */
  totalMs: number;
}

/** Upstream statuses a cached answer may stand in for, as for our own 502/503/504. */
const STALE_STATUSES = new Set([502, 503, 504]);
// The service's own trace headers would replace the gateway's; hop-by-hop ones are not the client's.
const UPSTREAM_ONLY_HEADERS = new Set(['x-trace-id', 'x-span-id', 'x-response-time', 'keep-alive', 'connection', 'transfer-encoding', 'proxy-connection', 'proxy-authenticate', 'trailer', 'upgrade']);
/** Response headers naming a URL the client may follow, rewritten from the service's paths to the gateway's. */
const LOCATION_HEADERS = new Set(['location', 'content-location']);
/**
 * Request headers the service never gets from the client: hop-by-hop ones (RFC 9110 7.6.1, and
 * HTTP2-Settings, RFC 7540 3.2.1), credentials meant for a proxy, the framing (the proxy frames the
 * body itself, see `upstreamHeaders`), the ones we set ourselves, and the client's claims about its
 * address or the URL, which a service or a proxy behind us might believe.
 */
const CLIENT_ONLY_HEADERS = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'http2-settings', 'proxy-authorization',
  'content-length', 'transfer-encoding', 'host', 'expect',
  'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-prefix',
  'x-real-ip', 'true-client-ip', 'x-client-ip', 'cf-connecting-ip', 'x-original-url', 'x-rewrite-url',
  'x-trace-id', 'traceparent', 'request-timeout', CLIENT_ADDRESS_HEADER, CLIENT_ADDRESS_SIGNATURE_HEADER,
]);
// Connection options that name no header; anything else in `Connection` names a header to drop.
const CONNECTION_OPTIONS = new Set(['keep-alive', 'close', 'upgrade', '']);
/** Node's client sends a body (chunked) by default on every method but these; see `upstreamHeaders`. */
const NO_DEFAULT_BODY = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/** One client request on its way through the proxy. */
class Exchange {
  proxyReq?: ClientRequest;
  proxyRes?: IncomingMessage;
  /** A response (the service's or a stale one) is on its way; failures must not write another. */
  responded = false;
  servedStale = false;
  clientGone = false;
  /** The breaker gave up on the call (timeout): nothing more goes out for it. */
  aborted = false;
  /** The client span of the call to the service, once the breaker let it through. */
  span?: ClientSpan;
  /** The breaker's call: its one outcome is reported when the response ends. */
  call?: BreakerCall;
  /** The answer blames a dependency of the service (DEPENDENCY_HEADER): no outcome for the service. */
  dependencyFault = false;
  /** Sent again once, after failing before reaching the service. */
  retried = false;
  /** The retry goes to the same instance, on a connection of its own. */
  freshConnection = false;
  /** The instance the current attempt goes to. */
  instance?: GatewayInstance;
  /** The current attempt's timing and per-try timer. */
  try?: UpstreamTry;
  /** The attempt is counted in its instance's outstanding requests and has no outcome yet. */
  attemptOpen = false;
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
  /** The body stopped arriving in time: 408, and the call to the service is cut off. */
  stalled = false;
  /** The service answered before the body ended: the rest is not forwarded, the upstream connection not kept. */
  bodyDropped = false;
  private resolve: () => void = noop;
  private reject: (err: Error) => void = noop;

  constructor(
    readonly req: Request,
    readonly res: Response,
    readonly cacheKey: string | undefined,
    readonly upstream: Upstream,
  ) {}

  /** The current attempt's outcome for its instance (its outlier state), once. */
  endAttempt(outcome: 'success' | 'failure' | 'neutral', kind: UpstreamFailure = 'reset'): void {
    if (!this.attemptOpen) return;
    this.attemptOpen = false;
    const { instances, breaker } = this.upstream;
    instances.end(this.instance!, outcome === 'success');
    // While the circuit tests the service, one failure takes the instance out again.
    if (outcome === 'failure') instances.fail(this.instance!, kind, breaker.state !== 'CLOSED');
  }

  /** Settles when the service's response headers arrive (or the call fails). */
  start(cancellation: BreakerCall, forward: (ex: Exchange) => void, service: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      // Gone while waiting for the limiter or the breaker: its 'close' has already been emitted.
      if (this.req.socket.destroyed) {
        this.clientGone = true;
        reject(new ClientGoneError());
        return;
      }
      this.call = cancellation;
      this.startedAt = performance.now();
      cancellation.onAbort(() => this.abortUpstream());
      this.res.once('close', () => this.onClientClose());
      // One client span per call that really goes out (not for circuit-open answers): the
      // service's server span hangs under it through the traceparent it carries.
      this.span = startClientSpan(`${this.req.method} ${service}`, { [ATTR_PEER_SERVICE]: service, [ATTR_HTTP_REQUEST_METHOD]: this.req.method });
      forward(this);
    });
  }

  succeed(): void {
    this.resolve();
  }

  fail(err: Error): void {
    this.span?.end({ status: this.proxyRes?.statusCode, error: err instanceof UpstreamUnavailableError ? err.failure : 'client_gone' });
    this.reject(err);
  }

  abortUpstream(): void {
    this.aborted = true;
    this.endAttempt(this.call?.timedOut ? 'failure' : 'neutral', 'timeout');
    this.proxyReq?.destroy();
  }

  private onClientClose(): void {
    this.span?.end({ status: this.proxyRes?.statusCode, error: this.res.writableFinished ? undefined : 'client_closed' });
    if (this.res.writableFinished) return;
    this.clientGone = true;
    this.endAttempt('neutral');
    if (!this.responded) this.reject(new ClientGoneError());
    this.proxyReq?.destroy();
    this.proxyRes?.destroy();
  }
}

function noop(): void {}

/** Times the body as it arrives: `idleMs` between reads, `totalMs` in all; a body too slow ends the call. */
function watchBody(ex: Exchange, { idleMs, totalMs }: BodyLimits): void {
  const { req } = ex;
  if (req.complete || ex.stopBodyTimers) return;
  const tooSlow = (total: boolean) => {
    if (req.complete || ex.responded || ex.clientGone || ex.stalled) return;
    // Held back because the service does not read it: that wait is the service's (its timeout).
    if (!total && ex.proxyReq?.writableNeedDrain) return void idle.refresh();
    ex.stalled = true;
    ex.stopBodyTimers!();
    req.unpipe();
    ex.endAttempt('neutral');
    ex.fail(new ClientGoneError(true));
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
      ex.stalled = true;
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
      ex.clientGone = true;
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
  ex.bodyDropped = true;
  ex.stopBodyTimers?.();
  ex.req.unpipe();
  if (!ex.res.headersSent) ex.res.setHeader('Connection', 'close');
  const proxyReq = ex.proxyReq!;
  if (proxyRes.complete) proxyReq.destroy();
  else proxyRes.once('end', () => proxyReq.destroy());
}

// Outcome and retry rules of the breaker, kept apart from the proxying itself.
const RETRY_JITTER_MS = 25;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
// Methods that change nothing (RFC 9110 9.2.1): a late answer to them is only late.
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** Reports the call's one outcome once its response has ended (complete or cut short). */
function reportOutcome(ex: Exchange, complete: boolean): void {
  const call = ex.call;
  if (!call || call.settled) return;
  if (ex.clientGone || ex.dependencyFault) call.neutral();
  else if (complete) call.succeed();
  else call.fail('reset');
}

/**
 * A failed call may go out once more when it never reached the service (refused, or a pooled
 * socket found closed), repeating it is safe (an idempotent method, or a POST with an
 * Idempotency-Key) and its body, if any, was kept for it (keepBody). With several instances, a
 * reset before any answer is enough (the retry goes to another instance: an instance killed
 * mid-request costs its clients nothing).
 */
function mayRetry(ex: Exchange, failure: UpstreamFailure): boolean {
  if (ex.retried || ex.aborted || ex.proxyRes) return false;
  if (failure !== 'refused' && !(failure === 'reset' && (ex.proxyReq?.reusedSocket || !ex.upstream.instances.single))) return false;
  return isSafeToRepeat(ex.req, ex.upstream) && (!hasBody(ex.req.headers) || ex.body !== undefined || ex.keptBody !== undefined);
}

/** Only the order service honours Idempotency-Key: a POST to another service is never sent twice. */
function isSafeToRepeat(req: Request, upstream: Upstream): boolean {
  return IDEMPOTENT.has(req.method) || (upstream.name === 'orders' && req.method === 'POST' && req.headers['idempotency-key'] !== undefined);
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
    ex.servedStale = true;
    ex.responded = true;
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

  const onResponse = (ex: Exchange, proxyRes: IncomingMessage) => {
    const { req, res } = ex;
    tries.answered(ex.try);
    // An upstream body that breaks off is handled on 'close' below; without a listener its
    // 'error' would be thrown.
    proxyRes.on('error', noop);
    if (ex.clientGone) {
      proxyRes.destroy();
      return;
    }
    ex.proxyRes = proxyRes;
    if (!req.complete) dropBody(ex, proxyRes);
    const status = proxyRes.statusCode ?? 502;
    proxyRes.once('close', () => {
      ex.span?.end({ status, error: proxyRes.complete ? undefined : 'reset' });
      ex.endAttempt(proxyRes.complete ? 'success' : ex.clientGone ? 'neutral' : 'failure');
      // The call's one outcome, now that it has ended (a 5xx was counted already): a body cut
      // short is the service's failure, whatever its headers said.
      reportOutcome(ex, proxyRes.complete);
      if (proxyRes.complete || ex.clientGone || ex.servedStale) return;
      // The service died after its headers: cut the client off rather than let it wait for
      // the rest of a body that will never come.
      log.warn({ status }, 'service broke off its response');
      ex.res.destroy();
    });
    ex.dependencyFault = status >= 500 && proxyRes.headers[DEPENDENCY_HEADER] !== undefined;
    if (status >= 500 && !ex.dependencyFault) {
      // Passed through unchanged, but a failure for the breaker.
      if (req.method === 'GET' && STALE_STATUSES.has(status) && serveStale(ex)) proxyRes.resume();
      ex.responded = true;
      // Counted now: the response's end may come before the rejection below reaches the breaker.
      ex.endAttempt('failure', 'server_error');
      ex.call?.fail('server_error');
      ex.fail(new UpstreamUnavailableError(upstream.name, 'server_error', status));
    } else {
      ex.responded = true;
      if (ex.cacheKey !== undefined && cache.wants(ex.cacheKey, proxyRes)) cache.capture(ex.cacheKey, proxyRes);
      ex.call?.defer();
      ex.succeed();
    }
    if (ex.servedStale || res.headersSent) return;
    res.statusCode = status;
    if (proxyRes.statusMessage) res.statusMessage = proxyRes.statusMessage;
    const headers = proxyRes.headers;
    for (const name in headers) {
      const value = headers[name];
      if (value === undefined || UPSTREAM_ONLY_HEADERS.has(name)) continue;
      res.setHeader(name, LOCATION_HEADERS.has(name) ? gatewayLocation(value as string) : value);
    }
    proxyRes.pipe(res);
  };

  const onError = (ex: Exchange, err: Error) => {
    // Our own cut of a connection whose answer arrived (or whose body was too slow) is no failure.
    if (ex.bodyDropped && ex.proxyRes) return;
    // A client that hung up (or sent its body too slowly) makes the upstream call fail too: that
    // is no upstream failure.
    if (ex.clientGone || ex.stalled || ex.req.socket.destroyed) {
      ex.endAttempt('neutral');
      return ex.fail(new ClientGoneError());
    }
    tries.ended(ex.try);
    const failure = classifyUpstreamError(err);
    ex.endAttempt('failure', failure);
    if (mayRetry(ex, failure) && upstream.breaker.tryRetry()) return retry(ex);
    ex.fail(new UpstreamUnavailableError(upstream.name, failure));
  };

  // Retry hook: once, to another instance when there is one; else after a random pause, on a
  // connection of its own (a pooled one may be the next to be found closed).
  const retry = (ex: Exchange) => {
    ex.retried = true;
    metrics.upstreamRetry(upstream.name);
    const other = instances.pick(ex.instance);
    if (other) {
      ex.instance = other;
      setImmediate(forward, ex);
    } else {
      ex.freshConnection = true;
      setTimeout(forward, Math.random() * RETRY_JITTER_MS, ex);
    }
  };

  // The try's instance has not answered within the per-try timeout: the request goes to another
  // instance if the retry budget allows (else it waits on), and the slow one is not blamed for a
  // failure, only weighed as slow.
  const tryTimedOut = (ex: Exchange) => {
    if (ex.proxyRes || ex.aborted || ex.clientGone || ex.retried || !instances.hasTimelyOther(ex.instance!) || !upstream.breaker.tryRetry()) return;
    metrics.tryTimeout(upstream.name, ex.instance!.url);
    tries.giveUp(ex.try!, ex.proxyReq);
    ex.endAttempt('neutral');
    retry(ex);
  };

  const forward = (ex: Exchange) => {
    const { req } = ex;
    if (ex.aborted || ex.clientGone || ex.stalled) return;
    const instance = (ex.instance ??= instances.pick()!);
    const headers = upstreamHeaders(req, trustsProxies, instance.host, ex.span!.headers, clientAddress);
    // Deadline: how long we will still wait, so the service can give up (and undo) before we do.
    headers.push('request-timeout', ex.retried ? String(Math.max(1, timeoutMs - Math.round(performance.now() - ex.startedAt))) : requestTimeout);
    const proxyReq = httpRequest({
      hostname: instance.hostname,
      port: instance.port,
      method: req.method,
      // The route keeps the full path; the service's is /api/users/1?x -> /users/1?x.
      path: servicePrefix + req.url.slice(mount.length),
      headers,
      agent: ex.freshConnection ? false : instance.agent,
    });
    ex.proxyReq = proxyReq;
    instances.begin(instance);
    ex.attemptOpen = true;
    instance.sent.inc();
    ex.try = tries.start(instance, !ex.retried && (req.method === 'GET' || req.method === 'HEAD') && !hasBody(req.headers), () => tryTimedOut(ex));
    proxyReq.once('response', (proxyRes: IncomingMessage) => onResponse(ex, proxyRes));
    proxyReq.on('error', (err: Error) => onError(ex, err));
    if (!hasBody(req.headers)) proxyReq.end();
    else if (ex.body !== undefined) proxyReq.end(ex.body);
    else if (ex.retried) resendBody(ex, proxyReq);
    else {
      if (isSafeToRepeat(req, ex.upstream)) keepBody(ex);
      watchBody(ex, bodyLimits);
      req.pipe(proxyReq);
    }
  };

  return async (req, res) => {
    res.locals.route = route;
    res.locals.proxiedTo = upstream.name;
    // A verified caller's answer is kept under its id: it may be that caller's alone.
    const cacheKey = staleCacheKey(req, identityOf(res)?.key);
    const ex = new Exchange(req, res, cacheKey, upstream);
    const started = performance.now();
    try {
      if (!req.complete && hasBody(req.headers) && isSmallBody(req)) ex.body = await readSmallBody(ex, bodyLimits);
      // The service's time starts once the client has sent its body (the body's own limits end a
      // client that is too slow), unless the body is stuck because the service stopped reading it.
      const clientDoneAt = (): number | undefined => {
        if (req.complete) return ex.bodyEndedAt ?? 0;
        return ex.proxyReq?.writableNeedDrain ? 0 : undefined;
      };
      const graceMs = SAFE_METHODS.has(req.method) ? 0 : answerGraceMs;
      await upstream.breaker.run((cancellation) => ex.start(cancellation, forward, upstream.name), { clientDoneAt, graceMs });
    } catch (err) {
      if (ex.responded || ex.clientGone) return;
      const failure = toProxyError(upstream.name, err);
      if (failure.status >= 502 && serveStale(ex)) return;
      if (err instanceof UpstreamUnavailableError) {
        // Classified already: one line, no stack.
        const durationMs = Math.round(performance.now() - started);
        log.warn({ failure: err.failure, durationMs, traceId: res.locals.trace?.traceId }, 'proxy failed');
      }
      if (err instanceof CircuitOpenError) res.setHeader('Retry-After', String(err.retryAfterSeconds));
      // The rest of a stalled body is not worth reading.
      if (failure.status === 408) res.setHeader('Connection', 'close');
      sendError(res, failure);
    }
  };
}

/**
 * The service's request headers, as a flat name/value list in the client's order: the client's,
 * less CLIENT_ONLY_HEADERS and whatever its `Connection` names, plus ours. X-Forwarded-For and
 * X-Real-IP are ours: the client's claim survives only as far as `trust proxy` believes it. Node
 * already answered `100 Continue` to the client; the service need not be asked again.
 *
 * The body is framed once, by construction: the client's Content-Length when it sent one, else
 * chunked when it sent a body (Node's parser refuses both at once, and any transfer coding but
 * chunked is refused before this), else no body at all. Node's client would otherwise frame by
 * method: a DELETE or OPTIONS body would go out unframed, to be read as the next request.
 */
function upstreamHeaders(req: Request, trustsProxies: boolean, host: string, trace: Record<string, string>, clientAddress?: ServiceProxyOptions['clientAddress']): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  const incoming = req.headers;
  const named = connectionNamed(incoming.connection);
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (CLIENT_ONLY_HEADERS.has(name) || named?.has(name)) continue;
    out.push(name, raw[i + 1]);
  }
  out.push('host', host);
  const peer = req.socket.remoteAddress ?? '';
  const trusted = trustsProxies ? req.ips : [];
  out.push('x-forwarded-for', trusted.length ? `${trusted.join(', ')}, ${peer}` : peer);
  // req.ip is the nearest untrusted address: req.ips' first (farthest-first order), read once.
  const client = trusted.length ? trusted[0] : peer;
  out.push('x-real-ip', client);
  // The same address, signed: what the user service counts logins and sign-ups by.
  if (clientAddress) for (const [name, value] of Object.entries(clientAddress(client))) out.push(name, value);
  out.push('x-forwarded-proto', req.protocol);
  const forwardedHost = req.host;
  if (forwardedHost) out.push('x-forwarded-host', forwardedHost);
  for (const name in trace) out.push(name, trace[name]);
  const length = incoming['content-length'];
  if (length !== undefined) out.push('content-length', length);
  else if (incoming['transfer-encoding'] !== undefined) out.push('transfer-encoding', 'chunked');
  else if (!NO_DEFAULT_BODY.has(req.method)) out.push('content-length', '0');
  return out;
}

/** The header names a `Connection` header lists (RFC 9110 7.6.1), or undefined when it names none. */
function connectionNamed(connection: string | undefined): Set<string> | undefined {
  if (connection === undefined || CONNECTION_OPTIONS.has(connection.toLowerCase())) return undefined;
  const names = new Set<string>();
  for (const token of connection.split(',')) {
    const name = token.trim().toLowerCase();
    if (!CONNECTION_OPTIONS.has(name)) names.add(name);
  }
  return names.size ? names : undefined;
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
