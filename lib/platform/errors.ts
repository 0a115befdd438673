// One error type for everything a client should hear about, and one handler that answers it.
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { ZodError } from 'zod';
import type { Logger } from 'pino';
import { newTraceId } from './trace-context.js';

export interface ErrorDetail {
  field: string;
  message: string;
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: ErrorDetail[],
    /** Extra top-level fields of the body, e.g. `retryAfter`. */
    readonly extra?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export const notFound = (what = 'Resource') => new HttpError(404, 'NOT_FOUND', `${what} not found`);

export function validationError(err: ZodError, where: 'body' | 'query' | 'params' = 'body'): HttpError {
  const details = err.issues.slice(0, 20).map((issue) => {
    const path = issue.path.map(String).join('.');
    const keys = issue.code === 'unrecognized_keys' ? issue.keys : undefined;
    return {
      field: keys ? keys.map((k) => (path ? `${path}.${k}` : k)).join(', ') : path || where,
      message: keys ? 'unknown field' : issue.message,
    };
  });
  return new HttpError(400, 'VALIDATION_ERROR', `Invalid request ${where}`, details);
}

/** 503 STORAGE_UNAVAILABLE: the database cannot be reached or refused to work; the client may retry. */
export class StorageUnavailableError extends HttpError {
  constructor() {
    super(503, 'STORAGE_UNAVAILABLE', 'The data store is unavailable; try again shortly');
  }
}

// SQLite (extended codes start with these): the disk is full or cannot be read or written, the
// file cannot be opened, is not writable or not a database, another process holds the lock past
// busy_timeout. Not the request's fault and not a bug in the code: a 503, never a 500.
const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|IOERR|FULL|CANTOPEN|READONLY|PERM|CORRUPT|NOTADB|PROTOCOL|NOLFS)/;
// PostgreSQL SQLSTATEs: class 08 (connection exception), 53 (insufficient resources), 57P0x
// (shutdown, cannot connect now), 57014 (statement timeout), 40001/40P01 (serialization failure,
// deadlock: the client may retry).
const PG_UNAVAILABLE = /^(08|53|57P0|57014|40001|40P01)/;
const NET_UNAVAILABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EPIPE', 'EAI_AGAIN']);
// pg's own words for a pool or connection that gave up, or a client whose connection broke
// earlier (no code is set on these).
const PG_GAVE_UP = /timeout exceeded when trying to connect|Connection terminated|Query read timeout|connection timeout|not queryable/i;

const codeOf = (err: unknown): string => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : '';
};

/**
 * The error to throw for a statement that failed in the database layer (either engine): a 503
 * STORAGE_UNAVAILABLE when the store itself is unavailable, a 400 for a value PostgreSQL will not
 * take, else the error itself (a constraint the store handles, or a bug). Only for errors of the
 * database: a network code here means the database's connection.
 */
export function storageError(err: unknown): unknown {
  if (err instanceof HttpError) return err;
  const code = codeOf(err);
  if (code.startsWith('SQLITE_')) return SQLITE_UNAVAILABLE.test(code) ? new StorageUnavailableError() : err;
  if (NET_UNAVAILABLE.has(code) || PG_UNAVAILABLE.test(code)) return new StorageUnavailableError();
  // Class 22, data exception: a value PostgreSQL will not take (a NUL in text, a number out of a
  // column's range). The request's fault, as SQLite would have stored or compared it: a 400, never
  // a 500 that counts against the service's health at the gateway.
  if (/^22/.test(code)) return new HttpError(400, 'BAD_REQUEST', 'A value in the request cannot be stored or compared');
  const message = (err as { message?: unknown } | null)?.message;
  if (typeof message === 'string' && PG_GAVE_UP.test(message)) return new StorageUnavailableError();
  return err;
}

// body-parser (under express.json) marks its errors with `type`: status, code and message per type.
const BODY_ERRORS: ReadonlyMap<string, readonly [status: number, code: string, message: string]> = new Map([
  ['entity.parse.failed', [400, 'INVALID_JSON', 'Request body is not valid JSON']],
  ['entity.too.large', [413, 'PAYLOAD_TOO_LARGE', 'Request body is too large']],
  ['encoding.unsupported', [415, 'UNSUPPORTED_ENCODING', 'Request body must not be compressed (Content-Encoding: identity only)']],
  ['charset.unsupported', [415, 'UNSUPPORTED_MEDIA_TYPE', 'Unsupported charset: JSON bodies are UTF-8']],
  ['request.aborted', [400, 'BAD_REQUEST', 'Request aborted']],
  ['request.size.invalid', [400, 'BAD_REQUEST', 'Request body size does not match Content-Length']],
]);

/** Maps anything thrown to the HttpError the client gets. */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof ZodError) return validationError(err);
  const e = err as { type?: unknown; status?: number; code?: unknown };
  const bodyError = typeof e?.type === 'string' ? BODY_ERRORS.get(e.type) : undefined;
  if (bodyError) return new HttpError(...bodyError);
  // The database layer maps its errors as it throws them; a SQLite code is unmistakable wherever
  // it comes from (a network code is not: it may be another service's).
  if (SQLITE_UNAVAILABLE.test(codeOf(err))) return new StorageUnavailableError();
  // The rest that libraries mark as the client's fault (a body that cannot be read or decoded, a
  // path parameter that cannot be percent-decoded): a client's input is never a server fault.
  const status = typeof e?.status === 'number' ? e.status : (e as { statusCode?: unknown })?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpError(400, 'BAD_REQUEST', 'The request could not be read');
  }
  return new HttpError(500, 'INTERNAL_ERROR', 'Internal server error');
}

function errorBody(err: HttpError, traceId: string | undefined): Record<string, unknown> {
  return {
    error: err.message,
    code: err.code,
    ...(err.details?.length ? { details: err.details } : {}),
    ...err.extra,
    traceId,
  };
}

/**
 * Answers `err` in the contract's shape. Error answers are never cached and never sniffed: they
 * may name what a client sent. The trace id is the request's, as requestContext set it.
 */
export function sendError(res: Response, err: HttpError): void {
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Cache-Control', 'no-store');
  res.status(err.status).json(errorBody(err, res.locals.trace?.traceId));
}

interface KnownRoute {
  method: string;
  /** Express form: `/users/:id`. */
  path: string;
}

// `/users/:id` -> /^\/users\/[^/]+$/: the route shapes our routers register (no wildcards).
function pathMatcher(path: string): RegExp {
  const pattern = path
    .split('/')
    .map((segment) => (segment.startsWith(':') ? '[^/]+' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/');
  return new RegExp(`^${pattern}/?$`);
}

/**
 * The last route of an app: 405 with `Allow` when the path exists under other methods (RFC 9110
 * 15.5.6), else 404. Neither names the path: behind the gateway the service sees its own path,
 * not the one the client sent, and internal paths are not the client's business.
 */
export function routeNotFound(routes: readonly KnownRoute[]): RequestHandler {
  const known = routes.map((route) => ({ method: route.method.toUpperCase(), match: pathMatcher(route.path) }));
  return (req, res) => {
    const allowed = new Set(known.filter((route) => route.match.test(req.path)).map((route) => route.method));
    if (allowed.size > 0 && !allowed.has(req.method)) {
      if (allowed.has('GET')) allowed.add('HEAD');
      const allow = [...allowed].sort().join(', ');
      res.setHeader('Allow', allow);
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${req.method.slice(0, 20)} is not allowed here; allowed: ${allow}`);
    }
    throw new HttpError(404, 'NOT_FOUND', `No route for ${req.method.slice(0, 20)} on this path`);
  };
}

/** JSON 404 for any route no router answered, where the app lists no routes. */
export const notFoundHandler: RequestHandler = routeNotFound([]);

/** The last middleware of every app. Never leaks stacks, SQL or paths: only the HttpError's message. */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    const httpError = toHttpError(err);
    const request = { method: req.method, url: req.originalUrl.slice(0, 500) };
    if (httpError.status < 500) logger.debug({ req: request, status: httpError.status, code: httpError.code }, 'request rejected');
    // A failure we classified ourselves (an open circuit, a dependency down, a timeout) is one
    // line without a stack; only what we did not expect (500) carries the error and its stack.
    else if (err instanceof HttpError) logger.warn({ req: request, status: httpError.status, code: httpError.code, failure: err.message }, 'request failed');
    else logger.error({ err, req: request, status: httpError.status }, 'request failed');
    if (res.headersSent) {
      // Too late for a clean answer: cut the connection so the client sees a failure, not a truncated 200.
      res.destroy();
      return;
    }
    // The answer is a dependency's fault, not this service's: callers' breakers read this header.
    if (typeof httpError.extra?.dependency === 'string') res.setHeader('X-Dependency-Failure', httpError.extra.dependency);
    // 503, 429, and 409 IDEMPOTENCY_KEY_IN_USE: whichever names a retry time says it in the header too.
    const retry = httpError.extra?.retryAfter;
    if (typeof retry === 'number' && !res.getHeader('retry-after')) res.setHeader('Retry-After', String(retry));
    sendError(res, httpError);
  };
}

/**
 * The server's `clientError` listener: bytes Node's parser refuses (ambiguous framing, obs-fold,
 * bare LF, headers too large, an unknown method, a chunked body whose framing breaks) get the
 * contract's error, then the connection closes. Answers to earlier requests on the connection
 * still on their way go out first.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  // Bytes after a request that said `Connection: close`: they are not read (RFC 9112 9.6), and
  // Node closes the connection once that request's answer is out. A connection already refused
  // reads nothing more either.
  if (err.code === 'HPE_CLOSED_CONNECTION' || refusing.has(socket)) return;
  const pending = (socket as { _httpMessage?: ServerResponse })._httpMessage;
  // The answer in progress is the broken request's own (an earlier request would have been read
  // whole before this one was parsed) and none of it is out yet: the 400 may take its place. The
  // connection is then destroyed: the request's handlers see their client gone, as on a reset.
  const ownAnswer = pending !== undefined && pending !== null && !pending.headersSent && pending.req?.complete === false;
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, code, message] =
    err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'HEADERS_TOO_LARGE', 'Request headers are too large']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'REQUEST_TIMEOUT', 'The request did not arrive in time']
    : [400, 'BAD_REQUEST', 'Malformed HTTP request'];
  // The broken request's own trace, when it got one, so that the answer leads to its log line.
  const own = ownAnswer ? (pending as { locals?: { trace?: { traceId?: unknown } } }).locals?.trace?.traceId : undefined;
  const answer = rawErrorAnswer(status, code, message, typeof own === 'string' ? own : newTraceId());
  if (ownAnswer) return void socket.end(answer, () => socket.destroy());
  // Requests read before the broken one are answered first, in order; nothing after it is read.
  if (pending) return answerAfterPending(socket, answer);
  socket.end(answer);
}

type AnsweringSocket = Duplex & { _httpMessage?: ServerResponse | null };
/** Connections whose refusal waits for the answers before it: what else they send is not read. */
const refusing = new WeakSet<Duplex>();

/** Sends `answer` and ends the connection once every answer Node queued on it before has gone out. */
function answerAfterPending(socket: AnsweringSocket, answer: string): void {
  refusing.add(socket);
  const next = (): void => {
    if (socket.destroyed) return;
    const current = socket._httpMessage;
    // Node hands the socket to the next queued answer as one finishes, within the same turn.
    if (current) return void current.once('close', () => setImmediate(next));
    if (socket.writable) socket.end(answer);
  };
  next();
}

/** An error answer in the contract's shape, for bytes that never became a request: its head and body; the connection closes after it. */
function closingErrorAnswer(code: string, message: string, traceId = newTraceId()): { headers: Record<string, string>; body: string } {
  const body = JSON.stringify({ error: message, code, traceId });
  return {
    headers: {
      'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(body)), 'X-Trace-Id': traceId,
      'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'no-store', Connection: 'close',
    },
    body,
  };
}

/** closingErrorAnswer as bytes, for a connection no response object answers on. */
function rawErrorAnswer(status: number, code: string, message: string, traceId?: string): string {
  const { headers, body } = closingErrorAnswer(code, message, traceId);
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n`;
  for (const name in headers) head += `${name}: ${headers[name]}\r\n`;
  return `${head}\r\n${body}`;
}

/**
 * The server's `connect` listener: none of our processes is a forward proxy, so CONNECT is a 400
 * in the contract's shape (Node would otherwise close the connection without a word).
 */
export function answerConnect(_req: IncomingMessage, socket: Duplex): void {
  socket.on('error', () => socket.destroy());
  socket.end(rawErrorAnswer(400, 'BAD_REQUEST', 'CONNECT is not supported: this is not a forward proxy'));
}

/**
 * The server's `checkExpectation` listener: an `Expect` other than 100-continue cannot be met
 * (RFC 9110 10.1.1), a 417 in the contract's shape. The body, if any, is not read: the connection closes.
 */
export function answerExpectation(_req: IncomingMessage, res: ServerResponse): void {
  const { headers, body } = closingErrorAnswer('EXPECTATION_FAILED', 'Only Expect: 100-continue is supported');
  res.writeHead(417, headers).end(body);
}
