// Refuses request paths that could climb out of a service's prefix once something decodes them.
import type { Request } from 'express';
import { HttpError } from '../platform/errors.js';

const DOT_SEGMENT = /(?:^|\/)\.{1,2}(?:\/|$)/;
// Control characters are exactly what this looks for.
// eslint-disable-next-line no-control-regex
const CONTROL_OR_BACKSLASH = /[\\\x00-\x1f\x7f]/;
/** `%252e` needs two rounds to show its dot; nobody needs more than a few. */
const MAX_DECODE_ROUNDS = 4;

/**
 * True when the path holds a `.`/`..` segment, a backslash or a control character, as sent or
 * after any number of rounds of percent-decoding (`%2e%2e/`, `..%2F`, `%252e`, `%5c`), or when
 * it cannot be decoded at all.
 */
function isUnsafePath(path: string): boolean {
  let current = path;
  for (let round = 0; round <= MAX_DECODE_ROUNDS; round++) {
    if (CONTROL_OR_BACKSLASH.test(current) || DOT_SEGMENT.test(current)) return true;
    if (!current.includes('%')) return false;
    let decoded: string;
    try {
      decoded = decodeURIComponent(current);
    } catch {
      return true;
    }
    if (decoded === current) return false;
    current = decoded;
  }
  return true;
}

/** Whether the path part of a request URL (the query string is the service's business) is unsafe. */
function isUnsafeRequestPath(url: string): boolean {
  const query = url.indexOf('?');
  const path = query === -1 ? url : url.slice(0, query);
  return !path.startsWith('/') || isUnsafePath(path);
}

const unsafePathError = (): HttpError =>
  new HttpError(400, 'VALIDATION_ERROR', 'Invalid request path', [
    { field: 'path', message: 'must not contain dot segments, backslashes or control characters, plain or percent-encoded' },
  ]);

/** The proxied pipeline's guard step: 400 before anything is proxied. */
export const guardPath = (req: Request): HttpError | undefined => (isUnsafeRequestPath(req.originalUrl) ? unsafePathError() : undefined);
