// The one place the dashboard and the debug routes read a service's circuit and instances, so a
// change to the breaker or upstream API is re-pointed here.
import type { CircuitState } from '../breakers.js';
import type { InstanceView } from '../../platform/balancer.js';
import type { Upstream } from '../upstreams.js';

export interface UpstreamView {
  state: CircuitState;
  /** Calls refused without reaching the service (circuit open or trial slots taken). */
  rejects: number;
  /** Calls given up on after UPSTREAM_TIMEOUT_MS. */
  timeouts: number;
}

export function viewOf(upstream: Upstream): UpstreamView {
  const { rejects, timeouts } = upstream.breaker.stats;
  return { state: upstream.breaker.state, rejects, timeouts };
}

/** Base URLs of the service's instances, as the gateway reaches them. */
export function instanceUrls(upstream: Upstream): string[] {
  return upstream.instances.list.map((i) => i.target);
}

/**
 * Each instance's state for /health. With one instance nothing is ejected by its failures (the
 * circuit decides), so it shows as ejected while the circuit is open.
 */
export function instancesOf(upstream: Upstream): InstanceView[] {
  const { instances, breaker } = upstream;
  if (instances.single) return [{ ...instances.list[0].view(), state: breaker.state === 'OPEN' ? 'ejected' : 'up' }];
  return instances.list.map((i) => i.view());
}
