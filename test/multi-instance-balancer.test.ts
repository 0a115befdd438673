import { describe, test } from 'node:test';
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
