// Every SQL statement of the order service, written once for SQLite and PostgreSQL.
import { randomUUID } from 'node:crypto';
import { isUniqueViolation, type Db } from '../platform/sql.js';
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
  userId: number;
  key: string;
  bodyHash: string;
  orderId: number;
  /** The order as the first request's 201 showed it. */
  response: Order;
}

/** A create with an Idempotency-Key, holding the key's claim. */
export interface KeyedCreate {
  key: string;
  bodyHash: string;
  holder: string;
}

export type BeginKeyedCreateResult =
  /** The key is this create's until it commits or releases it; the outbox row is written. */
  | { kind: 'claimed'; holder: string }
  /** Another create with the key is in progress (on any instance). */
  | { kind: 'busy' }
  /** Another create with the key has finished: its answer is the answer. */
  | { kind: 'finished'; record: IdempotencyRecord };

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
  user_id: number;
  key: string;
  body_hash: string;
  order_id: number;
  response: string;
}

// The items as a JSON array in position order, built by the database in one round trip.
const ITEMS_JSON = {
  sqlite: `(SELECT json_group_array(json_object('productId', i.product_id, 'quantity', i.quantity, 'unitPriceCents', i.unit_price_cents) ORDER BY i.position)
     FROM order_items i WHERE i.order_id = o.id)`,
  postgres: `(SELECT COALESCE(json_agg(json_build_object('productId', i.product_id, 'quantity', i.quantity, 'unitPriceCents', i.unit_price_cents) ORDER BY i.position), '[]')::text
     FROM order_items i WHERE i.order_id = o.id)`,
} as const;

// The casts let PostgreSQL type a parameter that is only compared with NULL.
const LIST_FILTER = '(CAST($1 AS BIGINT) IS NULL OR o.user_id = $1) AND (CAST($2 AS TEXT) IS NULL OR o.status = $2)';

/**
 * The states of a reservation's outbox row (pending_releases), defined here and nowhere else; the
 * workflow and the release worker move rows through the store's methods named after them.
 *
 *   open       claimed = 0: written before the stock is reserved, or with the cancel or delete
 *              that gives it back. A create may still take it with its order (takeOpenRelease),
 *              which deletes it: the stock is then the order's.
 *   claimed    claimed = 1: a releaser committed to giving the stock back; no order may take it
 *              any more. Being released while lease_until_ms is ahead; once the lease is over (the
 *              releaser died, or failed and said so) the next releaser claims it again.
 *   (gone)     deleted: taken by its order, or the product service confirmed the release.
 *
 * A row whose reservation a live order owns is never released, only forgotten (dropOwnedRelease).
 */
const RELEASE = {
  open: 'claimed = 0',
  /** Nobody is releasing it now: open, or claimed by a releaser whose lease ran out. `$now`: Date.now(). */
  unleased: (now: string) => `lease_until_ms <= ${now}`,
  /** A live order owns its reservation: its stock must never be released. `$id`: the reservation id. */
  ownedByLiveOrder: (id: string) => `EXISTS (SELECT 1 FROM orders WHERE reservation_id = ${id} AND status <> 'cancelled')`,
} as const;

/** What a releaser got when it tried to claim a reservation's outbox row. */
export type ReleaseClaim =
  /** It is this releaser's to give back, for the lease. */
  | 'claimed'
  /** A live order owns it: the row was forgotten (or was already gone), nothing is to be given back. */
  | 'owned'
  /** Another releaser holds it, or it is gone: nothing to do. */
  | 'busy';

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

/**
 * A new order as getOrder would read it back, but for its id (which goes first): written, it is
 * the 201 body, with no read after the insert.
 */
function newOrderBody(o: NewOrder, now: string): { userId: number; items: Order['items']; status: OrderStatus; total: number; createdAt: string; updatedAt: string } {
  return {
    userId: o.userId,
    items: o.items.map((i) => ({ productId: i.productId, quantity: i.quantity, unitPrice: fromCents(i.unitPriceCents) })),
    status: o.status,
    total: fromCents(o.totalCents),
    createdAt: now,
    updatedAt: now,
  };
}

export type OrderStore = ReturnType<typeof createOrderStore>;

/** `db` may be the database or a transaction on it (the demo seed). */
export function createOrderStore(db: Db) {
  const columns = `o.id, o.user_id, o.status, o.total_cents, o.created_at, o.updated_at, ${ITEMS_JSON[db.engine]} AS items`;
  const sql = {
    selectOrder: `SELECT ${columns} FROM orders o WHERE o.id = $1`,
    selectOrderByReservation: `SELECT ${columns} FROM orders o WHERE o.reservation_id = $1`,
    listOrders: `SELECT ${columns} FROM orders o WHERE ${LIST_FILTER} ORDER BY o.id DESC LIMIT $3 OFFSET $4`,
    countOrders: `SELECT COUNT(*) AS n FROM orders o WHERE ${LIST_FILTER}`,
    selectStatus: 'SELECT status, reservation_id FROM orders WHERE id = $1',
    insertOrder: 'INSERT INTO orders (user_id, status, total_cents, reservation_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) RETURNING id',
    insertItem: 'INSERT INTO order_items (order_id, position, product_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)',
    setStatusIf: 'UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4',
    deleteIfPending: "DELETE FROM orders WHERE id = $1 AND status = 'pending'",
    statusTotals: 'SELECT status, COUNT(*) AS n, COALESCE(SUM(total_cents), 0) AS cents FROM orders GROUP BY status',
    selectKey: 'SELECT user_id, key, body_hash, order_id, response FROM idempotency_keys WHERE user_id = $1 AND key = $2',
    insertKey: 'INSERT INTO idempotency_keys (user_id, key, body_hash, order_id, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)',
    // Taken when free or when its holder's lease ran out; a holder still inside keeps it.
    claimKey: `INSERT INTO idempotency_claims (user_id, key, holder, until_ms) VALUES ($1, $2, $3, $4)
      ON CONFLICT (user_id, key) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms WHERE idempotency_claims.until_ms <= $5`,
    releaseKey: 'DELETE FROM idempotency_claims WHERE user_id = $1 AND key = $2 AND holder = $3',
    renewKey: 'UPDATE idempotency_claims SET until_ms = $4 WHERE user_id = $1 AND key = $2 AND holder = $3',
    // Batches by primary key; the outer condition is checked again on a row another transaction
    // changed meanwhile (PostgreSQL), so a claim renewed since the SELECT is kept.
    pruneKeys: `DELETE FROM idempotency_keys WHERE created_at < $1 AND (user_id, key) IN
      (SELECT user_id, key FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2)`,
    pruneClaims: `DELETE FROM idempotency_claims WHERE until_ms < $1 AND (user_id, key) IN
      (SELECT user_id, key FROM idempotency_claims WHERE until_ms < $1 LIMIT $2)`,
    // -> open
    insertRelease: 'INSERT INTO pending_releases (reservation_id, created_at_ms) VALUES ($1, $2) ON CONFLICT (reservation_id) DO NOTHING',
    // open -> gone
    takeOpenRelease: `DELETE FROM pending_releases WHERE reservation_id = $1 AND ${RELEASE.open}`,
    // open or claimed, unleased -> claimed for the lease. One guarded statement: on PostgreSQL a
    // racing claim waits for this row's lock, then finds the lease taken (or the row gone with the
    // order that took it) and changes nothing.
    claimRelease: `UPDATE pending_releases SET claimed = 1, lease_until_ms = $2
      WHERE reservation_id = $1 AND ${RELEASE.unleased('$3')} AND NOT ${RELEASE.ownedByLiveOrder('$1')}`,
    // open, owned by a live order -> gone
    dropOwnedRelease: `DELETE FROM pending_releases WHERE reservation_id = $1 AND ${RELEASE.open} AND ${RELEASE.ownedByLiveOrder('$1')}`,
    // claimed -> gone, once the product service confirmed
    deleteRelease: 'DELETE FROM pending_releases WHERE reservation_id = $1',
    // claimed -> claimed and unleased: the next releaser tries again
    noteReleaseFailure: 'UPDATE pending_releases SET attempts = attempts + 1, last_error = $1, lease_until_ms = 0 WHERE reservation_id = $2',
    // Fewest failed attempts first, so rows the product service keeps refusing cannot starve the rest.
    dueReleases: `SELECT reservation_id FROM pending_releases WHERE created_at_ms <= $1 AND ${RELEASE.unleased('$2')} ORDER BY attempts, created_at_ms LIMIT $3`,
    countReleases: 'SELECT COUNT(*) AS n FROM pending_releases',
  };

  // PostgreSQL: the steps of a create as one statement each, so each is one round trip (no BEGIN,
  // no COMMIT, no statement waiting for the last one's answer). A statement is atomic on its own;
  // its parts share one snapshot, which the comments below take into account.
  const pg = {
    // $1 user, $2 key, $3 holder, $4 claim end, $5 now, $6 reservation. The claim is taken only
    // when no finished key is seen, and the open outbox row is written with it. `seen` tells the
    // caller that another create's claim was there when the statement began: if this one took
    // it all the same, that create may have committed its key after this statement's snapshot
    // (its commit deletes the claim this one waited for), which finishCheck then reads.
    beginKeyed: `WITH finished AS (
        SELECT user_id, key, body_hash, order_id, response FROM idempotency_keys WHERE user_id = $1::bigint AND key = $2::text
      ), seen AS (
        SELECT holder FROM idempotency_claims WHERE user_id = $1::bigint AND key = $2::text
      ), claim AS (
        INSERT INTO idempotency_claims (user_id, key, holder, until_ms)
        SELECT $1::bigint, $2::text, $3::text, $4::bigint WHERE NOT EXISTS (SELECT 1 FROM finished)
        ON CONFLICT (user_id, key) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms WHERE idempotency_claims.until_ms <= $5::bigint
        RETURNING holder
      ), outbox AS (
        INSERT INTO pending_releases (reservation_id, created_at_ms) SELECT $6::text, $5::bigint FROM claim
        ON CONFLICT (reservation_id) DO NOTHING
      )
      SELECT (SELECT holder FROM claim) AS claimed, EXISTS (SELECT 1 FROM seen) AS seen, f.user_id, f.key, f.body_hash, f.order_id, f.response
      FROM (SELECT 1) AS one LEFT JOIN finished f ON true`,
    // After a claim taken from under a create that was there: a key committed meanwhile is the
    // answer, and this create's claim and (open) outbox row go. $1 user, $2 key, $3 holder, $4 reservation.
    finishCheck: `WITH finished AS (
        SELECT user_id, key, body_hash, order_id, response FROM idempotency_keys WHERE user_id = $1::bigint AND key = $2::text
      ), unclaim AS (
        DELETE FROM idempotency_claims WHERE user_id = $1::bigint AND key = $2::text AND holder = $3::text AND EXISTS (SELECT 1 FROM finished)
      ), unopen AS (
        DELETE FROM pending_releases WHERE reservation_id = $4::text AND ${RELEASE.open} AND EXISTS (SELECT 1 FROM finished)
      )
      SELECT user_id, key, body_hash, order_id, response FROM finished`,
    // $1 reservation, $2 user, $3 status, $4 total, $5 now, $6/$7/$8 the items' products,
    // quantities and unit prices, $9 key (null without), $10 body hash, $11 the 201 body without
    // its id (JSON, the id goes first), $12 holder. Nothing is written unless the open outbox row
    // is taken; a key another create committed first fails the statement (unique violation).
    finishCreate: `WITH took AS (
        DELETE FROM pending_releases WHERE reservation_id = $1::text AND ${RELEASE.open} RETURNING reservation_id
      ), made AS (
        INSERT INTO orders (user_id, status, total_cents, reservation_id, created_at, updated_at)
        SELECT $2::bigint, $3::text, $4::bigint, reservation_id, $5::text, $5::text FROM took RETURNING id
      ), items AS (
        INSERT INTO order_items (order_id, position, product_id, quantity, unit_price_cents)
        SELECT made.id, i.n - 1, i.product_id, i.quantity, i.unit_price_cents
        FROM made, unnest($6::bigint[], $7::int[], $8::bigint[]) WITH ORDINALITY AS i(product_id, quantity, unit_price_cents, n)
      ), keyed AS (
        INSERT INTO idempotency_keys (user_id, key, body_hash, order_id, response, created_at)
        SELECT $2::bigint, $9::text, $10::text, made.id, '{"id":' || made.id || ',' || substr($11::text, 2), $5::text FROM made WHERE $9::text IS NOT NULL
      ), unclaim AS (
        DELETE FROM idempotency_claims WHERE user_id = $2::bigint AND key = $9::text AND holder = $12::text AND EXISTS (SELECT 1 FROM made)
      )
      SELECT id FROM made`,
  };

  const getOrder = async (id: number, on: Db = db): Promise<Order | undefined> => {
    const row = await on.get<OrderRow>(sql.selectOrder, [id]);
    return row && toOrder(row);
  };

  const insertOrder = (o: NewOrder, on: Db = db, now = new Date().toISOString()): Promise<number> =>
    on.transaction(async (tx) => {
      const { id } = (await tx.get<{ id: number }>(sql.insertOrder, [o.userId, o.status, o.totalCents, o.reservationId, now]))!;
      for (const [position, item] of o.items.entries()) {
        await tx.run(sql.insertItem, [id, position, item.productId, item.quantity, item.unitPriceCents]);
      }
      return id;
    });

  const findKey = async (userId: number, key: string, on: Db = db): Promise<IdempotencyRecord | undefined> => {
    const row = await on.get<KeyRow>(sql.selectKey, [userId, key]);
    return row && toRecord(row);
  };

  const beginKeyedInOneStatement = async (reservationId: string, userId: number, key: string, leaseMs: number, holder: string): Promise<BeginKeyedCreateResult> => {
    const now = Date.now();
    const row = (await db.get<KeyRow & { claimed: string | null; seen: boolean }>(pg.beginKeyed, [userId, key, holder, now + leaseMs, now, reservationId]))!;
    if (row.response !== null) return { kind: 'finished', record: toRecord(row) };
    if (row.claimed !== holder) return { kind: 'busy' };
    if (row.seen) {
      const finished = await db.get<KeyRow>(pg.finishCheck, [userId, key, holder, reservationId]);
      if (finished) return { kind: 'finished', record: toRecord(finished) };
    }
    return { kind: 'claimed', holder };
  };

  const finishCreateInOneStatement = async (o: NewOrder, idempotency?: KeyedCreate): Promise<FinishCreateResult> => {
    const now = new Date().toISOString();
    const body = newOrderBody(o, now);
    const row = await db.get<{ id: number }>(pg.finishCreate, [
      o.reservationId, o.userId, o.status, o.totalCents, now,
      o.items.map((i) => i.productId), o.items.map((i) => i.quantity), o.items.map((i) => i.unitPriceCents),
      idempotency?.key ?? null, idempotency?.bodyHash ?? null, JSON.stringify(body), idempotency?.holder ?? null,
    ]);
    if (!row) return { kind: 'release_claimed' };
    return { kind: 'created', order: { id: row.id, ...body } };
  };

  return {
    getOrder: (id: number): Promise<Order | undefined> => getOrder(id),
    /** The order that took this reservation's stock, if one did. */
    async findOrderByReservation(reservationId: string): Promise<Order | undefined> {
      const row = await db.get<OrderRow>(sql.selectOrderByReservation, [reservationId]);
      return row && toOrder(row);
    },
    /** Inserts a finished order as is (demo data). */
    insertOrder: (o: NewOrder): Promise<number> => insertOrder(o),

    async listOrders(query: ListOrdersQuery): Promise<Page<Order>> {
      const filter = [query.userId ?? null, query.status ?? null];
      const rows = await db.all<OrderRow>(sql.listOrders, [...filter, query.limit, (query.page - 1) * query.limit]);
      const count = await db.get<{ n: number }>(sql.countOrders, filter);
      return { data: rows.map(toOrder), meta: { page: query.page, limit: query.limit, total: count!.n } };
    },

    async stats(): Promise<OrderStats> {
      const statusBreakdown = Object.fromEntries(ORDER_STATUSES.map((s) => [s, 0])) as Record<OrderStatus, number>;
      let totalOrders = 0;
      let revenueCents = 0;
      let paidOrders = 0;
      for (const row of await db.all<{ status: OrderStatus; n: number; cents: number }>(sql.statusTotals)) {
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

    /** The key as `userId` used it; another user's same key is another key. */
    findIdempotencyKey: (userId: number, key: string): Promise<IdempotencyRecord | undefined> => findKey(userId, key),

    /**
     * In one transaction, before stock is taken for a create with a key: claims the user's key
     * for at most `leaseMs` (across instances) and writes the reservation's outbox row. `holder`
     * is the claim's name, known before the commit, so a caller that lost its answer can free it.
     */
    beginKeyedCreate(reservationId: string, userId: number, key: string, leaseMs: number, holder: string = randomUUID()): Promise<BeginKeyedCreateResult> {
      if (db.engine === 'postgres') return beginKeyedInOneStatement(reservationId, userId, key, leaseMs, holder);
      return db.transaction(async (tx): Promise<BeginKeyedCreateResult> => {
        const now = Date.now();
        // The claim first, the finished key after: on PostgreSQL the claim waits for a create that
        // holds the claim row, and a statement begun after it sees the key that create committed.
        // Looked up before, the key of a create committing meanwhile was missed, and the racer took
        // stock of its own.
        const claimed = (await tx.run(sql.claimKey, [userId, key, holder, now + leaseMs, now])) === 1;
        const finished = await findKey(userId, key, tx);
        if (finished) {
          if (claimed) await tx.run(sql.releaseKey, [userId, key, holder]);
          return { kind: 'finished', record: finished };
        }
        if (!claimed) return { kind: 'busy' };
        await tx.run(sql.insertRelease, [reservationId, now]);
        return { kind: 'claimed', holder };
      });
    },

    async releaseIdempotencyKey(userId: number, key: string, holder: string): Promise<void> {
      await db.run(sql.releaseKey, [userId, key, holder]);
    },

    /** Moves the end of a claim this holder still has; false when it is no longer this holder's. */
    async renewIdempotencyKey(userId: number, key: string, holder: string, leaseMs: number): Promise<boolean> {
      return (await db.run(sql.renewKey, [userId, key, holder, Date.now() + leaseMs])) === 1;
    },

    /** Deletes up to `limit` finished keys made before `before`; resolves to how many. */
    pruneIdempotencyKeys: (before: Date, limit: number): Promise<number> => db.run(sql.pruneKeys, [before.toISOString(), limit]),

    /** Deletes up to `limit` claims that ran out before `beforeMs` (their holder stopped renewing). */
    pruneLapsedClaims: (beforeMs: number, limit: number): Promise<number> => db.run(sql.pruneClaims, [beforeMs, limit]),

    /** In one transaction: the order, its idempotency key, and the end of its outbox row. */
    async finishCreate(o: NewOrder, idempotency?: KeyedCreate): Promise<FinishCreateResult> {
      try {
        if (db.engine === 'postgres') return await finishCreateInOneStatement(o, idempotency);
        return await db.transaction(async (tx): Promise<FinishCreateResult> => {
          if (idempotency) {
            const existing = await findKey(o.userId, idempotency.key, tx);
            if (existing) return { kind: 'key_taken', record: existing };
          }
          // Taking the open outbox row is what makes the stock this order's; no releaser can have it after.
          if ((await tx.run(sql.takeOpenRelease, [o.reservationId])) !== 1) return { kind: 'release_claimed' };
          const now = new Date().toISOString();
          const order: Order = { id: await insertOrder(o, tx, now), ...newOrderBody(o, now) };
          if (idempotency) {
            await tx.run(sql.insertKey, [o.userId, idempotency.key, idempotency.bodyHash, order.id, JSON.stringify(order), order.createdAt]);
            await tx.run(sql.releaseKey, [o.userId, idempotency.key, idempotency.holder]);
          }
          return { kind: 'created', order };
        });
      } catch (err) {
        // Another instance committed the same key while we were inside (PostgreSQL): everything
        // above was rolled back, and its order is the answer.
        if (idempotency && isUniqueViolation(err)) {
          const record = await findKey(o.userId, idempotency.key);
          if (record) return { kind: 'key_taken', record };
        }
        throw err;
      }
    },

    /** Compare-and-set of the status; with `releaseStock`, an outbox row for its reservation in the same transaction. */
    changeStatus(id: number, to: OrderStatus, allowed: (from: OrderStatus) => boolean, releaseStock: boolean): Promise<StatusChangeResult> {
      return db.transaction(async (tx): Promise<StatusChangeResult> => {
        const current = await tx.get<{ status: OrderStatus; reservation_id: string }>(sql.selectStatus, [id]);
        if (!current) return { kind: 'not_found' };
        if (!allowed(current.status)) return { kind: 'rejected', from: current.status };
        if ((await tx.run(sql.setStatusIf, [to, new Date().toISOString(), id, current.status])) !== 1) {
          const now = await tx.get<{ status: OrderStatus }>(sql.selectStatus, [id]);
          return now ? { kind: 'rejected', from: now.status } : { kind: 'not_found' };
        }
        if (releaseStock) await tx.run(sql.insertRelease, [current.reservation_id, Date.now()]);
        return { kind: 'changed', order: (await getOrder(id, tx))!, reservationId: current.reservation_id };
      });
    },

    /** Deletes a pending order and writes the outbox row for its reservation, in one transaction. */
    deletePendingOrder(id: number): Promise<DeleteResult> {
      return db.transaction(async (tx): Promise<DeleteResult> => {
        const current = await tx.get<{ status: OrderStatus; reservation_id: string }>(sql.selectStatus, [id]);
        if (!current) return { kind: 'not_found' };
        if (current.status !== 'pending') return { kind: 'not_pending', status: current.status };
        if ((await tx.run(sql.deleteIfPending, [id])) !== 1) {
          const now = await tx.get<{ status: OrderStatus }>(sql.selectStatus, [id]);
          return now ? { kind: 'not_pending', status: now.status } : { kind: 'not_found' };
        }
        await tx.run(sql.insertRelease, [current.reservation_id, Date.now()]);
        return { kind: 'deleted', reservationId: current.reservation_id };
      });
    },

    /** A new open outbox row: written before its stock is reserved. */
    async addPendingRelease(reservationId: string): Promise<void> {
      await db.run(sql.insertRelease, [reservationId, Date.now()]);
    },

    /** Forgets an open outbox row whose stock was never asked for (the create stopped before its reserve). */
    async dropUnreservedRelease(reservationId: string): Promise<void> {
      await db.run(sql.takeOpenRelease, [reservationId]);
    },

    /**
     * Claims the row for a releaser, for `leaseMs`: then no order may take it, and no other
     * releaser of any instance gives the stock back meanwhile (a releaser that dies leaves it to
     * the next claim after that). A row a live order owns is forgotten instead.
     */
    async claimRelease(reservationId: string, leaseMs: number): Promise<ReleaseClaim> {
      const now = Date.now();
      if ((await db.run(sql.claimRelease, [reservationId, now + leaseMs, now])) === 1) return 'claimed';
      return (await db.run(sql.dropOwnedRelease, [reservationId])) === 1 ? 'owned' : 'busy';
    },

    /** The product service confirmed the release: the row is done. */
    async finishRelease(reservationId: string): Promise<void> {
      await db.run(sql.deleteRelease, [reservationId]);
    },

    /** Counts a failed release and ends the releaser's lease, so the next pass tries again. */
    async failRelease(reservationId: string, reason: string): Promise<void> {
      await db.run(sql.noteReleaseFailure, [reason.slice(0, 500), reservationId]);
    },

    /** Unleased outbox rows written at or before `beforeMs`, least tried and oldest first. */
    async dueReleases(beforeMs: number, limit: number): Promise<string[]> {
      return (await db.all<{ reservation_id: string }>(sql.dueReleases, [beforeMs, Date.now(), limit])).map((r) => r.reservation_id);
    },

    async countPendingReleases(): Promise<number> {
      return (await db.get<{ n: number }>(sql.countReleases))!.n;
    },
  };
}

function toRecord(row: KeyRow): IdempotencyRecord {
  return { userId: row.user_id, key: row.key, bodyHash: row.body_hash, orderId: row.order_id, response: JSON.parse(row.response) as Order };
}
