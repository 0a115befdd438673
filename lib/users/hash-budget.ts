// A bound on password hashing at once. scrypt runs on libuv's thread pool and takes a core for
// tens of milliseconds a check: a flood of logins, each within its limits, would otherwise take
// every core and the thread pool from the service's other routes and from everyone else's login.
import { availableParallelism } from 'node:os';
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

// X-Dependency-Failure: the service itself is well, only its hashing is busy, so the gateway's
// breaker and outlier detection count this neither for nor against it.
const overloaded = (): HttpError =>
  new HttpError(503, 'OVERLOADED', 'Too many password checks at once, retry shortly', undefined, { retryAfter: 1, dependency: 'password-hashing' });

/**
 * At most `concurrency` hashes at once and `maxQueue` waiting, first come first served, each for at
 * most `maxWaitMs`. When the queue is full, a client with fewer waiting than the client with the
 * most takes that one's newest place (which gets the 503): one flooding address cannot keep a
 * bystander out.
 */
export function createHashBudget({ concurrency, maxQueue, maxWaitMs }: HashBudgetOptions) {
  let running = 0;
  const queue: Waiter[] = [];
  // Waiting per client: at most maxQueue keys, since only waiting clients are in it.
  const waiting = new Map<string, number>();

  const leave = (waiter: Waiter) => {
    queue.splice(queue.indexOf(waiter), 1);
    clearTimeout(waiter.timer);
    const n = waiting.get(waiter.client)! - 1;
    if (n === 0) waiting.delete(waiter.client);
    else waiting.set(waiter.client, n);
  };
  const release = () => {
    running--;
    const next = queue[0];
    if (next !== undefined && running < concurrency) {
      leave(next);
      running++;
      next.start();
    }
  };
  const makeRoomFor = (client: string): boolean => {
    let heaviest: string | undefined;
    let most = 0;
    for (const [c, n] of waiting) if (n > most) [heaviest, most] = [c, n];
    if (heaviest === undefined || most <= (waiting.get(client) ?? 0) + 1) return false;
    let i = queue.length - 1;
    while (queue[i].client !== heaviest) i--;
    const newest = queue[i];
    leave(newest);
    newest.refuse(overloaded());
    return true;
  };
  const acquire = (client: string): Promise<void> => {
    if (running < concurrency && queue.length === 0) {
      running++;
      return Promise.resolve();
    }
    if (queue.length >= maxQueue && !makeRoomFor(client)) return Promise.reject(overloaded());
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
      waiting.set(client, (waiting.get(client) ?? 0) + 1);
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
