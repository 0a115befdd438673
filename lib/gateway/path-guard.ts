// Refuses request paths that could climb out of a service's prefix once something decodes them.
import type { Request } from 'express';
import { HttpError } from '../platform/errors.js';

const DOT_SEGMENT = /(?:^|\/)\.{1,2}(?:\/|$)/;
// Control characters are exactly what this looks for.
// eslint-disable-next-line no-control-regex
const CONTROL_OR_BACKSLASH = /[\\\x00-\x1f\x7f]/;
/** `%252e` needs two rounds to show its dot; nobody needs more than a few. */
const MAX_DECODE_ROUNDS = 4;
const ESCAPE_RUN = /(?:%[0-9a-f]{2})+/gi;

/** Each run of escapes decoded where it can be, the rest kept as sent. */
const decodeWhatCan = (path: string): string => path.replace(ESCAPE_RUN, (run) => {
  try {
    return decodeURIComponent(run);
  } catch {
    return run;
  }
});

type PathFault = 'unsafe' | 'undecodable';

/**
 * `unsafe` when the path holds a `.`/`..` segment, a backslash or a control character, as sent or
 * after any number of rounds of percent-decoding (`%2e%2e/`, `..%2F`, `%252e`, `%5c`), or when a
 * later round cannot be decoded (what it hides cannot be checked); `undecodable` when the path as
 * sent is not valid percent-encoding, which the services would refuse as unreadable too, unless
 * what can be decoded of it is unsafe (`%2e%2e/%zz` is a climb first).
 */
function pathFault(path: string, rounds = MAX_DECODE_ROUNDS): PathFault | undefined {
  let current = path;
  for (let round = 0; round <= rounds; round++) {
    if (CONTROL_OR_BACKSLASH.test(current) || DOT_SEGMENT.test(current)) return 'unsafe';
    if (!current.includes('%')) return undefined;
    let decoded: string;
    try {
      decoded = decodeURIComponent(current);
    } catch {
      if (round > 0) return 'unsafe';
      const partial = decodeWhatCan(current);
      return partial !== current && pathFault(partial, rounds - 1) === 'unsafe' ? 'unsafe' : 'undecodable';
    }
    if (decoded === current) return undefined;
    current = decoded;
  }
  return 'unsafe';
}

/** What is wrong with the path part of a request URL, if anything (the query string is the service's business). */
function requestPathFault(url: string): PathFault | undefined {
  const query = url.indexOf('?');
  const path = query === -1 ? url : url.slice(0, query);
  return path.startsWith('/') ? pathFault(path) : 'unsafe';
}

const unsafePathError = (): HttpError =>
  new HttpError(400, 'VALIDATION_ERROR', 'Invalid request path', [
    { field: 'path', message: 'must not contain dot segments, backslashes or control characters, plain or percent-encoded' },
  ]);

// The services' own answer to a path Express cannot decode (toHttpError), so the gateway answers alike.
const undecodablePathError = (): HttpError => new HttpError(400, 'BAD_REQUEST', 'The request could not be read');

/** The proxied pipeline's guard step: 400 before anything is proxied. */
export const guardPath = (req: Request): HttpError | undefined => {
  const fault = requestPathFault(req.originalUrl);
  if (fault === undefined) return undefined;
  return fault === 'undecodable' ? undecodablePathError() : unsafePathError();
};
