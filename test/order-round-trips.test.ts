// How many PostgreSQL round trips one order waits for, counted at the pg client: every latency
// added between the services and their database is paid once per round trip on the order's path.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { http, type TestResponse } from './helpers.js';
import { testStorage, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';

// The databases on the order's path (application_name, as sql.ts names each pool); the user
// service's lookup runs beside it.
const ON_PATH = new Set(['orders', 'products']);
// What an order may wait for: the outbox row (with the key's claim), the reserve, the commit of
// the order; and one to spare.
const MAX_SEQUENTIAL = 4;

type QueryArgs = Parameters<pg.Client['query']>;

/**
 * Counts the statements that the services on the order's path send through pg while `counting`,
 * and how many of them were sequential: sent while no other one was in flight (statements in
 * flight together cost one round trip between them).
 */
function countQueries() {
  // Kept to be called with the client as `this`, and put back after.
  // eslint-disable-next-line @typescript-eslint/unbound-method
  const original = pg.Client.prototype.query;
  const counts = { statements: 0, sequential: 0, texts: [] as string[] };
  let inFlight = 0;
  let counting = false;
  pg.Client.prototype.query = function query(this: pg.Client, ...args: QueryArgs) {
    const app = (this as unknown as { connectionParameters?: { application_name?: string } }).connectionParameters?.application_name;
    if (!counting || !ON_PATH.has(app ?? '')) return (original as (...a: QueryArgs) => unknown).apply(this, args);
    if (inFlight === 0) counts.sequential++;
    inFlight++;
    counts.statements++;
    const first = args[0] as unknown;
    counts.texts.push(`${app}: ${(typeof first === 'string' ? first : (first as { text?: string }).text ?? '').replace(/\s+/g, ' ').slice(0, 60)}`);
    const last = args.length - 1;
    // pg-pool's own query() passes a callback; sql.ts awaits the promise.
    if (typeof args[last] === 'function') {
      const callback = args[last] as (...r: unknown[]) => void;
      (args as unknown[])[last] = (...r: unknown[]) => {
        inFlight--;
        callback(...r);
      };
      return (original as (...a: QueryArgs) => unknown).apply(this, args);
    }
    return ((original as (...a: QueryArgs) => Promise<unknown>).apply(this, args)).finally(() => {
      inFlight--;
    });
  } as typeof original;
  return {
    async during<T>(fn: () => Promise<T>): Promise<{ result: T; statements: number; sequential: number; texts: string[] }> {
      Object.assign(counts, { statements: 0, sequential: 0, texts: [] });
      counting = true;
      try {
        const result = await fn();
        return { result, ...counts };
      } finally {
        counting = false;
      }
    },
    restore() {
      pg.Client.prototype.query = original;
    },
  };
}

describe('round trips of one order, services on PostgreSQL', { skip: skipUnless('postgres') }, () => {
  let storage: TestStorage;
  let sys: System;
  let queries: ReturnType<typeof countQueries>;

  before(async () => {
    storage = testStorage('postgres');
    // No background pass or renewal runs during an order: only its own statements are counted.
    sys = await startServices({ storage, env: { RELEASE_RETRY_MS: '3600000', RETENTION_INTERVAL_MS: '3600000', IDEMPOTENCY_KEY_LEASE_MS: '600000' } });
    queries = countQueries();
  });
  after(async () => {
    queries?.restore();
    await sys?.stop();
    await storage?.remove();
  });

  const post = (body: unknown, headers: Record<string, string> = {}): Promise<TestResponse> => http(sys.orders.url, 'POST', '/orders', { body, headers });

  test(`when an order is placed, with or without an Idempotency-Key, then it waits for at most ${MAX_SEQUENTIAL} round trips to the order and product databases`, async (t) => {
    const userId = await createUser(sys);
    const productIds = [await createProduct(sys, { stock: 100 }), await createProduct(sys, { stock: 100 })];
    const body = { userId, items: [{ productId: productIds[0], quantity: 2 }, { productId: productIds[1], quantity: 1 }] };
    // Connections opened and statements prepared before anything is counted.
    assert.equal((await post(body)).status, 201);
    assert.equal((await post(body, { 'idempotency-key': 'warm' })).status, 201);

    for (const headers of [{}, { 'idempotency-key': 'counted' }] as Record<string, string>[]) {
      const { result, statements, sequential, texts } = await queries.during(() => post(body, headers));
      assert.equal(result.status, 201, result.text);
      t.diagnostic(`${Object.keys(headers).length ? 'with' : 'without'} a key: ${sequential} sequential round trips, ${statements} statements: ${texts.join(' | ')}`);
      assert.ok(sequential <= MAX_SEQUENTIAL, `${sequential} sequential round trips: ${texts.join(' | ')}`);
    }
    // A repeat is answered from its key, in one round trip, taking no stock.
    const repeat = await queries.during(() => post(body, { 'idempotency-key': 'counted' }));
    assert.equal(repeat.result.headers.get('idempotent-replayed'), 'true');
    assert.ok(repeat.sequential <= 1, `${repeat.sequential}: ${repeat.texts.join(' | ')}`);
    assert.equal(await stockOf(sys, productIds[0]), 100 - 4 * 2);
    assert.equal(await stockOf(sys, productIds[1]), 100 - 4);
  });

  test('when an item is short or unknown, then nothing is taken and the refusal names it, as before', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 3 });
    const short = await post({ userId, items: [{ productId, quantity: 1 }, { productId, quantity: 3 }] });
    assert.equal(short.status, 409);
    assert.equal(short.body.code, 'INSUFFICIENT_STOCK');
    assert.deepEqual(short.body.details, [{ field: 'items.0.quantity', message: `product ${productId} has 3 in stock, 4 requested` }]);
    const unknown = await post({ userId, items: [{ productId, quantity: 1 }, { productId: 999_999_999, quantity: 1 }] });
    assert.equal(unknown.status, 422);
    assert.equal(unknown.body.code, 'UNKNOWN_PRODUCT');
    assert.deepEqual(unknown.body.details, [{ field: 'items.1.productId', message: 'product 999999999 does not exist' }]);
    assert.equal(await stockOf(sys, productId), 3);
  });
});
