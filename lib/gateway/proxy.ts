// Forwards /api/<service>[/...] to the service as /<service>[/...]: bodies streamed both ways,
// every call through the service's breaker, failed GETs answered from the stale cache.
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { createProxyMiddleware, proxyEventsPlugin, type RequestHandler as ProxyHandler } from 'http-proxy-middleware';
import { errorBody, HttpError } from '../platform/errors.js';
import type { Logger } from '../platform/logger.js';
import { UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';
import { startClientSpan, type ClientSpan } from '../platform/tracing.js';
import { CircuitOpenError, ClientGoneError } from './breakers.js';
import type { GatewayMetrics } from './metrics.js';
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

/** Upstream statuses a cached answer may stand in for, as for our own 502/503/504. */
const STALE_STATUSES = new Set([502, 503, 504]);
// The service's own trace headers would replace the gateway's; hop-by-hop ones are not the client's.
const UPSTREAM_ONLY_HEADERS = ['x-trace-id', 'x-span-id', 'x-response-time', 'keep-alive'] as const;

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
  private resolve: () => void = noop;
  private reject: (err: Error) => void = noop;

  constructor(
    readonly req: Request,
    readonly res: Response,
    readonly cacheKey: string | undefined,
  ) {}

  /** Settles when the service's response headers arrive (or the call fails). */
  start(signal: AbortSignal, proxy: ProxyHandler, service: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      // Gone while waiting for the limiter or the breaker: its 'close' has already been emitted.
      if (this.req.socket.destroyed) {
        this.clientGone = true;
        reject(new ClientGoneError());
        return;
      }
      signal.addEventListener('abort', () => this.abortUpstream(), { once: true });
      this.res.once('close', () => this.onClientClose());
      // One client span per call that really goes out (not for circuit-open answers): the
      // service's server span hangs under it through the traceparent set here.
      this.span = startClientSpan(`${this.req.method} ${service}`, { 'peer.service': service, 'http.request.method': this.req.method });
      Object.assign(this.req.headers, this.span.headers);
      void proxy(this.req, this.res, (err?: unknown) => reject(err instanceof Error ? err : new Error('proxy failed')));
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

export function createServiceProxy({ upstream, cache, metrics, logger, trustsProxies }: ServiceProxyOptions): RequestHandler {
  const log = logger.child({ component: 'proxy', service: upstream.name });
  const mount = `/api/${upstream.name}`;
  const servicePrefix = `/${upstream.name}`;
  const exchanges = new WeakMap<IncomingMessage, Exchange>();

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

  const proxy = createProxyMiddleware({
    target: upstream.target,
    agent: upstream.agent,
    changeOrigin: true,
    // http-proxy-middleware 3 no longer rewrites req.url under mounts; the route keeps the full
    // path, and the service's path is set here explicitly: /api/users/1?x -> /users/1?x.
    pathRewrite: (path) => servicePrefix + path.slice(mount.length),
    // The default plugins answer errors with plain text that echoes host and URL, and log (building
    // a URL) on every response: keep only the one that wires `on`.
    ejectPlugins: true,
    plugins: [proxyEventsPlugin],
    on: {
      proxyReq(proxyReq, req) {
        const ex = exchanges.get(req);
        if (!ex) return;
        ex.proxyReq = proxyReq;
        // Timed out or abandoned while waiting for a pooled socket.
        if (ex.aborted || ex.clientGone) proxyReq.destroy();
      },
      proxyRes(proxyRes, req) {
        const ex = exchanges.get(req);
        if (!ex || ex.clientGone) {
          proxyRes.destroy();
          return;
        }
        ex.proxyRes = proxyRes;
        for (const name of UPSTREAM_ONLY_HEADERS) delete proxyRes.headers[name];
        const status = proxyRes.statusCode ?? 502;
        proxyRes.once('close', () => {
          ex.span?.end({ status, error: proxyRes.complete ? undefined : 'reset' });
          if (proxyRes.complete || ex.clientGone || ex.servedStale) return;
          // The service died after its headers: cut the client off rather than let it wait for
          // the rest of a body that will never come.
          log.warn({ status }, 'service broke off its response');
          ex.res.destroy();
          if (status < 500) upstream.breaker.recordLateFailure('reset');
        });
        if (status >= 500) {
          // Passed through unchanged, but a failure for the breaker (http-proxy treats it as an answer).
          if (req.method === 'GET' && STALE_STATUSES.has(status) && serveStale(ex)) proxyRes.resume();
          ex.responded = true;
          ex.fail(new UpstreamUnavailableError(upstream.name, 'server_error', status));
          return;
        }
        ex.responded = true;
        if (ex.cacheKey !== undefined && cache.wants(ex.cacheKey, proxyRes)) cache.capture(ex.cacheKey, proxyRes);
        ex.succeed();
      },
      error(err, req) {
        const ex = exchanges.get(req);
        if (!ex) return;
        // http-proxy reports a client that hung up as ECONNRESET too: that is no upstream failure.
        if (ex.clientGone || req.socket.destroyed) return ex.fail(new ClientGoneError());
        ex.fail(new UpstreamUnavailableError(upstream.name, classifyProxyError(err)));
      },
    },
  });

  return async (req, res) => {
    const started = performance.now();
    res.locals.route = `${mount}/*`;
    res.once('finish', () => metrics.observeRequest(upstream.name, req.method, res.statusCode, (performance.now() - started) / 1000));
    // Never cache (or serve from cache) what a credentialed request saw: it may be that user's alone.
    const cacheKey = req.method === 'GET' && req.headers.authorization === undefined ? req.originalUrl : undefined;
    const ex = new Exchange(req, res, cacheKey);
    exchanges.set(req, ex);
    setUpstreamHeaders(req, trustsProxies);
    try {
      // A timeout while the client is still sending its body is the client's doing, unless the
      // body is stuck because the service stopped reading it.
      const clientStalled = () => !req.complete && !ex.proxyReq?.writableNeedDrain;
      await upstream.breaker.run((signal) => ex.start(signal, proxy, upstream.name), { clientStalled });
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
 * The headers the service gets beside the client's, written into req.headers (http-proxy copies
 * them when it builds the upstream request; setting them on the upstream request itself can come
 * after its headers are sent when it waits for a pooled socket). X-Forwarded-For is ours: the
 * client's claim survives only as far as `trust proxy` believes it. The trace headers are set
 * with the client span, in Exchange.start.
 */
function setUpstreamHeaders(req: Request, trustsProxies: boolean): void {
  const headers = req.headers;
  const peer = req.socket.remoteAddress ?? '';
  const trusted = trustsProxies ? req.ips : [];
  headers['x-forwarded-for'] = trusted.length ? `${trusted.join(', ')}, ${peer}` : peer;
  headers['x-forwarded-proto'] = req.protocol;
  const host = req.host;
  if (host) headers['x-forwarded-host'] = host;
  else delete headers['x-forwarded-host'];
  delete headers.forwarded;
  // Node already answered `100 Continue` to the client; the service need not be asked again.
  delete headers.expect;
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
