// The only place with the product service's SQL: the catalog, its stock, and stock reservations.
// Written once for both engines (lib/platform/sql.ts). Under PostgreSQL several instances share
// the tables at READ COMMITTED, so every check-and-write is one guarded statement, and a
// reservation id is claimed by inserting its row first: a racer with the same id waits on that
// row's key until the first commits (then it reads the reservation) or rolls back (then it
// claims the id itself).
import type { Db } from '../platform/sql.js';
import { HttpError, type ErrorDetail } from '../platform/errors.js';
import { fromCents, toCents } from '../platform/money.js';
import type { Page } from '../platform/validation.js';
import {
  LOW_STOCK_BELOW, MAX_STOCK,
  type CreateProduct, type ListProductsQuery, type Product, type ProductStats, type ReservationRecord,
  type ReserveRequest, type StockChange, type UpdateProduct,
} from './schema.js';

interface ProductRow {
  id: number;
  name: string;
  description: string;
  price_cents: number;
  stock: number;
  category: string;
  created_at: string;
  updated_at: string;
}

interface ReservationRow {
  id: string;
  status: 'held' | 'released';
  created_at: string;
  updated_at: string;
}

interface ReservationItemRow {
  product_id: number;
  quantity: number;
  unit_price_cents: number;
}

/** An item to record under a reservation, priced in cents. */
export interface PricedItem {
  productId: number;
  quantity: number;
  unitPriceCents: number;
}

const toProduct = (r: ProductRow): Product => ({
  id: r.id,
  name: r.name,
  description: r.description,
  price: fromCents(r.price_cents),
  stock: r.stock,
  category: r.category,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

const productNotFound = () => new HttpError(404, 'NOT_FOUND', 'Product not found');

/**
 * How a search folds case, the same on both engines: the search text is lower-cased by
 * JavaScript, and the stored text by SQLite's `fold` (JavaScript's toLowerCase, registered by the
 * SQL layer) or by PostgreSQL's lower() under the ICU root collation, which maps every character
 * as JavaScript does ("É", "İ", a final "Σ"), whatever the database's own locale. instr()/strpos()
 * match `%` and `_` literally, with no LIKE escaping to get wrong.
 */
const folded = (db: Db, column: string) => (db.engine === 'postgres' ? `lower(${column} COLLATE "und-x-icu")` : `fold(${column})`);
const position = (db: Db) => (db.engine === 'postgres' ? 'strpos' : 'instr');

const COLUMNS = 'id, name, description, price_cents, stock, category, created_at, updated_at';

export function createProductStore(db: Db) {
  // $1 category, $2 min cents, $3 max cents, $4 folded search text; null means no filter. The
  // casts tell PostgreSQL each parameter's type where its first use (IS NULL) cannot.
  const FILTER = `(CAST($1 AS TEXT) IS NULL OR category = $1)
    AND (CAST($2 AS BIGINT) IS NULL OR price_cents >= $2)
    AND (CAST($3 AS BIGINT) IS NULL OR price_cents <= $3)
    AND (CAST($4 AS TEXT) IS NULL OR ${position(db)}(${folded(db, 'name')}, $4) > 0 OR ${position(db)}(${folded(db, 'description')}, $4) > 0)`;
  // SQLite's total() is a float sum that cannot overflow; PostgreSQL's sum() of numeric is exact.
  const VALUE = db.engine === 'postgres' ? 'coalesce(sum(price_cents::numeric * stock), 0)' : 'total(price_cents * stock)';

  const SQL = {
    list: `SELECT ${COLUMNS} FROM products WHERE ${FILTER} ORDER BY id LIMIT $5 OFFSET $6`,
    count: `SELECT count(*) AS total FROM products WHERE ${FILTER}`,
    get: `SELECT ${COLUMNS} FROM products WHERE id = $1`,
    stockOf: 'SELECT stock FROM products WHERE id = $1',
    stockIfEnough: 'SELECT stock, price_cents FROM products WHERE id = $1 AND stock >= $2',
    insert: `INSERT INTO products (name, description, price_cents, stock, category, created_at, updated_at)
      VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ${COLUMNS}`,
    update: `UPDATE products SET name = coalesce($2, name), description = coalesce($3, description),
        price_cents = coalesce($4, price_cents), category = coalesce($5, category), updated_at = $6
      WHERE id = $1 RETURNING ${COLUMNS}`,
    delete: 'DELETE FROM products WHERE id = $1',
    // Each change is one guarded statement: the check and the write cannot be split by another
    // request, on either engine (PostgreSQL re-checks the WHERE on the row it waited for).
    add: 'UPDATE products SET stock = stock + $2, updated_at = $4 WHERE id = $1 AND stock + $2 <= $3 RETURNING stock',
    take: 'UPDATE products SET stock = stock - $2, updated_at = $3 WHERE id = $1 AND stock >= $2 RETURNING stock, price_cents',
    set: 'UPDATE products SET stock = $2, updated_at = $3 WHERE id = $1 RETURNING stock',
    // Giving back is never refused: a release must not lose units, even past MAX_STOCK.
    giveBack: 'UPDATE products SET stock = stock + $2, updated_at = $3 WHERE id = $1',
    stats: `SELECT count(*) AS total, count(DISTINCT category) AS categories, ${VALUE} AS value_cents,
        count(CASE WHEN stock < ${LOW_STOCK_BELOW} THEN 1 END) AS low
      FROM products`,
    categories: 'SELECT DISTINCT category FROM products ORDER BY category',
    reservation: 'SELECT id, status, created_at, updated_at FROM reservations WHERE id = $1',
    reservationItems: 'SELECT product_id, quantity, unit_price_cents FROM reservation_items WHERE reservation_id = $1 ORDER BY position',
    // Claims the id: 1 row for the first, 0 for every later one (after the first has committed).
    claimReservation: 'INSERT INTO reservations (id, status, created_at, updated_at) VALUES ($1, $2, $3, $3) ON CONFLICT (id) DO NOTHING',
    insertItem: `INSERT INTO reservation_items (reservation_id, position, product_id, quantity, unit_price_cents)
      VALUES ($1, $2, $3, $4, $5)`,
    markReleased: "UPDATE reservations SET status = 'released', updated_at = $2 WHERE id = $1 AND status = 'held'",
    reservationCount: 'SELECT count(*) AS n FROM reservations',
    // Released rows never change again, so the batch the subquery picks is the batch deleted;
    // their items go with them (ON DELETE CASCADE).
    pruneReleased: `DELETE FROM reservations WHERE status = 'released' AND updated_at < $1 AND id IN
      (SELECT id FROM reservations WHERE status = 'released' AND updated_at < $1 ORDER BY updated_at LIMIT $2)`,
  };

  // PostgreSQL: a new reservation in one statement, one round trip: the id claimed, every
  // product's stock taken, the items recorded with their prices. $1 id, $2 now, $3/$4 the items'
  // products and quantities, in request order. Products are locked in id order, as takeAll takes
  // them. An item whose stock was not taken (unknown product, too little stock) gets no price,
  // which reservation_items refuses (NOT NULL): the statement fails and nothing of it stays.
  // Nothing is taken for an id already claimed (`claimed` is false).
  const RESERVE_IN_ONE_STATEMENT = `WITH claim AS (
      INSERT INTO reservations (id, status, created_at, updated_at) VALUES ($1::text, 'held', $2::text, $2::text) ON CONFLICT (id) DO NOTHING RETURNING id
    ), wanted AS (
      SELECT product_id, sum(quantity) AS quantity FROM unnest($3::bigint[], $4::int[]) AS w(product_id, quantity) GROUP BY product_id
    ), locked AS (
      SELECT p.id FROM products p WHERE p.id IN (SELECT product_id FROM wanted) AND EXISTS (SELECT 1 FROM claim) ORDER BY p.id FOR UPDATE
    ), taken AS (
      UPDATE products p SET stock = p.stock - w.quantity, updated_at = $2::text
      FROM wanted w, locked l WHERE p.id = w.product_id AND l.id = p.id AND p.stock >= w.quantity
      RETURNING p.id, p.price_cents
    ), items AS (
      INSERT INTO reservation_items (reservation_id, position, product_id, quantity, unit_price_cents)
      SELECT $1::text, i.n - 1, i.product_id, i.quantity, t.price_cents
      FROM unnest($3::bigint[], $4::int[]) WITH ORDINALITY AS i(product_id, quantity, n) LEFT JOIN taken t ON t.id = i.product_id
      WHERE EXISTS (SELECT 1 FROM claim)
      RETURNING position, unit_price_cents
    )
    SELECT EXISTS (SELECT 1 FROM claim) AS claimed, (SELECT json_agg(unit_price_cents ORDER BY position) FROM items)::text AS prices`;
  const NOT_NULL_VIOLATION = '23502';

  /**
   * The reserve's one statement (PostgreSQL): the reservation made, or undefined for an id already
   * claimed. When an item could not be taken, reads why and throws as takeAll does.
   */
  const reserveInOneStatement = async (request: ReserveRequest, now: string): Promise<ReservationRecord | undefined> => {
    const productIds = request.items.map((i) => i.productId);
    for (let attempt = 1; ; attempt++) {
      let row: { claimed: boolean; prices: string | null };
      try {
        row = (await db.get<{ claimed: boolean; prices: string | null }>(RESERVE_IN_ONE_STATEMENT, [request.id, now, productIds, request.items.map((i) => i.quantity)]))!;
      } catch (err) {
        if ((err as { code?: unknown } | null)?.code !== NOT_NULL_VIOLATION) throw err;
        // Nothing was taken; the refusal is read as takeAll would have met it. Stock added since
        // the statement (the read finds every item available): the reserve is tried again.
        await db.transaction((tx) => takeAll(tx, request.items, now, true));
        if (attempt >= 3) throw new HttpError(503, 'SERVICE_UNAVAILABLE', 'Stock is changing too fast, retry shortly', undefined, { retryAfter: 1 });
        continue;
      }
      if (!row.claimed) return undefined;
      const prices = JSON.parse(row.prices ?? '[]') as number[];
      return {
        id: request.id,
        status: 'held',
        items: request.items.map((i, n) => ({ productId: i.productId, quantity: i.quantity, unitPrice: fromCents(prices[n]) })),
        createdAt: now,
        updatedAt: now,
      };
    }
  };

  const readReservation = async (on: Db, id: string): Promise<ReservationRecord | undefined> => {
    const row = await on.get<ReservationRow>(SQL.reservation, [id]);
    if (!row) return undefined;
    const items = (await on.all<ReservationItemRow>(SQL.reservationItems, [id]))
      .map((i) => ({ productId: i.product_id, quantity: i.quantity, unitPrice: fromCents(i.unit_price_cents) }));
    return { id: row.id, status: row.status, items, createdAt: row.created_at, updatedAt: row.updated_at };
  };

  const recordItems = async (tx: Db, id: string, items: readonly PricedItem[]): Promise<void> => {
    for (const [i, item] of items.entries()) {
      await tx.run(SQL.insertItem, [id, i, item.productId, item.quantity, item.unitPriceCents]);
    }
  };

  /**
   * Takes every item's stock or none: any failure throws, which rolls the transaction back.
   * Products are taken in id order, so two reservations (or a reservation and a release) that
   * share products lock them in the same order and cannot deadlock on PostgreSQL.
   */
  const takeAll = async (tx: Db, items: ReserveRequest['items'], now: string, readOnly = false): Promise<Map<number, number>> => {
    const wanted = new Map<number, { quantity: number; index: number }>();
    items.forEach(({ productId, quantity }, index) => {
      const w = wanted.get(productId);
      if (w) w.quantity += quantity;
      else wanted.set(productId, { quantity, index });
    });
    const prices = new Map<number, number>();
    const unknown = new Set<number>();
    const short: (ErrorDetail & { index: number })[] = [];
    for (const [productId, { quantity, index }] of [...wanted].sort(([a], [b]) => a - b)) {
      const taken = readOnly
        ? await tx.get<{ stock: number; price_cents: number }>(SQL.stockIfEnough, [productId, quantity])
        : await tx.get<{ stock: number; price_cents: number }>(SQL.take, [productId, quantity, now]);
      if (taken) {
        prices.set(productId, taken.price_cents);
        continue;
      }
      const current = await tx.get<{ stock: number }>(SQL.stockOf, [productId]);
      if (!current) unknown.add(productId);
      else short.push({ index, field: `items.${index}.quantity`, message: `product ${productId} has ${current.stock} in stock, ${quantity} requested` });
    }
    if (unknown.size > 0) {
      const details = items.flatMap((item, i) =>
        unknown.has(item.productId) ? [{ field: `items.${i}.productId`, message: `product ${item.productId} does not exist` }] : []);
      throw new HttpError(422, 'UNKNOWN_PRODUCT', 'Unknown product', details);
    }
    if (short.length > 0) {
      throw new HttpError(409, 'INSUFFICIENT_STOCK', 'Insufficient stock', short.sort((a, b) => a.index - b.index).map(({ field, message }) => ({ field, message })));
    }
    return prices;
  };

  /** The reserve as one transaction of several statements (SQLite; and a repeated id on PostgreSQL). */
  const reserveInTransaction = (request: ReserveRequest) => db.transaction(async (tx): Promise<{ reservation: ReservationRecord; created: boolean }> => {
    const now = new Date().toISOString();
    if (await tx.run(SQL.claimReservation, [request.id, 'held', now]) === 1) {
      const prices = await takeAll(tx, request.items, now);
      const items = request.items.map((i) => ({ ...i, unitPriceCents: prices.get(i.productId)! }));
      await recordItems(tx, request.id, items);
      // Built from what was just written rather than read back: the product rows stay locked
      // until the commit, so every round trip saved here is one less wait for the next racer.
      const reservation: ReservationRecord = {
        id: request.id,
        status: 'held',
        items: items.map((i) => ({ productId: i.productId, quantity: i.quantity, unitPrice: fromCents(i.unitPriceCents) })),
        createdAt: now,
        updatedAt: now,
      };
      return { reservation, created: true };
    }
    const existing = (await readReservation(tx, request.id))!;
    if (existing.status === 'released') {
      throw new HttpError(409, 'RESERVATION_RELEASED', 'This reservation was released; use a new id');
    }
    if (!sameItems(existing.items, request.items)) {
      throw new HttpError(409, 'RESERVATION_MISMATCH', 'A reservation with this id holds other items');
    }
    return { reservation: existing, created: false };
  });

  const sameItems = (a: readonly { productId: number; quantity: number }[], b: readonly { productId: number; quantity: number }[]) =>
    a.length === b.length && a.every((x, i) => x.productId === b[i].productId && x.quantity === b[i].quantity);

  const adjustStock = (id: number, { operation, quantity }: StockChange) => db.transaction(async (tx): Promise<{ id: number; stock: number }> => {
    const now = new Date().toISOString();
    const row =
      operation === 'add' ? await tx.get<{ stock: number }>(SQL.add, [id, quantity, MAX_STOCK, now])
      : operation === 'subtract' ? await tx.get<{ stock: number }>(SQL.take, [id, quantity, now])
      : await tx.get<{ stock: number }>(SQL.set, [id, quantity, now]);
    if (row) return { id, stock: row.stock };
    const current = await tx.get<{ stock: number }>(SQL.stockOf, [id]);
    if (!current) throw productNotFound();
    if (operation === 'subtract') {
      throw new HttpError(409, 'INSUFFICIENT_STOCK', 'Insufficient stock', [
        { field: 'quantity', message: `product ${id} has ${current.stock} in stock, ${quantity} requested` },
      ]);
    }
    throw new HttpError(409, 'STOCK_LIMIT_EXCEEDED', `Stock cannot exceed ${MAX_STOCK}`, [
      { field: 'quantity', message: `product ${id} has ${current.stock} in stock; adding ${quantity} would exceed ${MAX_STOCK}` },
    ]);
  });

  return {
    async list({ page, limit, category, minPrice, maxPrice, search }: ListProductsQuery): Promise<Page<Product>> {
      const filter = [category ?? null, minPrice ?? null, maxPrice ?? null, search?.toLowerCase() ?? null];
      const rows = await db.all<ProductRow>(SQL.list, [...filter, limit, (page - 1) * limit]);
      const { total } = (await db.get<{ total: number }>(SQL.count, filter))!;
      return { data: rows.map(toProduct), meta: { page, limit, total } };
    },

    async get(id: number): Promise<Product | undefined> {
      const row = await db.get<ProductRow>(SQL.get, [id]);
      return row && toProduct(row);
    },

    async create({ name, description, price, stock, category }: CreateProduct): Promise<Product> {
      const row = await db.get<ProductRow>(SQL.insert, [name, description, toCents(price), stock, category, new Date().toISOString()]);
      return toProduct(row!);
    },

    /** undefined when there is no such product. */
    async update(id: number, patch: UpdateProduct): Promise<Product | undefined> {
      const row = await db.get<ProductRow>(SQL.update, [
        id,
        patch.name ?? null,
        patch.description ?? null,
        patch.price === undefined ? null : toCents(patch.price),
        patch.category ?? null,
        new Date().toISOString(),
      ]);
      return row && toProduct(row);
    },

    /** Throws 404, 409 INSUFFICIENT_STOCK or 409 STOCK_LIMIT_EXCEEDED; the stock is unchanged then. */
    adjustStock,

    async remove(id: number): Promise<boolean> {
      return (await db.run(SQL.delete, [id])) === 1;
    },

    async count(): Promise<number> {
      return (await db.get<{ total: number }>(SQL.stats))!.total;
    },

    async stats(): Promise<ProductStats> {
      const s = (await db.get<{ total: number; categories: number; value_cents: number; low: number }>(SQL.stats))!;
      const categoryList = (await db.all<{ category: string }>(SQL.categories)).map((r) => r.category);
      return {
        service: 'product-service',
        totalProducts: s.total,
        categories: s.categories,
        categoryList,
        totalInventoryValue: fromCents(Math.round(s.value_cents)),
        lowStockProducts: s.low,
      };
    },

    /**
     * Takes the stock of every item in one transaction, or none (422 UNKNOWN_PRODUCT, 409
     * INSUFFICIENT_STOCK). A repeat of a held id returns it unchanged (`created: false`); a
     * released id is 409 RESERVATION_RELEASED; a held id with other items is 409 RESERVATION_MISMATCH.
     */
    reserve: async (request: ReserveRequest): Promise<{ reservation: ReservationRecord; created: boolean }> => {
      if (db.engine === 'postgres') {
        const reservation = await reserveInOneStatement(request, new Date().toISOString());
        if (reservation) return { reservation, created: true };
      }
      return reserveInTransaction(request);
    },

    /** Gives a held reservation's stock back exactly once; true only for the call that did. */
    release: (id: string) => db.transaction(async (tx): Promise<boolean> => {
      const now = new Date().toISOString();
      // A tombstone: a reserve with this id that arrives after its release (a slow retry) takes nothing.
      if (await tx.run(SQL.claimReservation, [id, 'released', now]) === 1) return false;
      // Only one release moves the row from held; a racer waits for its row lock, then finds it released.
      if (await tx.run(SQL.markReleased, [id, now]) !== 1) return false;
      const items = await tx.all<ReservationItemRow>(SQL.reservationItems, [id]);
      const back = new Map<number, number>();
      for (const item of items) back.set(item.product_id, (back.get(item.product_id) ?? 0) + item.quantity);
      // A product deleted since simply gets nothing back (the update matches no row).
      for (const [productId, quantity] of [...back].sort(([a], [b]) => a - b)) await tx.run(SQL.giveBack, [productId, quantity, now]);
      return true;
    }),

    getReservation: (id: string): Promise<ReservationRecord | undefined> => readReservation(db, id),

    /** For the demo seed: a reservation whose stock is already accounted for. */
    recordHeldReservation: (id: string, items: readonly PricedItem[]) => db.transaction(async (tx) => {
      await tx.run(SQL.claimReservation, [id, 'held', new Date().toISOString()]);
      await recordItems(tx, id, items);
    }),

    reservationCount: async (): Promise<number> => (await db.get<{ n: number }>(SQL.reservationCount))!.n,

    /** Deletes up to `limit` reservations released before `before`, with their items; resolves to how many. */
    pruneReleasedReservations: (before: Date, limit: number): Promise<number> => db.run(SQL.pruneReleased, [before.toISOString(), limit]),
  };
}

export type ProductStore = ReturnType<typeof createProductStore>;
