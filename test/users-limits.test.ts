// The user service's bounds against abuse, one by one: the password hashing budget, the sign-up
// window per address, and the client address it counts by.
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, test } from 'node:test';
import { clientAddressHeaders, clientAddressOf, clientKeyOf } from '../lib/platform/client-address.js';
import { HttpError } from '../lib/platform/errors.js';
import { createHashBudget } from '../lib/users/hash-budget.js';
import { createSignupLimit } from '../lib/users/signup-limit.js';

const overloaded = (e: unknown) => e instanceof HttpError && e.status === 503 && e.code === 'OVERLOADED' && e.extra?.retryAfter === 1;

/** A hash that finishes when told to. */
function held() {
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  return { hash: () => done, finish };
}

describe('password hashing budget', () => {
  test('when the running and waiting places are taken, then the next check is 503 OVERLOADED at once, and the waiting ones run in order', async () => {
    const budget = createHashBudget({ concurrency: 1, maxQueue: 2, maxWaitMs: 60_000 });
    const order: string[] = [];
    const first = held();
    const running = budget.run('a', first.hash);
    const queued = ['b', 'c'].map((client) => budget.run(client, () => Promise.resolve(void order.push(client))));
    await assert.rejects(budget.run('d', () => Promise.resolve(undefined)), overloaded);
    assert.deepEqual(budget.load, { running: 1, waiting: 2 });
    first.finish();
    await Promise.all([running, ...queued]);
    assert.deepEqual(order, ['b', 'c']);
    assert.deepEqual(budget.load, { running: 0, waiting: 0 });
  });

  test('when the queue is full, then a client that asked for fewer checks takes the newest place of the one that asked for the most, which gets the 503', async () => {
    const budget = createHashBudget({ concurrency: 1, maxQueue: 2, maxWaitMs: 60_000 });
    const order: string[] = [];
    const ran = (name: string) => () => Promise.resolve(void order.push(name));
    const first = held();
    const running = budget.run('flood', first.hash);
    const older = budget.run('flood', ran('older'));
    const newer = budget.run('flood', ran('newer'));
    const bystander = budget.run('bystander', ran('bystander'));
    await assert.rejects(newer, overloaded);
    const third = budget.run('third', ran('third'));
    await assert.rejects(older, overloaded);
    // Both waiting clients asked for one check, as a fourth does: no one to displace.
    await assert.rejects(budget.run('fourth', ran('fourth')), overloaded);
    first.finish();
    await Promise.all([running, bystander, third]);
    assert.deepEqual(order, ['bystander', 'third']);
  });

  test('when a turn comes, then it goes to the waiting client that asked for the fewest checks, the longest waiting among equals', async () => {
    const budget = createHashBudget({ concurrency: 1, maxQueue: 4, maxWaitMs: 60_000 });
    const order: string[] = [];
    const ran = (name: string) => () => Promise.resolve(void order.push(name));
    const first = held();
    const running = budget.run('flood', first.hash);
    const waiting = [budget.run('flood', ran('flood-1')), budget.run('flood', ran('flood-2')), budget.run('bystander', ran('bystander')), budget.run('other', ran('other'))];
    first.finish();
    await Promise.all([running, ...waiting]);
    assert.deepEqual(order, ['bystander', 'other', 'flood-1', 'flood-2']);
  });

  test('when a check waits longer than its bound, then it is 503 OVERLOADED and leaves the queue', async () => {
    const budget = createHashBudget({ concurrency: 1, maxQueue: 4, maxWaitMs: 20 });
    const first = held();
    const running = budget.run('a', first.hash);
    await assert.rejects(budget.run('b', () => Promise.resolve(undefined)), overloaded);
    assert.deepEqual(budget.load, { running: 1, waiting: 0 });
    first.finish();
    await running;
  });

  test('when a check throws, then its place is given back', async () => {
    const budget = createHashBudget({ concurrency: 1, maxQueue: 0, maxWaitMs: 10 });
    await assert.rejects(budget.run('a', () => Promise.reject(new Error('scrypt failed'))), /scrypt failed/);
    assert.equal(await budget.run('a', () => Promise.resolve('next')), 'next');
  });
});

describe('sign-up window per address', () => {
  const refused = (retryAfter: number) => (e: unknown) => e instanceof HttpError && e.status === 429 && e.code === 'RATE_LIMITED' && e.extra?.retryAfter === retryAfter;

  test('when an address reaches the limit, then it is 429 with Retry-After until its window ends, and other addresses are not', () => {
    const limit = createSignupLimit({ limit: 2, windowMs: 10_000, maxClients: 100 });
    limit.take('a', 0);
    limit.take('a', 1);
    assert.throws(() => limit.take('a', 2_500), refused(8));
    limit.take('b', 3);
    limit.take('a', 10_000);
  });

  test('when every window is active and the map is full, then the addresses without one share one window, and none is dropped', () => {
    const limit = createSignupLimit({ limit: 2, windowMs: 10_000, maxClients: 2 });
    limit.take('a', 0);
    limit.take('a', 0);
    limit.take('b', 1);
    limit.take('c', 2);
    limit.take('d', 3);
    assert.throws(() => limit.take('e', 4), refused(10));
    assert.throws(() => limit.take('a', 5), refused(10), 'a keeps its full window');
    limit.take('b', 6);
    // a's window ended: its place goes to the next new address.
    limit.take('e', 10_001);
  });
});

describe('client address', () => {
  const TOKEN = 'internal-token-for-tests-0123456789';
  const request = (peer: string, headers: Record<string, string>) => ({ socket: { remoteAddress: peer }, headers }) as unknown as IncomingMessage;

  test('when INTERNAL_TOKEN is set, then only a recent signature made with it lets the header count; else the peer counts', () => {
    const now = 1_800_000_000_000;
    const signed = clientAddressHeaders('203.0.113.9', TOKEN, now);
    assert.equal(clientAddressOf(request('10.0.0.5', signed), TOKEN, now + 1000), '203.0.113.9');
    assert.equal(clientAddressOf(request('10.0.0.5', signed), TOKEN, now + 301_000), '10.0.0.5', 'too old');
    assert.equal(clientAddressOf(request('10.0.0.5', signed), 'another-token-of-16-chars', now), '10.0.0.5', 'another key');
    assert.equal(clientAddressOf(request('10.0.0.5', { ...signed, 'x-client-address': '198.51.100.1' }), TOKEN, now), '10.0.0.5', 'another address');
    assert.equal(clientAddressOf(request('127.0.0.1', { 'x-client-address': '198.51.100.1' }), TOKEN, now), '127.0.0.1', 'unsigned, even from loopback');
  });

  test('when INTERNAL_TOKEN is unset, then the header counts from a loopback peer only', () => {
    assert.equal(clientAddressOf(request('127.0.0.1', { 'x-client-address': '198.51.100.1' }), undefined), '198.51.100.1');
    assert.equal(clientAddressOf(request('::ffff:127.0.0.1', { 'x-client-address': '198.51.100.1' }), undefined), '198.51.100.1');
    assert.equal(clientAddressOf(request('10.0.0.5', { 'x-client-address': '198.51.100.1' }), undefined), '10.0.0.5');
  });

  test('an IPv6 client counts by its /56; an IPv4-mapped one as IPv4', () => {
    assert.equal(clientKeyOf('2001:db8:0:12::1'), clientKeyOf('2001:db8:0:ff:ab::2'));
    assert.notEqual(clientKeyOf('2001:db8:0:100::1'), clientKeyOf('2001:db8::1'));
    assert.equal(clientKeyOf('::ffff:192.0.2.1'), '192.0.2.1');
  });
});
