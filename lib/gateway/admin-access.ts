// Who may use the gateway's admin surface (/debug/*, the dashboard's stream, /traces, /spans,
// /metrics, the detailed /health, /api/dashboard, the addresses on GET /): an admin's token once
// one is required, else a caller on the operator's own machine.
import type { Request, RequestHandler } from 'express';
import { HttpError } from '../platform/errors.js';

export interface AdminAccessOptions {
  /**
   * Whether a token is needed whatever the address: in required mode, or once ADMIN_TOKEN is set
   * (open mode too), so that setting it locks every admin route and not only some.
   */
  locked: boolean;
  /** The token check, answering 401 (none or a bad one) or 403 (a user's); used when locked. */
  requireToken: RequestHandler;
  /** Whether the request holds an admin's JWT or ADMIN_TOKEN; never throws. */
  holdsAdminToken: (req: Request) => Promise<boolean>;
  /** Whether an address may use the surface without a token (ADMIN_ALLOW_ADDRESSES). */
  allowedAddress: (address: string | undefined) => boolean;
}

export interface AdminAccess {
  /** In front of an admin route: lets the caller on, or throws 401/403. */
  guard: RequestHandler;
  /** Whether the caller may see what only an admin sees (GET /'s addresses, the detailed /health); never throws. */
  allows: (req: Request) => Promise<boolean>;
}

const addressRefused = (): HttpError =>
  new HttpError(403, 'ADDRESS_NOT_ALLOWED', 'The admin surface answers this machine only (ADMIN_ALLOW_ADDRESSES), or an admin\'s token');

/**
 * Unlocked (open mode without ADMIN_TOKEN): a caller whose connection and whose client address (as
 * TRUST_PROXY reads it) are both allowed may use the surface without a token; so the example's
 * curl lines work on the machine itself, and a page elsewhere or a proxy on this machine relaying
 * another client does not. An admin's JWT is honoured from anywhere.
 */
export function createAdminAccess({ locked, requireToken, holdsAdminToken, allowedAddress }: AdminAccessOptions): AdminAccess {
  if (locked) return { guard: requireToken, allows: holdsAdminToken };
  const fromAllowedAddress = (req: Request): boolean => allowedAddress(req.socket.remoteAddress) && allowedAddress(req.ip);
  const allows = async (req: Request): Promise<boolean> => fromAllowedAddress(req) || (req.headers.authorization !== undefined && (await holdsAdminToken(req)));
  return {
    guard: async (req, _res, next) => {
      if (!(await allows(req))) throw addressRefused();
      next();
    },
    allows,
  };
}
