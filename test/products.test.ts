import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { HttpError } from '../lib/platform/errors.js';
import { ServiceClient, UpstreamUnavailableError } from '../lib/platform/service-client.js';
import { createProductApp } from '../lib/products/app.js';
import { createProductsClient } from '../lib/products/client.js';
import { openProductDatabase } from '../lib/products/db.js';
import { demoOrders, demoProducts } from '../lib/demo/data.js';
import { startCheckedService, type CheckedService, type TestResponse } from './helpers.js';
import { openServiceAuth } from './support/service-auth.js';
import { productReads } from './support/product-reads.js';
import { ENGINES, testStorage, type EngineName, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';

type Service = CheckedService;

/**
 * A product service on port 0 over a database of its own (a temp dir, or a PostgreSQL schema),
 * removed when it closes unless the caller passes the storage in. Every answer is checked for leaks.
 */
async function startProductService(engine: EngineName, seed = false, given?: TestStorage): Promise<Service> {
  const storage = given ?? testStorage(engine);
  const service = await startCheckedService('product-service', openProductDatabase, (deps) => createProductApp(deps, openServiceAuth()), seed, storage);
  return {
    ...service,
    close: async () => {
      await service.close();
      if (!given) await storage.remove();
    },
  };
}

interface Product {
  id: number;
  name: string;
  description: string;
  price: number;
  stock: number;
  category: string;
  createdAt: string;
  updatedAt: string;
}

const isIso = (s: unknown) => typeof s === 'string' && new Date(s).toISOString() === s;
let seq = 0;
const rid = (prefix = 'r') => `${prefix}-${process.pid}-${++seq}`;
const ids = (r: TestResponse) => r.body.data.map((p: { id: number }) => p.id);

// Every route on both engines: the same answers, byte for byte.
for (const engine of ENGINES) describe(`products on ${engine}`, { skip: skipUnless(engine) }, () => {
  let svc: Service;
  before(async () => {
    svc = await startProductService(engine);
  });
  after(async () => svc.close());

  async function createProduct(body: Record<string, unknown> = {}, on = svc): Promise<Product> {
    const r = await on.call('POST', '/products', { body: { name: 'Test Product', price: 10, stock: 10, ...body } });
    assert.equal(r.status, 201, r.text);
    return r.body as Product;
  }
  const stockOf = async (id: number, on = svc): Promise<number> => (await on.call('GET', `/products/${id}`)).body.stock;

  describe('POST /products', () => {
    test('when valid, then 201 with the product, Location, ISO timestamps and defaults', async () => {
      const r = await svc.call('POST', '/products', { body: { name: '  Tea Pot ', price: 19.99 } });
      assert.equal(r.status, 201);
      assert.equal(r.headers.get('location'), `/products/${r.body.id}`);
      assert.deepEqual(Object.keys(r.body).sort(), ['category', 'createdAt', 'description', 'id', 'name', 'price', 'stock', 'updatedAt']);
      assert.equal(r.body.name, 'Tea Pot');
      assert.equal(r.body.price, 19.99);
      assert.equal(r.body.stock, 0);
      assert.equal(r.body.description, '');
      assert.equal(r.body.category, 'general');
      assert.ok(isIso(r.body.createdAt) && isIso(r.body.updatedAt));
      assert.deepEqual((await svc.call('GET', `/products/${r.body.id}`)).body, r.body);
    });

    test('when prices have up to 2 decimals, then they round-trip exactly (19.99, 0.29, 0, 10000000)', async () => {
      for (const price of [19.99, 0.29, 1.1, 0, 0.01, 4.35, 10_000_000]) {
        assert.equal((await createProduct({ price })).price, price);
      }
    });

    test('when the price or stock is out of shape, then 400 naming the field', async () => {
      const cases: [Record<string, unknown>, string][] = [
        [{ price: -0.01 }, 'price'],
        [{ price: 0.001 }, 'price'],
        [{ price: 0.1 + 0.2 }, 'price'],
        [{ price: 10_000_000.01 }, 'price'],
        [{ price: '10' }, 'price'],
        [{ stock: -1 }, 'stock'],
        [{ stock: 1.5 }, 'stock'],
        [{ stock: 1_000_000_001 }, 'stock'],
        [{ name: 'x' }, 'name'],
        [{ name: 'y'.repeat(201) }, 'name'],
        [{ name: 'Tab\tName' }, 'name'],
        [{ description: 'd'.repeat(2001) }, 'description'],
        [{ description: 'nul\u0000byte' }, 'description'],
        [{ category: '' }, 'category'],
        [{ category: 'c'.repeat(51) }, 'category'],
      ];
      for (const [body, field] of cases) {
        const r = await svc.call('POST', '/products', { body: { name: 'Test Product', price: 10, ...body } });
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
        assert.ok(r.body.details.some((d: { field: string }) => d.field === field), `${JSON.stringify(body)} -> ${JSON.stringify(r.body.details)}`);
      }
      const missing = await svc.call('POST', '/products', { body: { name: 'No Price' } });
      assert.equal(missing.body.details[0].field, 'price');
    });

    test('when text is multi-line or SQL-looking, then it is stored verbatim; categories are lower-cased', async () => {
      const p = await createProduct({ name: "Robert'); DROP TABLE products;--", description: 'line 1\nline 2\ttab', category: ' Kitchen ' });
      assert.equal(p.name, "Robert'); DROP TABLE products;--");
      assert.equal(p.description, 'line 1\nline 2\ttab');
      assert.equal(p.category, 'kitchen');
      assert.equal((await svc.call('GET', '/products')).status, 200);
    });

    test('when unknown fields or __proto__ are sent, then 400 naming them', async () => {
      const r = await svc.call('POST', '/products', { body: { name: 'Mass Assign', price: 1, id: 7, updatedAt: 'x' } });
      assert.equal(r.status, 400);
      assert.match(r.body.details[0].field, /id/);
      assert.match(r.body.details[0].field, /updatedAt/);
      const proto = await svc.call('POST', '/products', { raw: '{"name":"Proto","price":1,"__proto__":{"stock":5}}', headers: { 'content-type': 'application/json' } });
      assert.equal(proto.status, 400);
      assert.match(JSON.stringify(proto.body.details), /__proto__/);
    });

    test('when the body is malformed, too large, form-encoded or missing, then its contract status', async () => {
      const json = { 'content-type': 'application/json' };
      assert.equal((await svc.call('POST', '/products', { raw: '{"name":', headers: json })).body.code, 'INVALID_JSON');
      const big = await svc.call('POST', '/products', { raw: JSON.stringify({ name: 'Big', price: 1, description: 'x'.repeat(200_000) }), headers: json });
      assert.equal(big.status, 413);
      assert.equal(big.body.code, 'PAYLOAD_TOO_LARGE');
      const form = await svc.call('POST', '/products', { raw: 'name=Form&price=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      assert.equal(form.status, 415);
      assert.equal(form.body.code, 'UNSUPPORTED_MEDIA_TYPE');
      const none = await svc.call('POST', '/products');
      assert.equal(none.status, 400);
      assert.equal(none.body.code, 'VALIDATION_ERROR');
      assert.equal((await svc.call('GET', '/health')).status, 200, 'still up');
    });
  });

  describe('GET /products', () => {
    let cat: Service;
    before(async () => {
      cat = await startProductService(engine);
      const rows = [
        { name: 'Red Kettle', description: 'Boils water', price: 25, category: 'kitchen' },
        { name: 'Blue Kettle', description: 'Boils water fast', price: 35.5, category: 'kitchen' },
        { name: 'Desk Chair', description: 'Ergonomic, 100% wool', price: 199.99, category: 'office' },
        { name: 'Pen_Pack', description: 'Ten pens', price: 4.99, category: 'office' },
        { name: 'Café Crème Cup', description: 'Porcelain', price: 9, category: 'kitchen' },
        { name: 'Penguin Plush', description: 'Soft toy', price: 15, category: 'toys' },
      ];
      for (let i = 0; i < 14; i++) await createProduct(rows[i] ?? { name: `Filler ${i}`, price: 1, category: 'misc' }, cat);
    });
    after(async () => cat.close());

    test('when no filter is given, then page 1 of 10 and the total', async () => {
      const r = await cat.call('GET', '/products');
      assert.deepEqual(r.body.meta, { page: 1, limit: 10, total: 14 });
      assert.deepEqual(ids(r), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.deepEqual(ids(await cat.call('GET', '/products?page=2&limit=10')), [11, 12, 13, 14]);
    });

    test('when ?category= is given, then only it (any case), with paging', async () => {
      const r = await cat.call('GET', '/products?category=Kitchen&limit=2');
      assert.deepEqual(ids(r), [1, 2]);
      assert.deepEqual(r.body.meta, { page: 1, limit: 2, total: 3 });
      assert.deepEqual(ids(await cat.call('GET', '/products?category=kitchen&limit=2&page=2')), [5]);
    });

    test('when ?minPrice= and ?maxPrice= are given, then bounds are inclusive and exact to the cent', async () => {
      assert.deepEqual(ids(await cat.call('GET', '/products?minPrice=25&maxPrice=199.99')), [1, 2, 3]);
      assert.deepEqual(ids(await cat.call('GET', '/products?minPrice=35.50')), [2, 3]);
      assert.deepEqual(ids(await cat.call('GET', '/products?maxPrice=4.99&category=office')), [4]);
      assert.deepEqual(ids(await cat.call('GET', '/products?minPrice=200')), []);
    });

    test('when ?search= is given, then a case-insensitive match in name or description', async () => {
      assert.deepEqual(ids(await cat.call('GET', '/products?search=KETTLE')), [1, 2]);
      assert.deepEqual(ids(await cat.call('GET', '/products?search=water%20fast')), [2]);
      assert.deepEqual(ids(await cat.call('GET', '/products?search=caf%C3%89')), [5], 'non-ASCII letters fold too');
      assert.deepEqual(ids(await cat.call('GET', '/products?search=pen&category=office')), [4]);
      // PostgreSQL cannot compare text holding a NUL: refused as input on both engines.
      const nul = await cat.call('GET', '/products?search=a%00b');
      assert.deepEqual([nul.status, nul.body.code], [400, 'VALIDATION_ERROR']);
      const combined = await cat.call('GET', '/products?search=e&minPrice=10&limit=2&page=2');
      assert.deepEqual(combined.body.meta, { page: 2, limit: 2, total: 4 });
      assert.deepEqual(ids(combined), [3, 6]);
    });

    test('when ?search= needs case folding beyond ASCII, then both engines fold as JavaScript does', async () => {
      // A final capital sigma lowers to "ς", "İ" to "i" + a combining dot, "ẞ" to "ß": the cases
      // where PostgreSQL's lower() under a libc locale and JavaScript part ways.
      const category = `fold${++seq}`;
      const p = await createProduct({ name: 'ΟΔΟΣ İSTANBUL', description: 'GROẞE Tasse', category });
      const found = async (search: string) => ids(await svc.call('GET', `/products?category=${category}&search=${encodeURIComponent(search)}`));
      for (const search of ['οδος', 'ΟΔΟΣ', 'Οδος', 'i̇stanbul', 'İstanbul', 'große', 'GROẞE']) assert.deepEqual(await found(search), [p.id], search);
      for (const search of ['οδοσ', 'istanbul', 'grosse']) assert.deepEqual(await found(search), [], search);
    });

    test('when ?search= holds % or _, then they match literally', async () => {
      assert.deepEqual(ids(await cat.call('GET', '/products?search=100%25')), [3]);
      assert.deepEqual(ids(await cat.call('GET', '/products?search=%25')), [3]);
      assert.deepEqual(ids(await cat.call('GET', '/products?search=n_p')), [4]);
      assert.deepEqual(ids(await cat.call('GET', '/products?search=_')), [4]);
      assert.deepEqual(ids(await cat.call('GET', "/products?search=%27%20OR%201%3D1--")), []);
    });

    test('when a query parameter is unknown, repeated or malformed, then 400 VALIDATION_ERROR', async () => {
      const bad = ['minPrice=abc', 'minPrice=-1', 'minPrice=1.234', 'maxPrice=1e3', 'minPrice=50&maxPrice=10', 'search=', 'category=',
        `search=${'s'.repeat(201)}`, 'page=0', 'limit=101', 'category=a&category=b', 'sort=price', 'inStock=true'];
      for (const q of bad) {
        const r = await cat.call('GET', `/products?${q}`);
        assert.equal(r.status, 400, q);
        assert.equal(r.body.code, 'VALIDATION_ERROR', q);
      }
      assert.equal((await cat.call('GET', '/products?sort=price')).body.details[0].field, 'sort');
      assert.equal((await cat.call('GET', '/products?minPrice=50&maxPrice=10')).body.details[0].field, 'minPrice');
    });
  });

  describe('GET /products/:id', () => {
    test('when it exists, then 200; when not, 404; a malformed id is 400', async () => {
      const p = await createProduct();
      assert.deepEqual((await svc.call('GET', `/products/${p.id}`)).body, p);
      assert.equal((await svc.call('GET', '/products/987654')).body.code, 'NOT_FOUND');
      for (const id of ['abc', '1.5', '-1', '0', '1abc', '99999999999999999999']) {
        const r = await svc.call('GET', `/products/${id}`);
        assert.equal(r.status, 400, id);
        assert.equal(r.body.code, 'VALIDATION_ERROR');
      }
    });
  });

  describe('PUT /products/:id', () => {
    test('when a subset is sent, then only it changes and updatedAt moves', async () => {
      const p = await createProduct({ name: 'Old Name', description: 'old', category: 'books' });
      await new Promise((r) => setTimeout(r, 5));
      const r = await svc.call('PUT', `/products/${p.id}`, { body: { price: 12.34, description: '' } });
      assert.equal(r.status, 200);
      assert.equal(r.body.price, 12.34);
      assert.equal(r.body.description, '');
      assert.equal(r.body.name, 'Old Name');
      assert.equal(r.body.category, 'books');
      assert.equal(r.body.stock, p.stock);
      assert.equal(r.body.createdAt, p.createdAt);
      assert.ok(r.body.updatedAt > p.updatedAt);
    });

    test('when the body is empty, has stock, or a bad field, then 400 and nothing changes', async () => {
      const p = await createProduct();
      for (const body of [{}, { stock: 5 }, { price: 1.001 }, { name: 'N' }, { id: 3 }]) {
        const r = await svc.call('PUT', `/products/${p.id}`, { body });
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
      }
      assert.equal((await svc.call('PUT', `/products/${p.id}`, { body: { stock: 5 } })).body.details[0].field, 'stock');
      assert.deepEqual((await svc.call('GET', `/products/${p.id}`)).body, p);
    });

    test('when the product does not exist, then 404', async () => {
      assert.equal((await svc.call('PUT', '/products/987654', { body: { name: 'Ghost' } })).status, 404);
    });
  });

  describe('PATCH /products/:id/stock', () => {
    test('add, subtract and set answer { id, stock }', async () => {
      const p = await createProduct({ stock: 10 });
      const path = `/products/${p.id}/stock`;
      assert.deepEqual((await svc.call('PATCH', path, { body: { operation: 'add', quantity: 5 } })).body, { id: p.id, stock: 15 });
      assert.deepEqual((await svc.call('PATCH', path, { body: { operation: 'subtract', quantity: 15 } })).body, { id: p.id, stock: 0 });
      assert.deepEqual((await svc.call('PATCH', path, { body: { operation: 'set', quantity: 7 } })).body, { id: p.id, stock: 7 });
      assert.deepEqual((await svc.call('PATCH', path, { body: { operation: 'add', quantity: 0 } })).body, { id: p.id, stock: 7 });
      assert.equal(await stockOf(p.id), 7);
    });

    test('when subtracting more than there is, then 409 INSUFFICIENT_STOCK and the stock is unchanged', async () => {
      const p = await createProduct({ stock: 3 });
      const r = await svc.call('PATCH', `/products/${p.id}/stock`, { body: { operation: 'subtract', quantity: 4 } });
      assert.equal(r.status, 409);
      assert.equal(r.body.code, 'INSUFFICIENT_STOCK');
      assert.equal(await stockOf(p.id), 3);
    });

    test('when adding would pass 1e9, then 409 STOCK_LIMIT_EXCEEDED and the stock is unchanged', async () => {
      const p = await createProduct({ stock: 999_999_999 });
      const r = await svc.call('PATCH', `/products/${p.id}/stock`, { body: { operation: 'add', quantity: 2 } });
      assert.equal(r.status, 409);
      assert.equal(r.body.code, 'STOCK_LIMIT_EXCEEDED');
      assert.equal(await stockOf(p.id), 999_999_999);
      assert.equal((await svc.call('PATCH', `/products/${p.id}/stock`, { body: { operation: 'add', quantity: 1 } })).body.stock, 1_000_000_000);
    });

    test('when the body is malformed, then 400; an unknown product is 404', async () => {
      const p = await createProduct();
      for (const body of [{ operation: 'multiply', quantity: 1 }, { operation: 'add', quantity: -1 }, { operation: 'add', quantity: 1.5 },
        { operation: 'set', quantity: 1_000_000_001 }, { operation: 'add' }, { quantity: 1 }, { operation: 'add', quantity: 1, extra: true }, {}]) {
        const r = await svc.call('PATCH', `/products/${p.id}/stock`, { body });
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
      }
      const missing = await svc.call('PATCH', '/products/987654/stock', { body: { operation: 'subtract', quantity: 1 } });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.code, 'NOT_FOUND');
      assert.equal((await svc.call('PATCH', '/products/1abc/stock', { body: { operation: 'add', quantity: 1 } })).status, 400);
    });
  });

  describe('DELETE /products/:id', () => {
    test('when it exists, then 204 with an empty body; then 404', async () => {
      const p = await createProduct();
      const r = await svc.call('DELETE', `/products/${p.id}`);
      assert.equal(r.status, 204);
      assert.equal(r.text, '');
      assert.equal((await svc.call('GET', `/products/${p.id}`)).status, 404);
      assert.equal((await svc.call('DELETE', `/products/${p.id}`)).status, 404);
      assert.equal((await svc.call('DELETE', '/products/abc')).status, 400);
    });
  });

  describe('GET /stats', () => {
    test('counts, categories, inventory value to the cent and low stock, in the contract field names', async () => {
      const own = await startProductService(engine);
      try {
        assert.deepEqual((await own.call('GET', '/stats')).body, {
          service: 'product-service', totalProducts: 0, categories: 0, categoryList: [], totalInventoryValue: 0, lowStockProducts: 0,
        });
        await createProduct({ price: 0.1, stock: 3, category: 'b' }, own);
        await createProduct({ price: 0.2, stock: 3, category: 'a' }, own);
        await createProduct({ price: 19.99, stock: 10, category: 'b' }, own);
        await createProduct({ price: 5, stock: 9, category: 'c' }, own);
        assert.deepEqual((await own.call('GET', '/stats')).body, {
          service: 'product-service', totalProducts: 4, categories: 3, categoryList: ['a', 'b', 'c'],
          totalInventoryValue: 245.8, lowStockProducts: 3,
        });
      } finally {
        await own.close();
      }
    });
  });

  describe('POST /internal/reservations', () => {
    test('when every item has stock, then 201 with catalog unit prices, and the stock is taken', async () => {
      const a = await createProduct({ price: 19.99, stock: 5 });
      const b = await createProduct({ price: 2.5, stock: 5 });
      const id = rid();
      const r = await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: a.id, quantity: 2 }, { productId: b.id, quantity: 5 }] } });
      assert.equal(r.status, 201);
      assert.equal(r.body.id, id);
      assert.equal(r.body.status, 'held');
      assert.deepEqual(r.body.items, [{ productId: a.id, quantity: 2, unitPrice: 19.99 }, { productId: b.id, quantity: 5, unitPrice: 2.5 }]);
      assert.equal(await stockOf(a.id), 3);
      assert.equal(await stockOf(b.id), 0);
      const got = await svc.call('GET', `/internal/reservations/${id}`);
      assert.deepEqual(got.body, r.body);
    });

    test('when repeated with the same id and items, then 200 with the same reservation and no more stock taken', async () => {
      const p = await createProduct({ price: 3, stock: 10 });
      const body = { id: rid(), items: [{ productId: p.id, quantity: 4 }] };
      const first = await svc.call('POST', '/internal/reservations', { body });
      await svc.call('PUT', `/products/${p.id}`, { body: { price: 99 } });
      const again = await svc.call('POST', '/internal/reservations', { body });
      assert.equal(first.status, 201);
      assert.equal(again.status, 200);
      assert.deepEqual(again.body, first.body, 'the price taken at reservation time is kept');
      assert.equal(await stockOf(p.id), 6);
      const other = await svc.call('POST', '/internal/reservations', { body: { ...body, items: [{ productId: p.id, quantity: 5 }] } });
      assert.equal(other.status, 409);
      assert.equal(other.body.code, 'RESERVATION_MISMATCH');
      assert.equal(await stockOf(p.id), 6);
    });

    test('when the second item is short, then 409 INSUFFICIENT_STOCK naming it, and the first item keeps its stock', async () => {
      const a = await createProduct({ stock: 10 });
      const b = await createProduct({ stock: 1 });
      const id = rid();
      const r = await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: a.id, quantity: 3 }, { productId: b.id, quantity: 2 }] } });
      assert.equal(r.status, 409);
      assert.equal(r.body.code, 'INSUFFICIENT_STOCK');
      assert.equal(r.body.details[0].field, 'items.1.quantity');
      assert.match(r.body.details[0].message, new RegExp(`product ${b.id}`));
      assert.equal(await stockOf(a.id), 10);
      assert.equal(await stockOf(b.id), 1);
      assert.equal((await svc.call('GET', `/internal/reservations/${id}`)).status, 404, 'nothing recorded');
    });

    test('when a product repeats across items, then their quantities are taken together', async () => {
      const p = await createProduct({ stock: 5 });
      const short = await svc.call('POST', '/internal/reservations', { body: { id: rid(), items: [{ productId: p.id, quantity: 3 }, { productId: p.id, quantity: 3 }] } });
      assert.equal(short.status, 409);
      assert.equal(await stockOf(p.id), 5);
      const ok = await svc.call('POST', '/internal/reservations', { body: { id: rid(), items: [{ productId: p.id, quantity: 2 }, { productId: p.id, quantity: 3 }] } });
      assert.equal(ok.status, 201);
      assert.equal(ok.body.items.length, 2);
      assert.equal(await stockOf(p.id), 0);
    });

    test('when a product does not exist, then 422 UNKNOWN_PRODUCT naming the item, and nothing is taken', async () => {
      const a = await createProduct({ stock: 10 });
      const r = await svc.call('POST', '/internal/reservations', { body: { id: rid(), items: [{ productId: a.id, quantity: 1 }, { productId: 987654, quantity: 1 }] } });
      assert.equal(r.status, 422);
      assert.equal(r.body.code, 'UNKNOWN_PRODUCT');
      assert.deepEqual(r.body.details.map((d: { field: string }) => d.field), ['items.1.productId']);
      assert.equal(await stockOf(a.id), 10);
    });

    test('when the body is out of shape, then 400 VALIDATION_ERROR', async () => {
      const p = await createProduct();
      const item = { productId: p.id, quantity: 1 };
      const bodies = [
        { id: '', items: [item] }, { id: 'has space', items: [item] }, { id: 'x'.repeat(101), items: [item] }, { id: 'ok/slash', items: [item] },
        { id: rid(), items: [] }, { id: rid(), items: Array.from({ length: 51 }, () => item) },
        { id: rid(), items: [{ productId: p.id, quantity: 0 }] }, { id: rid(), items: [{ productId: p.id, quantity: 1001 }] },
        { id: rid(), items: [{ productId: 0, quantity: 1 }] }, { id: rid(), items: [{ ...item, unitPrice: 1 }] },
        { id: rid(), items: [item], extra: 1 }, { items: [item] },
      ];
      for (const body of bodies) {
        const r = await svc.call('POST', '/internal/reservations', { body });
        assert.equal(r.status, 400, JSON.stringify(body).slice(0, 120));
        assert.equal(r.body.code, 'VALIDATION_ERROR');
      }
      assert.equal(await stockOf(p.id), 10);
    });

    test('when 40 reservations of 1 race for a stock of 10, then exactly 10 succeed and the stock ends at 0', async () => {
      const p = await createProduct({ stock: 10 });
      const results = await Promise.all(Array.from({ length: 40 }, () =>
        svc.call('POST', '/internal/reservations', { body: { id: rid('race'), items: [{ productId: p.id, quantity: 1 }] } })));
      assert.equal(results.filter((r) => r.status === 201).length, 10);
      assert.equal(results.filter((r) => r.status === 409 && r.body.code === 'INSUFFICIENT_STOCK').length, 30);
      assert.equal(await stockOf(p.id), 0);
    });
  });

  describe('DELETE /internal/reservations/:id', () => {
    test('when held, then the stock comes back once however often it is released', async () => {
      const a = await createProduct({ stock: 10 });
      const b = await createProduct({ stock: 10 });
      const id = rid();
      await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: a.id, quantity: 4 }, { productId: b.id, quantity: 6 }] } });
      const first = await svc.call('DELETE', `/internal/reservations/${id}`);
      assert.equal(first.status, 200);
      assert.deepEqual(first.body, { id, released: true });
      assert.deepEqual((await svc.call('DELETE', `/internal/reservations/${id}`)).body, { id, released: false });
      assert.equal(await stockOf(a.id), 10);
      assert.equal(await stockOf(b.id), 10);
      assert.equal((await svc.call('GET', `/internal/reservations/${id}`)).body.status, 'released');
    });

    test('when two releases race, then the stock comes back once', async () => {
      const p = await createProduct({ stock: 10 });
      const id = rid();
      await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: p.id, quantity: 7 }] } });
      const both = await Promise.all([1, 2, 3].map(() => svc.call('DELETE', `/internal/reservations/${id}`)));
      assert.deepEqual(both.map((r) => r.body.released).sort(), [false, false, true]);
      assert.equal(await stockOf(p.id), 10);
    });

    test('when released, then reserving that id again is 409 RESERVATION_RELEASED and takes nothing', async () => {
      const p = await createProduct({ stock: 10 });
      const body = { id: rid(), items: [{ productId: p.id, quantity: 2 }] };
      await svc.call('POST', '/internal/reservations', { body });
      await svc.call('DELETE', `/internal/reservations/${body.id}`);
      const r = await svc.call('POST', '/internal/reservations', { body });
      assert.equal(r.status, 409);
      assert.equal(r.body.code, 'RESERVATION_RELEASED');
      assert.equal(await stockOf(p.id), 10);
    });

    test('when the release arrives before the reserve, then the late reserve takes nothing', async () => {
      const p = await createProduct({ stock: 10 });
      const id = rid('late');
      assert.deepEqual((await svc.call('DELETE', `/internal/reservations/${id}`)).body, { id, released: false });
      const late = await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: p.id, quantity: 2 }] } });
      assert.equal(late.status, 409);
      assert.equal(late.body.code, 'RESERVATION_RELEASED');
      assert.equal(await stockOf(p.id), 10);
      assert.deepEqual({ ...(await svc.call('GET', `/internal/reservations/${id}`)).body, createdAt: 0, updatedAt: 0 },
        { id, status: 'released', items: [], createdAt: 0, updatedAt: 0 });
    });

    test('when a reserved product was deleted, then the delete is 204 and the release gives back only the others', async () => {
      const gone = await createProduct({ stock: 10 });
      const kept = await createProduct({ stock: 10 });
      const id = rid();
      await svc.call('POST', '/internal/reservations', { body: { id, items: [{ productId: gone.id, quantity: 1 }, { productId: kept.id, quantity: 2 }] } });
      assert.equal((await svc.call('DELETE', `/products/${gone.id}`)).status, 204);
      assert.deepEqual((await svc.call('DELETE', `/internal/reservations/${id}`)).body, { id, released: true });
      assert.equal(await stockOf(kept.id), 10);
      assert.equal((await svc.call('GET', `/products/${gone.id}`)).status, 404);
      assert.ok((await createProduct()).id > gone.id, 'a deleted product id is never reused');
    });

    test('when the id is malformed, then 400; an unknown id on GET is 404', async () => {
      assert.equal((await svc.call('DELETE', '/internal/reservations/bad%20id')).status, 400);
      assert.equal((await svc.call('GET', `/internal/reservations/${'x'.repeat(101)}`)).status, 400);
      const r = await svc.call('GET', `/internal/reservations/${rid('never')}`);
      assert.equal(r.status, 404);
      assert.equal(r.body.code, 'NOT_FOUND');
    });
  });

  // SQLite only: a read-only file. PostgreSQL's outages are in products-postgres.test.ts.
  if (engine === 'sqlite') describe('storage failures', () => {
    test('when the database refuses writes, then writes are 503 STORAGE_UNAVAILABLE, reads work, and writes recover without a restart', async () => {
      const p = await createProduct({ stock: 5 });
      await svc.db.run('PRAGMA query_only = ON');
      try {
        const r = await svc.call('POST', '/products', { body: { name: 'Blocked', price: 1 } });
        assert.equal(r.status, 503);
        assert.equal(r.body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('PATCH', `/products/${p.id}/stock`, { body: { operation: 'add', quantity: 1 } })).body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('POST', '/internal/reservations', { body: { id: rid(), items: [{ productId: p.id, quantity: 1 }] } })).body.code, 'STORAGE_UNAVAILABLE');
        assert.equal((await svc.call('GET', `/products/${p.id}`)).status, 200);
        assert.equal((await svc.call('GET', '/stats')).status, 200);
        assert.equal((await svc.call('GET', '/health')).status, 200);
      } finally {
        await svc.db.run('PRAGMA query_only = OFF');
      }
      assert.equal(await stockOf(p.id), 5);
      assert.equal((await svc.call('POST', '/products', { body: { name: 'Writes Again', price: 1 } })).status, 201);
    });
  });

  describe('demo data', () => {
    test('when seeded, then 5 products and a held reservation per demo order, written once', async () => {
      const storage = testStorage(engine);
      await (await openProductDatabase(storage.options('product-service', true))).close();
      const seeded = await startProductService(engine, true, storage);
      try {
        const list = await seeded.call('GET', '/products');
        assert.equal(list.body.meta.total, 5);
        assert.deepEqual(list.body.data.map((p: Product) => [p.id, p.name, p.price, p.stock]), demoProducts.map((p, i) => [i + 1, p.name, p.price, p.stock]));
        for (const order of demoOrders) {
          const r = await seeded.call('GET', `/internal/reservations/${order.reservationId}`);
          assert.equal(r.body.status, 'held');
          assert.deepEqual(r.body.items, order.items);
        }
        const stats = (await seeded.call('GET', '/stats')).body;
        assert.ok(stats.categories >= 2);
      } finally {
        await seeded.close();
        await storage.remove();
      }
    });

    test('releasing a demo reservation gives its stock back', async () => {
      const seeded = await startProductService(engine, true);
      try {
        const order = demoOrders[2];
        const before = await stockOf(order.items[0].productId, seeded);
        assert.equal((await seeded.call('DELETE', `/internal/reservations/${order.reservationId}`)).body.released, true);
        assert.equal(await stockOf(order.items[0].productId, seeded), before + order.items[0].quantity);
      } finally {
        await seeded.close();
      }
    });
  });

  describe('products client', () => {
    test('reserve, getReservation, release and getProduct speak the internal routes', async () => {
      const service = new ServiceClient({ name: 'products', baseUrl: svc.url, timeoutMs: 2_000 });
      const client = { ...createProductsClient(service), ...productReads(service) };
      const p = await createProduct({ price: 7.25, stock: 4 });
      const id = rid('client');
      const reservation = await client.reserve(id, [{ productId: p.id, quantity: 3 }]);
      assert.deepEqual(reservation, { id, status: 'held', items: [{ productId: p.id, quantity: 3, unitPrice: 7.25 }] });
      assert.deepEqual(await client.reserve(id, [{ productId: p.id, quantity: 3 }]), reservation);
      assert.equal((await client.getReservation(id))?.status, 'held');
      assert.equal(await client.getReservation(rid('none')), null);
      assert.deepEqual(await client.getProduct(p.id), { ...p, stock: 1, updatedAt: (await client.getProduct(p.id))!.updatedAt });
      assert.equal(await client.getProduct(987654), null);
      await assert.rejects(client.reserve(rid(), [{ productId: p.id, quantity: 2 }]),
        (err: unknown) => err instanceof HttpError && err.status === 409 && err.code === 'INSUFFICIENT_STOCK' && err.details?.[0]?.field === 'items.0.quantity');
      await assert.rejects(client.reserve(rid(), [{ productId: 987654, quantity: 1 }]),
        (err: unknown) => err instanceof HttpError && err.status === 422 && err.code === 'UNKNOWN_PRODUCT');
      assert.deepEqual(await client.release(id), { id, released: true });
      assert.deepEqual(await client.release(id), { id, released: false });
      assert.equal(await stockOf(p.id), 4);
    });

    test('when the service is down, then UpstreamUnavailableError', async () => {
      const down = await startProductService(engine);
      const url = down.url;
      await down.close();
      const client = createProductsClient(new ServiceClient({ name: 'products', baseUrl: url, timeoutMs: 2_000 }));
      await assert.rejects(client.reserve('x', [{ productId: 1, quantity: 1 }]), (err: unknown) => err instanceof UpstreamUnavailableError);
      await assert.rejects(client.release('x'), (err: unknown) => err instanceof UpstreamUnavailableError);
    });
  });
});

describe('the product app without an auth of its own', () => {
  test('when no auth is given, then it is required mode: anonymous writes are 401 and /internal/* is refused', async () => {
    const svc = await startCheckedService('product-service', openProductDatabase, (deps) => createProductApp(deps), true);
    try {
      assert.equal((await svc.call('POST', '/products', { body: { name: 'Open', price: 1, stock: 1, category: 'misc' } })).status, 401);
      assert.equal((await svc.call('POST', '/internal/reservations', { body: { id: 'r-1', items: [{ productId: 1, quantity: 1 }] } })).status, 403);
    } finally {
      await svc.close();
    }
  });
});
