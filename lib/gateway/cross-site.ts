// Refuses requests that a page on another site made a browser send: any method that may change
// state, at any route, as Go's net/http CrossOriginProtection decides (Sec-Fetch-Site first, else
// Origin against Host). Clients that send neither header (curl, services, scrapers) pass.
import type { IncomingMessage } from 'node:http';
import { HttpError } from '../platform/errors.js';

/** RFC 9110's safe methods: a cross-site page may make a browser send them freely, and they change nothing. */
const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

const refused = (): HttpError => new HttpError(403, 'CROSS_SITE_REQUEST', 'Requests from another site may not change anything here');

/**
 * The 403 for a browser request sent on behalf of another origin, else undefined. `same-site` is
 * refused too: a sibling subdomain is another origin, and may be someone else's. An Origin that
 * does not parse (`null` from a sandboxed frame, say) is refused.
 */
export function crossSiteRefusal(req: IncomingMessage): HttpError | undefined {
  if (SAFE_METHODS.has(req.method!)) return undefined;
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined) return site === 'same-origin' || site === 'none' ? undefined : refused();
  const origin = req.headers.origin;
  if (origin === undefined) return undefined;
  return isOwnOrigin(origin, req.headers.host) ? undefined : refused();
}

function isOwnOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  try {
    const from = new URL(origin);
    // The Host header read with the Origin's scheme, so that default ports compare equal.
    return (from.protocol === 'http:' || from.protocol === 'https:') && new URL(`${from.protocol}//${host}`).host === from.host;
  } catch {
    return false;
  }
}
