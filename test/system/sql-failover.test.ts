// What a database failover, a pooler's restart or an idle-connection killer does to the services
// on PostgreSQL: every connection reset at once, or one reset mid-transaction or while the answer
// to COMMIT is on its way, while clients place orders with an Idempotency-Key and retry. The three
// services run in this process, each with a fault proxy of its own in front of PostgreSQL; a reset
// that reached uncaughtException would fail this file (and, in a service's own process, end it).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { FaultProxy, Fault } from '../support/fault-proxy.js';
import { databaseFaultProxy, testStorage, type TestStorage } from '../support/engines.js';
import { http, type TestResponse } from '../helpers.js';
import { createProduct, createUser, startServices, stockOf, type ServiceName, type System } from '../system.js';
import { skipUnless } from '../support/services.js';
import { eventually } from '../support/eventually.js';

// The upstream timeout sets the release worker's wait (2x): outbox rows of failed creates are
// released from 2 s after they were written, every 100 ms. Shorter, a busy machine's slow
// reserves time out, and the retries they cause slow the others down.
const ENV = { UPSTREAM_TIMEOUT_MS: '1000', RELEASE_RETRY_MS: '100' };
const CLIENTS = 8;
const RESETS = 3;
const RESET_GAP_MS = 1200;
const INITIAL_STOCK = 100_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Ack {
  key: string;
  orderId: number;
  items: { productId: number; quantity: number }[];
  /** When the attempt that got the 201 was sent, and when its answer came. */
  sentAt: number;
  at: number;
}

/**
 * Clients that place orders, each with a new Idempotency-Key, and retry a failed one with the
 * same key until it is answered 201. stop() lets each finish the order it is on.
 */
function startClients(sys: System, userId: number, productIds: number[], count: number) {
  const acks: Ack[] = [];
  const statuses = new Map<string, number>();
  let stopping = false;
  const client = async (n: number) => {
    for (let i = 0; !stopping; i++) {
      const key = `c${n}-${i}-${randomUUID()}`;
      const items = [{ productId: productIds[(n + i) % productIds.length], quantity: 1 + ((n + i) % 3) }];
      if (i % 2 === 1) items.push({ productId: productIds[(n + i + 1) % productIds.length], quantity: 1 });
      for (;;) {
        const sentAt = Date.now();
        let status = 'no answer';
        try {
          const r = await http<{ id: number; code?: string }>(sys.orders.url, 'POST', '/orders', {
            body: { userId, items },
            headers: { 'idempotency-key': key },
            timeoutMs: 10_000,
          });
          status = r.status === 201 ? '201' : `${r.status} ${r.body?.code}`;
          if (r.status === 201) {
            statuses.set(status, (statuses.get(status) ?? 0) + 1);
            acks.push({ key, orderId: r.body.id, items, sentAt, at: Date.now() });
            break;
          }
        } catch {
          // No answer is one more reason to retry.
        }
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        await sleep(20 + Math.random() * 60);
      }
    }
  };
  const running = Promise.all(Array.from({ length: count }, (_, n) => client(n)));
  return {
    acks,
    statuses,
    /** The first 201 to an attempt sent at or after `t`. */
    firstAckSentAfter: (t: number) => acks.find((a) => a.sentAt >= t),
    async stop() {
      stopping = true;
      await running;
    },
  };
}

describe('orders on PostgreSQL while its connections are reset', { skip: skipUnless('postgres') }, () => {
  const proxies = {} as Record<ServiceName, FaultProxy>;
  let base: TestStorage;
  let sys: System;
  // What would have ended a service's own process. node:test counts it against the file too; here
  // each test also says so itself.
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  before(async () => {
    process.on('uncaughtException', onUncaught);
    const urls = {} as Record<ServiceName, string>;
    for (const name of ['users', 'products', 'orders'] as const) {
      const { proxy, url } = await databaseFaultProxy();
      proxies[name] = proxy;
      urls[name] = url;
    }
    base = testStorage('postgres');
    const storage: TestStorage = {
      ...base,
      options: (service, seed) => ({ ...base.options(service, seed), databaseUrl: urls[service as ServiceName] }),
    };
    sys = await startServices({ storage, env: ENV });
  });

  after(async () => {
    process.off('uncaughtException', onUncaught);
    for (const proxy of Object.values(proxies)) proxy.fault = { kind: 'pass' };
    await sys?.stop();
    for (const proxy of Object.values(proxies)) await proxy.close();
    await base?.remove();
  });

  const resetAll = () => {
    for (const proxy of Object.values(proxies)) proxy.resetAll();
  };

  /**
   * Once the release worker has given back every reservation no order took: each acknowledged
   * order exists, one per key; each product's stock plus what live orders hold is what it started
   * with; the product service holds exactly what those orders hold; every service is healthy.
   */
  async function assertInvariant(userId: number, productIds: number[], acks: Ack[]): Promise<void> {
    assert.deepEqual(uncaught.map(String), [], 'nothing reached uncaughtException');
    await eventually(async () => (await sys.orders.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM pending_releases'))!.n === 0, 15_000, 'the release worker to empty the outbox');
    for (const ack of acks) {
      const r = await http<{ id: number; items: { productId: number; quantity: number }[] }>(sys.orders.url, 'GET', `/orders/${ack.orderId}`);
      assert.equal(r.status, 200, `acknowledged order ${ack.orderId} exists`);
      assert.deepEqual(r.body.items.map(({ productId, quantity }) => ({ productId, quantity })), ack.items);
    }
    assert.equal(new Set(acks.map((a) => a.key)).size, acks.length, 'one order per key');
    const orders = (await sys.orders.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM orders WHERE user_id = $1', [userId]))!.n;
    assert.equal(orders, acks.length, 'no order but the acknowledged ones');
    for (const productId of productIds) {
      const live = (await sys.orders.db.get<{ n: number }>(
        "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.status <> 'cancelled' AND i.product_id = $1",
        [productId],
      ))!.n;
      const held = (await sys.products.db.get<{ n: number }>(
        "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM reservation_items i JOIN reservations r ON r.id = i.reservation_id WHERE r.status = 'held' AND i.product_id = $1",
        [productId],
      ))!.n;
      assert.equal((await stockOf(sys, productId)) + live, INITIAL_STOCK, `product ${productId}: stock + live orders' quantities`);
      assert.equal(held, live, `product ${productId}: held by reservations = held by live orders`);
    }
    for (const name of ['users', 'products', 'orders'] as const) {
      assert.equal((await http(sys[name].url, 'GET', '/health')).status, 200, `${name} is healthy`);
    }
  }

  async function newCustomer(products = 4) {
    const userId = await createUser(sys);
    const productIds: number[] = [];
    for (let i = 0; i < products; i++) productIds.push(await createProduct(sys, { stock: INITIAL_STOCK, price: 1.5 }));
    return { userId, productIds };
  }

  test(`when every connection to PostgreSQL is reset ${RESETS} times, ${RESET_GAP_MS} ms apart, while ${CLIENTS} clients order and retry, then every service stays up, orders succeed again within 5 s, and every acknowledged order exists with its stock`, async () => {
    const { userId, productIds } = await newCustomer();
    const clients = startClients(sys, userId, productIds, CLIENTS);
    try {
      await eventually(() => clients.acks.length >= CLIENTS, 20_000, 'orders before the first reset');
      let lastReset = 0;
      for (let i = 0; i < RESETS; i++) {
        if (i > 0) await sleep(RESET_GAP_MS);
        resetAll();
        lastReset = Date.now();
      }
      await eventually(() => clients.firstAckSentAfter(lastReset) !== undefined, 5_000, 'an order sent after the last reset');
      const ack = clients.firstAckSentAfter(lastReset)!;
      console.log(`first order after the last reset: sent after ${ack.sentAt - lastReset} ms, answered 201 after ${ack.at - lastReset} ms`);
    } finally {
      await clients.stop();
    }
    console.log(`statuses: ${JSON.stringify(Object.fromEntries(clients.statuses))}, acknowledged: ${clients.acks.length}`);
    for (const status of clients.statuses.keys()) assert.match(status, /^(201|503 \w+|no answer)$/, 'only 201 and 503s');
    await assertInvariant(userId, productIds, clients.acks);
  });

  // On PostgreSQL each write of a create is one statement (no BEGIN or COMMIT of its own): the
  // faults meet those statements, the order service's first (the outbox row, with the key's claim
  // when there is one) and last (the order), and the product service's reserve.
  test(`when a create's writing statements lose their answers, or are cut before they reach the database, in both the order and the product service, while ${CLIENTS} clients order and retry, then the same holds`, async () => {
    const { userId, productIds } = await newCustomer();
    const clients = startClients(sys, userId, productIds, CLIENTS);
    const phases: Record<'products' | 'orders', Fault>[] = [
      {
        orders: { kind: 'reset-on-text', matching: 'WITH took AS', at: 'answer', times: 6 },
        products: { kind: 'reset-on-text', matching: 'INSERT INTO reservations', at: 'answer', times: 6 },
      },
      {
        orders: { kind: 'reset-on-text', matching: 'INSERT INTO pending_releases', at: 'request', times: 3 },
        products: { kind: 'reset-on-text', matching: 'INSERT INTO reservations', at: 'request', times: 3 },
      },
    ];
    let lastReset = 0;
    try {
      await eventually(() => clients.acks.length >= CLIENTS, 20_000, 'orders before the first reset');
      for (const faults of phases) {
        for (const name of ['products', 'orders'] as const) proxies[name].fault = { ...faults[name] };
        const done = () => (['products', 'orders'] as const).every((name) => {
          const f = proxies[name].fault;
          return f.kind === 'reset-on-text' && f.times === 0;
        });
        await eventually(done, 10_000, `${faults.orders.kind === 'reset-on-text' && faults.orders.at} resets`);
        lastReset = Date.now();
      }
      await eventually(() => clients.firstAckSentAfter(lastReset) !== undefined, 5_000, 'an order sent after the last reset');
      const ack = clients.firstAckSentAfter(lastReset)!;
      console.log(`first order after the last reset: answered 201 after ${ack.at - lastReset} ms`);
    } finally {
      for (const proxy of Object.values(proxies)) proxy.fault = { kind: 'pass' };
      await clients.stop();
    }
    console.log(`statuses: ${JSON.stringify(Object.fromEntries(clients.statuses))}, acknowledged: ${clients.acks.length}`);
    for (const status of clients.statuses.keys()) assert.match(status, /^(201|503 \w+|no answer)$/, 'only 201 and 503s');
    await assertInvariant(userId, productIds, clients.acks);
  });

  test('when one reset meets one step of a create, then the create is answered as it ended: its own commit read back, or a 503 whose retry with the key creates the order at once; a cancel or delete whose commit went unheard is answered as done', async () => {
    const { userId, productIds } = await newCustomer(1);
    const cases: { proxy: ServiceName; fault: Fault; what: string; first: number }[] = [
      // The order, its key and the end of its outbox row written in one statement; its answer
      // lost, and the order read back.
      { proxy: 'orders', fault: { kind: 'reset-on-text', matching: 'WITH took AS', at: 'answer', times: 1 }, what: 'the create commit answer lost', first: 201 },
      // The key's claim committed, unheard: freed, so the retry does not wait out its lease.
      { proxy: 'orders', fault: { kind: 'reset-on-text', matching: 'INSERT INTO idempotency_claims', at: 'answer', times: 1 }, what: 'the claim commit answer lost', first: 503 },
      { proxy: 'orders', fault: { kind: 'reset-on-text', matching: 'INSERT INTO idempotency_claims', at: 'request', times: 1 }, what: 'the claim cut before it reached the database', first: 503 },
      // The stock taken, unheard: the reservation goes back through the release worker.
      { proxy: 'products', fault: { kind: 'reset-on-text', matching: 'INSERT INTO reservations', at: 'answer', times: 1 }, what: 'the reserve commit answer lost', first: 503 },
    ];
    const acks: Ack[] = [];
    for (const [i, { proxy, fault, what, first }] of cases.entries()) {
      const items = [{ productId: productIds[0], quantity: 2 }];
      const post = (key: string) => http<{ id: number; code?: string }>(sys.orders.url, 'POST', '/orders', { body: { userId, items }, headers: { 'idempotency-key': key } });
      const reset = () => proxies[proxy].fault.kind === 'reset-on-text' && proxies[proxy].fault.times === 0;
      // An attempt that failed for another reason before it met its reset (a reserve past its
      // timeout on a busy machine) is made again with a new key.
      let key: string;
      let sentAt: number;
      let r: TestResponse<{ id: number; code?: string }>;
      for (let attempt = 1; ; attempt++) {
        key = `single-${i}-${attempt}-${randomUUID()}`;
        proxies[proxy].fault = { ...fault };
        sentAt = Date.now();
        r = await post(key);
        if (reset()) break;
        proxies[proxy].fault = { kind: 'pass' };
        if (r.status === 201) acks.push({ key, orderId: r.body.id, items, sentAt, at: Date.now() });
        assert.ok(attempt < 3, `${what}: no attempt met the reset (last: ${r.status} ${r.text})`);
      }
      assert.equal(r.status, first, `${what}: ${r.text}`);
      if (r.status !== 201) {
        // At once: the key is not held for its lease (15 s), nor the retry kept waiting for it (5 s).
        const failedAt = Date.now();
        do r = await post(key);
        while (r.status === 503 && Date.now() - failedAt < 2_500);
        assert.equal(r.status, 201, `${what}, retried: ${r.text}`);
      }
      assert.equal(r.headers.get('idempotent-replayed'), null, `${what}: created by the call that answered 201`);
      acks.push({ key, orderId: r.body.id, items, sentAt, at: Date.now() });
    }
    assert.ok(sys.orders.logs().some((line) => String(line.msg).includes('order created; the answer to its commit was lost')), 'the lost commit was read back');

    // A cancel and a delete whose commit's answer is lost answer as they ended too; the release
    // worker gives their stock back.
    const lostCommit = (): Fault => ({ kind: 'reset-on-text', matching: 'COMMIT', at: 'answer', times: 1 });
    proxies.orders.fault = lostCommit();
    const cancelled = await http<{ status: string }>(sys.orders.url, 'PUT', `/orders/${acks[0].orderId}/status`, { body: { status: 'cancelled' } });
    assert.deepEqual([cancelled.status, cancelled.body.status, proxies.orders.fault.kind === 'reset-on-text' && proxies.orders.fault.times], [200, 'cancelled', 0], cancelled.text);
    proxies.orders.fault = lostCommit();
    const deleted = await http(sys.orders.url, 'DELETE', `/orders/${acks[1].orderId}`);
    assert.deepEqual([deleted.status, proxies.orders.fault.kind === 'reset-on-text' && proxies.orders.fault.times], [204, 0], deleted.text);
    assert.equal((await http(sys.orders.url, 'GET', `/orders/${acks[1].orderId}`)).status, 404);
    await assertInvariant(userId, productIds, acks.filter((a) => a !== acks[1]));
  });
});
