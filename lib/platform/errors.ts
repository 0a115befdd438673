// One error type for everything a client should hear about, and one handler that answers it.
import type { ErrorRequestHandler, RequestHandler } from 'express';
import { ZodError } from 'zod';
import type { Logger } from 'pino';
import { currentTrace } from './trace-context.js';

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

// SQLite result codes that mean "the database cannot be written now", not "a bug".
const STORAGE_CODES = /^SQLITE_(FULL|READONLY|IOERR|CANTOPEN|BUSY|LOCKED|PERM|CORRUPT|NOTADB)/;

/** Maps anything thrown to the HttpError the client gets. */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof ZodError) return validationError(err);
  const e = err as { type?: string; status?: number; code?: unknown };
  // body-parser (under express.json) marks its errors with `type`.
  switch (e?.type) {
    case 'entity.parse.failed':
      return new HttpError(400, 'INVALID_JSON', 'Request body is not valid JSON');
    case 'entity.too.large':
      return new HttpError(413, 'PAYLOAD_TOO_LARGE', 'Request body is too large');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'Unsupported content encoding or charset');
    case 'request.aborted':
      return new HttpError(400, 'BAD_REQUEST', 'Request aborted');
    case 'request.size.invalid':
      return new HttpError(400, 'BAD_REQUEST', 'Request body size does not match Content-Length');
    default:
  }
  if (typeof e?.code === 'string' && STORAGE_CODES.test(e.code)) {
    return new HttpError(503, 'STORAGE_UNAVAILABLE', 'Storage is temporarily unavailable');
  }
  return new HttpError(500, 'INTERNAL_ERROR', 'Internal server error');
}

export function errorBody(err: HttpError, traceId = currentTrace()?.traceId): Record<string, unknown> {
  return {
    error: err.message,
    code: err.code,
    ...(err.details?.length ? { details: err.details } : {}),
    ...err.extra,
    traceId,
  };
}

/** JSON 404 for any route no router answered. */
export const notFoundHandler: RequestHandler = (req) => {
  throw new HttpError(404, 'NOT_FOUND', `No route for ${req.method} ${req.path.slice(0, 200)}`);
};

/** The last middleware of every app. Never leaks stacks, SQL or paths: only the HttpError's message. */
export function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const httpError = toHttpError(err);
    const logged = { err, req: { method: req.method, url: req.originalUrl.slice(0, 500) }, status: httpError.status };
    if (httpError.status >= 500) logger.error(logged, 'request failed');
    else logger.debug(logged, 'request rejected');
    if (res.headersSent) {
      // Too late for a clean answer: cut the connection so the client sees a failure, not a truncated 200.
      res.destroy();
      return;
    }
    // The answer is a dependency's fault, not this service's: callers' breakers read this header.
    if (typeof httpError.extra?.dependency === 'string') res.setHeader('X-Dependency-Failure', httpError.extra.dependency);
    if (httpError.status === 503 || httpError.status === 429) {
      const retry = httpError.extra?.retryAfter;
      if (typeof retry === 'number' && !res.getHeader('retry-after')) res.setHeader('Retry-After', String(retry));
    }
    res.status(httpError.status).json(errorBody(httpError));
  };
}
