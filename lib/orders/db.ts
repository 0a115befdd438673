// The order service's SQLite file: schema steps and the demo orders of a first start.
import type { ServiceDatabaseOptions } from '../platform/config.js';
import { openSqlDatabase, seedOnce, sqliteHandle, type Migrations, type SqlDatabase } from '../platform/sql.js';
import { demoOrders } from '../demo/data.js';
import { toCents } from '../platform/money.js';
import { createOrderStore } from './store.js';

export const ORDER_MIGRATIONS: Migrations = { sqlite: [
  `
  CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled')),
    total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
    -- The product service holds this order's stock under this id until it is released.
    reservation_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
  );
  CREATE INDEX orders_by_user ON orders (user_id, id);
  CREATE INDEX orders_by_status ON orders (status, id);

  CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, position)
  ) WITHOUT ROWID;

  -- No foreign key: a replay after the order was deleted still answers what the first request got.
  CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    order_id INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL
  ) WITHOUT ROWID;

  -- The outbox of stock to give back: "release this reservation unless a live order owns it".
  -- Written before stock is reserved and when an order is cancelled or deleted; a row goes away
  -- with the order that takes the stock, or once the product service confirmed the release.
  -- claimed = 1: the release worker has committed to releasing it, so no order may take it any more.
  CREATE TABLE pending_releases (
    reservation_id TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
  ) WITHOUT ROWID;
  CREATE INDEX pending_releases_by_age ON pending_releases (created_at_ms);
  `,
], postgres: [] };

export async function openOrderDatabase(options: ServiceDatabaseOptions): Promise<SqlDatabase> {
  const db = await openSqlDatabase({ ...options, name: 'orders', migrations: ORDER_MIGRATIONS });
  if (options.seed) {
    const store = createOrderStore(sqliteHandle(db));
    await seedOnce(db, async () => {
      // A file that already has orders (started once with SEED_DATA=false) gets no demo rows.
      if (store.stats().totalOrders > 0) return;
      for (const demo of demoOrders) {
        const items = demo.items.map((i) => ({ productId: i.productId, quantity: i.quantity, unitPriceCents: toCents(i.unitPrice) }));
        store.insertOrder({
          userId: demo.userId,
          status: demo.status,
          reservationId: demo.reservationId,
          items,
          totalCents: items.reduce((sum, i) => sum + i.unitPriceCents * i.quantity, 0),
        });
      }
    });
  }
  return db;
}
