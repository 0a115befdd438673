// A bound on password hashing at once. scrypt runs on libuv's thread pool and takes a core for
// tens of milliseconds a check: a flood of logins, each within its limits, would otherwise take
// every core and the thread pool from the service's other routes and from everyone else's login.
import { availableParallelism } from 'node:os';
import { setBounded } from '../platform/bounded-map.js';
import { HttpError } from '../platform/errors.js';

/**
 * One core fewer than the machine has (1 to 4): a core stays for the event loop, so the routes that
 * hash nothing keep their speed; libuv's thread pool runs 4 at once anyway.
 */
export const defaultHashConcurrency = (): number => Math.max(1, Math.min(4, availableParallelism() - 1));

export interface HashBudgetOptions {
  /** Hashes computed at once. */
  concurrency: number;
  /** Hashes waiting for a turn; past it 503 at once. 0: none wait. */
  maxQueue: number;
  /** How long one waits for its turn before 503. */
  maxWaitMs: number;
}

interface Waiter {
  client: string;
  start: () => void;
  refuse: (err: HttpError) => void;
  timer: NodeJS.Timeout;
}

// A client's recent checks are counted over this long: long enough to see a flood, short enough
// that a busy minute is soon forgiven.
const RECENT_WINDOW_MS = 10_000;
// Clients whose recent checks are remembered; one forgotten only loses its place in the order.
const MAX_RECENT_CLIENTS = 10_000;

// X-Dependency-Failure: the service itself is well, only its hashing is busy, so the gateway's
// breaker and outlier detection count this neither for nor against it.
const overloaded = (): HttpError =>
  new HttpError(503, 'OVERLOADED', 'Too many password checks at once, retry shortly', undefined, { retryAfter: 1, dependency: 'password-hashing' });

/**
 * At most `concurrency` hashes at once and `maxQueue` waiting, each for at most `maxWaitMs`. The
 * next turn goes to the waiting client that asked for the fewest checks within the last 10 s (the
 * longest waiting among equals), and when the queue is full a client that asked for fewer takes
 * the place of the newest waiter of the client that asked for the most (which gets the 503): a
 * flood from many addresses, each within its limits, cannot keep a bystander's login waiting
 * behind it.
 */
export function createHashBudget({ concurrency, maxQueue, maxWaitMs }: HashBudgetOptions) {
  let running = 0;
  const queue: Waiter[] = [];
  const recent = new Map<string, { count: number; resetMs: number }>();

  const countRequest = (client: string, now: number) => {
    const seen = recent.get(client);
    if (seen !== undefined && seen.resetMs > now) seen.count++;
    else setBounded(recent, client, { count: 1, resetMs: now + RECENT_WINDOW_MS }, MAX_RECENT_CLIENTS);
  };
  const weightOf = (client: string, now: number): number => {
    const seen = recent.get(client);
    return seen !== undefined && seen.resetMs > now ? seen.count : 0;
  };
  const leave = (waiter: Waiter) => {
    queue.splice(queue.indexOf(waiter), 1);
    clearTimeout(waiter.timer);
  };
  /** The waiter of the lightest client, the oldest among equals; or of the heaviest, the newest among equals. */
  const pick = (lightest: boolean, now: number): Waiter | undefined => {
    let chosen: Waiter | undefined;
    let weight = 0;
    for (const waiter of queue) {
      const w = weightOf(waiter.client, now);
      if (chosen === undefined || (lightest ? w < weight : w >= weight)) [chosen, weight] = [waiter, w];
    }
    return chosen;
  };
  const release = () => {
    running--;
    const next = running < concurrency ? pick(true, Date.now()) : undefined;
    if (next !== undefined) {
      leave(next);
      running++;
      next.start();
    }
  };
  const makeRoomFor = (client: string, now: number): boolean => {
    const heaviest = pick(false, now);
    if (heaviest === undefined || weightOf(heaviest.client, now) <= weightOf(client, now)) return false;
    leave(heaviest);
    heaviest.refuse(overloaded());
    return true;
  };
  const acquire = (client: string): Promise<void> => {
    const now = Date.now();
    countRequest(client, now);
    if (running < concurrency && queue.length === 0) {
      running++;
      return Promise.resolve();
    }
    if (queue.length >= maxQueue && !makeRoomFor(client, now)) return Promise.reject(overloaded());
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        client,
        start: resolve,
        refuse: reject,
        timer: setTimeout(() => {
          leave(waiter);
          reject(overloaded());
        }, maxWaitMs),
      };
      queue.push(waiter);
    });
  };

  return {
    /** Runs `hash` in its turn for `client`; throws 503 OVERLOADED (Retry-After: 1) when there is none. */
    async run<T>(client: string, hash: () => Promise<T>): Promise<T> {
      await acquire(client);
      try {
        return await hash();
      } finally {
        release();
      }
    },
    /** Hashes running and waiting, for tests and metrics. */
    get load() {
      return { running, waiting: queue.length };
    },
  };
}
export type HashBudget = ReturnType<typeof createHashBudget>;
