import { afterEach, beforeEach, describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { Instance, InstanceSet } from '../lib/platform/balancer.js';
import { eventually } from './gateway-helpers.js';

const OUTLIER = { consecutiveFailures: 2, ejectionMs: 20, maxEjectionMs: 80 };
const make = (n: number) => Array.from({ length: n }, (_, i) => new Instance(`http://127.0.0.1:${4000 + i}`, `http://127.0.0.1:${4000 + i}`));

describe('instance set', () => {
  test('when one of two instances has requests outstanding, then the other takes every new one', () => {
    const set = new InstanceSet(make(2), OUTLIER);
    const [a, b] = set.list;
    set.begin(a);
    set.begin(a);
    for (let i = 0; i < 50; i++) assert.equal(set.pick(), b);
    set.end(a, true);
    set.end(a, true);
    const picked = new Set(Array.from({ length: 100 }, () => set.pick()));
    assert.equal(picked.size, 2, 'equals are picked at random');
  });

  test('when an instance fails its consecutive failures, then it is ejected and never picked, and the last ejection reports every instance out', () => {
    let allOut = 0;
    const set = new InstanceSet(make(3), OUTLIER, { probe: () => Promise.resolve(false), onAllOut: () => allOut++ });
    const [a, b, c] = set.list;
    set.fail(a, 'refused');
    assert.equal(a.state, 'up', 'one failure is not enough');
    set.succeed(a);
    set.fail(a, 'refused');
    assert.equal(a.state, 'up', 'a success in between starts the count over');
    set.fail(a, 'reset');
    assert.equal(a.state, 'ejected');
    for (let i = 0; i < 100; i++) assert.notEqual(set.pick(), a);
    assert.equal(set.pick(b), c, 'a retry goes to the one left');
    set.fail(b, 'timeout');
    set.fail(b, 'timeout');
    assert.equal(allOut, 0);
    set.fail(c, 'server_error', true);
    assert.equal(c.state, 'ejected', 'a failed trial ejects at once');
    assert.equal(allOut, 1);
    assert.ok(set.pick(), 'with every instance out, a trial still has somewhere to go');
    set.shutdown();
  });

  test('when an ejected instance keeps failing its probe, then each ejection lasts twice the last, up to the cap; a passing probe brings it back', async () => {
    const probes: number[] = [];
    let healthy = false;
    let back = 0;
    const set = new InstanceSet(make(2), OUTLIER, {
      probe: () => {
        probes.push(performance.now());
        return Promise.resolve(healthy);
      },
      onBack: () => back++,
    });
    const a = set.list[0];
    const ejectedAt = performance.now();
    set.fail(a, 'refused');
    set.fail(a, 'refused');
    await eventually(() => probes.length >= 4, 3_000, 'four probes');
    const gaps = [probes[0] - ejectedAt, probes[1] - probes[0], probes[2] - probes[1], probes[3] - probes[2]];
    // Timers never fire early: each gap is at least its ejection time (20, 40, 80, then capped at 80).
    for (const [i, min] of [20, 40, 80, 80].entries()) assert.ok(gaps[i] >= min - 2, `gap ${i}: ${gaps[i].toFixed(1)} ms`);
    assert.equal(a.state, 'ejected');
    healthy = true;
    await eventually(() => a.state === 'up', 3_000, 'back after a passing probe');
    assert.equal(back, 1);
    assert.equal(a.consecutiveFailures, 0);
    set.shutdown();
  });

  test('when there is one instance, then failures are counted but it is never ejected', () => {
    let allOut = 0;
    const set = new InstanceSet(make(1), OUTLIER, { onAllOut: () => allOut++ });
    const [only] = set.list;
    for (let i = 0; i < 10; i++) set.fail(only, 'refused', i % 2 === 0);
    assert.equal(only.state, 'up');
    assert.equal(only.consecutiveFailures, 10);
    assert.equal(allOut, 0);
    assert.equal(set.pick(), only);
    assert.equal(set.pick(only), undefined, 'no other instance to retry on');
  });
});

describe('instance set: return after an ejection (mock timers)', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
  afterEach(() => mock.timers.reset());
  const flush = () => new Promise((r) => setImmediate(r));
  /** Moves the clock `ms` on and lets the probe it started settle. */
  const advance = async (ms: number) => {
    mock.timers.tick(ms);
    await flush();
    await flush();
  };

  test('when an ejected instance passes its probe, then its next ejection starts at the first ejection time again: doubling only while probes fail', async () => {
    const probes: number[] = [];
    let healthy = false;
    const set = new InstanceSet(make(2), { consecutiveFailures: 1, ejectionMs: 100, maxEjectionMs: 1000 }, {
      probe: () => {
        probes.push(Date.now() - 1_000_000);
        return Promise.resolve(healthy);
      },
    });
    const a = set.list[0];
    set.fail(a, 'refused');
    await advance(100);
    await advance(200);
    assert.deepEqual(probes, [100, 300], 'the second ejection time is twice the first');
    healthy = true;
    await advance(400);
    assert.deepEqual(probes, [100, 300, 700]);
    assert.equal(a.state, 'up');
    set.fail(a, 'refused');
    await advance(99);
    assert.equal(probes.length, 3);
    await advance(1);
    assert.deepEqual(probes, [100, 300, 700, 800], 'back to 100 ms, not 800');
    assert.equal(a.state, 'up');
    set.shutdown();
  });

  test('when a probe interval is set, then an ejected instance is probed at each one, whatever its ejection time, and is back (under slow start) at the first that passes', async () => {
    const probes: number[] = [];
    let healthy = false;
    let back = 0;
    const set = new InstanceSet(make(2), { consecutiveFailures: 1, ejectionMs: 60_000, maxEjectionMs: 600_000, probeIntervalMs: 50, slowStartMs: 1000 }, {
      probe: () => {
        probes.push(Date.now() - 1_000_000);
        return Promise.resolve(healthy);
      },
      onBack: () => back++,
    });
    const [a, b] = set.list;
    set.fail(a, 'reset');
    for (let i = 0; i < 4; i++) await advance(50);
    assert.deepEqual(probes, [50, 100, 150, 200]);
    healthy = true;
    await advance(50);
    assert.equal(a.state, 'up');
    assert.equal(back, 1);
    // Slow start: at first it takes about a tenth of the picks it would take.
    let toA = 0;
    for (let i = 0; i < 1000; i++) if (set.pick() === a) toA++;
    assert.ok(toA > 20 && toA < 250, `${toA} of 1000 at the start of its ramp`);
    await advance(1000);
    toA = 0;
    for (let i = 0; i < 1000; i++) if (set.pick() === a) toA++;
    assert.ok(toA > 350, `${toA} of 1000 once its ramp is over`);
    assert.equal(b.state, 'up');
    set.shutdown();
  });
});

describe('instance set: latency', () => {
  test('when one of two instances answers slower, then every pick goes to the faster one', () => {
    const set = new InstanceSet(make(2), OUTLIER);
    const [a, b] = set.list;
    set.observe(a, 300);
    set.observe(b, 2);
    for (let i = 0; i < 200; i++) assert.equal(set.pick(), b);
    assert.equal(set.pick(b), a, 'a retry still goes to the other');
  });

  test('when tries on an instance are given up as too slow twice in a row, then it is passed over for 3 s, then gets one request at a time until one answers in time', async () => {
    const set = new InstanceSet(make(2), OUTLIER);
    const [fast, slow] = set.list;
    set.observe(fast, 20);
    // Ten requests held by the fast one: by its cost alone, the slow one would be preferred.
    for (let i = 0; i < 10; i++) set.begin(fast);
    set.tooSlow(slow, 60);
    assert.ok(!set.hasTimelyOther(fast), 'a try on the fast one is not given up for the slow one');
    set.tooSlow(slow, 60);
    for (let i = 0; i < 200; i++) assert.equal(set.pick(), fast);
    await new Promise((r) => setTimeout(r, 3_100));
    const first = set.pick();
    assert.equal(first, slow, 'tried again once its time is over');
    set.begin(slow);
    for (let i = 0; i < 200; i++) assert.equal(set.pick(), fast, 'one request at a time while it may still be slow');
    set.end(slow, true);
    set.observe(slow, 2);
    assert.ok(Array.from({ length: 50 }, () => set.pick()).includes(slow), 'an answer in time brings it back');
  });
});
