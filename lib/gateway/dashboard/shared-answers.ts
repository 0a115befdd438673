// One answer per key for callers that ask at about the same time: those that ask while it is on
// its way wait for it (single flight), and those that ask within `ttlMs` of its arrival are given
// it again. A failure is given to the callers that waited for it and then forgotten, so that the
// next caller asks again.
import { setBounded } from '../../platform/bounded-map.js';

interface Entry<T> {
  answer: Promise<T>;
  /** When the answer stops being given (ms on `now`'s clock); Infinity while it is on its way. */
  until: number;
}

export interface SharedAnswersOptions {
  /** How long an answer is given again after it arrived; 0 shares nothing, not even one in flight. */
  ttlMs: number;
  /** Most keys remembered; the oldest makes room. */
  maxEntries: number;
  now?: () => number;
}

export class SharedAnswers<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor({ ttlMs, maxEntries, now = Date.now }: SharedAnswersOptions) {
    this.ttlMs = ttlMs;
    this.maxEntries = maxEntries;
    this.now = now;
  }

  /** The answer for `key`: the one on its way or recent, else the one `load` gives now. */
  get(key: string, load: () => Promise<T>): Promise<T> {
    if (this.ttlMs === 0) return load();
    const known = this.entries.get(key);
    if (known !== undefined && known.until > this.now()) return known.answer;
    const entry: Entry<T> = { answer: load(), until: Number.POSITIVE_INFINITY };
    // Set again, not updated: the key becomes the newest, and the last to make room.
    this.entries.delete(key);
    setBounded(this.entries, key, entry, this.maxEntries);
    entry.answer.then(
      () => {
        entry.until = this.now() + this.ttlMs;
      },
      () => {
        if (this.entries.get(key) === entry) this.entries.delete(key);
      },
    );
    return entry.answer;
  }

  /** How many keys are remembered (answers on their way included). */
  get size(): number {
    return this.entries.size;
  }
}
