import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Instance, InstanceSet } from '../lib/platform/balancer.js';
import { mayRetry, RetryBudget, type FailedTry } from '../lib/platform/retry.js';
import { ServiceClient, UpstreamUnavailableError } from '../lib/platform/service-client.js';

const GET_RESET: FailedTry = { repeatable: true, failure: 'reset', answered: false, reusedSocket: false, severalInstances: true, replayable: true };

describe('the retry rule', () => {
  test('when a try was refused, then any method may go again: nothing reached the service', () => {
    for (const repeatable of [true, false]) assert.equal(mayRetry({ ...GET_RESET, repeatable, failure: 'refused', severalInstances: false }), true, `repeatable: ${repeatable}`);
  });

  test('when a try was reset before any answer, then only a request safe to repeat goes again, to another instance or off a pooled socket', () => {
    assert.equal(mayRetry(GET_RESET), true);
    assert.equal(mayRetry({ ...GET_RESET, repeatable: false }), false, 'a POST may have been acted on');
    assert.equal(mayRetry({ ...GET_RESET, repeatable: true }), true, 'unless its Idempotency-Key is honoured');
    assert.equal(mayRetry({ ...GET_RESET, severalInstances: false }), false, 'one instance, a fresh socket: it may have died on our request');
    assert.equal(mayRetry({ ...GET_RESET, severalInstances: false, reusedSocket: true }), true, 'a pooled socket found closed');
  });

  test('when the service answered, timed out or its body cannot be sent again, then it never goes again', () => {
    assert.equal(mayRetry({ ...GET_RESET, answered: true }), false);
    assert.equal(mayRetry({ ...GET_RESET, failure: 'timeout' }), false);
    assert.equal(mayRetry({ ...GET_RESET, failure: 'bad_response' }), false);
    assert.equal(mayRetry({ ...GET_RESET, failure: 'server_error' }), false);
    assert.equal(mayRetry({ ...GET_RESET, failure: 'refused', replayable: false }), false);
  });
});

describe('retry budget', () => {
  test('when many calls fail, then at most a fifth of them (plus one) may be retried', () => {
    const budget = new RetryBudget({ ratio: 0.2, cap: 10 });
    let retries = 0;
    for (let i = 0; i < 100; i++) {
      budget.deposit();
      if (budget.withdraw()) retries++;
    }
    assert.ok(retries >= 19 && retries <= 21, `retries ${retries}`);
  });

  test('when a service was quiet, then its saved retries stop at the cap', () => {
    const budget = new RetryBudget({ ratio: 0.5, cap: 3 });
    for (let i = 0; i < 100; i++) budget.deposit();
    let retries = 0;
    while (budget.withdraw()) retries++;
    assert.ok(retries >= 3 && retries <= 4, `retries ${retries}`);
  });
});

describe('ServiceClient retries spend the budget', () => {
  // Two instances that hang up on every request: every GET is reset before any answer.
  let servers: Server[];
  let connections = 0;
  before(async () => {
    servers = await Promise.all([0, 1].map(() => new Promise<Server>((resolve) => {
      const s = createServer((req) => {
        connections++;
        req.socket.destroy();
      });
      s.listen(0, '127.0.0.1', () => resolve(s));
    })));
  });
  after(() => Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve)))));

  const clientWith = (retries: RetryBudget) => {
    const urls = servers.map((s) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`);
    const instances = new InstanceSet(urls.map((u) => new Instance(u, u)), { consecutiveFailures: 1000, ejectionMs: 1000, maxEjectionMs: 1000 });
    return new ServiceClient({ name: 'users', instances, timeoutMs: 2000, retries });
  };

  test('when the shared budget has a retry, then a reset GET goes to the other instance once; when another client spent it, then not at all', async () => {
    const shared = new RetryBudget({ ratio: 0, cap: 10, initial: 1 });
    const aggregates = clientWith(shared);
    const login = clientWith(shared);
    connections = 0;
    await assert.rejects(aggregates.get('/users/1'), UpstreamUnavailableError);
    assert.equal(connections, 2, 'tried, then retried on the other instance');
    connections = 0;
    await assert.rejects(login.get('/users/1'), UpstreamUnavailableError);
    assert.equal(connections, 1, 'the budget was spent by the other client of the same service');
  });
});
