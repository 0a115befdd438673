// Deadlines across hops: the gateway says how long it will wait (Request-Timeout), the order
// service gives up and undoes its work before then, and no order is committed after its caller
// was told that it failed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from './helpers.js';
import { eventually, startFakeUpstream, startGateway, startGatewayFor, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';
import { createProduct, createUser, stockOf, startServices, type System } from './system.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';

describe('deadlines', () => {
  let sys: System;
  let proxy: FaultProxy;
  let gw: StartedGateway;
  before(async () => {
    proxy = await startFaultProxy();
    // The order service would wait 5 s for the product service; the gateway waits 1 s.
    sys = await startServices({ env: { PRODUCTS_URL: proxy.url, UPSTREAM_TIMEOUT_MS: '5000', RELEASE_RETRY_MS: '50' } });
    proxy.target = sys.products.url;
    gw = await startGatewayFor(sys, { UPSTREAM_TIMEOUT_MS: '1000', RATE_LIMIT: '1000000', CB_FAILURE_THRESHOLD: '1000' });
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
    await proxy?.close();
  });

  test('when the product service is slower than the gateway waits, then the order service answers 504 DEADLINE_EXCEEDED first and gives the stock back', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 50 });
    proxy.fault = { kind: 'latency', ms: 700 };
    const r = await http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 2 }] } });
    assert.equal(r.status, 504);
    assert.equal(r.body.code, 'DEADLINE_EXCEEDED', 'answered by the order service, before the gateway gave up');
    proxy.fault = { kind: 'pass' };
    // The reserve lands late, after its release: it takes nothing.
    await eventually(async () => (await stockOf(sys, productId)) === 50 && (await pendingReleases(sys)) === 0, 5_000, 'the stock back');
    assert.equal((await http(sys.orders.url, 'GET', `/orders?userId=${userId}`)).body.meta.total, 0);
  });

  test('when answers come around the gateway\'s timeout, then every 201 is an order and no order exists for a failed request', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 200 });
    const statuses: number[] = [];
    const answers: string[] = [];
    // Reserves that take about as long as the order service has left (a little under 1 s).
    for (const ms of [400, 460]) {
      proxy.fault = { kind: 'latency', ms };
      const round = await Promise.all(
        Array.from({ length: 10 }, (_, i) => http(gw.url, 'POST', '/api/orders', { body: { userId, items: [{ productId, quantity: 1 }] }, headers: { 'idempotency-key': `dl-${ms}-${i}` } })),
      );
      for (const r of round) {
        statuses.push(r.status);
        answers.push(`${r.status} ${r.body?.code ?? ''}`.trim());
        assert.ok([201, 504].includes(r.status), `${r.status} ${r.text}`);
      }
    }
    proxy.fault = { kind: 'pass' };
    const created = statuses.filter((s) => s === 201).length;
    assert.ok(statuses.includes(504), 'some answers came too late');
    try {
      await eventually(async () => (await pendingReleases(sys)) === 0 && (await stockOf(sys, productId)) === 200 - created, 5_000, 'the stock of failed orders back');
    } catch {
      const orders = (await http(sys.orders.url, 'GET', `/orders?userId=${userId}&limit=100`)).body.meta.total;
      assert.fail(`stock ${await stockOf(sys, productId)}, expected ${200 - created} (${created} answered 201, ${orders} orders; answers ${answers.join(', ')}); outbox rows ${JSON.stringify(await releaseRows(sys))}; order-service log lines other than "request failed" ${JSON.stringify(sys.orders.logs().filter((l) => l.msg !== 'request failed').map((l) => ({ msg: l.msg, err: (l.err as { message?: string } | undefined)?.message })))}`);
    }
    const orders = await http(sys.orders.url, 'GET', `/orders?userId=${userId}&limit=100`);
    assert.equal(orders.body.meta.total, created, 'an order for every 201 and none for a 504');
  });
});

describe('Request-Timeout from the gateway', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, UPSTREAM_TIMEOUT_MS: '1234' });
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when a request is proxied, then the service is told how long the gateway waits, whatever the client sent', async () => {
    up.behaviour = { kind: 'echo' };
    assert.equal((await http(gw.url, 'GET', '/api/users/1', { headers: { 'request-timeout': '999999' } })).status, 200);
    assert.equal(up.seen.at(-1)?.headers['request-timeout'], '1234');
  });
});

async function pendingReleases(sys: System): Promise<number> {
  return (await sys.orders.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM pending_releases'))!.n;
}

async function releaseRows(sys: System): Promise<unknown[]> {
  return sys.orders.db.all('SELECT reservation_id, claimed, lease_until_ms, attempts, last_error FROM pending_releases');
}
