// The bodies read on every order without zod: each fast reader must answer exactly what its schema
// answers for what it accepts, and leave everything else to the schema.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { z } from 'zod';
import { CreateOrderSchema, readCreateOrder } from '../lib/orders/schema.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createProductsClient, HeldReservationSchema, readHeldReservation } from '../lib/products/client.js';
import { ServiceClient, UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { readReserve, ReserveSchema } from '../lib/products/schema.js';
import { IdParamsSchema, parseId } from '../lib/platform/validation.js';

const BIG = Number.MAX_SAFE_INTEGER;
const NUMBERS: unknown[] = [0, 1, -1, 1.5, 2, 50, 999, 1000, 1001, BIG, BIG + 1, 2 ** 60, -0, '1', null, true, undefined, [], {}];

/** Every case as JSON would bring it (so no undefined values, no NaN), plus the shapes given. */
const viaJson = (v: unknown): unknown => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

function assertAgrees<T>(schema: z.ZodType<T>, read: (v: unknown) => T | undefined, cases: unknown[]): void {
  let fast = 0;
  for (const raw of cases) {
    const value = viaJson(raw);
    const got = read(value);
    const expected = schema.safeParse(value);
    if (got === undefined) continue;
    fast++;
    assert.ok(expected.success, `read ${JSON.stringify(value)}, which the schema refuses`);
    assert.equal(JSON.stringify(got), JSON.stringify(expected.data), `read ${JSON.stringify(value)} otherwise than the schema`);
    assert.deepEqual(got, expected.data);
  }
  assert.ok(fast > 0, 'the fast reader took none of the cases');
}

const items = (make: (n: unknown) => unknown) => NUMBERS.map(make);

describe('fast readers agree with their schemas', () => {
  test('when an order body comes, then readCreateOrder reads it as CreateOrderSchema does, or not at all', () => {
    const cases: unknown[] = [
      { userId: 1, items: [{ productId: 2, quantity: 3 }] },
      { userId: 1, items: [{ productId: 2, quantity: 3, unitPrice: 9.99 }, { productId: 2, quantity: 1, unitPrice: null }] },
      { items: [{ quantity: 3, productId: 2 }], userId: 7 },
      { userId: 1, items: [] },
      { userId: 1, items: Array.from({ length: 50 }, (_, i) => ({ productId: i + 1, quantity: 1 })) },
      { userId: 1, items: Array.from({ length: 51 }, (_, i) => ({ productId: i + 1, quantity: 1 })) },
      { userId: 1, items: [{ productId: 2, quantity: 3 }], extra: 1 },
      { userId: 1, items: [{ productId: 2, quantity: 3, extra: 1 }] },
      { userId: 1, items: [{ productId: 2 }] },
      { userId: 1 },
      { userId: 1, items: {} },
      { userId: 1, items: [null] },
      { userId: 1, items: [[2, 3]] },
      JSON.parse('{"userId":1,"items":[{"productId":2,"quantity":3}],"__proto__":{"x":1}}'),
      JSON.parse('{"userId":1,"items":[{"productId":2,"quantity":3,"__proto__":1}]}'),
      [], null, 'x', 1,
      ...items((n) => ({ userId: n, items: [{ productId: 1, quantity: 1 }] })),
      ...items((n) => ({ userId: 1, items: [{ productId: n, quantity: 1 }] })),
      ...items((n) => ({ userId: 1, items: [{ productId: 1, quantity: n }] })),
    ];
    assertAgrees(CreateOrderSchema, readCreateOrder, cases);
  });

  test('when a reserve body comes, then readReserve reads it as ReserveSchema does, or not at all', () => {
    const id = 'b0c4-1_2:3.x';
    const cases: unknown[] = [
      { id, items: [{ productId: 2, quantity: 3 }] },
      { items: [{ quantity: 3, productId: 2 }, { productId: 2, quantity: 1000 }], id },
      { id: '', items: [{ productId: 2, quantity: 3 }] },
      { id: 'a/b', items: [{ productId: 2, quantity: 3 }] },
      { id: 'x'.repeat(100), items: [{ productId: 2, quantity: 3 }] },
      { id: 'x'.repeat(101), items: [{ productId: 2, quantity: 3 }] },
      { id: 5, items: [{ productId: 2, quantity: 3 }] },
      { id, items: [] },
      { id, items: Array.from({ length: 51 }, () => ({ productId: 1, quantity: 1 })) },
      { id, items: [{ productId: 2, quantity: 3, unitPrice: 1 }] },
      { id, items: [{ productId: 2, quantity: 3 }], more: true },
      [], null,
      ...items((n) => ({ id, items: [{ productId: n, quantity: 1 }] })),
      ...items((n) => ({ id, items: [{ productId: 1, quantity: n }] })),
    ];
    assertAgrees(ReserveSchema, readReserve, cases);
  });

  test('when the product service answers a reserve, then readHeldReservation reads it as HeldReservationSchema does, or not at all', () => {
    const held = { id: 'r1', status: 'held', items: [{ productId: 2, quantity: 3, unitPrice: 19.99 }], createdAt: 'now', updatedAt: 'now' };
    const cases: unknown[] = [
      held,
      { ...held, items: [] },
      { ...held, status: 'released' },
      { ...held, id: 1 },
      { ...held, items: [{ productId: 2, quantity: 3, unitPrice: '1' }] },
      { ...held, items: [{ productId: 2, quantity: 3, unitPrice: 0, extra: 'x' }] },
      { ...held, items: [{ productId: 2, quantity: 3 }] },
      { ...held, items: [[2, 3, 1]] },
      { ...held, items: null },
      [], null, 'held',
      ...items((n) => ({ ...held, items: [{ productId: n, quantity: 1, unitPrice: 1 }] })),
      ...items((n) => ({ ...held, items: [{ productId: 1, quantity: n, unitPrice: 1 }] })),
      ...items((n) => ({ ...held, items: [{ productId: 1, quantity: 1, unitPrice: n }] })),
    ];
    assertAgrees(HeldReservationSchema, readHeldReservation, cases);
  });

  test('when a route id comes, then parseId reads it as IdParamsSchema does, and refuses what it refuses', () => {
    for (const id of ['1', '42', '9007199254740991', '9007199254740992', '9999999999999999', '0', '01', '-1', '1.5', '1e3', ' 1', '1 ', 'abc', '', '12345678901234567']) {
      const expected = IdParamsSchema.safeParse({ id });
      if (expected.success) assert.equal(parseId({ id }), expected.data.id, id);
      else assert.throws(() => parseId({ id }), (err: { status?: number }) => err.status === 400, id);
    }
  });
});

describe('the products client reading a reserve answer', () => {
  test('when the product service answers a reserve with a body its schema refuses, then the reserve fails as a bad response', async () => {
    const server = createServer((req, res) => {
      req.resume().on('end', () => res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'r-1', status: 'held', items: 'none' })));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = new ServiceClient({ name: 'products', baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, timeoutMs: 2_000 });
    try {
      await assert.rejects(createProductsClient(client).reserve('r-1', [{ productId: 1, quantity: 1 }]), (err: unknown) => err instanceof UpstreamUnavailableError && err.failure === 'bad_response');
    } finally {
      client.close?.();
      server.closeAllConnections();
      server.close();
    }
  });
});
