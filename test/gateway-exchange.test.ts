// The proxy's exchange reports its call's outcome once, to its instance, its breaker and its
// span, whatever order Node's events come in: every order of the racing events is played here.
import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Request, Response } from 'express';
import { Instance, InstanceSet } from '../lib/platform/balancer.js';
import { RetryBudget } from '../lib/platform/retry.js';
import { UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { ServiceBreaker, type BreakerCall } from '../lib/gateway/breakers.js';
import { Exchange } from '../lib/gateway/proxy.js';
import { TryPolicy } from '../lib/gateway/retry.js';
import type { GatewayInstance, Upstream } from '../lib/gateway/upstreams.js';

const TIMEOUT_MS = 500;

function permutations<T>(items: T[]): T[][] {
  if (items.length <= 1) return [items];
  return items.flatMap((item, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [item, ...rest]));
}

/** An exchange whose call is out (its attempt counted on its instance), with counters on every report. */
function startExchange() {
  const instance = new Instance('http://users.test', 'http://users.test');
  const instances = new InstanceSet([instance], { consecutiveFailures: 5, ejectionMs: 1000, maxEjectionMs: 1000 });
  const kinds: string[] = [];
  const breaker = new ServiceBreaker('users', {
    failureThreshold: 100, resetTimeoutMs: 1000, maxResetTimeoutMs: 1000, stablePeriodMs: 1000, halfOpenRequests: 1,
    timeoutMs: TIMEOUT_MS, probeIntervalMs: 0, slowStartMs: 0,
  }, { onFailure: (kind) => kinds.push(kind) });
  const upstream = {
    name: 'users', instances, breaker, timeoutMs: TIMEOUT_MS,
    tries: new TryPolicy(instances as unknown as InstanceSet<GatewayInstance>, 0),
    retries: new RetryBudget({ ratio: 0.2, cap: 10 }),
  } as unknown as Upstream;
  const req = Object.assign(new EventEmitter(), { method: 'GET', headers: {}, socket: { destroyed: false }, complete: true }) as unknown as Request;
  const res = Object.assign(new EventEmitter(), { writableFinished: false, headersSent: false }) as unknown as Response;
  const ex = new Exchange(req, res, undefined, upstream);
  let spanEnds = 0;
  let call: BreakerCall | undefined;
  // What the proxy's handler hears of the run: its failure (a resolved run says nothing).
  const outcome = new Promise<string>((heard) => {
    breaker.runWith((c, resolve, reject) => {
      call = c;
      ex.start(c, (e) => {
        e.span = { headers: {}, end: () => void spanEnds++ };
        e.instance = instance as unknown as GatewayInstance;
        instances.begin(instance);
        e.try = upstream.tries.start(e.instance, false, () => {});
      }, 'users', () => {
        resolve();
        heard('resolved');
      }, reject);
    }, {}, (err) => heard((err as Error).name));
  });
  return {
    ex, res, breaker, instance, kinds, outcome,
    get call() { return call!; },
    get spanEnds() { return spanEnds; },
    /** The service's headers came (what onResponse does for a 2xx). */
    answer() {
      ex.state = 'streaming';
      ex.resolve();
    },
  };
}

type Event = 'client closes' | 'breaker times out' | 'upstream errors' | 'answer ends' | 'answer breaks off';

/** Fires `event`, then lets the promises it settled run, as they would before Node's next event. */
async function fire(x: ReturnType<typeof startExchange>, event: Event): Promise<void> {
  switch (event) {
    case 'client closes':
      x.res.emit('close');
      break;
    case 'breaker times out':
      mock.timers.tick(TIMEOUT_MS);
      break;
    // What the proxy's handlers report for these (onError, the answer's 'close').
    case 'upstream errors':
      x.ex.finish('reset');
      x.ex.reject(new UpstreamUnavailableError('users', 'reset'));
      break;
    case 'answer ends':
      x.ex.finish('success');
      break;
    case 'answer breaks off':
      x.ex.finish('reset');
      break;
  }
  await new Promise(setImmediate);
}

/** Exactly one report everywhere: one span end, the instance's attempt closed once, one breaker outcome. */
function assertReportedOnce(x: ReturnType<typeof startExchange>, order: Event[]): void {
  const what = order.join(' > ');
  assert.equal(x.spanEnds, 1, `${what}: span ended once`);
  assert.equal(x.instance.outstanding, 0, `${what}: the attempt ended once on its instance`);
  assert.equal(x.call.settled, true, `${what}: the breaker has the outcome`);
  const { successes, failures } = x.breaker.stats;
  assert.ok(successes + failures <= 1, `${what}: one outcome, not ${successes} successes and ${failures} failures`);
}

describe('exchange outcome, whatever the order of events', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
  afterEach(() => mock.timers.reset());

  test('when the client, the breaker\'s timeout and an upstream error race before any answer, then the first decides, once', async () => {
    for (const order of permutations<Event>(['client closes', 'breaker times out', 'upstream errors'])) {
      const x = startExchange();
      for (const event of order) await fire(x, event);
      assertReportedOnce(x, order);
      const first = order[0];
      const { successes, failures, timeouts } = x.breaker.stats;
      assert.equal(successes, 0);
      assert.equal(failures, first === 'client closes' ? 0 : 1, `${order.join(' > ')}: blamed only when the service failed first`);
      assert.equal(timeouts, first === 'breaker times out' ? 1 : 0);
      assert.equal(x.instance.consecutiveFailures, first === 'client closes' ? 0 : 1, `${order.join(' > ')}: instance`);
      assert.deepEqual(x.kinds, first === 'client closes' ? [] : [first === 'breaker times out' ? 'timeout' : 'reset']);
      assert.equal(x.ex.state, 'gone', 'the client left: nothing more is sent');
      assert.equal(await x.outcome, first === 'client closes' ? 'ClientGoneError' : 'UpstreamUnavailableError', 'the run settles with what came first');
    }
  });

  test('when the client hangs up and the answer ends (whole or broken off) in either order, then the first decides, once', async () => {
    for (const end of ['answer ends', 'answer breaks off'] as const) {
      for (const order of permutations<Event>(['client closes', end])) {
        const x = startExchange();
        x.answer();
        for (const event of order) await fire(x, event);
        assertReportedOnce(x, order);
        const { successes, failures } = x.breaker.stats;
        const clientFirst = order[0] === 'client closes';
        assert.equal(successes, !clientFirst && end === 'answer ends' ? 1 : 0, order.join(' > '));
        assert.equal(failures, !clientFirst && end === 'answer breaks off' ? 1 : 0, order.join(' > '));
        assert.equal(x.ex.state, clientFirst || order[1] === 'client closes' ? 'gone' : 'answered');
        assert.equal(await x.outcome, 'resolved', 'the run resolved at the headers');
        // The breaker's timer was cleared when the headers came: a late tick changes nothing.
        mock.timers.tick(TIMEOUT_MS);
        assertReportedOnce(x, order);
      }
    }
  });

  test('when the client\'s connection closes after every byte was written, then the answer\'s own end reports it', async () => {
    const x = startExchange();
    x.answer();
    (x.res as unknown as { writableFinished: boolean }).writableFinished = true;
    await fire(x, 'client closes');
    assert.equal(x.spanEnds, 0, 'not decided by the close');
    await fire(x, 'answer ends');
    assertReportedOnce(x, ['client closes', 'answer ends']);
    assert.equal(x.breaker.stats.successes, 1);
  });
});
