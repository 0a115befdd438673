// The order workflow across services. Invariant, crashes included: no order without its stock,
// no stock held without an order. The outbox table pending_releases carries it: a reservation id
// is written there before stock is reserved, and leaves only with the order that owns the stock
// or once the product service confirmed the release.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { HttpError, notFound, StorageUnavailableError } from '../platform/errors.js';
import { deadlineLeftMs, deadlinePassed, DeadlineExceededError, UpstreamUnavailableError, withoutDeadline } from '../platform/service-client.js';
import type { CallOptions } from '../platform/typed-client.js';
import type { Page } from '../platform/validation.js';
import type { ProductsClient, Reservation } from '../products/client.js';
import type { UsersClient } from '../users/client.js';
import { hashOrderRequest, keyInUse, renewClaim, type KeyedCreates } from './idempotency.js';
import { NEXT_STATUSES, type CreateOrderInput, type ListOrdersQuery, type Order, type OrderStats, type OrderStatus } from './schema.js';
import { toCents } from '../platform/money.js';
import { CommitInDoubtError } from '../platform/sql.js';
import { type BeginKeyedCreateResult, type DeleteResult, type FinishCreateResult, type IdempotencyRecord, type KeyedCreate, type NewOrder, type OrderStore, type StatusChangeResult } from './store.js';

export interface OrderDeps {
  store: OrderStore;
  users: UsersClient;
  products: ProductsClient;
  logger: Logger;
  /** This process's creates with a key in progress, at most so many. */
  keyedCreates: KeyedCreates;
  /**
   * How long a release started from a request keeps its outbox row from the release workers:
   * longer than a release call takes, short enough that a crash mid-release is soon retried.
   */
  releaseLeaseMs: number;
  /** IDEMPOTENCY_KEY_LEASE_MS: a create's claim on its key lasts this long past its last renewal. */
  keyLeaseMs: number;
  /** IDEMPOTENCY_KEY_WAIT_MS: the longest a repeat waits for the create holding its key. */
  keyWaitMs: number;
}

export interface Created {
  order: Order;
  /** True when this answers a repeat of an earlier request with the same Idempotency-Key. */
  replayed: boolean;
}

// The product service's refusals that our client should hear as they are.
const PASSED_ON = new Set(['INSUFFICIENT_STOCK', 'UNKNOWN_PRODUCT']);

export async function getOrder({ store }: OrderDeps, id: number): Promise<Order> {
  const order = await store.getOrder(id);
  if (!order) throw notFound('Order');
  return order;
}

export const listOrders = ({ store }: OrderDeps, query: ListOrdersQuery): Promise<Page<Order>> => store.listOrders(query);

export const orderStats = ({ store }: OrderDeps): Promise<OrderStats> => store.stats();

export interface CreateOptions {
  /** The Idempotency-Key as stored (scopedKey); filed under the order's user, so one user's key never answers, or blocks, another's create. */
  key?: string;
  /** How the user service is asked about the order's user: as the caller (asCaller), which it shows a user only to itself or an admin. */
  callOptions?: CallOptions;
}

export async function createOrder(deps: OrderDeps, input: CreateOrderInput, { key, callOptions }: CreateOptions = {}): Promise<Created> {
  try {
    if (key === undefined) return await placeOrder(deps, input, callOptions);
    const idempotency = { key, bodyHash: hashOrderRequest(input), waitUntil: keyWaitEnd(deps.keyWaitMs) };
    return await deps.keyedCreates.run(() => placeOrder(deps, input, callOptions, idempotency));
  } catch (err) {
    throw err instanceof UpstreamUnavailableError ? dependencyUnavailable(err.service) : err;
  }
}

/**
 * The user or product service could not answer: our client hears that it is a dependency's
 * outage, not ours, so that callers' breakers keep this service's circuit closed for the requests
 * that do not need the dependency.
 */
function dependencyUnavailable(service: string): HttpError {
  return new HttpError(503, 'DEPENDENCY_UNAVAILABLE', `Service ${service} is unavailable, retry shortly`, undefined, { retryAfter: 1, dependency: service });
}

function replay(record: IdempotencyRecord, bodyHash: string): Created {
  if (record.bodyHash !== bodyHash) {
    throw new HttpError(422, 'IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was already used with a different request body', [
      { field: 'Idempotency-Key', message: 'already used with a different body' },
    ]);
  }
  return { order: record.response, replayed: true };
}

// A create holds its key in the database for keyLeaseMs past its last renewal, renewed every third
// of it while it runs, so a retry after its instance died is served within keyLeaseMs; a create
// that outlasts its claim is still safe (a racer then takes stock of its own, and the key's unique
// row still allows one order). A second create with the key waits for the first until
// keyWaitEnd(), then answers 409 IDEMPOTENCY_KEY_IN_USE.
const KEY_POLL_MS = 25;
// Left of the caller's deadline when a repeat stops waiting: time to answer before the caller
// gives up (the service's own deadline is already up to 100 ms before the caller's).
const KEY_ANSWER_MARGIN_MS = 100;

/** When a repeat stops waiting for its key: after `waitMs`, or just before the caller's deadline. */
function keyWaitEnd(waitMs: number): number {
  const left = deadlineLeftMs();
  return Date.now() + Math.min(waitMs, left === undefined ? Infinity : left - KEY_ANSWER_MARGIN_MS);
}

async function placeOrder(deps: OrderDeps, input: CreateOrderInput, callOptions?: CallOptions, idempotency?: { key: string; bodyHash: string; waitUntil: number }): Promise<Created> {
  const { store } = deps;
  const reservationId = randomUUID();
  // The user service is asked while the first write goes to the database: neither waits for the
  // other. Resolves to the check's error, or undefined when the user exists.
  const userRefusal = requireUser(deps, input.userId, callOptions).then(() => undefined, (err: unknown) => (err instanceof Error ? err : new Error(String(err))));
  if (!idempotency) {
    // Durable before the stock is taken: if we die from here on, the release worker gives it back.
    const failed = await store.addPendingRelease(reservationId).then(() => undefined, (err: unknown) => ({ err }));
    await refuseUnknownUser(deps, userRefusal, failed ? undefined : reservationId);
    if (failed) throw failed.err;
    return reserveAndFinish(deps, input, reservationId);
  }
  // With a key, the key is claimed in the same write as the outbox row, so that one create per
  // user and key takes stock across every instance: a racer waits for the first and answers its
  // order, rather than taking stock of its own (and failing for lack of it). A repeat is answered
  // as the first request was, whatever the user service says now.
  const { key, bodyHash, waitUntil } = idempotency;
  for (;;) {
    const holder = randomUUID();
    let begun: BeginKeyedCreateResult;
    try {
      begun = await store.beginKeyedCreate(reservationId, input.userId, key, deps.keyLeaseMs, holder);
    } catch (err) {
      // The claim may have committed unheard (its statement, or the COMMIT of a transaction, sent
      // and the connection lost before the answer): free it, or a retry with this key would wait
      // out the lease (the retry's wait for it ends once it is). Its outbox row goes to the release worker.
      if (err instanceof StorageUnavailableError) void freeKey(deps, input.userId, key, holder);
      throw err;
    }
    if (begun.kind === 'finished') return replay(begun.record, bodyHash);
    if (begun.kind === 'claimed') {
      const renewal = renewClaim(() => store.renewIdempotencyKey(input.userId, key, begun.holder, deps.keyLeaseMs), deps.keyLeaseMs / 3, (err) => {
        deps.logger.warn({ err, reservationId }, err === undefined ? 'idempotency key claim lapsed while its create ran' : 'idempotency key claim not renewed');
      });
      let created = false;
      try {
        await refuseUnknownUser(deps, userRefusal, reservationId);
        const result = await reserveAndFinish(deps, input, reservationId, { key, bodyHash, holder: begun.holder });
        created = !result.replayed;
        return result;
      } finally {
        renewal.stop();
        // Committed with the order otherwise; a failed create frees the key for a retry now.
        if (!created) await freeKey(deps, input.userId, key, begun.holder);
      }
    }
    // Still held: the holder may yet make the order, so this is no failure (never a 504), and
    // the caller hears it while it still listens.
    const left = waitUntil - Date.now();
    if (left <= 0) throw keyInUse();
    await new Promise((resolve) => setTimeout(resolve, Math.min(KEY_POLL_MS, left)));
  }
}

/**
 * Throws the user check's refusal (422 UNKNOWN_USER, the user service unavailable), after
 * forgetting the outbox row written meanwhile: no stock was asked for under it (if forgetting
 * fails, the release worker's release takes nothing).
 */
async function refuseUnknownUser({ store }: OrderDeps, refusal: Promise<Error | undefined>, reservationId?: string): Promise<void> {
  const err = await refusal;
  if (err === undefined) return;
  if (reservationId !== undefined) await store.dropUnreservedRelease(reservationId).catch(() => undefined);
  throw err;
}

async function requireUser({ users }: OrderDeps, userId: number, callOptions?: CallOptions): Promise<void> {
  if (!(await users.getUser(userId, callOptions))) {
    throw new HttpError(422, 'UNKNOWN_USER', `User ${userId} does not exist`, [{ field: 'userId', message: 'no such user' }]);
  }
}

// Claims still to free once the database answers again; past this many, their leases free them.
const MAX_KEYS_BEING_FREED = 1000;
let keysBeingFreed = 0;

/**
 * Frees a create's claim on its key, so that a retry with the key goes ahead now. While the
 * database does not answer (a reset took this statement too), it tries again in the background,
 * no longer than the lease, after which the claim lapses anyway.
 */
async function freeKey({ store, keyLeaseMs }: OrderDeps, userId: number, key: string, holder: string): Promise<void> {
  const attempt = () => store.releaseIdempotencyKey(userId, key, holder).then(() => true, () => false);
  if ((await attempt()) || keysBeingFreed >= MAX_KEYS_BEING_FREED) return;
  keysBeingFreed++;
  void (async () => {
    try {
      const giveUpAt = Date.now() + keyLeaseMs;
      for (let wait = 100; Date.now() + wait < giveUpAt; wait = Math.min(2 * wait, 2000)) {
        await new Promise((resolve) => setTimeout(resolve, wait).unref());
        if (await attempt()) return;
      }
    } finally {
      keysBeingFreed--;
    }
  })();
}

async function reserveAndFinish(deps: OrderDeps, input: CreateOrderInput, reservationId: string, idempotency?: KeyedCreate): Promise<Created> {
  const { store, products, logger } = deps;
  let reservation: Reservation;
  try {
    reservation = await products.reserve(reservationId, input.items);
  } catch (err) {
    // Our caller stops waiting: give up now and give the stock back (a reserve that lands later
    // takes nothing once its id was released).
    if (err instanceof DeadlineExceededError) {
      compensate(deps, reservationId);
      throw err;
    }
    // No answer: the reservation may still land after our timeout. The outbox row stays, and
    // the worker releases it once no create can be waiting for it any more.
    if (err instanceof UpstreamUnavailableError) throw err;
    await releaseNow(deps, reservationId);
    if (err instanceof HttpError && PASSED_ON.has(err.code)) throw err;
    logger.error({ err, reservationId }, 'product service refused a reservation unexpectedly');
    throw new HttpError(502, 'BAD_GATEWAY', 'Service products gave an unexpected answer');
  }

  const priced = priceItems(input, reservation);
  if (!priced) {
    await releaseNow(deps, reservationId);
    logger.error({ reservationId }, 'reservation does not match the order items');
    throw new HttpError(502, 'BAD_GATEWAY', 'Service products gave an unexpected answer');
  }

  const newOrder: NewOrder = {
    userId: input.userId,
    status: 'pending',
    reservationId,
    items: priced,
    totalCents: priced.reduce((sum, i) => sum + i.unitPriceCents * i.quantity, 0),
  };
  // Never commit an order whose caller was told (or is about to be told) that it failed.
  if (deadlinePassed()) {
    compensate(deps, reservationId);
    throw new DeadlineExceededError();
  }
  let result: FinishCreateResult;
  try {
    result = await store.finishCreate(newOrder, idempotency);
  } catch (err) {
    // Nothing was committed, so no order owns this stock; unless the connection broke while the
    // answer was on its way (to the one statement that writes the order on PostgreSQL, or to a
    // COMMIT), and it was. The outbox row decides: releaseNow takes it only when no order did
    // (waiting for a commit still in flight), so the order found after it is the truth, and is the answer.
    await releaseNow(deps, reservationId);
    if (err instanceof StorageUnavailableError) {
      const committed = await store.findOrderByReservation(reservationId).catch(() => undefined);
      if (committed) {
        logger.warn({ orderId: committed.id, reservationId }, 'order created; the answer to its commit was lost and read back');
        return { order: committed, replayed: false };
      }
    }
    throw err;
  }
  switch (result.kind) {
    case 'created':
      // At debug: the request's own log line already records every 201; this adds a line per order.
      logger.debug({ orderId: result.order.id, reservationId }, 'order created');
      return { order: result.order, replayed: false };
    case 'key_taken':
      await releaseNow(deps, reservationId);
      return replay(result.record, idempotency!.bodyHash);
    case 'release_claimed':
      await releaseNow(deps, reservationId);
      throw new HttpError(503, 'SERVICE_UNAVAILABLE', 'The order could not be completed in time, retry', undefined, { retryAfter: 1 });
  }
}

/** The catalog prices the reservation returned, per item, or undefined if it does not cover every item. */
function priceItems(input: CreateOrderInput, reservation: Reservation): NewOrder['items'] | undefined {
  const prices = new Map<number, number>();
  for (const item of reservation.items ?? []) prices.set(item.productId, item.unitPrice);
  const items: NewOrder['items'] = [];
  for (const { productId, quantity } of input.items) {
    const price = prices.get(productId);
    if (typeof price !== 'number' || !Number.isFinite(price) || price < 0) return undefined;
    items.push({ productId, quantity, unitPriceCents: toCents(price) });
  }
  return items;
}

/** `onlyFrom`: the change is made only from this status (a user cancels a pending order, nothing else). */
export async function changeOrderStatus(deps: OrderDeps, id: number, to: OrderStatus, onlyFrom?: OrderStatus): Promise<Order> {
  const releaseStock = to === 'cancelled';
  let result: StatusChangeResult;
  try {
    result = await deps.store.changeStatus(id, to, (from) => (onlyFrom === undefined || from === onlyFrom) && NEXT_STATUSES[from].includes(to), releaseStock);
  } catch (err) {
    // The change may have committed unheard: an order now in the status asked for is the answer.
    // A cancel's outbox row committed with it, and the release worker gives its stock back.
    const now = err instanceof CommitInDoubtError ? await deps.store.getOrder(id).catch(() => undefined) : undefined;
    if (now?.status !== to) throw err;
    deps.logger.warn({ orderId: id, status: to }, 'order status changed; the answer to its commit was lost and read back');
    return now;
  }
  if (result.kind === 'not_found') throw notFound('Order');
  if (result.kind === 'rejected') {
    throw new HttpError(409, 'INVALID_TRANSITION', `An order cannot go from ${result.from} to ${to}`);
  }
  deps.logger.info({ orderId: id, status: to }, 'order status changed');
  if (releaseStock) await releaseNow(deps, result.reservationId);
  return result.order;
}

export async function deleteOrder(deps: OrderDeps, id: number): Promise<void> {
  let result: DeleteResult;
  try {
    result = await deps.store.deletePendingOrder(id);
  } catch (err) {
    // The delete may have committed unheard: an order no longer there is deleted (its outbox row
    // committed with it, and the release worker gives its stock back).
    const gone = err instanceof CommitInDoubtError && (await deps.store.getOrder(id).then((o) => o === undefined, () => false));
    if (!gone) throw err;
    deps.logger.warn({ orderId: id }, 'order deleted; the answer to its commit was lost and read back');
    return;
  }
  if (result.kind === 'not_found') throw notFound('Order');
  if (result.kind === 'not_pending') {
    throw new HttpError(409, 'ORDER_NOT_PENDING', `Only pending orders can be deleted; this one is ${result.status}`);
  }
  deps.logger.info({ orderId: id }, 'order deleted');
  await releaseNow(deps, result.reservationId);
}

/** releaseNow after the caller's deadline, without waiting for it: the answer is due now. */
function compensate(deps: OrderDeps, reservationId: string): void {
  void withoutDeadline(() => releaseNow(deps, reservationId));
}

/**
 * Gives a reservation's stock back now, for a caller that knows no live order owns it (its own
 * failed create, or an order it just cancelled or deleted). The outbox row is claimed first, so
 * no release worker of any instance releases it at the same time. On any failure the row stays
 * and the release worker retries: the client's answer does not depend on it.
 */
async function releaseNow({ store, products, logger, releaseLeaseMs }: OrderDeps, reservationId: string): Promise<void> {
  let claimed = false;
  try {
    // A call that outlasts the lease may be repeated by a worker, which the product service
    // answers without giving the stock back twice. Not claimed: a worker holds it and finishes it.
    claimed = (await store.claimRelease(reservationId, releaseLeaseMs)) === 'claimed';
    if (!claimed) return;
    await products.release(reservationId);
    await store.finishRelease(reservationId);
  } catch (err) {
    logger.warn({ err, reservationId }, 'release failed; the release worker will retry');
    if (claimed) await store.failRelease(reservationId, errorText(err)).catch(() => undefined);
  }
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export interface ReleaseRound {
  released: number;
  failed: number;
}

/**
 * One pass of the release worker over outbox rows at least `minAgeMs` old. A row is first
 * claimed (after which no create can commit an order for it, and no other worker or instance
 * takes it for `minAgeMs`), then released, then deleted. A row whose reservation a live order
 * owns is just deleted; one that another worker holds is left to it.
 */
export async function releasePending(
  { store, products, logger }: Pick<OrderDeps, 'store' | 'products' | 'logger'>,
  minAgeMs: number,
  batchSize: number,
  shouldStop: () => boolean = () => false,
): Promise<ReleaseRound> {
  const round: ReleaseRound = { released: 0, failed: 0 };
  for (const reservationId of await store.dueReleases(Date.now() - minAgeMs, batchSize)) {
    if (shouldStop()) break;
    if ((await store.claimRelease(reservationId, minAgeMs)) !== 'claimed') continue;
    try {
      await products.release(reservationId);
      await store.finishRelease(reservationId);
      round.released++;
    } catch (err) {
      round.failed++;
      await store.failRelease(reservationId, errorText(err));
      logger.warn({ err, reservationId }, 'release failed; will retry');
      // The product service is down: the rest of the batch would fail the same way.
      if (err instanceof UpstreamUnavailableError) break;
    }
  }
  return round;
}
