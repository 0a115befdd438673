// The gateway server's request listener: refuses malformed requests, runs proxied /api/<service>
// requests through the proxied pipeline itself, and hands every other request to the Express app.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { ErrorRequestHandler, Express, Request, RequestHandler, Response } from 'express';
import { HttpError } from '../platform/errors.js';
import { relaysClose, requestClosed } from '../platform/http.js';
import type { Authenticate } from './auth.js';
import { ROUTES, type RouteIndex } from './route-table.js';

/**
 * One step of the proxied pipeline after the request context: undefined lets the request on, an
 * error answers it. A promise of either when the step must ask elsewhere (the rate limit's shared
 * store); the next steps wait for it.
 */
export type Admission = (req: Request, res: Response) => HttpError | undefined | Promise<HttpError | undefined>;

/**
 * The proxied pipeline: the request context, the caller's identity (`authenticate`: synchronous
 * but for the first sight of a token), then `steps` in order (the first to refuse answers), then
 * the service's proxy handler. The front door runs it for the requests it takes; the router runs
 * the same context (app-wide) and the same steps (`middleware`, on /api) for the rest.
 * `admitted` runs once the steps are done, whichever way, before the handler or the refusal
 * answers (what the steps noted goes on the response there: the rate-limit headers).
 * A step that answers a promise holds only its own request: pipelined requests on the connection
 * go on being admitted (and counted) in their arrival order, and Node sends their answers in that
 * order whichever is ready first.
 */
export interface ProxiedPipeline {
  context: RequestHandler;
  /** Runs authenticate and the steps, then `handler` when all let the request on, else `fail`. */
  admit: (req: Request, res: Response, handler: RequestHandler, fail: (err: unknown) => void) => void;
  middleware: RequestHandler;
}

export function createProxiedPipeline(context: RequestHandler, authenticate: Authenticate, steps: readonly Admission[], admitted: (res: Response) => void = noop): ProxiedPipeline {
  const refuse = (res: Response, fail: (err: unknown) => void, err: unknown): void => {
    admitted(res);
    fail(err);
  };
  const proceed = (req: Request, res: Response, handler: RequestHandler, fail: (err: unknown) => void, from = 0): void => {
    for (let i = from; i < steps.length; i++) {
      const refused = steps[i](req, res);
      if (refused === undefined) continue;
      if (refused instanceof Promise) {
        refused.then((err) => (err ? refuse(res, fail, err) : proceed(req, res, handler, fail, i + 1)), (err: unknown) => refuse(res, fail, err));
        return;
      }
      return refuse(res, fail, refused);
    }
    admitted(res);
    const result = handler(req, res, fail);
    if (result instanceof Promise) result.catch(fail);
  };
  const admit = (req: Request, res: Response, handler: RequestHandler, fail: (err: unknown) => void): void => {
    try {
      const checked = authenticate(req, res);
      if (checked === undefined) return proceed(req, res, handler, fail);
      if (checked instanceof Promise) {
        checked.then((err) => (err ? refuse(res, fail, err) : proceed(req, res, handler, fail)), (err: unknown) => refuse(res, fail, err));
        return;
      }
      refuse(res, fail, checked);
    } catch (err) {
      // A step that throws answers like one that refuses.
      refuse(res, fail, err);
    }
  };
  const passOn: RequestHandler = (_req, _res, next) => next();
  return { context, admit, middleware: (req, res, next) => admit(req, res, passOn, next) };
}

/** What the front door runs: the pipeline, the proxy handlers, the error handler, and the app for the rest. */
export interface FrontDoorOptions {
  /** The app for every request the front door does not take, and whose settings it uses. */
  app: Express;
  pipeline: ProxiedPipeline;
  /** The proxy handler of each service, by name. */
  proxies: Map<string, RequestHandler>;
  onError: ErrorRequestHandler;
  /** Requests handled at once by the whole gateway; beyond it 503 OVERLOADED. */
  maxInFlight: number;
  /**
   * What all connections together may hold of parsed but unanswered requests and unsent answers
   * (GATEWAY_MAX_BUFFERED_BYTES); past it the heaviest connections are closed first.
   */
  maxBufferedBytes: number;
  /** Which requests take the fast path; default: the gateway's route table. */
  routes?: RouteIndex;
}

/**
 * res.locals of a request the front door takes, with the fields its pipeline sets declared up
 * front: V8 keeps such an object's properties fast, where an Object.create(null) (what Express
 * makes) is a dictionary, each of a request's twenty-odd reads and writes a hash lookup. Nothing
 * inherited: the prototype holds no properties, and none of Object's.
 */
class ProxiedLocals {
  trace = undefined;
  identity = undefined;
  route = undefined;
  proxiedTo = undefined;
  rateLimitRemaining = undefined;
  rateLimitDue = undefined;
}
Object.setPrototypeOf(ProxiedLocals.prototype, null);
Reflect.deleteProperty(ProxiedLocals.prototype, 'constructor');

const badRequest = (message: string): HttpError => new HttpError(400, 'BAD_REQUEST', message);

/**
 * What Node's parser lets through but RFC 9112 does not, and a proxy must not pass on: a request
 * line without an HTTP version (HTTP/0.9), a fragment in the target, a second Host, and a transfer
 * coding other than chunked (the body would be forwarded still coded, labelled as plain chunked).
 * Node itself refuses Content-Length with Transfer-Encoding, a repeated Content-Length, obs-fold
 * and bare LF line ends, with a 400 and a closed connection.
 */
function malformedRequest(req: IncomingMessage): HttpError | undefined {
  if (req.httpVersionMajor !== 1) return badRequest('The request line must end with HTTP/1.0 or HTTP/1.1');
  if (req.url!.includes('#')) return badRequest('The request target must not contain a fragment');
  const raw = req.rawHeaders;
  // Node keeps at most 2000 header lines and drops the rest unseen; the service, reading ours
  // after the client's, would lose the gateway's own (its deadline, trace and client address).
  if (raw.length > 2 * MAX_HEADER_FIELDS) return new HttpError(431, 'HEADERS_TOO_LARGE', `A request may carry at most ${MAX_HEADER_FIELDS} header fields`);
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (++hosts > 1) return badRequest('Host must be sent once');
      if (!HOST.test(raw[i + 1])) return badRequest('Host must be a host name or address, with an optional port');
    }
  }
  // RFC 9112 3.2: an HTTP/1.1 request without Host is refused (Node's own refusal is not in the contract's shape).
  if (hosts === 0 && req.httpVersionMinor === 1) return badRequest('Host is required in HTTP/1.1');
  const coding = req.headers['transfer-encoding'];
  if (coding !== undefined) {
    // RFC 9112 6.1: an HTTP/1.0 message cannot be framed by a transfer coding.
    if (req.httpVersionMinor === 0) return badRequest('Transfer-Encoding is not allowed in HTTP/1.0');
    if (coding.toLowerCase() !== 'chunked') return badRequest('Transfer-Encoding must be chunked');
  }
  return undefined;
}

/** `http://host[:port]/path?query`, scheme in any case (RFC 9112 3.2.2). */
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)([^#]*)$/i;

/**
 * A target in absolute form, which a server must accept (RFC 9112 3.2.2), becomes the path and
 * query it names, and its authority stands for Host (the received Host is not used). Any other
 * target (`*`, authority form) is left for the routes to refuse. Returns the request's target.
 */
function fromAbsoluteForm(req: IncomingMessage, url: string): string {
  const parts = ABSOLUTE_FORM.exec(url);
  if (!parts || parts[1] === '' || !HOST.test(parts[1])) return url;
  const rest = parts[2];
  const target = rest === '' ? '/' : rest.charCodeAt(0) === 63 /* ? */ ? `/${rest}` : rest;
  req.url = target;
  req.headers.host = parts[1];
  return target;
}

/** Header fields one request may carry: browsers send a few dozen; Apache's default limit is 100. */
const MAX_HEADER_FIELDS = 200;
/**
 * A Host field value (RFC 9110 7.2, RFC 3986 3.2.2): a registered name, IPv4 address or IP literal
 * in brackets, and an optional port; empty is allowed. No userinfo, path, spaces or non-ASCII.
 */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?$/;

/**
 * A request asking to switch protocols is answered in HTTP/1.1 (RFC 9110 7.8 lets a server ignore
 * Upgrade), and its connection then closes: Node's parser stops reading at such a request, so
 * whatever the client sent after it in the same read would be lost unanswered.
 */
function upgradeRefused(req: IncomingMessage, res: ServerResponse): void {
  if (req.headers.upgrade !== undefined) res.setHeader('Connection', 'close');
}

/** Requests handled at once on one connection; later pipelined ones wait their turn, unread. */
export const MAX_PIPELINED = 8;
/**
 * Requests parsed beyond MAX_PIPELINED that may wait on one connection. Reading stops at once, but
 * Node parses the rest of the chunk it already read (up to 64 kB, some 1 500 small requests). Each
 * waiting request holds its request and response objects (a few kB): a connection with more
 * waiting than this is not pipelining, it is flooding, and is closed (`condemn`). Requests the
 * gateway answers itself at once (a 404, /health) never build up `busy`, so this cap is what
 * bounds a client that sends them without reading its answers.
 */
const MAX_WAITING = 64;
/**
 * What one parsed request holds until answered: its request and response objects, headers and
 * listeners (measured: 115 000 of them held 358 MB of heap, some 3 kB each).
 */
const REQUEST_BYTES = 3 * 1024;

/** One connection's share of the work. */
interface Connection {
  socket: Socket;
  busy: number;
  /** Answer bytes Node still holds for the client, as last seen when one of its answers ended. */
  unsent: number;
  /** Requests (and their responses) parsed but not started, flat: req, res, req, res... */
  waiting: Array<IncomingMessage | ServerResponse>;
  /** The responses of the requests started and not yet closed, oldest first. */
  active: ServerResponse[];
  /** Reading was paused here for `waiting`; a resume is due once it is empty. */
  paused: boolean;
  /** A resume waits for the socket's 'drain'. */
  awaitingDrain: boolean;
  closed: boolean;
  /** Its last request was malformed: what follows on it is not read as requests. */
  refused: boolean;
}

const CONNECTION = Symbol('gateway.connection');
type TrackedSocket = Socket & { [CONNECTION]?: Connection };

/**
 * Proxied `/api/<service>/...` requests, the bulk of the traffic, are handled here on the server's
 * request event, ahead of Express's router (measured: the router, its per-request set-up and the
 * rate limiter's middleware cost more than the proxying itself). They get what a route would: the
 * pipeline's context and steps, the service's proxy handler, and errors in the contract's shape.
 * A malformed request is answered here too, whatever its path. Every other request goes to the app
 * unchanged.
 *
 * Every request is bounded here first: at most MAX_PIPELINED at once per connection (the socket is
 * not read while more wait), and at most `maxInFlight` at once in the gateway (beyond it a fast
 * 503 OVERLOADED, not a queue).
 *
 * The server is made with Express's request and response prototypes (`expressServerClasses`), so
 * `req.ip`, `res.json()` and the rest work here without Express's per-request set-up.
 */
export function createFrontDoor({ app, pipeline, proxies, onError, maxInFlight, maxBufferedBytes, routes = ROUTES }: FrontDoorOptions): (req: IncomingMessage, res: ServerResponse) => void {
  const { context, admit } = pipeline;
  let inFlight = 0;
  // Every open connection that sent a request, and what they hold together (REQUEST_BYTES per
  // parsed, unanswered request, plus unsent answer bytes).
  const connections = new Set<Connection>();
  let buffered = 0;

  const weightOf = (conn: Connection): number => (conn.busy + conn.waiting.length / 2) * REQUEST_BYTES + conn.unsent;

  // Frees a connection's places once, whether it closed or was closed here.
  const forget = (conn: Connection): void => {
    if (conn.closed) return;
    conn.closed = true;
    connections.delete(conn);
    buffered -= weightOf(conn);
    inFlight -= conn.busy;
    conn.busy = 0;
    conn.waiting.length = 0;
    conn.active.length = 0;
    conn.unsent = 0;
  };

  /**
   * Past the bound, closes the heaviest connections until a quarter of it is free again, so that
   * a flood is not weighed again on each of its next requests. A sort of every connection, but
   * only when the gateway holds more than it may.
   */
  const shed = (): void => {
    const heaviestFirst = [...connections].sort((a, b) => weightOf(b) - weightOf(a));
    const target = maxBufferedBytes * 0.75;
    for (const conn of heaviestFirst) {
      if (buffered <= target) break;
      const { socket } = conn;
      forget(conn);
      condemn(socket);
    }
  };

  const handle = (rawReq: IncomingMessage, rawRes: ServerResponse, conn: Connection): void => {
    let url = rawReq.url ?? '';
    if (url.charCodeAt(0) !== 47 /* / */) url = fromAbsoluteForm(rawReq, url);
    upgradeRefused(rawReq, rawRes);
    const malformed = malformedRequest(rawReq);
    if (malformed) conn.refused = true;
    const overloaded = inFlight > maxInFlight;
    const service = malformed === undefined && !overloaded ? routes.fastPathService(rawReq.method ?? '', url) : undefined;
    const handler = service === undefined ? undefined : proxies.get(service);
    if (malformed === undefined && !overloaded && !handler) {
      app(rawReq, rawRes);
      return;
    }
    const req = rawReq as Request;
    const res = rawRes as Response;
    // What Express's init middleware would have set.
    req.res = res;
    req.originalUrl = url;
    req.baseUrl = '';
    res.locals = new ProxiedLocals() as unknown as Response['locals'];
    // The contract's error answer; should even that throw, the connection is cut rather than
    // left hanging, and the process goes on.
    const fail = (err: unknown): void => {
      // Refused before its body has all arrived: the rest is not worth reading (a slow client
      // would otherwise keep the connection for as long as it trickles).
      if (!req.complete && !res.headersSent) res.setHeader('Connection', 'close');
      try {
        void onError(err, req, res, noop);
      } catch {
        res.destroy();
      }
    };
    try {
      context(req, res, () => {
        if (malformed) {
          // Whatever follows on this connection cannot be trusted to be framed as we read it.
          res.setHeader('Connection', 'close');
          return fail(malformed);
        }
        if (overloaded) return fail(overloadedError());
        admit(req, res, handler!, fail);
      });
    } catch (err) {
      // Under the router, a throw here would have reached the error handler too.
      fail(err);
    }
  };

  const start = (req: IncomingMessage, res: ServerResponse, conn: Connection): void => {
    conn.busy++;
    inFlight++;
    conn.active.push(res);
    relaysClose(res);
    res.on('close', release);
    handle(req, res, conn);
  };

  // One shared listener (no closure per request): the response's 'close' frees its place, then
  // ends the request context's work (its line, span and the steps' close hooks).
  function release(this: ServerResponse): void {
    const socket = this.req.socket as TrackedSocket;
    const conn = socket[CONNECTION]!;
    // Freed with the connection already (onSocketClose).
    if (!conn.closed) free(conn, this, socket);
    requestClosed(this);
  }

  const free = (conn: Connection, res: ServerResponse, socket: TrackedSocket): void => {
    inFlight--;
    conn.busy--;
    removeActive(conn, res);
    const unsent = socket.writableLength;
    buffered += unsent - conn.unsent - REQUEST_BYTES;
    conn.unsent = unsent;
    while (conn.busy < MAX_PIPELINED && conn.waiting.length && !conn.refused) {
      const req = conn.waiting.shift() as IncomingMessage;
      start(req, conn.waiting.shift() as ServerResponse, conn);
    }
    resumeIfDue(conn);
  };

  /**
   * Reads the connection again once nothing waits, unless answers pile up unsent. Node pauses the
   * socket itself then (its parser too: a read before Node resumes would fail to parse), namely
   * when the socket needs a 'drain' or its queued answers hold its high-water mark, and resumes it
   * when that ends; so a resume is left to Node, or to the next 'drain' or answer here, until then.
   */
  const resumeIfDue = (conn: Connection): void => {
    if (!conn.paused || conn.waiting.length > 0 || conn.closed) return;
    const { socket } = conn;
    if (socket.writableNeedDrain || queuedBytes(conn) >= socket.writableHighWaterMark) {
      if (!conn.awaitingDrain) {
        conn.awaitingDrain = true;
        socket.once('drain', onSocketDrain);
      }
      return;
    }
    conn.paused = false;
    socket.resume();
  };

  function onSocketDrain(this: TrackedSocket): void {
    const conn = this[CONNECTION]!;
    conn.awaitingDrain = false;
    resumeIfDue(conn);
  }

  // A pipelined answer that never got the socket may never emit 'close': the connection frees all
  // of its places when it closes, whichever of the two comes first.
  function onSocketClose(this: TrackedSocket): void {
    forget(this[CONNECTION]!);
  }

  return (req, res) => {
    const socket = req.socket as TrackedSocket;
    let conn = socket[CONNECTION];
    if (conn === undefined) {
      conn = { socket, busy: 0, unsent: 0, waiting: [], active: [], paused: false, awaitingDrain: false, closed: false, refused: false };
      socket[CONNECTION] = conn;
      socket.once('close', onSocketClose);
      connections.add(conn);
    }
    // Node parses pipelined requests before the refused one's answer closes the connection; a
    // connection closed here may still be in the middle of its chunk.
    if (conn.refused || conn.closed) return;
    if (conn.waiting.length >= 2 * MAX_WAITING) return condemn(socket);
    buffered += REQUEST_BYTES;
    if (conn.busy < MAX_PIPELINED) start(req, res, conn);
    else {
      conn.waiting.push(req, res);
      conn.paused = true;
      socket.pause();
    }
    if (buffered > maxBufferedBytes) shed();
  };
}

/** Answer bytes of the connection's responses that wait for the socket (behind the one it sends). */
function queuedBytes(conn: Connection): number {
  let bytes = 0;
  for (const res of conn.active) if (res.socket === null) bytes += res.writableLength;
  return bytes;
}

/** Takes a closed response out of `active` (a few entries; no array made). */
function removeActive(conn: Connection, res: ServerResponse): void {
  const { active } = conn;
  const i = active.indexOf(res);
  if (i === -1) return;
  for (let j = i; j < active.length - 1; j++) active[j] = active[j + 1];
  active.pop();
}

/** The parser's hook for each request's head, as Node's HTTP server sets it on `socket.parser`. */
interface ParserHook {
  onIncoming?: unknown;
}

// Returned for a request's head, 2 tells Node's parser "upgrade": it stops at once, leaving the
// rest of what it read unparsed.
const STOP_PARSING = (): number => 2;

/**
 * Closes a connection that sent more than it may, and keeps Node from parsing the rest of the
 * chunk it has read. Node parses a whole read (up to 64 kB, some 1 500 small requests) into
 * request and response objects before a destroyed socket's 'close' frees them, and a poll of the
 * event loop reads every ready connection before any closes: 100 such connections held some
 * 150 000 of them at once (300 MB) and kept the loop busy for seconds.
 */
function condemn(socket: Socket): void {
  const parser = (socket as Socket & { parser?: ParserHook | null }).parser;
  if (parser && typeof parser.onIncoming === 'function') parser.onIncoming = STOP_PARSING;
  socket.destroy();
}

const overloadedError = (): HttpError =>
  new HttpError(503, 'OVERLOADED', 'The gateway is at capacity; retry shortly', undefined, { retryAfter: 1 });

function noop(): void {}
