// One circuit breaker per service: a small state machine (CLOSED -> OPEN -> HALF_OPEN -> CLOSED)
// in which every call has exactly one outcome, decided once, when the call ends.
import { HttpError } from '../platform/errors.js';
import { UpstreamUnavailableError, type UpstreamFailure } from '../platform/service-client.js';
import { untraced } from '../platform/trace-context.js';

export type CircuitState = 'CLOSED' | 'OPEN' | 'HALF_OPEN';

export interface BreakerOptions {
  /** Consecutive failures that open the circuit. */
  failureThreshold: number;
  /** Time open before trial requests are let through, after the first trip. */
  resetTimeoutMs: number;
  /** Each trip without a stable period in between doubles the open time, up to this. */
  maxResetTimeoutMs: number;
  /** Closed this long, the circuit forgets its earlier trips (the open time starts over). */
  stablePeriodMs: number;
  /** Trial requests when half-open; all must succeed to close it, one failure reopens it. */
  halfOpenRequests: number;
  /** An attempt without an answer (headers) by then is a failure, and its request is aborted. */
  timeoutMs: number;
  /** While open, the service's /health is asked this often; an answer half-opens the circuit early. 0: never. */
  probeIntervalMs: number;
  /** After closing, the share of calls let through ramps from 10 % to all over this time. 0: all at once. */
  slowStartMs: number;
}

export interface BreakerHooks {
  onStateChange?: (state: CircuitState, previous: CircuitState) => void;
  onFailure?: (kind: UpstreamFailure) => void;
  onReject?: () => void;
  /** Asks the service whether it answers again (its /health); only called while open. */
  probe?: () => Promise<boolean>;
}

export interface BreakerStats {
  failures: number;
  successes: number;
  rejects: number;
  timeouts: number;
  lastFailure: string | null;
}

/** The circuit is open (or its trial slots are taken, or slow start holds the call back): the request was not sent. */
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
  /**
   * When the client had sent its whole request (performance.now()), undefined while it still is:
   * the timeout counts from then, since time spent waiting for a client is never the service's
   * (the caller ends a client that is too slow). Without it the timeout counts from the start.
   */
  clientDoneAt?: () => number | undefined;
  /** Waited past the breaker's timeout before this call times out. */
  graceMs?: number;
}

type Outcome = 'success' | 'failure' | 'neutral';

// Slow start lets at least this share through from its first moment.
const SLOW_START_FLOOR = 0.1;

/** Where a call reports its one outcome: its breaker, through a door only calls hold. */
interface CallLedger {
  settle(call: BreakerCall, outcome: Outcome): void;
  countFailure(kind: UpstreamFailure): void;
}

/**
 * One call admitted by the breaker. The work learns here that the breaker gave up on it (its
 * timeout), and may hold its outcome past the point where its promise resolves (`defer`), to
 * report it once the call really ends: a proxied response is a success only once its body is
 * complete. Cheaper than an AbortController per call, which the proxy does not need: an
 * AbortSignal is made only for callers that ask (fetch).
 */
export class BreakerCall {
  aborted = false;
  /** Given up on because the service did not answer in time (not because the client stalled). */
  timedOut = false;
  /** The outcome was counted; later reports are ignored. */
  settled = false;
  /** The breaker's epoch when admitted; an outcome from an earlier epoch says nothing about now. */
  readonly epoch: number;
  private deferred = false;
  private listener: (() => void) | undefined;
  private controller: AbortController | undefined;

  constructor(
    private readonly ledger: CallLedger,
    epoch: number,
  ) {
    this.epoch = epoch;
  }

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

  /** The outcome is not the work's result: it comes later through succeed/fail/neutral. */
  defer(): void {
    this.deferred = true;
  }

  get isDeferred(): boolean {
    return this.deferred;
  }

  succeed(): void {
    this.ledger.settle(this, 'success');
  }

  fail(kind: UpstreamFailure): void {
    if (this.settled) return;
    this.ledger.countFailure(kind);
    this.ledger.settle(this, 'failure');
  }

  /** Nothing learned about the service (the client left, or the answer was a dependency's fault). */
  neutral(): void {
    this.ledger.settle(this, 'neutral');
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

/** A call run through `run`: its promise's ends and its timer. */
interface RunningCall<T> {
  call: BreakerCall;
  resolve: (value: T) => void;
  reject: (err: unknown) => void;
  clientDoneAt?: () => number | undefined;
  /** The timeout plus grace: how long the service has, counted from clientDoneAt. */
  limitMs: number;
  timer: NodeJS.Timeout;
  /** Resolved, rejected or timed out: what comes after is ignored. */
  finished: boolean;
}

/**
 * A service's breaker. One state machine, owned here rather than kept in step with a library's
 * by events: a proxied call ends when its body does, long after the promise a library would
 * time and count has settled, so the library and we would each decide the call's outcome.
 *
 *   CLOSED     counts consecutive failures; `failureThreshold` of them open it. After it closed
 *              from half-open, slow start lets a growing share of calls through.
 *   OPEN       refuses every call. Half-opens when its open time ends, or earlier when a probe of
 *              the service's /health succeeds. The open time doubles with each trip (capped) and
 *              starts over after `stablePeriodMs` closed.
 *   HALF_OPEN  lets `halfOpenRequests` trials through; all succeed: CLOSED; one fails: OPEN. A
 *              trial whose client left frees its slot.
 */
export class ServiceBreaker {
  readonly name: string;
  private readonly options: BreakerOptions;
  private readonly hooks: BreakerHooks;
  private current: CircuitState = 'CLOSED';
  private epoch = 0;
  private consecutiveFailures = 0;
  private trialsAdmitted = 0;
  private trialsSucceeded = 0;
  /** Trips since the circuit was last stable, which set the open time. */
  private trips = 0;
  private openMs = 0;
  private openUntil = 0;
  private closedSince = 0;
  private halfOpenTimer: NodeJS.Timeout | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  /** Slow start: when it began and ends (0: not ramping), calls seen and let through meanwhile. */
  private rampFrom = 0;
  private rampUntil = 0;
  private rampSeen = 0;
  private rampAdmitted = 0;
  private stopped = false;
  private readonly counts: BreakerStats = { failures: 0, successes: 0, rejects: 0, timeouts: 0, lastFailure: null };

  constructor(name: string, options: BreakerOptions, hooks: BreakerHooks = {}) {
    this.name = name;
    this.options = options;
    this.hooks = hooks;
  }

  private readonly ledger: CallLedger = {
    settle: (call, outcome) => this.settle(call, outcome),
    countFailure: (kind) => this.countFailure(kind),
  };
  // Timer callbacks made once per breaker, not per call; the open-circuit ones outlive the request
  // that armed them, so their lines carry no request's trace id.
  private readonly onTimeout = (running: RunningCall<unknown>): void => this.timedOut(running);
  private readonly halfOpenNow = untraced((): void => this.halfOpen());
  private readonly probeNow = untraced((): void => void this.probe());

  get state(): CircuitState {
    return this.current;
  }

  get stats(): BreakerStats {
    return { ...this.counts };
  }

  /**
   * Seconds a refused client should wait: until the circuit half-opens, plus a random spread of
   * up to half the open time (at least a second), so refused clients do not all come back at once.
   */
  retryAfterSeconds(): number {
    const remaining = this.current === 'OPEN' ? Math.max(0, this.openUntil - Date.now()) : 0;
    const spread = Math.random() * Math.max(1000, this.openMs / 2);
    return Math.max(1, Math.ceil((remaining + spread) / 1000));
  }

  /**
   * Admits a call or throws CircuitOpenError. The caller must end the call with exactly one of
   * succeed/fail/neutral (or let `run` do it).
   */
  admit(): BreakerCall {
    if (this.stopped) return this.refuse();
    switch (this.current) {
      case 'OPEN':
        return this.refuse();
      case 'HALF_OPEN':
        if (this.trialsAdmitted >= this.options.halfOpenRequests) return this.refuse();
        this.trialsAdmitted++;
        break;
      case 'CLOSED':
        if (this.rampUntil !== 0 && !this.rampAdmits()) return this.refuse();
    }
    return new BreakerCall(this.ledger, this.epoch);
  }

  /**
   * Runs `work` through the breaker. Resolves with its result; rethrows what it threw when that is
   * an answer (an HttpError below 500) or the client's doing (ClientGoneError). Throws
   * CircuitOpenError when the circuit refuses the call, UpstreamUnavailableError on a failure.
   * Unless the work defers its outcome, the call is a success when the work resolves.
   */
  run<T>(work: (call: BreakerCall) => Promise<T>, { clientDoneAt, graceMs = 0 }: RunOptions = {}): Promise<T> {
    // A refusal thrown by admit() inside the executor rejects the returned promise.
    return new Promise<T>((resolve, reject) => {
      const call = this.admit();
      const limitMs = this.options.timeoutMs + graceMs;
      const running = { call, resolve, reject, clientDoneAt, limitMs, finished: false } as RunningCall<T>;
      running.timer = setTimeout(this.onTimeout, limitMs, running as RunningCall<unknown>);
      work(call).then(
        (result) => this.workDone(running, result),
        (err: unknown) => this.workFailed(running, err),
      );
    });
  }

  /**
   * run() without a promise (each one costs a proxied request its async context's hooks): `work`
   * ends the run with `resolve` or `reject` (the first end counts; a throw rejects). `failed`
   * hears the error run() would reject with, on a later microtask as an await of run() would; a
   * resolved run reports nothing.
   */
  runWith(work: (call: BreakerCall, resolve: () => void, reject: (err: unknown) => void) => void, { clientDoneAt, graceMs = 0 }: RunOptions, failed: (err: unknown) => void): void {
    const reject = (err: unknown) => queueMicrotask(() => failed(err));
    let call: BreakerCall;
    try {
      call = this.admit();
    } catch (err) {
      return reject(err);
    }
    const limitMs = this.options.timeoutMs + graceMs;
    const running = { call, resolve: noop, reject, clientDoneAt, limitMs, finished: false } as RunningCall<void>;
    running.timer = setTimeout(this.onTimeout, limitMs, running as RunningCall<unknown>);
    try {
      work(call, () => this.workDone(running, undefined), (err) => this.workFailed(running, err));
    } catch (err) {
      this.workFailed(running, err);
    }
  }

  forceOpen(): void {
    this.trip();
  }

  forceClose(): void {
    this.close(false);
  }

  /**
   * One of the service's instances passed its probe and is back: an open or half-open circuit
   * closes at once, under slow start. Trials would only repeat what the probe showed, and while
   * the circuit waits for them every request is refused although an instance answers.
   */
  instanceBack(): void {
    if (this.current !== 'CLOSED' && !this.stopped) this.close(true);
  }

  /** Closes the circuit and forgets its history. */
  reset(): void {
    this.close(false);
    this.trips = 0;
    Object.assign(this.counts, { failures: 0, successes: 0, rejects: 0, timeouts: 0, lastFailure: null });
  }

  /** Stops the timers; calls after this are refused. */
  shutdown(): void {
    this.stopped = true;
    this.clearTimers();
  }

  /** Counts a call's one outcome (its BreakerCall and `run` call this). */
  private settle(call: BreakerCall, outcome: Outcome): void {
    if (call.settled) return;
    call.settled = true;
    if (outcome === 'success') this.counts.successes++;
    if (call.epoch !== this.epoch) return;
    if (this.current === 'HALF_OPEN') {
      if (outcome === 'neutral') this.trialsAdmitted--;
      else if (outcome === 'failure') this.trip();
      else if (++this.trialsSucceeded >= this.options.halfOpenRequests) this.close(true);
      return;
    }
    if (outcome === 'failure') {
      if (++this.consecutiveFailures >= this.options.failureThreshold) this.trip();
    } else if (outcome === 'success') {
      this.consecutiveFailures = 0;
    }
  }

  private countFailure(kind: UpstreamFailure): void {
    this.counts.failures++;
    if (kind === 'timeout') this.counts.timeouts++;
    this.counts.lastFailure = new Date().toISOString();
    this.hooks.onFailure?.(kind);
  }

  /** The call's timer ran out before its work resolved. */
  private timedOut(running: RunningCall<unknown>): void {
    if (running.finished) return;
    if (running.clientDoneAt) {
      // The client took part of the time: the service gets its whole limit from the client's end.
      const doneAt = running.clientDoneAt();
      const leftMs = doneAt === undefined ? running.limitMs : doneAt + running.limitMs - performance.now();
      if (leftMs >= 1) {
        running.timer = setTimeout(this.onTimeout, leftMs, running);
        return;
      }
    }
    running.finished = true;
    const { call } = running;
    call.timedOut = true;
    call.fail('timeout');
    running.reject(new UpstreamUnavailableError(this.name, 'timeout'));
    call.abort();
  }

  private workDone<T>(running: RunningCall<T>, result: T): void {
    if (running.finished) return;
    running.finished = true;
    clearTimeout(running.timer);
    if (!running.call.isDeferred) this.settle(running.call, 'success');
    running.resolve(result);
  }

  private workFailed<T>(running: RunningCall<T>, err: unknown): void {
    if (running.finished) return;
    running.finished = true;
    clearTimeout(running.timer);
    const { call } = running;
    if (err instanceof UpstreamUnavailableError) call.fail(err.failure);
    // A 4xx is the service answering; a client that left, a dependency's fault or a bug of ours says nothing about it.
    else this.settle(call, err instanceof HttpError && err.status < 500 ? 'success' : 'neutral');
    running.reject(err);
  }

  private refuse(): never {
    this.counts.rejects++;
    this.hooks.onReject?.();
    throw new CircuitOpenError(this.name, this.retryAfterSeconds());
  }

  /** Slow start: whether this call is within the share let through by now. */
  private rampAdmits(): boolean {
    const now = Date.now();
    if (now >= this.rampUntil) {
      this.rampUntil = 0;
      return true;
    }
    const share = Math.max(SLOW_START_FLOOR, (now - this.rampFrom) / this.options.slowStartMs);
    this.rampSeen++;
    if (this.rampAdmitted >= share * this.rampSeen) return false;
    this.rampAdmitted++;
    return true;
  }

  private trip(): void {
    if (this.stopped) return;
    const now = Date.now();
    if (this.current === 'CLOSED' && now - this.closedSince >= this.options.stablePeriodMs) this.trips = 0;
    this.trips++;
    this.openMs = Math.min(this.options.maxResetTimeoutMs, this.options.resetTimeoutMs * 2 ** Math.min(this.trips - 1, 30));
    this.openUntil = now + this.openMs;
    this.epoch++;
    this.consecutiveFailures = 0;
    this.rampUntil = 0;
    this.clearTimers();
    this.halfOpenTimer = setTimeout(this.halfOpenNow, this.openMs);
    this.halfOpenTimer.unref();
    this.scheduleProbe();
    this.enter('OPEN');
  }

  /**
   * Probes every `probeIntervalMs` while open. The interval does not grow with the open time: a
   * service that answers its /health again is tried at once, and one that still fails its trials
   * costs at most `halfOpenRequests` requests per interval.
   */
  private scheduleProbe(): void {
    const { probeIntervalMs } = this.options;
    if (!this.hooks.probe || probeIntervalMs === 0 || probeIntervalMs >= this.openMs) return;
    this.probeTimer = setTimeout(this.probeNow, probeIntervalMs);
    this.probeTimer.unref();
  }

  private async probe(): Promise<void> {
    this.probeTimer = undefined;
    const epoch = this.epoch;
    let ok: boolean;
    try {
      ok = await this.hooks.probe!();
    } catch {
      ok = false;
    }
    if (this.current !== 'OPEN' || this.epoch !== epoch || this.stopped) return;
    if (ok) return this.halfOpen();
    this.probeTimer = setTimeout(this.probeNow, this.options.probeIntervalMs);
    this.probeTimer.unref();
  }

  private halfOpen(): void {
    if (this.current !== 'OPEN' || this.stopped) return;
    this.clearTimers();
    this.epoch++;
    this.trialsAdmitted = 0;
    this.trialsSucceeded = 0;
    this.enter('HALF_OPEN');
  }

  private close(slowStart: boolean): void {
    this.clearTimers();
    this.epoch++;
    this.consecutiveFailures = 0;
    const now = Date.now();
    this.closedSince = now;
    if (slowStart && this.options.slowStartMs > 0) {
      this.rampFrom = now;
      this.rampUntil = now + this.options.slowStartMs;
      this.rampSeen = 0;
      this.rampAdmitted = 0;
    } else {
      this.rampUntil = 0;
    }
    this.enter('CLOSED');
  }

  private clearTimers(): void {
    clearTimeout(this.halfOpenTimer);
    clearTimeout(this.probeTimer);
    this.halfOpenTimer = undefined;
    this.probeTimer = undefined;
  }

  private enter(state: CircuitState): void {
    const previous = this.current;
    this.current = state;
    // A forced open of an open circuit restarts its time, but is no change of state.
    if (state !== previous) this.hooks.onStateChange?.(state, previous);
  }
}

function noop(): void {}
