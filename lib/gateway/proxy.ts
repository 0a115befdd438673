// Forwards /api/<service>[/...] to the service as /<service>[/...]: bodies streamed both ways,
// every call through the service's breaker, failed GETs answered from the stale cache.
import { request as httpRequest, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { ErrorRequestHandler, Express, Request, RequestHandler, Response } from 'express';
import { errorBody, HttpError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import { DEPENDENCY_HEADER, UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';
import { startClientSpan, type ClientSpan } from '../platform/span-recorder.js';
import { CircuitOpenError, ClientGoneError, type BreakerCall } from './breakers.js';
import type { GatewayMetrics } from './metrics.js';
import { isUnsafeRequestPath, unsafePathError } from './path-guard.js';
import type { RateLimiter } from './rate-limit.js';
import type { StaleCache } from './stale-cache.js';
import type { Upstream } from './upstreams.js';

export interface ServiceProxyOptions {
  upstream: Upstream;
  cache: StaleCache;
  metrics: GatewayMetrics;
  logger: Logger;
  /** Whether `trust proxy` is set, so that req.ips names proxies we believe. */
  trustsProxies: boolean;
}

/** The path the proxy route is registered under; Express 5 needs a named wildcard. */
export const proxyRoute = (upstream: Pick<Upstream, 'name'>): string => `/api/${upstream.name}{/*splat}`;

// The aggregate route that lives under a service's prefix; it must reach its own handler.
const AGGREGATE_UNDER_PREFIX = /^\/api\/users\/[^/?]+\/full\/?(\?|$)/i;
// `/api/<service>` alone or followed by a path or query, as the proxy route matches it.
const PROXIED = /^\/api\/([a-z]+)(?=[/?]|$)/;

/** What the front door runs: the request context, the limiter, the proxy handlers, the error handler. */
export interface FrontDoorOptions {
  /** The app for every request the front door does not take, and whose settings it uses. */
  app: Express;
  /** requestContext's middleware: trace, span, timing, log line and metrics. */
  context: RequestHandler;
  limiter: RateLimiter;
  /** The proxy handler of each service, by name. */
  proxies: Map<string, RequestHandler>;
  onError: ErrorRequestHandler;
}

/**
 * Proxied `/api/<service>/...` requests, the bulk of the traffic, are handled here on the server's
 * request event, ahead of Express's router (measured: the router, its per-request set-up and the
 * rate limiter's middleware cost more than the proxying itself). They get what a route would: the
 * request context, the rate limit, the path guard, the service's proxy handler, and errors in the
 * contract's shape. Every other request goes to the app unchanged.
 *
 * The server is made with Express's request and response prototypes (`expressServerClasses`), so
 * `req.ip`, `res.json()` and the rest work here without Express's per-request set-up.
 */
export function createFrontDoor({ app, context, limiter, proxies, onError }: FrontDoorOptions): (req: IncomingMessage, res: ServerResponse) => void {
  return (rawReq, rawRes) => {
    const url = rawReq.url ?? '';
    const m = url.charCodeAt(1) === 97 /* a */ ? PROXIED.exec(url) : null;
    const handler = m ? proxies.get(m[1]!) : undefined;
    if (!handler || ((rawReq.method === 'GET' || rawReq.method === 'HEAD') && AGGREGATE_UNDER_PREFIX.test(url))) {
      app(rawReq, rawRes);
      return;
    }
    const req = rawReq as Request;
    const res = rawRes as Response;
    // What Express's init middleware would have set.
    req.res = res;
    req.originalUrl = url;
    req.baseUrl = '';
    res.locals = Object.create(null) as Response['locals'];
    // The contract's error answer; should even that throw, the connection is cut rather than
    // left hanging, and the process goes on.
    const fail = (err: unknown): void => {
      try {
        void onError(err, req, res, noop);
      } catch {
        res.destroy();
      }
    };
    try {
      context(req, res, () => {
        const limited = limiter.check(req, res);
        if (limited) return fail(limited);
        if (isUnsafeRequestPath(url)) return fail(unsafePathError());
        const result = handler(req, res, fail) as unknown;
        if (result instanceof Promise) result.catch(fail);
      });
    } catch (err) {
      // Under the router, a throw here would have reached the error handler too.
      fail(err);
    }
  };
}

/** Upstream statuses a cached answer may stand in for, as for our own 502/503/504. */
const STALE_STATUSES = new Set([502, 503, 504]);
// The service's own trace headers would replace the gateway's; hop-by-hop ones are not the client's.
const UPSTREAM_ONLY_HEADERS = new Set(['x-trace-id', 'x-span-id', 'x-response-time', 'keep-alive', 'connection', 'transfer-encoding', 'proxy-connection', 'trailer', 'upgrade']);
// Hop-by-hop request headers (RFC 9110 7.6.1) and the ones we set ourselves; transfer-encoding and
// content-length stay, they frame the body we stream on.
const CLIENT_ONLY_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'host', 'expect', 'forwarded', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);

/** One client request on its way through the proxy. */
class Exchange {
  proxyReq?: ClientRequest;
  proxyRes?: IncomingMessage;
  /** A response (the service's or a stale one) is on its way; failures must not write another. */
  responded = false;
  servedStale = false;
  clientGone = false;
  /** The breaker gave up on the call (timeout). */
  aborted = false;
  /** The client span of the call to the service, once the breaker let it through. */
  span?: ClientSpan;
  /** The breaker's call: its one outcome is reported when the response ends. */
  call?: BreakerCall;
  /** The answer blames a dependency of the service (DEPENDENCY_HEADER): no outcome for the service. */
  dependencyFault = false;
  /** Sent again once, on a fresh connection, after failing before reaching the service. */
  retried = false;
  /** The request body read so far, kept while it may have to be sent again (undefined: not kept). */
  keptBody?: Buffer[];
  /** performance.now() when the call went out, for the time left on a retry. */
  startedAt = 0;
  private resolve: () => void = noop;
  private reject: (err: Error) => void = noop;

  constructor(
    readonly req: Request,
    readonly res: Response,
    readonly cacheKey: string | undefined,
  ) {}

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
      this.span = startClientSpan(`${this.req.method} ${service}`, { 'peer.service': service, 'http.request.method': this.req.method });
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
    this.proxyReq?.destroy();
  }

  private onClientClose(): void {
    this.span?.end({ status: this.proxyRes?.statusCode, error: this.res.writableFinished ? undefined : 'client_closed' });
    if (this.res.writableFinished) return;
    this.clientGone = true;
    if (!this.responded) this.reject(new ClientGoneError());
    this.proxyReq?.destroy();
    this.proxyRes?.destroy();
  }
}

function noop(): void {}

// Outcome and retry rules of the breaker, kept apart from the proxying itself.
const RETRY_JITTER_MS = 25;
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

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
 * Idempotency-Key) and its body, if any, was kept for it (keepBody).
 */
function mayRetry(ex: Exchange, failure: UpstreamFailure): boolean {
  if (ex.retried || ex.aborted || ex.proxyRes) return false;
  if (failure !== 'refused' && !(failure === 'reset' && ex.proxyReq?.reusedSocket)) return false;
  return isSafeToRepeat(ex.req) && (!hasBody(ex.req) || ex.keptBody !== undefined);
}

function isSafeToRepeat(req: Request): boolean {
  return IDEMPOTENT.has(req.method) || (req.method === 'POST' && req.headers['idempotency-key'] !== undefined);
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

export function createServiceProxy({ upstream, cache, metrics, logger, trustsProxies }: ServiceProxyOptions): RequestHandler {
  const log = logger.child({ component: 'proxy', service: upstream.name });
  const mount = `/api/${upstream.name}`;
  const servicePrefix = `/${upstream.name}`;
  const route = `${mount}/*`;

  const serveStale = (ex: Exchange): boolean => {
    const entry = ex.cacheKey === undefined ? undefined : cache.get(ex.cacheKey);
    if (!entry || ex.res.headersSent) return false;
    const { res } = ex;
    res.status(200);
    res.setHeader('Content-Type', entry.contentType);
    if (entry.contentEncoding) res.setHeader('Content-Encoding', entry.contentEncoding);
    res.setHeader('Content-Length', String(entry.body.length));
    res.setHeader('X-Cache', 'STALE');
    res.setHeader('Age', String(Math.floor((Date.now() - entry.storedAt) / 1000)));
    res.end(entry.body);
    ex.servedStale = true;
    ex.responded = true;
    metrics.staleResponse(upstream.name);
    return true;
  };

  const target = new URL(upstream.target);
  const targetHost = target.host;
  const targetHostname = target.hostname;
  const targetPort = target.port || '80';
  const timeoutMs = upstream.timeoutMs;
  const requestTimeout = String(timeoutMs);

  const onResponse = (ex: Exchange, proxyRes: IncomingMessage) => {
    const { req, res } = ex;
    // An upstream body that breaks off is handled on 'close' below; without a listener its
    // 'error' would be thrown.
    proxyRes.on('error', noop);
    if (ex.clientGone) {
      proxyRes.destroy();
      return;
    }
    ex.proxyRes = proxyRes;
    const status = proxyRes.statusCode ?? 502;
    proxyRes.once('close', () => {
      ex.span?.end({ status, error: proxyRes.complete ? undefined : 'reset' });
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
      if (value !== undefined && !UPSTREAM_ONLY_HEADERS.has(name)) res.setHeader(name, value);
    }
    proxyRes.pipe(res);
  };

  const onError = (ex: Exchange, err: Error) => {
    // A client that hung up makes the upstream call fail too: that is no upstream failure.
    if (ex.clientGone || ex.req.socket.destroyed) return ex.fail(new ClientGoneError());
    const failure = classifyProxyError(err);
    if (mayRetry(ex, failure) && upstream.breaker.tryRetry()) return retry(ex);
    ex.fail(new UpstreamUnavailableError(upstream.name, failure));
  };

  // Retry hook: once, after a random pause, on a connection of its own (a pooled one may be the
  // next to be found closed).
  const retry = (ex: Exchange) => {
    ex.retried = true;
    metrics.upstreamRetry(upstream.name);
    setTimeout(forward, Math.random() * RETRY_JITTER_MS, ex);
  };

  const forward = (ex: Exchange) => {
    const { req } = ex;
    if (ex.aborted || ex.clientGone) return;
    const headers = upstreamHeaders(req, trustsProxies, targetHost, ex.span!.headers);
    // Deadline: how long we will still wait, so the service can give up (and undo) before we do.
    headers['request-timeout'] = ex.retried ? String(Math.max(1, timeoutMs - Math.round(performance.now() - ex.startedAt))) : requestTimeout;
    const proxyReq = httpRequest({
      hostname: targetHostname,
      port: targetPort,
      method: req.method,
      // The route keeps the full path; the service's is /api/users/1?x -> /users/1?x.
      path: servicePrefix + req.url.slice(mount.length),
      headers,
      agent: ex.retried ? false : upstream.agent,
    });
    ex.proxyReq = proxyReq;
    proxyReq.once('response', (proxyRes: IncomingMessage) => onResponse(ex, proxyRes));
    proxyReq.on('error', (err: Error) => onError(ex, err));
    if (!hasBody(req)) proxyReq.end();
    else if (ex.retried) resendBody(ex, proxyReq);
    else {
      if (isSafeToRepeat(req)) keepBody(ex);
      req.pipe(proxyReq);
    }
  };

  return async (req, res) => {
    res.locals.route = route;
    res.locals.proxiedTo = upstream.name;
    // Never cache (or serve from cache) what a credentialed request saw: it may be that user's alone.
    const cacheKey = req.method === 'GET' && req.headers.authorization === undefined ? req.originalUrl : undefined;
    const ex = new Exchange(req, res, cacheKey);
    try {
      // A timeout while the client is still sending its body is the client's doing, unless the
      // body is stuck because the service stopped reading it.
      const clientStalled = () => !req.complete && !ex.proxyReq?.writableNeedDrain;
      await upstream.breaker.run((cancellation) => ex.start(cancellation, forward, upstream.name), { clientStalled });
    } catch (err) {
      if (ex.responded || ex.clientGone) return;
      const failure = toProxyError(upstream.name, err);
      if (failure.status >= 502 && serveStale(ex)) return;
      if (failure.status >= 502 && !(err instanceof CircuitOpenError)) log.warn({ err }, 'proxy failed');
      if (err instanceof CircuitOpenError) res.setHeader('Retry-After', String(err.retryAfterSeconds));
      // The rest of a stalled body is not worth reading.
      if (failure.status === 408) res.setHeader('Connection', 'close');
      res.status(failure.status).json(errorBody(failure, res.locals.trace?.traceId));
    }
  };
}

/**
 * The service's request headers: the client's, less hop-by-hop ones, plus ours. X-Forwarded-For
 * is ours: the client's claim survives only as far as `trust proxy` believes it. Node already
 * answered `100 Continue` to the client; the service need not be asked again.
 */
function upstreamHeaders(req: Request, trustsProxies: boolean, host: string, trace: Record<string, string>): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  const incoming = req.headers;
  for (const name in incoming) {
    if (!CLIENT_ONLY_HEADERS.has(name)) headers[name] = incoming[name];
  }
  headers.host = host;
  const peer = req.socket.remoteAddress ?? '';
  const trusted = trustsProxies ? req.ips : [];
  headers['x-forwarded-for'] = trusted.length ? `${trusted.join(', ')}, ${peer}` : peer;
  headers['x-forwarded-proto'] = req.protocol;
  const forwardedHost = req.host;
  if (forwardedHost) headers['x-forwarded-host'] = forwardedHost;
  for (const name in trace) headers[name] = trace[name];
  // As http-proxy did: a DELETE or OPTIONS without a length says so, rather than leave the
  // service waiting for a body.
  if ((req.method === 'DELETE' || req.method === 'OPTIONS') && incoming['content-length'] === undefined) {
    headers['content-length'] = '0';
    delete headers['transfer-encoding'];
  }
  return headers;
}

function hasBody(req: Request): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const length = req.headers['content-length'];
  return length !== undefined && length !== '0';
}

function classifyProxyError(err: Error): UpstreamFailure {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return 'refused';
  if (code === 'ETIMEDOUT') return 'timeout';
  if (code.startsWith('HPE_')) return 'bad_response';
  return 'reset';
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
