// A fetch for a ServiceClient that sends over the keep-alive pools the proxy uses (one node:http
// agent per instance) instead of undici's own connections: the gateway keeps one pool per
// instance, and a call costs what a proxied request costs, not a fetch's streams and signals.
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { Fetch } from '../platform/service-client.js';
import { RESPONSE_TOO_LARGE } from '../platform/upstream-errors.js';
import type { GatewayInstance } from './upstreams.js';

/** Statuses whose answer has no body (a Response refuses one). */
const NO_BODY = new Set([101, 204, 205, 304]);

/** What agentFetch needs of an instance: where it listens, and its pool. */
export type PooledInstance = Pick<GatewayInstance, 'target' | 'hostname' | 'port' | 'agent'>;

/**
 * A fetch over `instances`' agents, for URLs that start with one of their targets. The whole body
 * is read before it resolves, at most `maxBytes` (a larger one rejects as too large); the signal
 * ends the call, the answer's body included. Any other URL is refused: nothing is sent elsewhere.
 */
export function agentFetch(instances: readonly PooledInstance[], maxBytes = 4 * 1024 * 1024): Fetch {
  return (url, init) => new Promise<Response>((resolve, reject) => {
    const signal = init.signal ?? undefined;
    if (signal?.aborted) return reject(signal.reason as Error);
    const instance = instances.find((i) => url.startsWith(i.target) && url[i.target.length] === '/');
    if (!instance) return reject(new Error('no instance of this service has that address'));
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      req.destroy();
      reject(err);
    };
    const onAbort = () => fail(signal!.reason as Error);
    const req = httpRequest({
      hostname: instance.hostname,
      port: instance.port,
      method: init.method ?? 'GET',
      path: url.slice(instance.target.length),
      headers: init.headers as Record<string, string> | undefined,
      agent: instance.agent,
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', fail);
    req.once('response', (res: IncomingMessage) => {
      if (Number(res.headers['content-length']) > maxBytes) return fail(tooLarge());
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) fail(tooLarge());
        else chunks.push(chunk);
      });
      res.on('error', fail);
      // A connection that closes before the body's end is a reset, as fetch reports it.
      res.on('close', () => {
        if (!res.complete) fail(Object.assign(new Error('the connection closed before the answer ended'), { code: 'ECONNRESET' }));
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        const status = res.statusCode ?? 0;
        try {
          const headers = new Headers();
          const raw = res.rawHeaders;
          for (let i = 0; i < raw.length; i += 2) headers.append(raw[i], raw[i + 1]);
          resolve(new Response(NO_BODY.has(status) ? null : Buffer.concat(chunks, size), { status, headers }));
        } catch (err) {
          // A status or header a Response cannot hold (a status below 200, say): not an answer we can read.
          reject(Object.assign(new Error('an answer fetch could not read', { cause: err }), { code: 'HPE_INVALID_RESPONSE' }));
        }
      });
    });
    req.end(init.body as string | undefined);
  });
}

const tooLarge = (): Error => Object.assign(new Error('response too large'), { code: RESPONSE_TOO_LARGE });
