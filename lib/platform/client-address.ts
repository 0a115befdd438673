// The client address the gateway saw, handed to a service in a form only the gateway can give:
// `X-Client-Address` with `X-Client-Address-Signature`, an HMAC-SHA256 over the address and the
// time keyed by INTERNAL_TOKEN. A service counts logins and sign-ups by it, so a client must not
// be able to pick it: the gateway drops any copy a client sends, and a service believes the
// header only when the signature is right and recent (or, with no INTERNAL_TOKEN configured, when
// the request comes from its own machine, where the gateway of the zero-set-up path runs).
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { ipKeyGenerator } from 'express-rate-limit';

export const CLIENT_ADDRESS_HEADER = 'x-client-address';
export const CLIENT_ADDRESS_SIGNATURE_HEADER = 'x-client-address-signature';

// Long enough for clocks a few seconds apart and a request queued at the service; short enough that
// a signed header copied out of a log or a capture is soon worth nothing.
const MAX_SIGNATURE_AGE_S = 300;
// Addresses are short; anything longer is not one we made.
const MAX_ADDRESS_LENGTH = 64;

const mac = (secret: string, address: string, at: number): Buffer =>
  createHmac('sha256', secret).update(`${address}\n${at}`).digest();

/**
 * The header values that carry `address` to a service: signed with `secret` (INTERNAL_TOKEN), or,
 * without one, the address alone (believed from loopback peers only).
 */
export function clientAddressHeaders(address: string, secret: string | undefined, nowMs = Date.now()): Record<string, string> {
  if (secret === undefined) return { [CLIENT_ADDRESS_HEADER]: address };
  const at = Math.floor(nowMs / 1000);
  return { [CLIENT_ADDRESS_HEADER]: address, [CLIENT_ADDRESS_SIGNATURE_HEADER]: `${at}.${mac(secret, address, at).toString('base64url')}` };
}

const isLoopback = (address: string | undefined): boolean =>
  address !== undefined && (address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.'));

/**
 * The address of the client behind `req`: the gateway's signed `X-Client-Address` when `secret` is
 * set and the signature holds; with no secret, the header when the peer is loopback; else the
 * socket's peer. Never the header alone from a peer elsewhere: anyone who can reach the service
 * could then claim any address.
 */
export function clientAddressOf(req: IncomingMessage, secret: string | undefined, nowMs = Date.now()): string {
  const peer = req.socket.remoteAddress ?? '';
  const claimed = req.headers[CLIENT_ADDRESS_HEADER];
  if (typeof claimed !== 'string' || claimed === '' || claimed.length > MAX_ADDRESS_LENGTH) return peer;
  if (secret === undefined) return isLoopback(peer) ? claimed : peer;
  const signature = req.headers[CLIENT_ADDRESS_SIGNATURE_HEADER];
  if (typeof signature !== 'string') return peer;
  const dot = signature.indexOf('.');
  const at = Number(signature.slice(0, dot));
  if (dot < 1 || !Number.isSafeInteger(at) || Math.abs(nowMs / 1000 - at) > MAX_SIGNATURE_AGE_S) return peer;
  const given = Buffer.from(signature.slice(dot + 1), 'base64url');
  const expected = mac(secret, claimed, at);
  return given.length === expected.length && timingSafeEqual(given, expected) ? claimed : peer;
}

/**
 * One key per client for counting: an IPv6 client by its /56 (one customer's allocation, as the
 * gateway's rate limit groups them), since a single host can pick any of 2^64 addresses.
 */
export const clientKeyOf = (address: string): string => (address === '' ? 'unknown' : ipKeyGenerator(address));
