// The one retry rule for calls between our processes, shared by the gateway's proxy and every
// ServiceClient: when a failed try may go out once more, and the budget that caps how many do.
import type { UpstreamFailure } from './upstream-errors.js';

// Methods whose repetition has the effect of one (RFC 9110 9.2.2).
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** Whether `method` is idempotent (RFC 9110 9.2.2): sent twice, it has the effect of once. */
export const isIdempotent = (method: string): boolean => IDEMPOTENT.has(method);

export interface FailedTry {
  /**
   * A second copy has the effect of one: an idempotent method, or an Idempotency-Key its callee
   * honours (the gateway's route table says which, `mayRepeat`).
   */
  repeatable: boolean;
  failure: UpstreamFailure;
  /** Response headers had come back: the callee acted on it. */
  answered: boolean;
  /** The try went out on a pooled connection (which the callee may have closed as it was sent). */
  reusedSocket: boolean;
  /** The service has another instance, which the retry goes to. */
  severalInstances: boolean;
  /** The request's body, if any, can be sent again. */
  replayable: boolean;
}

/**
 * Whether a failed try may go out once more (the caller allows one retry per call). Only when it
 * never reached the service: refused (nothing was sent: any method), or reset before any answer
 * when the request may be repeated (idempotent, or an Idempotency-Key) and either the connection
 * was a pooled one found closed or the retry goes to another instance (an instance killed
 * mid-request costs its callers nothing). A timeout or a bad answer is never retried: the service
 * may still be working on it.
 */
export function mayRetry(t: FailedTry): boolean {
  if (t.answered || !t.replayable) return false;
  if (t.failure === 'refused') return true;
  if (t.failure !== 'reset' || !(t.reusedSocket || t.severalInstances)) return false;
  return t.repeatable;
}

export interface RetryBudgetOptions {
  /** Retries allowed per call (0.2: at most one retry per five calls, over time). */
  ratio: number;
  /** Unspent retries a quiet service can save up for a burst of failures. */
  cap: number;
  /** Retries available from the start; default 1. */
  initial?: number;
}

/**
 * A retry budget (Finagle's RetryBudget, Envoy's retry_budget): every call adds `ratio` of a
 * retry, every retry spends one, so that retries add at most that share to a failing service's
 * load, however many callers fail at once.
 */
export class RetryBudget {
  private tokens: number;
  private readonly ratio: number;
  private readonly cap: number;

  constructor({ ratio, cap, initial = 1 }: RetryBudgetOptions) {
    this.ratio = ratio;
    this.cap = cap;
    this.tokens = Math.min(initial, cap);
  }

  /** A call went out: it earns its share of a retry. */
  deposit(): void {
    if (this.tokens < this.cap) this.tokens += this.ratio;
  }

  /** Spends a retry if one is left. */
  withdraw(): boolean {
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }
}
