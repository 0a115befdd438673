// Per-try timeouts for requests safe to send twice (Envoy's per_try_timeout): a GET or HEAD whose
// instance has not answered by then is sent to another instance instead, so that one slow
// instance of several costs its callers a short wait rather than all of its slowness.
import type { ClientRequest } from 'node:http';
import type { InstanceSet } from '../platform/balancer.js';
import type { GatewayInstance } from './upstreams.js';

// A try is never given up sooner than this: below it, a busy machine's scheduling pauses alone
// would send healthy requests twice. Our services answer a GET in a few milliseconds, so a try
// still waiting after this long is on an instance that is slow, not unlucky.
const PER_TRY_FLOOR_MS = 50;
// RFC 6298's gains for the smoothed latency and its mean deviation.
const ALPHA = 1 / 8;
const BETA = 1 / 4;

/** One try of a proxied request: its instance, when it went out, and its per-try timer. */
export class UpstreamTry {
  readonly startedAt = performance.now();
  timer: NodeJS.Timeout | undefined;
  constructor(readonly instance: GatewayInstance) {}
}

/**
 * A service's per-try timeout and the latencies it comes from. The timeout is RFC 6298's
 * retransmission timeout over the service's answers (smoothed latency plus four mean deviations),
 * between PER_TRY_FLOOR_MS and `capMs`: it follows what the service usually takes, so it cuts a
 * try on an instance slower than its peers without cutting a service that is slow as a whole,
 * whose answers raise it (the deviation jumps at the first slow answer).
 */
export class TryPolicy {
  private srtt = 0;
  private rttvar = 0;

  constructor(
    private readonly instances: InstanceSet<GatewayInstance>,
    /** The longest per-try timeout; 0: tries are never cut. */
    private readonly capMs: number,
  ) {}

  /** The per-try timeout now (ms); before any answer, the cap. */
  timeoutMs(): number {
    if (this.srtt === 0) return this.capMs;
    return Math.min(this.capMs, Math.max(PER_TRY_FLOOR_MS, this.srtt + 4 * this.rttvar));
  }

  /**
   * A try to `instance` went out. `repeatable`: it may go to another instance if this one is slow
   * (a first try of a GET or HEAD without a body); then `onTimeout` runs at the per-try timeout,
   * if another instance is in the rotation and answering in time (giving up on a try for one that
   * is slow too would only add a wait).
   */
  start(instance: GatewayInstance, repeatable: boolean, onTimeout: () => void): UpstreamTry {
    const t = new UpstreamTry(instance);
    if (repeatable && this.capMs > 0 && this.instances.hasTimelyOther(instance)) t.timer = setTimeout(onTimeout, this.timeoutMs());
    return t;
  }

  /** The try's response headers came: its time counts for its instance and for the service. */
  answered(t: UpstreamTry | undefined): void {
    if (!t) return;
    clearTimeout(t.timer);
    const ms = performance.now() - t.startedAt;
    // An answer that beat its per-try timer shows the instance in time again; one to a try without
    // a timer only when it came within the timeout (a late answer to a retry does not).
    this.instances.observe(t.instance, ms, t.timer !== undefined || this.capMs === 0 || ms <= this.timeoutMs());
    if (this.srtt === 0) {
      this.srtt = ms;
      this.rttvar = ms / 2;
    } else {
      this.rttvar = (1 - BETA) * this.rttvar + BETA * Math.abs(this.srtt - ms);
      this.srtt = (1 - ALPHA) * this.srtt + ALPHA * ms;
    }
  }

  /** The try ended without an answer (a failure, the client left): nothing learnt about latency. */
  ended(t: UpstreamTry | undefined): void {
    if (t) clearTimeout(t.timer);
  }

  /**
   * The try is given up as too slow: that counts against its instance (the balancer passes it over
   * for a while), not against the service, which another instance is now asked for.
   * Its request is dropped without reporting anything more.
   */
  giveUp(t: UpstreamTry, request: ClientRequest | undefined): void {
    clearTimeout(t.timer);
    this.instances.tooSlow(t.instance, performance.now() - t.startedAt);
    if (!request) return;
    request.removeAllListeners('response');
    request.removeAllListeners('error');
    request.on('error', noop);
    request.destroy();
  }
}

function noop(): void {}
