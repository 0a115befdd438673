// Express building blocks every process uses. Each app puts them in one order (service-app.ts for
// the services, the gateway's app.ts for the gateway): trace id -> body limits -> (rate limit) ->
// routes -> 404 -> error handler.
import { IncomingMessage, ServerResponse, type IncomingHttpHeaders } from 'node:http';
import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import { SpanStatusCode, type Attributes, type Span } from '@opentelemetry/api';
import { ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_HTTP_ROUTE, ATTR_URL_PATH } from '@opentelemetry/semantic-conventions';
import type { Logger } from 'pino';
import { HttpError } from './errors.js';
import { bindToTrace, runWithTrace, traceFromHeaders, type TraceContext } from './trace-context.js';
import { ALIAS_ATTRIBUTE, type Tracing } from './span-recorder.js';
import { requestLineWriter, type RequestLineWriter } from './logger.js';

const BODY_LIMIT_BYTES = 100 * 1024;
/** Deeper JSON parses, but later makes JSON.stringify and zod recurse too far: refuse it up front. */
const MAX_JSON_DEPTH = 32;

declare module 'express-serve-static-core' {
  interface Locals {
    trace: TraceContext;
    /** The route pattern, for handlers that are not Express routes (the gateway's proxy). */
    route?: string;
  }
}

/** An Express app with the settings every process shares. */
export function createBaseApp(): Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  // Query strings stay flat strings (no nested objects from `a[b]=c`).
  app.set('query parser', 'simple');
  // Every response of this app (Express's or the front door's, which share this prototype) is
  // stamped when its headers go out: one method on the prototype, nothing per request.
  app.response.writeHead = writeHeadTimed as Response['writeHead'];
  return app;
}

// Called with apply on each response.
// eslint-disable-next-line @typescript-eslint/unbound-method
const writeHead = ServerResponse.prototype.writeHead;

/** Sets `X-Response-Time` (e.g. `3.2ms`, from requestContext's clock) just before the headers are written. */
const writeHeadTimed = function (this: WithState, ...args: Parameters<typeof writeHead>) {
  const state = this[STATE];
  if (state !== undefined && !this.headersSent && !this.hasHeader('x-response-time')) {
    this.setHeader('X-Response-Time', `${(performance.now() - state.started).toFixed(1)}ms`);
  }
  return writeHead.apply(this, args);
} as typeof writeHead;

/**
 * Request and response classes for a server whose objects are Express's from the start: the
 * prototypes Express would switch each request to (with `req.ip`, `res.json()` and the app's
 * settings), so that a request handled before the router needs none of its per-request set-up.
 */
export function expressServerClasses(app: Express): { IncomingMessage: typeof IncomingMessage; ServerResponse: typeof ServerResponse } {
  class ExpressRequest extends IncomingMessage {}
  Object.setPrototypeOf(ExpressRequest.prototype, app.request);
  class ExpressResponse<R extends IncomingMessage = IncomingMessage> extends ServerResponse<R> {}
  Object.setPrototypeOf(ExpressResponse.prototype, app.response);
  return { IncomingMessage: ExpressRequest, ServerResponse: ExpressResponse };
}

// Requests that only read our own telemetry (and the dashboard's page and stream) get ids but no
// span: they would crowd out real traces. Their log line is at debug, as is a 429's (counted in
// gateway_rate_limited_total): probes, scrapes and refused floods would drown the lines people read.
const UNTRACED = /^\/(health|metrics|spans|traces|dashboard)(\/|$)/;

/**
 * Called once when a request that was answered in full ends (not for one the client gave up on),
 * with the time since it arrived: metrics hang here rather than timing the request again.
 */
export type RequestObserver = (req: Request, res: Response, durationMs: number) => void;

/** What requestContext keeps per request for its one 'close' listener. */
interface RequestState {
  writeLine: RequestLineWriter;
  /** performance.now() when the request arrived. */
  started: number;
  span: Span | undefined;
  observers: readonly RequestObserver[];
  /** Log the request line at debug rather than info. */
  quiet: boolean;
  /** What later steps asked to run on the response's 'close', in the order they asked, after the line. */
  closeHooks: Array<(this: Response) => void> | undefined;
}

const STATE = Symbol('msvc.requestState');
const CLOSE_RELAYED = Symbol('msvc.closeRelayed');
type WithState = Response & { [STATE]?: RequestState; [CLOSE_RELAYED]?: true };

// One shared listener (no closure per request): it finds the request's state on the response.
function onClose(this: Response): void {
  const res = this as WithState;
  const state = res[STATE];
  if (!state) return;
  res[STATE] = undefined;
  const req = res.req;
  const trace = res.locals.trace;
  const durationMs = Math.round((performance.now() - state.started) * 10) / 10;
  const status = res.statusCode;
  const aborted = !res.writableFinished;
  const { span } = state;
  if (span) {
    const route = routeOf(req, res);
    span.updateName(route ? `${req.method} ${route}` : req.method);
    if (route) span.setAttribute(ATTR_HTTP_ROUTE, route);
    span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
    if (status >= 500 || aborted) span.setStatus({ code: SpanStatusCode.ERROR, message: aborted ? 'aborted' : `HTTP ${status}` });
    span.end();
  }
  if (!aborted) for (const observe of state.observers) observe(req, res, durationMs);
  state.writeLine({ traceId: trace.traceId, spanId: trace.spanId, method: req.method, url: req.originalUrl.slice(0, 300), status, durationMs, aborted }, state.quiet || status === 429);
  if (state.closeHooks) for (const hook of state.closeHooks) hook.call(res);
}

/**
 * For a server whose own listener sees each response's 'close' already: requestContext then adds
 * none (one listener per response is cheaper than two), and that listener calls requestClosed(res).
 */
export function relaysClose(res: ServerResponse): void {
  (res as WithState)[CLOSE_RELAYED] = true;
}

/** What requestContext's listener would do on the response's 'close' (once; nothing without a context). */
export function requestClosed(res: ServerResponse): void {
  onClose.call(res as Response);
}

/**
 * Runs `hook` (with the response as `this`) when the response closes, as a 'close' listener would:
 * once, and never if it has closed already. Under requestContext it rides on the context's own
 * listener, which spares an EventEmitter listener (and its array) per step and request.
 */
export function onResponseClose(res: Response, hook: (this: Response) => void): void {
  const state = (res as WithState)[STATE];
  if (state === undefined) res.on('close', hook);
  else if (state.closeHooks === undefined) state.closeHooks = [hook];
  else state.closeHooks.push(hook);
}

/**
 * Accepts or makes the trace id, echoes it (`X-Trace-Id`, `X-Span-Id`), records the server span,
 * times the request (`X-Response-Time`) and logs one line when it ends. Everything after it runs
 * inside the trace. Handlers that are not Express routes may name their route in
 * `res.locals.route` (span names and metrics must not carry raw URLs). `observers` see every
 * request answered in full, timed by the same clock.
 */
export function requestContext(logger: Logger, tracing?: Tracing, observers: readonly RequestObserver[] = []): RequestHandler {
  const writeLine = requestLineWriter(logger);
  return (req, res, next) => {
    // The path without Express's URL parsing for the usual origin-form URL (this runs on every
    // request); absolute-form URLs and fragments go through req.path, which strips them.
    const url = req.url;
    const query = url.indexOf('?');
    const path = url.charCodeAt(0) === 47 /* / */ && !url.includes('#') ? (query === -1 ? url : url.slice(0, query)) : req.path;
    const quiet = UNTRACED.test(path);
    const traced = tracing !== undefined && !quiet;
    const trace = traceFromHeaders(req.headers, !traced);
    res.locals.trace = trace;
    const state: RequestState = { writeLine, started: performance.now(), span: undefined, observers, quiet, closeHooks: undefined };
    (res as WithState)[STATE] = state;
    const run = (span?: Span) => {
      state.span = span;
      res.setHeader('X-Trace-Id', trace.traceId);
      res.setHeader('X-Span-Id', trace.spanId);
      // 'close' comes once: a plain listener spares the once-wrapper made and removed per request.
      if (!(res as WithState)[CLOSE_RELAYED]) res.on('close', onClose);
      next();
    };
    if (!traced) return runWithTrace(trace, run);
    const attributes: Attributes = { [ATTR_HTTP_REQUEST_METHOD]: req.method, [ATTR_URL_PATH]: path.slice(0, 256) };
    if (trace.traceId !== trace.w3cTraceId) attributes[ALIAS_ATTRIBUTE] = trace.traceId;
    tracing.runServerSpan(trace, req.method, attributes, run);
  };
}

export function routeOf(req: Request, res: Response): string | undefined {
  if (typeof res.locals.route === 'string') return res.locals.route;
  const route = req.route as { path: unknown } | undefined;
  return route ? `${req.baseUrl}${String(route.path)}` : undefined;
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);
// The charset parameter of a Content-Type, quoted or not.
const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/i;

function jsonDepthExceeds(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth > max) return true;
    for (const child of Object.values(v)) if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
  }
  return false;
}

/**
 * JSON bodies only, at most 100 kB, at most MAX_JSON_DEPTH deep, UTF-8 and not compressed. A body
 * of another type on POST/PUT/PATCH is 415 UNSUPPORTED_MEDIA_TYPE, a compressed one 415
 * UNSUPPORTED_ENCODING (inflating would let a small request cost a large body's work, and a broken
 * one must not become a server error); a missing body leaves `req.body` undefined for the route's
 * schema to refuse.
 */
export function jsonBody(limitBytes = BODY_LIMIT_BYTES): RequestHandler {
  const parse = express.json({ limit: limitBytes, strict: true, inflate: false, type: ['application/json', 'application/*+json'] });
  return (req, res, next) => {
    if (!BODY_METHODS.has(req.method) || !hasBody(req.headers)) return next();
    if (!req.is(['application/json', 'application/*+json'])) {
      throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'Request body must be application/json');
    }
    // body-parser would decode any utf-* charset (UTF-16, UTF-7) into garbage that then reads as a
    // client's JSON mistake; JSON is UTF-8 (RFC 8259 8.1), and anything else is refused as such.
    const charset = CHARSET.exec(req.headers['content-type'] ?? '')?.[1];
    if (charset !== undefined && charset.toLowerCase() !== 'utf-8') {
      throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'Unsupported charset: JSON bodies are UTF-8');
    }
    // body-parser calls back from stream events, outside the request's trace: re-enter it.
    parse(req, res, bindToTrace((err?: unknown) => {
      if (err) return next(err);
      if (jsonDepthExceeds(req.body, MAX_JSON_DEPTH)) {
        return next(new HttpError(400, 'INVALID_JSON', `JSON nested deeper than ${MAX_JSON_DEPTH} levels`));
      }
      next();
    }));
  };
}

/** Whether a request announces a body: chunked, or a Content-Length other than 0. */
export function hasBody(headers: IncomingHttpHeaders): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = headers['content-length'];
  return typeof length === 'string' && length !== '0';
}
