// The gateway gives back the heap of a busy spell once it turns idle: when it collects, and that a
// busy or a small process never does.
import { describe, test, type MockTimers } from 'node:test';
import assert from 'node:assert/strict';
import { getHeapStatistics } from 'node:v8';
import { collectWhenIdle, heapCollections, IDLE_COMPACT_MS, IDLE_GROWTH_BYTES, IDLE_SHRINK_MS, processDeps, type IdleCollectionDeps } from '../lib/platform/server.js';

const CHECK_MS = 100;
const MB = 2 ** 20;

/** A process whose CPU time and heap the test sets, with the collections it was asked for. */
function fakeProcess(heap: number) {
  const calls: string[] = [];
  const state = { cpuUs: 0, heap };
  const deps: IdleCollectionDeps = {
    compact: () => {
      calls.push('compact');
      state.heap = 40 * MB;
    },
    collect: () => {
      calls.push('collect');
      state.heap = 30 * MB;
    },
    heapBytes: () => state.heap,
    cpuUs: () => state.cpuUs,
  };
  return { calls, state, deps };
}

type FakeProcess = ReturnType<typeof fakeProcess>;

/** `ms` of work taking `share` of each check interval on the CPU, the heap growing `growth` bytes per interval. */
function busy(timers: MockTimers, p: FakeProcess, ms: number, share: number, growth = 0): void {
  for (let i = 0; i < ms / CHECK_MS; i++) {
    p.state.cpuUs += CHECK_MS * 1000 * share;
    p.state.heap += growth;
    timers.tick(CHECK_MS);
  }
}

describe('collection when idle', () => {
  test('when a grown process turns idle, then it compacts after the quiet time, collects once more later, and then no more while nothing grows', (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const p = fakeProcess(50 * MB);
    const stop = collectWhenIdle(p.deps, CHECK_MS);
    // Busy: half of each interval on the CPU, the heap growing.
    busy(t.mock.timers, p, 30 * CHECK_MS, 1 / 2, MB);
    assert.deepEqual(p.calls, []);
    t.mock.timers.tick(IDLE_COMPACT_MS - CHECK_MS);
    assert.deepEqual(p.calls, []);
    t.mock.timers.tick(CHECK_MS);
    assert.deepEqual(p.calls, ['compact']);
    t.mock.timers.tick(IDLE_SHRINK_MS - IDLE_COMPACT_MS);
    assert.deepEqual(p.calls, ['compact', 'collect']);
    t.mock.timers.tick(60_000);
    assert.deepEqual(p.calls, ['compact', 'collect']);
    stop();
  });

  test('when the process stays busy, or its heap grew less than the threshold, then it never collects', (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const working = fakeProcess(200 * MB);
    const stopWorking = collectWhenIdle(working.deps, CHECK_MS);
    // Grown well past the threshold, and a tenth of each interval on the CPU for longer than both quiet times.
    working.state.heap += 2 * IDLE_GROWTH_BYTES;
    busy(t.mock.timers, working, 2 * IDLE_SHRINK_MS, 1 / 10);
    assert.deepEqual(working.calls, []);
    stopWorking();

    const small = fakeProcess(50 * MB);
    const stopSmall = collectWhenIdle(small.deps, CHECK_MS);
    small.state.heap += IDLE_GROWTH_BYTES;
    t.mock.timers.tick(IDLE_SHRINK_MS * 3);
    assert.deepEqual(small.calls, []);
    stopSmall();
  });

  test('when the process is busy again between the compaction and the second collection, then the second runs in its next quiet spell', (t) => {
    t.mock.timers.enable({ apis: ['setInterval'] });
    const p = fakeProcess(50 * MB);
    const stop = collectWhenIdle(p.deps, CHECK_MS);
    p.state.heap = 100 * MB;
    t.mock.timers.tick(IDLE_COMPACT_MS);
    assert.deepEqual(p.calls, ['compact']);
    p.state.cpuUs += CHECK_MS * 1000;
    t.mock.timers.tick(CHECK_MS);
    t.mock.timers.tick(IDLE_SHRINK_MS - CHECK_MS);
    assert.deepEqual(p.calls, ['compact']);
    t.mock.timers.tick(CHECK_MS);
    assert.deepEqual(p.calls, ['compact', 'collect']);
    t.mock.timers.tick(60_000);
    assert.deepEqual(p.calls, ['compact', 'collect']);
    stop();
  });

  test("when V8's own collections run, then they free the garbage and the global gets no gc", () => {
    const { compact, collect } = heapCollections();
    let garbage: Array<{ i: number; s: string }> | undefined = Array.from({ length: 200_000 }, (_, i) => ({ i, s: `item ${i}` }));
    const before = getHeapStatistics().used_heap_size;
    assert.equal(garbage.length, 200_000);
    garbage = undefined;
    compact();
    collect();
    assert.ok(getHeapStatistics().used_heap_size < before - 5 * MB, 'the garbage is gone');
    assert.equal(garbage, undefined);
    assert.equal((globalThis as { gc?: unknown }).gc, undefined);
  });
});

describe('what the gateway measures itself by', () => {
  test('when the process works for 30 ms, then its CPU time grows in µs (thousands, even on a busy machine), and its heap is V8\'s committed heap', () => {
    const before = processDeps.cpuUs();
    const until = performance.now() + 30;
    while (performance.now() < until) Math.sqrt(Math.random());
    const spent = processDeps.cpuUs() - before;
    // µs, not ms: idleness is judged as under 1 % of the interval's µs.
    assert.ok(spent >= 1_000 && spent < 10_000_000, `${spent} µs`);
    const heap = processDeps.heapBytes();
    assert.ok(heap >= getHeapStatistics().used_heap_size * 0.5 && heap > MB, `${heap} bytes`);
  });
});
