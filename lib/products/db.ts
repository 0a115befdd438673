// The product service's SQLite file: schema steps and the demo rows of a first start.
import { demoOrders, demoProducts } from '../demo/data.js';
import type { ServiceDatabaseOptions } from '../platform/config.js';
import { openSqlDatabase, seedOnce, sqliteHandle, type Migrations, type SqlDatabase } from '../platform/sql.js';
import { toCents } from '../platform/money.js';
import { createProductStore } from './store.js';

export const PRODUCT_MIGRATIONS: Migrations = { sqlite: [
  // AUTOINCREMENT: a deleted product's id is never reused, so releasing an old reservation can
  // never credit stock to a different product.
  `CREATE TABLE products (
     id INTEGER PRIMARY KEY AUTOINCREMENT,
     name TEXT NOT NULL,
     description TEXT NOT NULL DEFAULT '',
     price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
     stock INTEGER NOT NULL DEFAULT 0 CHECK (stock >= 0),
     category TEXT NOT NULL,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   ) STRICT;
   CREATE INDEX products_category ON products (category, id);
   CREATE TABLE reservations (
     id TEXT PRIMARY KEY,
     status TEXT NOT NULL CHECK (status IN ('held', 'released')),
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL
   ) STRICT, WITHOUT ROWID;
   -- No foreign key to products: a product may be deleted while a reservation still names it.
   CREATE TABLE reservation_items (
     reservation_id TEXT NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
     position INTEGER NOT NULL,
     product_id INTEGER NOT NULL,
     quantity INTEGER NOT NULL CHECK (quantity > 0),
     unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
     PRIMARY KEY (reservation_id, position)
   ) STRICT, WITHOUT ROWID;`,
], postgres: [] };

export async function openProductDatabase(options: ServiceDatabaseOptions): Promise<SqlDatabase> {
  const db = await openSqlDatabase({ ...options, name: 'products', migrations: PRODUCT_MIGRATIONS });
  if (options.seed) {
    await seedOnce(db, async () => {
      const store = createProductStore(sqliteHandle(db));
      // A file that already has a catalog (started once with SEED_DATA=false) gets no demo rows.
      if (store.count() > 0 || store.reservationCount() > 0) return;
      const ids = demoProducts.map((p) => store.create({ ...p }).id);
      // demoProducts' stock is what is left after these reservations: record them, take nothing.
      for (const order of demoOrders) {
        store.recordHeldReservation(order.reservationId, order.items.map((i) => ({
          productId: ids[i.productId - 1],
          quantity: i.quantity,
          unitPriceCents: toCents(i.unitPrice),
        })));
      }
    });
  }
  return db;
}
