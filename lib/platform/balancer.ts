// The instances of one service as a caller sees them: which one takes the next request (of two
// picked at random, the one whose recent latency times its outstanding requests is lower: Envoy's
// LEAST_REQUEST weighed by Finagle's peak EWMA; one found too slow lately is passed over), and
// each one's outlier state (ejected after consecutive failures, back as soon as its probe passes,
// under slow start).
import type { UpstreamFailure } from './upstream-errors.js';
import { untraced } from './trace-context.js';

export type InstanceState = 'up' | 'ejected';

export interface OutlierOptions {
  /** Consecutive failures that eject an instance (with two or more instances). */
  consecutiveFailures: number;
  /** When an ejected instance is probed if no interval is set; doubled each time its probe still fails. */
  ejectionMs: number;
  /** Longest ejection time. */
  maxEjectionMs: number;
  /** An ejected instance is probed this often besides (0: only when its ejection time ends). */
  probeIntervalMs?: number;
  /** After coming back, an instance's share ramps from 10 % to its full share over this time (0: at once). */
  slowStartMs?: number;
}

export interface InstanceSetHooks<I extends Instance> {
  /** Asked while an instance is ejected: it comes back only when this resolves true. */
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
  /** Its recent latency as the balancer weighs it (peak EWMA, ms), null before any answer. */
  latencyMs: number | null;
}

// An instance that failed lately weighs as if this many more requests were waiting on it, so
// that a fast-failing one (refusing at once, hence never busy) is not preferred before ejection.
const FAILURE_WEIGHT = 4;
// How fast an instance's latency estimate forgets: a sample this old weighs 1/e. Short, so that
// an instance avoided for being slow (and so sent nothing that would show it fast again) is
// tried again within a few seconds of its fault ending: its estimate decays towards zero while
// it is not asked, and one request then measures it. Finagle and Linkerd use 10 s for the same
// estimate; ours must bring an instance back within 5 s of a 300 ms fault ending.
const LATENCY_DECAY_MS = 500;
// How much lower one instance's cost must be for it to be preferred on cost alone.
const CLEARLY_CHEAPER = 2;
// Below this an estimate counts as this: idle instances (estimates decayed to nothing) are then
// compared by outstanding requests alone.
const LATENCY_FLOOR_MS = 1;
// Slow start lets a returning instance take at least this share of its picks from the start.
const SLOW_START_FLOOR = 0.1;
// An instance on which tries were given up as too slow this many times in a row (one is bad luck
// on a busy machine, and would send every request to the other instance for a while) is passed
// over for SLOW_AVOID_MS while another can take the request: one request per that time is all it
// gets while it stays slow (under 2 % of a service's requests from 17 a second), and it is asked
// again that soon after its fault ends (within 5 s, with room for a late machine). A latency
// estimate alone would not keep it out: a given-up try shows only that it took longer than the
// per-try timeout, which a busy peer's latency times its queue can exceed.
const SLOW_TRIES_TO_AVOID = 2;
const SLOW_AVOID_MS = 3000;

export class Instance {
  outstanding = 0;
  consecutiveFailures = 0;
  state: InstanceState = 'up';
  /** While ejected: when the current ejection time ends, and how long it was. */
  ejectedUntil = 0;
  ejectionMs = 0;
  /** The probe scheduled is the one at the end of the ejection time (not one of the interval's). */
  probeEndsEjection = false;
  upSince = 0;
  timer: NodeJS.Timeout | undefined;
  /** Peak EWMA of the time to response headers (ms), as of `latencyAt`; 0: no answer yet. */
  latency = 0;
  latencyAt = 0;
  /** Tries given up as too slow since its last answer in time. */
  slowTries = 0;
  /** performance.now() until which it is passed over for being too slow. */
  avoidUntil = 0;

  constructor(
    /** The URL as configured. */
    readonly url: string,
    /** Where requests go: `localhost` pinned to 127.0.0.1 (Node may try ::1 first). */
    readonly target: string,
  ) {}

  /** The latency estimate decayed to `now`: an instance not asked lately drifts towards "fast". */
  latencyNow(now: number): number {
    if (this.latency === 0) return 0;
    return this.latency * Math.exp(-(now - this.latencyAt) / LATENCY_DECAY_MS);
  }

  view(): InstanceView {
    const latency = this.latencyNow(performance.now());
    return {
      url: this.url,
      state: this.state,
      outstanding: this.outstanding,
      consecutiveFailures: this.consecutiveFailures,
      latencyMs: this.latency === 0 ? null : Math.round(latency * 10) / 10,
    };
  }
}

export class InstanceSet<I extends Instance = Instance> {
  readonly list: readonly I[];
  /** One instance: no balancing and no ejection, the caller's breaker alone decides. */
  readonly single: boolean;
  private readonly options: OutlierOptions;
  private readonly hooks: InstanceSetHooks<I>;
  private stopped = false;
  // Outlives the request whose failure ejected the instance: its lines carry no request's trace id.
  private readonly probeDue = untraced((instance: I): void => void this.tryReturn(instance));

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
   * Whether an instance other than `instance` is in the rotation and answering in time (no try
   * given up on it since its last answer): somewhere worth sending a try given up on this one.
   */
  hasTimelyOther(instance: I): boolean {
    const now = performance.now();
    for (const i of this.list) if (i !== instance && i.state === 'up' && i.slowTries === 0 && i.avoidUntil <= now) return true;
    return false;
  }

  /**
   * The instance for the next request, other than `exclude` (the one a retry failed on): of two
   * up instances picked at random, the one with the lower cost (recent latency times requests
   * outstanding); one in slow start is passed over but for its growing share. When every
   * instance is out, the cheapest of them (a trial request); undefined only when `exclude` is
   * the only one.
   */
  pick(exclude?: I): I | undefined {
    const list = this.list;
    const n = list.length;
    if (n === 1) return list[0] === exclude ? undefined : list[0];
    const now = performance.now();
    const a = list[(Math.random() * n) | 0];
    let bi = (Math.random() * (n - 1)) | 0;
    if (list[bi] === a) bi = n - 1;
    const b = list[bi];
    const aOk = a.state === 'up' && a !== exclude && !passedOver(a, now) && this.rampAdmits(a);
    const bOk = b.state === 'up' && b !== exclude && !passedOver(b, now) && this.rampAdmits(b);
    if (aOk && bOk) return cheaper(a, b, now);
    if (aOk !== bOk && n === 2) return aOk ? a : b;
    return this.cheapest(exclude, true, now, true) ?? this.cheapest(exclude, true, now, false) ?? this.cheapest(exclude, false, now, false);
  }

  private cheapest(exclude: I | undefined, upOnly: boolean, now: number, fastOnly: boolean): I | undefined {
    let best: I | undefined;
    let bestCost = 0;
    for (const i of this.list) {
      if (i === exclude || (upOnly && i.state !== 'up') || (fastOnly && passedOver(i, now))) continue;
      const c = cost(i, now);
      if (best === undefined || c < bestCost) {
        best = i;
        bestCost = c;
      }
    }
    return best;
  }

  /** Slow start: whether an instance that came back lately takes this pick (always once its ramp is over). */
  private rampAdmits(instance: I): boolean {
    const slowStartMs = this.options.slowStartMs ?? 0;
    if (slowStartMs === 0 || instance.upSince === 0) return true;
    const elapsed = Date.now() - instance.upSince;
    if (elapsed >= slowStartMs) {
      instance.upSince = 0;
      return true;
    }
    return Math.random() < Math.max(SLOW_START_FLOOR, elapsed / slowStartMs);
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

  /**
   * How long `instance` took to answer (to its response headers), or at least took (a try given up
   * as too slow). A sample above the estimate replaces it at once (a slow instance is avoided from
   * its first slow answer); one below pulls it down by how old the estimate is. `timely`: the
   * answer came within the per-try timeout, so the instance is not (or no longer) too slow.
   */
  observe(instance: I, ms: number, timely = true): void {
    const now = performance.now();
    const current = instance.latencyNow(now);
    if (timely) instance.slowTries = 0;
    if (ms >= current || instance.latency === 0) instance.latency = ms;
    else {
      const w = Math.exp(-(now - instance.latencyAt) / LATENCY_DECAY_MS);
      instance.latency = current * w + ms * (1 - w);
    }
    instance.latencyAt = now;
  }

  /**
   * A try on `instance` was given up after `ms` as too slow: counted in its latency, and if it keeps
   * happening while another instance answers in time, it is passed over for a while. When the
   * others are slow too (a busy machine stalls every try at once) nobody is passed over.
   */
  tooSlow(instance: I, ms: number): void {
    instance.slowTries++;
    this.observe(instance, ms, false);
    const slowTries = instance.slowTries;
    if (slowTries >= SLOW_TRIES_TO_AVOID && this.hasTimelyOther(instance)) instance.avoidUntil = performance.now() + SLOW_AVOID_MS;
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

  /**
   * Out of the rotation until a probe passes: one every probe interval, and one when the ejection
   * time ends. Every ejection starts at `ejectionMs`: an instance that crashed and came back was
   * healthy in between, and its next crash says nothing about how long it will take this time.
   */
  private eject(instance: I): void {
    instance.state = 'ejected';
    instance.upSince = 0;
    instance.ejectionMs = Math.min(this.options.ejectionMs, this.options.maxEjectionMs);
    instance.ejectedUntil = Date.now() + instance.ejectionMs;
    this.scheduleProbe(instance);
    this.hooks.onStateChange?.(instance);
    if (this.upCount === 0) this.hooks.onAllOut?.();
  }

  private scheduleProbe(instance: I): void {
    const interval = this.options.probeIntervalMs ?? 0;
    const untilEnd = Math.max(0, instance.ejectedUntil - Date.now());
    const ms = interval > 0 && this.hooks.probe ? Math.min(interval, untilEnd) : untilEnd;
    // A timer may fire a millisecond before Date.now() says its time has come.
    instance.probeEndsEjection = ms === untilEnd;
    clearTimeout(instance.timer);
    const timer = setTimeout(this.probeDue, ms, instance);
    timer.unref();
    instance.timer = timer;
  }

  /**
   * A probe is due: back if it passes; else probed again, and once its ejection time is
   * over, a new one twice as long (capped): doubling only while its probes keep failing.
   */
  private async tryReturn(instance: I): Promise<void> {
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
    if (ok) return this.readmit(instance);
    const now = Date.now();
    if (instance.probeEndsEjection || now >= instance.ejectedUntil) {
      instance.ejectionMs = Math.min(this.options.maxEjectionMs, instance.ejectionMs * 2);
      instance.ejectedUntil = now + instance.ejectionMs;
    }
    this.scheduleProbe(instance);
  }

  private readmit(instance: I): void {
    clearTimeout(instance.timer);
    instance.timer = undefined;
    instance.state = 'up';
    instance.consecutiveFailures = 0;
    instance.upSince = Date.now();
    // What it showed before it went out says nothing about it now.
    instance.latency = 0;
    instance.slowTries = 0;
    instance.avoidUntil = 0;
    this.hooks.onStateChange?.(instance);
    this.hooks.onBack?.(instance);
  }
}

/**
 * Whether `i` is passed over for being too slow: for a while after tries on it kept being given up,
 * and after that while the one request that shows whether it still is has not answered (its
 * latency estimate, decayed meanwhile, would otherwise draw every request until then).
 */
function passedOver(i: Instance, now: number): boolean {
  return i.avoidUntil > now || (i.slowTries >= SLOW_TRIES_TO_AVOID && i.outstanding > 0);
}

/**
 * Of two instances, the one whose cost is clearly lower; else the one with fewer requests
 * outstanding (and failures), `a` (picked at random) when even. Latency alone decides only beyond
 * a factor: instances a little apart, as equal ones are from one moment to the next on a busy
 * machine, share the requests rather than the faster of the moment taking them all.
 */
function cheaper<I extends Instance>(a: I, b: I, now: number): I {
  const ca = cost(a, now);
  const cb = cost(b, now);
  if (cb * CLEARLY_CHEAPER < ca) return b;
  if (ca * CLEARLY_CHEAPER < cb) return a;
  return load(b) < load(a) ? b : a;
}

function load(i: Instance): number {
  return i.outstanding + i.consecutiveFailures * FAILURE_WEIGHT;
}

/** What sending one more request to `i` is expected to cost: its latency times the requests it would then hold. */
function cost(i: Instance, now: number): number {
  return Math.max(LATENCY_FLOOR_MS, i.latencyNow(now)) * (i.outstanding + 1 + i.consecutiveFailures * FAILURE_WEIGHT);
}

/** `localhost` pinned to 127.0.0.1 (Node may try ::1 first), without a trailing slash. */
export function pinLoopback(url: string): string {
  const u = new URL(url);
  if (u.hostname === 'localhost') u.hostname = '127.0.0.1';
  return u.toString().replace(/\/+$/, '');
}
