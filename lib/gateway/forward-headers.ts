// Pure rules for which request and response headers cross the gateway (RFC 9110 7.6.1 and our
// own: trace ids, client-address claims, the body's framing). No I/O: the proxy reads these.
import { CLIENT_ADDRESS_HEADER, CLIENT_ADDRESS_SIGNATURE_HEADER } from '../platform/client-address.js';

/**
 * Response headers the client never gets from the service: the service's own trace headers (the
 * gateway's replace them) and hop-by-hop ones, besides whatever the response's `Connection` names.
 */
const UPSTREAM_ONLY_HEADERS = new Set(['x-trace-id', 'x-span-id', 'x-response-time', 'keep-alive', 'connection', 'transfer-encoding', 'proxy-connection', 'proxy-authenticate', 'trailer', 'upgrade', 'te']);

/**
 * Request headers the service never gets from the client: hop-by-hop ones (RFC 9110 7.6.1, and
 * HTTP2-Settings, RFC 7540 3.2.1), credentials meant for a proxy, the framing (the proxy frames the
 * body itself, see `upstreamRequestHeaders`), the ones we set ourselves, and the client's claims
 * about its address or the URL, which a service or a proxy behind us might believe.
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
/** Node's client sends a body (chunked) by default on every method but these; see `upstreamRequestHeaders`. */
const NO_DEFAULT_BODY = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/**
 * The header names a `Connection` value lists (RFC 9110 7.6.1), lower-cased and trimmed, or
 * undefined when it names none. Node joins repeated `Connection` headers with ", ", so every one
 * of them counts; its header size limit bounds the work.
 */
export function connectionNamed(connection: string | string[] | undefined): Set<string> | undefined {
  if (connection === undefined) return undefined;
  const value = typeof connection === 'string' ? connection : connection.join(',');
  // The common cases, without a split: `keep-alive`, `close`.
  if (CONNECTION_OPTIONS.has(value) || CONNECTION_OPTIONS.has(value.toLowerCase())) return undefined;
  let names: Set<string> | undefined;
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase();
    if (CONNECTION_OPTIONS.has(name)) continue;
    (names ??= new Set()).add(name);
  }
  return names;
}

/**
 * Whether a request header from the client is dropped on its way to the service. A name with an
 * underscore is dropped too (as nginx does by default): a CGI-style backend maps `-` and `_` to one
 * name, so `X_Forwarded_For` would pass for the `X-Forwarded-For` the gateway sets.
 */
function isClientOnly(name: string, named: Set<string> | undefined): boolean {
  return CLIENT_ONLY_HEADERS.has(name) || named?.has(name) === true || name.includes('_');
}

/** Whether a response header from the service is dropped on its way to the client. */
export function isUpstreamOnly(name: string, named: Set<string> | undefined): boolean {
  return UPSTREAM_ONLY_HEADERS.has(name) || named?.has(name) === true;
}

/**
 * What the gateway knows of the client's request: the parts of Express's Request read here, so
 * that tests can pass plain objects.
 */
export interface ClientRequestView {
  method: string;
  /** Name/value pairs as received. */
  rawHeaders: string[];
  /** The parsed headers: repeated ones joined. */
  headers: Record<string, string | string[] | undefined>;
  /** The addresses `trust proxy` believes, farthest first; read only when `trustsProxies`. */
  ips: string[];
  protocol: string;
  /** The Host the client asked for, if any. */
  host: string | undefined;
  socket: { remoteAddress?: string };
}

/**
 * Requests whose Authorization is not passed on: a token that a public route found invalid (the
 * request goes on as anonymous). The header stays on the request, so that what reads it (the stale
 * cache) still sees a credential that did not verify.
 */
const withheld = new WeakSet<object>();

/** The service will not get this request's Authorization. */
export function withholdCredential(req: object): void {
  withheld.add(req);
}

/** The signed X-Client-Address headers for an address. */
export type ClientAddressHeaders = (address: string) => Record<string, string>;

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
export function upstreamRequestHeaders(req: ClientRequestView, trustsProxies: boolean, host: string, trace: Record<string, string>, clientAddress?: ClientAddressHeaders): string[] {
  const out: string[] = [];
  const raw = req.rawHeaders;
  const incoming = req.headers;
  const named = connectionNamed(incoming.connection);
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (isClientOnly(name, named) || (name === 'authorization' && withheld.has(req))) continue;
    out.push(name, raw[i + 1]);
  }
  out.push('host', host);
  const peer = req.socket.remoteAddress ?? '';
  const trusted = trustsProxies ? req.ips : [];
  out.push('x-forwarded-for', trusted.length ? `${trusted.join(', ')}, ${peer}` : peer);
  // The nearest untrusted address: the first of the trusted list (farthest-first order), read once.
  const client = trusted.length ? trusted[0] : peer;
  out.push('x-real-ip', client);
  // The same address, signed: what the user service counts logins and sign-ups by.
  if (clientAddress) for (const [name, value] of Object.entries(clientAddress(client))) out.push(name, value);
  out.push('x-forwarded-proto', req.protocol);
  const forwardedHost = req.host;
  if (forwardedHost) out.push('x-forwarded-host', forwardedHost);
  for (const name in trace) out.push(name, trace[name]);
  const length = incoming['content-length'];
  if (typeof length === 'string') out.push('content-length', length);
  else if (incoming['transfer-encoding'] !== undefined) out.push('transfer-encoding', 'chunked');
  else if (!NO_DEFAULT_BODY.has(req.method)) out.push('content-length', '0');
  return out;
}
