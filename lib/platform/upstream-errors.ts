// What went wrong on a call to another service, read from the error Node or fetch raised. The
// gateway's proxy and the ServiceClient both name failures this way, so a kind means one thing
// in metrics, logs and breakers.

export type UpstreamFailure = 'refused' | 'reset' | 'timeout' | 'bad_response' | 'server_error';

/** The code of the error a bounded reader throws for a body over its limit. */
export const RESPONSE_TOO_LARGE = 'ERR_RESPONSE_TOO_LARGE';

// Nothing reached the service: no address, no route, or no listener.
const REFUSED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
// The connection or the answer took too long at the socket level (our own deadline aside).
const TIMED_OUT = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * The kind of a failed call. `timedOut` is true when our own deadline ended it. fetch puts the
 * socket's error under `cause`; http.request raises it directly. Anything unrecognised broke an
 * open connection: `reset`.
 */
export function classifyUpstreamError(err: unknown, timedOut = false): UpstreamFailure {
  if (timedOut) return 'timeout';
  const code = errorCode(err) ?? errorCode((err as { cause?: unknown } | null)?.cause) ?? '';
  if (REFUSED.has(code)) return 'refused';
  if (TIMED_OUT.has(code)) return 'timeout';
  if (code === RESPONSE_TOO_LARGE || code.startsWith('HPE_')) return 'bad_response';
  return 'reset';
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
