// The last good answer to each GET, kept only to stand in when the service fails (X-Cache: STALE).
// It stores only what it may serve to anyone: see staleCacheKey (the request) and wants (the answer).
import type { IncomingMessage } from 'node:http';
import { LRUCache } from 'lru-cache';
import { hasBody } from '../platform/http.js';

interface StaleEntry {
  status: 200;
  body: Buffer;
  contentType: string;
  storedAt: number;
}

/**
 * The key a request's answer is stored and looked up under, or undefined when it must be neither:
 * only a GET without a body and without a cookie. An anonymous request's key is the URL alone, so
 * no header a client chooses changes what another client is served; a verified caller's answers
 * are kept under its own key (`callerKey`: Carol is never served Bob's profile), and a credential
 * the gateway did not verify keeps nothing. Answers that say they depend on a header (`Vary`) are
 * not stored (`wants`).
 */
export function staleCacheKey(req: IncomingMessage, callerKey: string | undefined): string | undefined {
  if (req.method !== 'GET') return undefined;
  const headers = req.headers;
  if (headers.cookie !== undefined || hasBody(headers)) return undefined;
  if (callerKey !== undefined) return `${callerKey} ${req.url}`;
  return headers.authorization === undefined ? req.url : undefined;
}

export interface StaleCacheOptions {
  maxEntries: number;
  maxAgeMs: number;
  maxBytes: number;
  /** Larger answers are not kept. */
  maxEntryBytes?: number;
  /** A key stored more recently than this is not copied again (saves a body copy per request under load). */
  refreshAfterMs?: number;
}

export interface StaleCache {
  /**
   * Whether this answer should be copied while it streams to the client: a 200 JSON answer that
   * anyone may see (no Set-Cookie, not private or no-store, no Vary, not compressed).
   */
  wants(key: string, proxyRes: IncomingMessage): boolean;
  /** Copies the body as it streams (never pausing it) and stores it when it arrived complete. */
  capture(key: string, proxyRes: IncomingMessage): void;
  get(key: string): StaleEntry | undefined;
  clear(): void;
}

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\b/i;
const PRIVATE = /\b(?:no-store|private)\b/i;

export function createStaleCache({ maxEntries, maxAgeMs, maxBytes, maxEntryBytes = 256 * 1024, refreshAfterMs = 1000 }: StaleCacheOptions): StaleCache {
  if (maxEntries === 0) {
    const nothing = () => undefined;
    return { wants: () => false, capture: nothing, get: nothing, clear: nothing };
  }
  const lru = new LRUCache<string, StaleEntry>({
    max: maxEntries,
    maxSize: maxBytes,
    // Keys are URLs up to the server's header limit: count them with the body.
    sizeCalculation: (entry, key) => entry.body.length + key.length + 64,
    maxEntrySize: maxEntryBytes + 8 * 1024,
    ttl: maxAgeMs,
    // Expired entries are dropped when looked at or pushed out; no timer per entry.
    ttlAutopurge: false,
    allowStale: false,
  });

  return {
    wants(key, proxyRes) {
      if (proxyRes.statusCode !== 200) return false;
      // Stored within refreshAfterMs: under load, the usual answer, decided without reading headers.
      const held = lru.peek(key);
      if (held && Date.now() - held.storedAt < refreshAfterMs) return false;
      const headers = proxyRes.headers;
      if (!JSON_TYPE.test(headers['content-type'] ?? '')) return false;
      if (headers['set-cookie'] || PRIVATE.test(headers['cache-control'] ?? '')) return false;
      if (headers.vary !== undefined || (headers['content-encoding'] !== undefined && headers['content-encoding'] !== 'identity')) return false;
      const declared = Number(headers['content-length']);
      return !(declared > maxEntryBytes);
    },
    capture(key, proxyRes) {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size <= maxEntryBytes) {
          chunks.push(chunk);
        } else {
          chunks.length = 0;
          proxyRes.off('data', onData);
        }
      };
      proxyRes.on('data', onData);
      proxyRes.once('end', () => {
        if (size > maxEntryBytes || !proxyRes.complete) return;
        const declared = proxyRes.headers['content-length'];
        if (declared !== undefined && Number(declared) !== size) return;
        lru.set(key, { status: 200, body: Buffer.concat(chunks, size), contentType: proxyRes.headers['content-type']!, storedAt: Date.now() });
      });
    },
    get: (key) => lru.get(key),
    clear: () => lru.clear(),
  };
}
