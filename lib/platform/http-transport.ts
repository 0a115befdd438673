// How a ServiceClient sends: one request over a node:http keep-alive agent, the whole answer read
// into a string. No Request, Response, Headers or web streams and no AbortSignal per call for the
// timeout: a call costs a fraction of fetch's CPU, and less than a fetch emulated over the same agents.
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { RESPONSE_TOO_LARGE } from './upstream-errors.js';

/** The code of the error a send rejects with when its own time ran out (no answer within timeoutMs). */
export const SEND_TIMED_OUT = 'ETIMEDOUT';

// Per instance and pool. Enough sockets for a busy caller, few enough that a stuck service cannot
// take every file descriptor; idle sockets close after 30 s, well before the services' 65 s
// keepAliveTimeout, so we never write to a socket the service is closing (ECONNRESET). 'lifo'
// reuses the warmest sockets and lets the others idle out.
const MAX_SOCKETS = 256;
const MAX_FREE_SOCKETS = 64;
const IDLE_SOCKET_MS = 30_000;

/** A bounded keep-alive pool for one instance. */
export function keepAliveAgent(https = false): HttpAgent {
  const options = { keepAlive: true, maxSockets: MAX_SOCKETS, maxFreeSockets: MAX_FREE_SOCKETS, timeout: IDLE_SOCKET_MS, scheduling: 'lifo' as const };
  return https ? new HttpsAgent(options) : new HttpAgent(options);
}

/** Where one instance listens, read once from its base URL, and the pool its requests go over. */
export class Endpoint {
  readonly https: boolean;
  readonly hostname: string;
  readonly port: string;
  /** The base URL's path, without a trailing slash: requests' paths go after it. */
  readonly prefix: string;

  constructor(base: string, readonly agent: HttpAgent = keepAliveAgent(base.startsWith('https:'))) {
    const u = new URL(base);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('an endpoint is an http or https URL');
    this.https = u.protocol === 'https:';
    // URL keeps an IPv6 address in brackets; http.request wants it bare.
    this.hostname = u.hostname.replace(/^\[(.*)\]$/, '$1');
    this.port = u.port || (this.https ? '443' : '80');
    this.prefix = u.pathname.replace(/\/+$/, '');
  }
}

export interface Sent {
  method: string;
  /** Starts with `/`; goes after the endpoint's prefix. */
  path: string;
  headers: Record<string, string>;
  body?: string;
  /** Ends the call, its answer's body included: rejects with the signal's reason. */
  signal?: AbortSignal;
  /** No whole answer within this: rejects with code SEND_TIMED_OUT. */
  timeoutMs: number;
  /** A larger body rejects with code RESPONSE_TOO_LARGE. */
  maxBytes: number;
}

export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A failed send: the error (`error`), and whether it went out on a pooled connection the callee may have closed. */
export class SendFailure extends Error {
  constructor(
    readonly error: Error,
    readonly reusedSocket: boolean,
    /** Response headers had come back before it failed. */
    readonly answered: boolean,
  ) {
    super('send failed');
  }
}

/**
 * Sends one request and reads its whole answer, at most `maxBytes`. Rejects with a SendFailure.
 * Whatever ends a call early (signal, time, size, a broken connection) destroys its socket.
 */
export function send(endpoint: Endpoint, sent: Sent): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const { signal } = sent;
    if (signal?.aborted) return reject(new SendFailure(signal.reason as Error, false, false));
    let settled = false;
    let answered = false;
    const finish = () => {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (error: Error) => {
      if (settled) return;
      finish();
      req.destroy();
      reject(new SendFailure(error, req.reusedSocket, answered));
    };
    const onAbort = () => fail(signal!.reason as Error);
    const timer = setTimeout(() => fail(Object.assign(new Error('no answer in time'), { code: SEND_TIMED_OUT })), sent.timeoutMs);
    timer.unref();
    const req = (endpoint.https ? httpsRequest : httpRequest)({
      hostname: endpoint.hostname,
      port: endpoint.port,
      method: sent.method,
      path: endpoint.prefix + sent.path,
      headers: sent.headers,
      agent: endpoint.agent,
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', fail);
    req.once('response', (res: IncomingMessage) => {
      answered = true;
      if (Number(res.headers['content-length']) > sent.maxBytes) return fail(tooLarge());
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > sent.maxBytes) fail(tooLarge());
        else chunks.push(chunk);
      });
      res.on('error', fail);
      // A connection that closes before the body's end is a reset.
      res.on('close', () => {
        if (!res.complete) fail(Object.assign(new Error('the connection closed before the answer ended'), { code: 'ECONNRESET' }));
      });
      res.on('end', () => {
        if (settled) return;
        finish();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: chunks.length === 1 ? chunks[0].toString('utf8') : Buffer.concat(chunks, size).toString('utf8') });
      });
    });
    req.end(sent.body);
  });
}

const tooLarge = (): Error => Object.assign(new Error('response too large'), { code: RESPONSE_TOO_LARGE });

/** An answer's headers, read as fetch's Headers reads them (names in any case; repeated values joined). */
export class AnswerHeaders {
  constructor(private readonly raw: IncomingHttpHeaders) {}

  get(name: string): string | null {
    const value = this.raw[name.toLowerCase()];
    if (value === undefined) return null;
    return Array.isArray(value) ? value.join(', ') : value;
  }

  has(name: string): boolean {
    return this.raw[name.toLowerCase()] !== undefined;
  }
}
