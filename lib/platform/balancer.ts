// The instances of one service as a caller sees them: which one takes the next request (least
// outstanding requests between two picked at random, as Envoy's LEAST_REQUEST), and each one's
// outlier state (ejected after consecutive failures, back after its own timer and a passing probe).
import type { UpstreamFailure } from './upstream-errors.js';

export type InstanceState = 'up' | 'ejected';

export interface OutlierOptions {
  /** Consecutive failures that eject an instance (with two or more instances). */
  consecutiveFailures: number;
  /** Time out after the first ejection; each ejection soon after the last doubles it. */
  ejectionMs: number;
  /** Longest ejection; back this long, an instance forgets its earlier ejections. */
  maxEjectionMs: number;
}

export interface InstanceSetHooks<I extends Instance> {
  /** Asked once an ejection time is over: the instance comes back only if this resolves true. */
  probe?: (instance: I) => Promise<boolean>;
  onStateChange?: (instance: I) => void;
  /** Every instance is ejected now (not called with a single instance, which is never ejected). */
  onAllOut?: () => void;
  /** An instance came back after an ejection. */
  onBack?: (instance: I) => void;
  onFailure?: (instance: I, kind: UpstreamFailure) => void;
}

/** Health report of one instance, as /health shows it. */
export interface InstanceView {
  url: string;
  state: InstanceState;
  outstanding: number;
  consecutiveFailures: number;
}

// An instance that failed lately weighs as if this many more requests were waiting on it, so
// that a fast-failing one (refusing at once, hence never busy) is not preferred before ejection.
const FAILURE_WEIGHT = 4;

export class Instance {
  outstanding = 0;
  consecutiveFailures = 0;
  state: InstanceState = 'up';
  /** Ejections since the instance was last up for maxEjectionMs: they set the next ejection time. */
  ejections = 0;
  upSince = 0;
  timer: NodeJS.Timeout | undefined;

  constructor(
    /** The URL as configured. */
    readonly url: string,
    /** Where requests go: `localhost` pinned to 127.0.0.1 (Node may try ::1 first). */
    readonly target: string,
  ) {}

  view(): InstanceView {
    return { url: this.url, state: this.state, outstanding: this.outstanding, consecutiveFailures: this.consecutiveFailures };
  }
}

export class InstanceSet<I extends Instance = Instance> {
  readonly list: readonly I[];
  /** One instance: no balancing and no ejection, the caller's breaker alone decides. */
  readonly single: boolean;
  private readonly options: OutlierOptions;
  private readonly hooks: InstanceSetHooks<I>;
  private stopped = false;

  constructor(list: I[], options: OutlierOptions, hooks: InstanceSetHooks<I> = {}) {
    if (list.length === 0) throw new Error('an instance set needs at least one instance');
    this.list = list;
    this.single = list.length === 1;
    this.options = options;
    this.hooks = hooks;
  }

  get upCount(): number {
    let n = 0;
    for (const i of this.list) if (i.state === 'up') n++;
    return n;
  }

  /**
   * The instance for the next request, other than `exclude` (the one a retry failed on): of two
   * up instances picked at random, the one with fewer requests outstanding. When every instance
   * is out, the least busy of them (a trial request); undefined only when `exclude` is the only one.
   */
  pick(exclude?: I): I | undefined {
    const list = this.list;
    const n = list.length;
    if (n === 1) return list[0] === exclude ? undefined : list[0];
    const a = list[(Math.random() * n) | 0];
    let bi = (Math.random() * (n - 1)) | 0;
    if (list[bi] === a) bi = n - 1;
    const b = list[bi];
    const aOk = a.state === 'up' && a !== exclude;
    const bOk = b.state === 'up' && b !== exclude;
    if (aOk && bOk) return weight(b) < weight(a) ? b : a;
    return this.leastBusy(exclude, true) ?? this.leastBusy(exclude, false);
  }

  private leastBusy(exclude: I | undefined, upOnly: boolean): I | undefined {
    let best: I | undefined;
    for (const i of this.list) {
      if (i === exclude || (upOnly && i.state !== 'up')) continue;
      if (best === undefined || weight(i) < weight(best)) best = i;
    }
    return best;
  }

  /** A request went to `instance`. */
  begin(instance: I): void {
    instance.outstanding++;
  }

  /** It ended; `succeeded` when the instance answered (a failure is reported with `fail`). */
  end(instance: I, succeeded: boolean): void {
    instance.outstanding--;
    if (succeeded) this.succeed(instance);
  }

  succeed(instance: I): void {
    instance.consecutiveFailures = 0;
    // Only a trial sent while every instance was out reaches an ejected one: it answered.
    if (instance.state === 'ejected') this.readmit(instance);
  }

  /**
   * A failure of `instance` (refused, reset, timeout, a 5xx of its own). `trial`: the caller's
   * circuit is testing the service, and one failure is enough.
   */
  fail(instance: I, kind: UpstreamFailure, trial = false): void {
    instance.consecutiveFailures++;
    this.hooks.onFailure?.(instance, kind);
    if (this.single || this.stopped || instance.state === 'ejected') return;
    if (trial || instance.consecutiveFailures >= this.options.consecutiveFailures) this.eject(instance);
  }

  /** Stops the ejection timers. */
  shutdown(): void {
    this.stopped = true;
    for (const i of this.list) {
      clearTimeout(i.timer);
      i.timer = undefined;
    }
  }

  private eject(instance: I): void {
    const now = Date.now();
    if (now - instance.upSince >= this.options.maxEjectionMs) instance.ejections = 0;
    instance.state = 'ejected';
    this.scheduleReturn(instance);
    this.hooks.onStateChange?.(instance);
    if (this.upCount === 0) this.hooks.onAllOut?.();
  }

  private scheduleReturn(instance: I): void {
    const { ejectionMs, maxEjectionMs } = this.options;
    const ms = Math.min(maxEjectionMs, ejectionMs * 2 ** Math.min(instance.ejections, 30));
    instance.ejections++;
    clearTimeout(instance.timer);
    const timer = setTimeout(ejectionOver, ms, this as unknown as InstanceSet, instance as Instance);
    timer.unref();
    instance.timer = timer;
  }

  /** @internal The instance's ejection time is over: back if its probe passes, else out for longer. */
  async tryReturn(instance: I): Promise<void> {
    instance.timer = undefined;
    let ok = true;
    if (this.hooks.probe) {
      try {
        ok = await this.hooks.probe(instance);
      } catch {
        ok = false;
      }
    }
    if (this.stopped || instance.state !== 'ejected') return;
    if (ok) this.readmit(instance);
    else this.scheduleReturn(instance);
  }

  private readmit(instance: I): void {
    clearTimeout(instance.timer);
    instance.timer = undefined;
    instance.state = 'up';
    instance.consecutiveFailures = 0;
    instance.upSince = Date.now();
    this.hooks.onStateChange?.(instance);
    this.hooks.onBack?.(instance);
  }
}

function weight(i: Instance): number {
  return i.outstanding + i.consecutiveFailures * FAILURE_WEIGHT;
}

function ejectionOver(set: InstanceSet<Instance>, instance: Instance): void {
  void set.tryReturn(instance);
}

/** `localhost` pinned to 127.0.0.1 (Node may try ::1 first), without a trailing slash. */
export function pinLoopback(url: string): string {
  const u = new URL(url);
  if (u.hostname === 'localhost') u.hostname = '127.0.0.1';
  return u.toString().replace(/\/+$/, '');
}
