// One circuit breaker per service: opossum's state machine and timers, with the seed's semantics
// (N consecutive failures open it; M trial requests when half-open) built on its options and events.
import CircuitBreaker from 'opossum';
import { HttpError } from '../platform/errors.js';
import { UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';

export type CircuitState = 'CLOSED' | 'OPEN' | 'HALF_OPEN';

export interface BreakerOptions {
  /** Consecutive failures that open the circuit. */
  failureThreshold: number;
  /** Time open before trial requests are let through. */
  resetTimeoutMs: number;
  /** Trial requests when half-open; all must succeed to close it, one failure reopens it. */
  halfOpenRequests: number;
  /** An attempt without an answer by then is a failure, and its request is aborted. */
  timeoutMs: number;
}

export interface BreakerHooks {
  onStateChange?: (state: CircuitState, previous: CircuitState) => void;
  onFailure?: (kind: UpstreamFailure) => void;
  onReject?: () => void;
}

export interface BreakerStats {
  failures: number;
  successes: number;
  rejects: number;
  timeouts: number;
  lastFailure: string | null;
}

/** The circuit is open (or its trial slots are taken): the request was not sent. */
export class CircuitOpenError extends HttpError {
  constructor(
    readonly service: string,
    readonly retryAfterSeconds: number,
  ) {
    super(503, 'SERVICE_UNAVAILABLE', `Service ${service} is temporarily unavailable`);
    this.name = 'CircuitOpenError';
  }
}

/** The client left (or stopped sending its body): says nothing about the service. */
export class ClientGoneError extends Error {
  constructor(readonly stalled = false) {
    super(stalled ? 'client stopped sending its request body' : 'client closed the connection');
    this.name = 'ClientGoneError';
  }
}

export interface RunOptions {
  /** True when a timeout is the client's doing (its request body is still arriving). */
  clientStalled?: () => boolean;
}

type Outcome = 'success' | 'failure' | 'neutral';

/**
 * How a call learns that the breaker gave up on it (its timeout). Cheaper than an AbortController
 * per call, which the proxy does not need: an AbortSignal is made only for callers that ask (fetch).
 */
export class Cancellation {
  aborted = false;
  private listener: (() => void) | undefined;
  private controller: AbortController | undefined;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort();
    }
    return this.controller.signal;
  }

  /** `fn` runs once when the call is given up on; at once if it already was. One listener. */
  onAbort(fn: () => void): void {
    if (this.aborted) fn();
    else this.listener = fn;
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.controller?.abort();
    const listener = this.listener;
    this.listener = undefined;
    listener?.();
  }
}

interface Attempt {
  /** The breaker's epoch when admitted; an answer from an earlier epoch says nothing about now. */
  readonly epoch: number;
  readonly cancellation: Cancellation;
  readonly work: (cancellation: Cancellation) => Promise<unknown>;
  readonly clientStalled?: () => boolean;
  /** What the work's own result says: an answer, or nothing about the service. */
  verdict: 'success' | 'neutral';
  /** How the breaker counted it, once it has. */
  outcome?: Outcome;
  result?: unknown;
  /** Set when the work threw something that is an answer (a 4xx) or the client's doing. */
  error?: { value: unknown };
}

/**
 * A service's breaker. opossum provides the open state, the reset timer, fast rejection, per-call
 * timeouts and the events; the counting is ours, because opossum opens on an error percentage in a
 * rolling window (its `maxFailures` is deprecated) and lets exactly one call through when half-open
 * (more was declined upstream, opossum #613). So:
 *   - opossum's percentage rule is switched off (errorThresholdPercentage 100 is never exceeded) and
 *     `failure`/`success` events drive a consecutive-failure count that calls `open()`;
 *   - on `halfOpen` we close opossum and gate the trial slots ourselves: any failed trial reopens it,
 *     the last successful one closes it, a trial whose client left frees its slot, and a trial that
 *     never answers times out (a failure) after `timeoutMs`;
 *   - 4xx answers and client aborts resolve the action instead of going through `errorFilter`: a
 *     filtered error reaches the `success` event without its call's arguments, and opossum closes a
 *     half-open breaker on it, so we could not tell a trial from a late answer from before the trip;
 *   - opossum's shared `abortController` would abort every call in flight on one timeout, so each
 *     call gets its own Cancellation, aborted from the `timeout` event (which carries the call's args).
 */
export class ServiceBreaker {
  readonly name: string;
  private readonly options: BreakerOptions;
  private readonly hooks: BreakerHooks;
  private readonly circuit: CircuitBreaker<[Attempt], Attempt>;
  private epoch = 0;
  private consecutiveFailures = 0;
  /** Present while half-open: trial slots handed out and trials that succeeded. */
  private trials: { admitted: number; succeeded: number } | undefined;
  private halfOpenAt = 0;
  private lastState: CircuitState = 'CLOSED';
  private readonly counts: BreakerStats = { failures: 0, successes: 0, rejects: 0, timeouts: 0, lastFailure: null };

  constructor(name: string, options: BreakerOptions, hooks: BreakerHooks = {}) {
    this.name = name;
    this.options = options;
    this.hooks = hooks;
    this.circuit = new CircuitBreaker(runAttempt, {
      name,
      timeout: options.timeoutMs,
      resetTimeout: options.resetTimeoutMs,
      errorThresholdPercentage: 100,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
    });
    const events = this.circuit as unknown as NodeJS.EventEmitter;
    events.on('success', (attempt: Attempt) => this.settle(attempt, attempt.verdict));
    events.on('failure', (err: unknown, _latency: number, args: [Attempt]) => this.onFailure(args[0], err));
    events.on('timeout', (_err: unknown, _latency: number, args: [Attempt]) => args[0].cancellation.abort());
    events.on('reject', () => this.countReject());
    events.on('open', () => {
      // Also reached from the debug route: a forced open behaves like a tripped circuit.
      this.epoch++;
      this.trials = undefined;
      this.consecutiveFailures = 0;
      this.halfOpenAt = Date.now() + options.resetTimeoutMs;
      this.notify();
    });
    events.on('halfOpen', () => {
      this.epoch++;
      this.trials = { admitted: 0, succeeded: 0 };
      this.circuit.close();
      this.notify();
    });
  }

  get state(): CircuitState {
    if (this.circuit.opened) return 'OPEN';
    return this.trials ? 'HALF_OPEN' : 'CLOSED';
  }

  get stats(): BreakerStats {
    return { ...this.counts };
  }

  /** Seconds until trial requests are let through (at least 1). */
  retryAfterSeconds(): number {
    if (!this.circuit.opened) return 1;
    return Math.max(1, Math.ceil((this.halfOpenAt - Date.now()) / 1000));
  }

  /**
   * Runs `work` through the breaker. Resolves with its result; rethrows what it threw when that is
   * an answer (an HttpError below 500) or the client's doing (ClientGoneError). Throws
   * CircuitOpenError when the circuit refuses the call, UpstreamUnavailableError on a failure.
   */
  async run<T>(work: (cancellation: Cancellation) => Promise<T>, { clientStalled }: RunOptions = {}): Promise<T> {
    if (this.trials) {
      if (this.trials.admitted >= this.options.halfOpenRequests) {
        this.countReject();
        throw new CircuitOpenError(this.name, 1);
      }
      this.trials.admitted++;
    }
    const attempt: Attempt = { epoch: this.epoch, cancellation: new Cancellation(), work, clientStalled, verdict: 'success' };
    let done: Attempt;
    try {
      done = await this.circuit.fire(attempt);
    } catch (err) {
      throw this.translate(err, attempt);
    }
    if (done.error) throw done.error.value;
    return done.result as T;
  }

  /**
   * A failure noticed after the attempt succeeded: the service broke off a response mid-body.
   * Counts like any failure in the current state.
   */
  recordLateFailure(kind: UpstreamFailure): void {
    this.countFailure(kind);
    if (this.circuit.opened) return;
    if (this.trials || ++this.consecutiveFailures >= this.options.failureThreshold) this.circuit.open();
  }

  forceOpen(): void {
    this.circuit.open();
  }

  forceClose(): void {
    this.closeCircuit();
  }

  /** Closes the circuit and forgets its history. */
  reset(): void {
    this.closeCircuit();
    Object.assign(this.counts, { failures: 0, successes: 0, rejects: 0, timeouts: 0, lastFailure: null });
  }

  /** Stops opossum's timers; calls after this fail. */
  shutdown(): void {
    this.circuit.shutdown();
  }

  private onFailure(attempt: Attempt, err: unknown): void {
    const timedOut = CircuitBreaker.isOurError(err as Error) && (err as { code?: string }).code === 'ETIMEDOUT';
    if (timedOut && attempt.clientStalled?.()) return this.settle(attempt, 'neutral');
    this.countFailure(timedOut ? 'timeout' : err instanceof UpstreamUnavailableError ? err.failure : 'reset');
    this.settle(attempt, 'failure');
  }

  private settle(attempt: Attempt, outcome: Outcome): void {
    if (attempt.outcome) return;
    attempt.outcome = outcome;
    if (outcome === 'success') this.counts.successes++;
    if (attempt.epoch !== this.epoch) return;
    if (this.trials) {
      if (outcome === 'neutral') this.trials.admitted--;
      else if (outcome === 'failure') this.circuit.open();
      else if (++this.trials.succeeded >= this.options.halfOpenRequests) this.closeCircuit();
      return;
    }
    if (outcome === 'failure') {
      if (++this.consecutiveFailures >= this.options.failureThreshold) this.circuit.open();
    } else if (outcome === 'success') {
      this.consecutiveFailures = 0;
    }
  }

  private translate(err: unknown, attempt: Attempt): unknown {
    const code = CircuitBreaker.isOurError(err as Error) ? (err as { code?: string }).code : undefined;
    if (code === 'EOPENBREAKER' || code === 'ESHUTDOWN') return new CircuitOpenError(this.name, this.retryAfterSeconds());
    if (code === 'ETIMEDOUT') return attempt.outcome === 'neutral' ? new ClientGoneError(true) : new UpstreamUnavailableError(this.name, 'timeout');
    return err;
  }

  private closeCircuit(): void {
    this.epoch++;
    this.trials = undefined;
    this.consecutiveFailures = 0;
    this.circuit.close();
    this.notify();
  }

  private countFailure(kind: UpstreamFailure): void {
    this.counts.failures++;
    if (kind === 'timeout') this.counts.timeouts++;
    this.counts.lastFailure = new Date().toISOString();
    this.hooks.onFailure?.(kind);
  }

  private countReject(): void {
    this.counts.rejects++;
    this.hooks.onReject?.();
  }

  private notify(): void {
    const state = this.state;
    if (state === this.lastState) return;
    const previous = this.lastState;
    this.lastState = state;
    this.hooks.onStateChange?.(state, previous);
  }
}

/** opossum's action: an upstream failure rejects; anything else resolves with the attempt. */
async function runAttempt(attempt: Attempt): Promise<Attempt> {
  try {
    attempt.result = await attempt.work(attempt.cancellation);
  } catch (err) {
    if (err instanceof UpstreamUnavailableError) throw err;
    attempt.error = { value: err };
    // A 4xx is the service answering; a client that left or a bug of ours says nothing about it.
    attempt.verdict = err instanceof HttpError && err.status < 500 ? 'success' : 'neutral';
  }
  return attempt;
}
