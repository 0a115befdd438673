// Every SQL statement of the order service, prepared once per store.
import type { Db } from '../platform/db.js';
import type { ListOrdersQuery, Order, OrderStats, OrderStatus } from './schema.js';
import { ORDER_STATUSES } from './schema.js';
import type { Page } from '../platform/validation.js';
import { fromCents } from '../platform/money.js';

export interface NewOrder {
  userId: number;
  status: OrderStatus;
  reservationId: string;
  items: { productId: number; quantity: number; unitPriceCents: number }[];
  totalCents: number;
}

export interface IdempotencyRecord {
  key: string;
  bodyHash: string;
  orderId: number;
  /** The order as the first request's 201 showed it. */
  response: Order;
}

export type FinishCreateResult =
  | { kind: 'created'; order: Order }
  /** Another request committed this key first. */
  | { kind: 'key_taken'; record: IdempotencyRecord }
  /** The release worker already took this reservation back; no order may use it. */
  | { kind: 'release_claimed' };

export type StatusChangeResult =
  | { kind: 'not_found' }
  | { kind: 'rejected'; from: OrderStatus }
  | { kind: 'changed'; order: Order; reservationId: string };

export type DeleteResult =
  | { kind: 'not_found' }
  | { kind: 'not_pending'; status: OrderStatus }
  | { kind: 'deleted'; reservationId: string };

interface OrderRow {
  id: number;
  user_id: number;
  status: OrderStatus;
  total_cents: number;
  created_at: string;
  updated_at: string;
  items: string;
}

interface KeyRow {
  key: string;
  body_hash: string;
  order_id: number;
  response: string;
}

const ORDER_COLUMNS = `
  o.id, o.user_id, o.status, o.total_cents, o.created_at, o.updated_at,
  (SELECT json_group_array(json_object('productId', i.product_id, 'quantity', i.quantity, 'unitPriceCents', i.unit_price_cents) ORDER BY i.position)
     FROM order_items i WHERE i.order_id = o.id) AS items`;

const LIST_FILTER = `(@userId IS NULL OR o.user_id = @userId) AND (@status IS NULL OR o.status = @status)`;

function toOrder(row: OrderRow): Order {
  const items = JSON.parse(row.items) as { productId: number; quantity: number; unitPriceCents: number }[];
  return {
    id: row.id,
    userId: row.user_id,
    items: items.map((i) => ({ productId: i.productId, quantity: i.quantity, unitPrice: fromCents(i.unitPriceCents) })),
    status: row.status,
    total: fromCents(row.total_cents),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export type OrderStore = ReturnType<typeof createOrderStore>;

export function createOrderStore(db: Db) {
  const q = {
    selectOrder: db.prepare<[number], OrderRow>(`SELECT ${ORDER_COLUMNS} FROM orders o WHERE o.id = ?`),
    listOrders: db.prepare<{ userId: number | null; status: string | null; limit: number; offset: number }, OrderRow>(
      `SELECT ${ORDER_COLUMNS} FROM orders o WHERE ${LIST_FILTER} ORDER BY o.id DESC LIMIT @limit OFFSET @offset`,
    ),
    countOrders: db.prepare<{ userId: number | null; status: string | null }, { n: number }>(`SELECT COUNT(*) AS n FROM orders o WHERE ${LIST_FILTER}`),
    selectStatus: db.prepare<[number], { status: OrderStatus; reservation_id: string }>('SELECT status, reservation_id FROM orders WHERE id = ?'),
    insertOrder: db.prepare<[number, string, number, string, string, string]>(
      'INSERT INTO orders (user_id, status, total_cents, reservation_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    insertItem: db.prepare<[number | bigint, number, number, number, number]>(
      'INSERT INTO order_items (order_id, position, product_id, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)',
    ),
    setStatusIf: db.prepare<[string, string, number, string]>('UPDATE orders SET status = ?, updated_at = ? WHERE id = ? AND status = ?'),
    deleteIfPending: db.prepare<[number]>("DELETE FROM orders WHERE id = ? AND status = 'pending'"),
    statusTotals: db.prepare<[], { status: OrderStatus; n: number; cents: number }>(
      'SELECT status, COUNT(*) AS n, COALESCE(SUM(total_cents), 0) AS cents FROM orders GROUP BY status',
    ),
    selectKey: db.prepare<[string], KeyRow>('SELECT key, body_hash, order_id, response FROM idempotency_keys WHERE key = ?'),
    insertKey: db.prepare<[string, string, number, string, string]>(
      'INSERT INTO idempotency_keys (key, body_hash, order_id, response, created_at) VALUES (?, ?, ?, ?, ?)',
    ),
    insertRelease: db.prepare<[string, number]>('INSERT OR IGNORE INTO pending_releases (reservation_id, created_at_ms) VALUES (?, ?)'),
    takeUnclaimedRelease: db.prepare<[string]>('DELETE FROM pending_releases WHERE reservation_id = ? AND claimed = 0'),
    claimRelease: db.prepare<{ id: string }>(
      `UPDATE pending_releases SET claimed = 1 WHERE reservation_id = @id
         AND NOT EXISTS (SELECT 1 FROM orders WHERE reservation_id = @id AND status <> 'cancelled')`,
    ),
    deleteRelease: db.prepare<[string]>('DELETE FROM pending_releases WHERE reservation_id = ?'),
    noteReleaseFailure: db.prepare<[string, string]>('UPDATE pending_releases SET attempts = attempts + 1, last_error = ? WHERE reservation_id = ?'),
    dueReleases: db.prepare<[number, number], { reservation_id: string }>(
      // Fewest failed attempts first, so rows the product service keeps refusing cannot starve the rest.
      'SELECT reservation_id FROM pending_releases WHERE created_at_ms <= ? ORDER BY attempts, created_at_ms LIMIT ?',
    ),
    countReleases: db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM pending_releases'),
  };

  const getOrder = (id: number): Order | undefined => {
    const row = q.selectOrder.get(id);
    return row && toOrder(row);
  };

  const insertOrder = db.transaction((o: NewOrder): number => {
    const now = new Date().toISOString();
    const id = Number(q.insertOrder.run(o.userId, o.status, o.totalCents, o.reservationId, now, now).lastInsertRowid);
    o.items.forEach((item, position) => q.insertItem.run(id, position, item.productId, item.quantity, item.unitPriceCents));
    return id;
  });

  const finishCreate = db.transaction((o: NewOrder, idempotency?: { key: string; bodyHash: string }): FinishCreateResult => {
    if (idempotency) {
      const existing = q.selectKey.get(idempotency.key);
      if (existing) return { kind: 'key_taken', record: toRecord(existing) };
    }
    // Taking the outbox row is what makes the stock this order's; the worker can't have it after.
    if (q.takeUnclaimedRelease.run(o.reservationId).changes !== 1) return { kind: 'release_claimed' };
    const order = getOrder(insertOrder(o))!;
    if (idempotency) q.insertKey.run(idempotency.key, idempotency.bodyHash, order.id, JSON.stringify(order), order.createdAt);
    return { kind: 'created', order };
  });

  const changeStatus = db.transaction(
    (id: number, to: OrderStatus, allowed: (from: OrderStatus) => boolean, releaseStock: boolean): StatusChangeResult => {
      const current = q.selectStatus.get(id);
      if (!current) return { kind: 'not_found' };
      if (!allowed(current.status)) return { kind: 'rejected', from: current.status };
      if (q.setStatusIf.run(to, new Date().toISOString(), id, current.status).changes !== 1) {
        const now = q.selectStatus.get(id);
        return now ? { kind: 'rejected', from: now.status } : { kind: 'not_found' };
      }
      if (releaseStock) q.insertRelease.run(current.reservation_id, Date.now());
      return { kind: 'changed', order: getOrder(id)!, reservationId: current.reservation_id };
    },
  );

  const deletePendingOrder = db.transaction((id: number): DeleteResult => {
    const current = q.selectStatus.get(id);
    if (!current) return { kind: 'not_found' };
    if (current.status !== 'pending') return { kind: 'not_pending', status: current.status };
    if (q.deleteIfPending.run(id).changes !== 1) {
      const now = q.selectStatus.get(id);
      return now ? { kind: 'not_pending', status: now.status } : { kind: 'not_found' };
    }
    q.insertRelease.run(current.reservation_id, Date.now());
    return { kind: 'deleted', reservationId: current.reservation_id };
  });

  return {
    getOrder,
    /** Inserts a finished order as is (demo data). */
    insertOrder: (o: NewOrder): number => insertOrder.immediate(o),

    listOrders(query: ListOrdersQuery): Page<Order> {
      const filter = { userId: query.userId ?? null, status: query.status ?? null };
      const rows = q.listOrders.all({ ...filter, limit: query.limit, offset: (query.page - 1) * query.limit });
      return { data: rows.map(toOrder), meta: { page: query.page, limit: query.limit, total: q.countOrders.get(filter)!.n } };
    },

    stats(): OrderStats {
      const statusBreakdown = Object.fromEntries(ORDER_STATUSES.map((s) => [s, 0])) as Record<OrderStatus, number>;
      let totalOrders = 0;
      let revenueCents = 0;
      let paidOrders = 0;
      for (const row of q.statusTotals.all()) {
        statusBreakdown[row.status] = row.n;
        totalOrders += row.n;
        if (row.status !== 'cancelled') {
          revenueCents += row.cents;
          paidOrders += row.n;
        }
      }
      return {
        service: 'order-service',
        totalOrders,
        statusBreakdown,
        totalRevenue: fromCents(revenueCents),
        averageOrderValue: paidOrders === 0 ? 0 : fromCents(Math.round(revenueCents / paidOrders)),
      };
    },

    findIdempotencyKey(key: string): IdempotencyRecord | undefined {
      const row = q.selectKey.get(key);
      return row && toRecord(row);
    },

    /** In one transaction: the order, its idempotency key, and the end of its outbox row. */
    finishCreate: (o: NewOrder, idempotency?: { key: string; bodyHash: string }): FinishCreateResult => finishCreate.immediate(o, idempotency),

    /** Compare-and-set of the status; with `releaseStock`, an outbox row for its reservation in the same transaction. */
    changeStatus: (id: number, to: OrderStatus, allowed: (from: OrderStatus) => boolean, releaseStock: boolean): StatusChangeResult =>
      changeStatus.immediate(id, to, allowed, releaseStock),

    /** Deletes a pending order and writes the outbox row for its reservation, in one transaction. */
    deletePendingOrder: (id: number): DeleteResult => deletePendingOrder.immediate(id),

    addPendingRelease(reservationId: string): void {
      q.insertRelease.run(reservationId, Date.now());
    },

    /** True when the reservation may be released now: no live order owns it, and no order can take it any more. */
    claimPendingRelease(reservationId: string): boolean {
      return q.claimRelease.run({ id: reservationId }).changes === 1;
    },

    deletePendingRelease(reservationId: string): void {
      q.deleteRelease.run(reservationId);
    },

    notePendingReleaseFailure(reservationId: string, reason: string): void {
      q.noteReleaseFailure.run(reason.slice(0, 500), reservationId);
    },

    /** Reservation ids of outbox rows written at or before `beforeMs`, least tried and oldest first. */
    dueReleases(beforeMs: number, limit: number): string[] {
      return q.dueReleases.all(beforeMs, limit).map((r) => r.reservation_id);
    },

    countPendingReleases(): number {
      return q.countReleases.get()!.n;
    },
  };
}

function toRecord(row: KeyRow): IdempotencyRecord {
  return { key: row.key, bodyHash: row.body_hash, orderId: row.order_id, response: JSON.parse(row.response) as Order };
}
