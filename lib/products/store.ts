// The only place with the product service's SQL: the catalog, its stock, and stock reservations.
import type { Db } from '../platform/db.js';
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

export function createProductStore(db: Db) {
  // SQLite's lower() and LIKE fold ASCII only; JavaScript folds "É" too. instr() on folded text
  // also matches `%` and `_` literally, with no LIKE escaping to get wrong.
  db.function('fold', { deterministic: true }, (s: unknown) => (typeof s === 'string' ? s.toLowerCase() : s));

  const COLUMNS = 'id, name, description, price_cents, stock, category, created_at, updated_at';
  const FILTER = `(@category IS NULL OR category = @category)
    AND (@minCents IS NULL OR price_cents >= @minCents)
    AND (@maxCents IS NULL OR price_cents <= @maxCents)
    AND (@search IS NULL OR instr(fold(name), @search) > 0 OR instr(fold(description), @search) > 0)`;
  type Filter = { category: string | null; minCents: number | null; maxCents: number | null; search: string | null };

  const listStmt = db.prepare<Filter & { limit: number; offset: number }, ProductRow>(
    `SELECT ${COLUMNS} FROM products WHERE ${FILTER} ORDER BY id LIMIT @limit OFFSET @offset`,
  );
  const countStmt = db.prepare<Filter, { total: number }>(`SELECT count(*) AS total FROM products WHERE ${FILTER}`);
  const getStmt = db.prepare<[number], ProductRow>(`SELECT ${COLUMNS} FROM products WHERE id = ?`);
  const stockOfStmt = db.prepare<[number], { stock: number }>('SELECT stock FROM products WHERE id = ?');
  const insertStmt = db.prepare<{ name: string; description: string; priceCents: number; stock: number; category: string; now: string }, ProductRow>(
    `INSERT INTO products (name, description, price_cents, stock, category, created_at, updated_at)
     VALUES (@name, @description, @priceCents, @stock, @category, @now, @now) RETURNING ${COLUMNS}`,
  );
  const updateStmt = db.prepare<{ id: number; name: string | null; description: string | null; priceCents: number | null; category: string | null; now: string }, ProductRow>(
    `UPDATE products SET name = coalesce(@name, name), description = coalesce(@description, description),
       price_cents = coalesce(@priceCents, price_cents), category = coalesce(@category, category), updated_at = @now
     WHERE id = @id RETURNING ${COLUMNS}`,
  );
  const deleteStmt = db.prepare<[number]>('DELETE FROM products WHERE id = ?');
  // Each change is one guarded statement: the check and the write cannot be split by another request.
  const addStmt = db.prepare<{ id: number; quantity: number; max: number; now: string }, { stock: number }>(
    'UPDATE products SET stock = stock + @quantity, updated_at = @now WHERE id = @id AND stock + @quantity <= @max RETURNING stock',
  );
  const takeStmt = db.prepare<{ id: number; quantity: number; now: string }, { stock: number; price_cents: number }>(
    'UPDATE products SET stock = stock - @quantity, updated_at = @now WHERE id = @id AND stock >= @quantity RETURNING stock, price_cents',
  );
  const setStmt = db.prepare<{ id: number; quantity: number; now: string }, { stock: number }>(
    'UPDATE products SET stock = @quantity, updated_at = @now WHERE id = @id RETURNING stock',
  );
  // Giving back is never refused: a release must not lose units, even past MAX_STOCK.
  const giveBackStmt = db.prepare<{ id: number; quantity: number; now: string }>(
    'UPDATE products SET stock = stock + @quantity, updated_at = @now WHERE id = @id',
  );
  const statsStmt = db.prepare<[], { total: number; categories: number; valueCents: number; low: number }>(
    `SELECT count(*) AS total, count(DISTINCT category) AS categories,
       total(price_cents * stock) AS valueCents, coalesce(sum(stock < ${LOW_STOCK_BELOW}), 0) AS low
     FROM products`,
  );
  const categoryListStmt = db.prepare<[], { category: string }>('SELECT DISTINCT category FROM products ORDER BY category');

  const reservationStmt = db.prepare<[string], ReservationRow>('SELECT id, status, created_at, updated_at FROM reservations WHERE id = ?');
  const reservationItemsStmt = db.prepare<[string], ReservationItemRow>(
    'SELECT product_id, quantity, unit_price_cents FROM reservation_items WHERE reservation_id = ? ORDER BY position',
  );
  const insertReservationStmt = db.prepare<{ id: string; status: 'held' | 'released'; now: string }>(
    'INSERT INTO reservations (id, status, created_at, updated_at) VALUES (@id, @status, @now, @now)',
  );
  const insertReservationItemStmt = db.prepare<{ reservationId: string; position: number; productId: number; quantity: number; unitPriceCents: number }>(
    `INSERT INTO reservation_items (reservation_id, position, product_id, quantity, unit_price_cents)
     VALUES (@reservationId, @position, @productId, @quantity, @unitPriceCents)`,
  );
  const markReleasedStmt = db.prepare<{ id: string; now: string }>(
    "UPDATE reservations SET status = 'released', updated_at = @now WHERE id = @id AND status = 'held'",
  );
  const reservationCountStmt = db.prepare<[], { n: number }>('SELECT count(*) AS n FROM reservations');

  const readReservation = (id: string): ReservationRecord | undefined => {
    const row = reservationStmt.get(id);
    if (!row) return undefined;
    const items = reservationItemsStmt.all(id).map((i) => ({ productId: i.product_id, quantity: i.quantity, unitPrice: fromCents(i.unit_price_cents) }));
    return { id: row.id, status: row.status, items, createdAt: row.created_at, updatedAt: row.updated_at };
  };

  const recordReservation = (id: string, status: 'held' | 'released', items: readonly PricedItem[], now: string): void => {
    insertReservationStmt.run({ id, status, now });
    items.forEach((item, position) => insertReservationItemStmt.run({ reservationId: id, position, ...item }));
  };

  /** Takes every item's stock or none: any failure throws, which rolls the transaction back. */
  const takeAll = (items: ReserveRequest['items'], now: string): Map<number, number> => {
    const wanted = new Map<number, { quantity: number; index: number }>();
    items.forEach(({ productId, quantity }, index) => {
      const w = wanted.get(productId);
      if (w) w.quantity += quantity;
      else wanted.set(productId, { quantity, index });
    });
    const prices = new Map<number, number>();
    const unknown = new Set<number>();
    const short: ErrorDetail[] = [];
    for (const [productId, { quantity, index }] of wanted) {
      const taken = takeStmt.get({ id: productId, quantity, now });
      if (taken) {
        prices.set(productId, taken.price_cents);
        continue;
      }
      const current = stockOfStmt.get(productId);
      if (!current) unknown.add(productId);
      else short.push({ field: `items.${index}.quantity`, message: `product ${productId} has ${current.stock} in stock, ${quantity} requested` });
    }
    if (unknown.size > 0) {
      const details = items.flatMap((item, i) =>
        unknown.has(item.productId) ? [{ field: `items.${i}.productId`, message: `product ${item.productId} does not exist` }] : []);
      throw new HttpError(422, 'UNKNOWN_PRODUCT', 'Unknown product', details);
    }
    if (short.length > 0) throw new HttpError(409, 'INSUFFICIENT_STOCK', 'Insufficient stock', short);
    return prices;
  };

  const sameItems = (a: readonly { productId: number; quantity: number }[], b: readonly { productId: number; quantity: number }[]) =>
    a.length === b.length && a.every((x, i) => x.productId === b[i].productId && x.quantity === b[i].quantity);

  const reserve = db.transaction((request: ReserveRequest): { reservation: ReservationRecord; created: boolean } => {
    const existing = readReservation(request.id);
    if (existing?.status === 'released') {
      throw new HttpError(409, 'RESERVATION_RELEASED', 'This reservation was released; use a new id');
    }
    if (existing) {
      if (!sameItems(existing.items, request.items)) {
        throw new HttpError(409, 'RESERVATION_MISMATCH', 'A reservation with this id holds other items');
      }
      return { reservation: existing, created: false };
    }
    const now = new Date().toISOString();
    const prices = takeAll(request.items, now);
    recordReservation(request.id, 'held', request.items.map((i) => ({ ...i, unitPriceCents: prices.get(i.productId)! })), now);
    return { reservation: readReservation(request.id)!, created: true };
  });

  const release = db.transaction((id: string): boolean => {
    const now = new Date().toISOString();
    const existing = reservationStmt.get(id);
    if (!existing) {
      // A tombstone: a reserve with this id that arrives after its release (a slow retry) takes nothing.
      recordReservation(id, 'released', [], now);
      return false;
    }
    if (markReleasedStmt.run({ id, now }).changes !== 1) return false;
    // A product deleted since simply gets nothing back (the update matches no row).
    for (const item of reservationItemsStmt.all(id)) giveBackStmt.run({ id: item.product_id, quantity: item.quantity, now });
    return true;
  });

  const adjustStock = db.transaction((id: number, { operation, quantity }: StockChange): { id: number; stock: number } => {
    const now = new Date().toISOString();
    const row =
      operation === 'add' ? addStmt.get({ id, quantity, max: MAX_STOCK, now })
      : operation === 'subtract' ? takeStmt.get({ id, quantity, now })
      : setStmt.get({ id, quantity, now });
    if (row) return { id, stock: row.stock };
    const current = stockOfStmt.get(id);
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
    list({ page, limit, category, minPrice, maxPrice, search }: ListProductsQuery): Page<Product> {
      const filter: Filter = { category: category ?? null, minCents: minPrice ?? null, maxCents: maxPrice ?? null, search: search?.toLowerCase() ?? null };
      const rows = listStmt.all({ ...filter, limit, offset: (page - 1) * limit });
      return { data: rows.map(toProduct), meta: { page, limit, total: countStmt.get(filter)!.total } };
    },

    get(id: number): Product | undefined {
      const row = getStmt.get(id);
      return row && toProduct(row);
    },

    create({ price, ...rest }: CreateProduct): Product {
      return toProduct(insertStmt.get({ ...rest, priceCents: toCents(price), now: new Date().toISOString() })!);
    },

    /** undefined when there is no such product. */
    update(id: number, patch: UpdateProduct): Product | undefined {
      const row = updateStmt.get({
        id,
        name: patch.name ?? null,
        description: patch.description ?? null,
        priceCents: patch.price === undefined ? null : toCents(patch.price),
        category: patch.category ?? null,
        now: new Date().toISOString(),
      });
      return row && toProduct(row);
    },

    /** Throws 404, 409 INSUFFICIENT_STOCK or 409 STOCK_LIMIT_EXCEEDED; the stock is unchanged then. */
    adjustStock: (id: number, change: StockChange) => adjustStock.immediate(id, change),

    remove(id: number): boolean {
      return deleteStmt.run(id).changes === 1;
    },

    count(): number {
      return statsStmt.get()!.total;
    },

    stats(): ProductStats {
      const s = statsStmt.get()!;
      return {
        service: 'product-service',
        totalProducts: s.total,
        categories: s.categories,
        categoryList: categoryListStmt.all().map((r) => r.category),
        totalInventoryValue: fromCents(Math.round(s.valueCents)),
        lowStockProducts: s.low,
      };
    },

    /**
     * Takes the stock of every item in one transaction, or none (422 UNKNOWN_PRODUCT, 409
     * INSUFFICIENT_STOCK). A repeat of a held id returns it unchanged (`created: false`); a
     * released id is 409 RESERVATION_RELEASED.
     */
    reserve: (request: ReserveRequest) => reserve.immediate(request),

    /** Gives a held reservation's stock back exactly once; true only for the call that did. */
    release: (id: string): boolean => release.immediate(id),

    getReservation: (id: string): ReservationRecord | undefined => readReservation(id),

    /** For the demo seed: a reservation whose stock is already accounted for. */
    recordHeldReservation(id: string, items: readonly PricedItem[]): void {
      db.transaction(() => recordReservation(id, 'held', items, new Date().toISOString()))();
    },

    reservationCount: (): number => reservationCountStmt.get()!.n,
  };
}

export type ProductStore = ReturnType<typeof createProductStore>;
