// Per-service request counts, errors and latencies over the last two minutes, in fixed ring
// buffers of one-second slots: recording a request allocates nothing and costs a few increments;
// rates and percentiles are computed once a second, when the dashboard asks.

/** Slots kept: two minutes of one-second buckets. */
const WINDOW_SECONDS = 120;
/** Seconds the rates and percentiles cover. */
const RECENT_SECONDS = 10;

// Latency buckets grow by 25 %: bucket i holds durations up to FIRST_MS * GROWTH^i, so a
// percentile is known within a quarter of its value, from 0.05 ms to about a minute.
const FIRST_MS = 0.05;
const GROWTH = 1.25;
const LOG_GROWTH = Math.log(GROWTH);
const BUCKETS = 64;
const UPPER_MS = Float64Array.from({ length: BUCKETS }, (_, i) => FIRST_MS * GROWTH ** i);

export interface WindowSummary {
  /** Requests per second over the last RECENT_SECONDS completed seconds. */
  rps: number;
  /** Share of those the service did not answer (5xx, or stale in its place), in percent. */
  errorPct: number;
  /** Milliseconds; null with no request in the window. */
  p50: number | null;
  p99: number | null;
  /** Requests in each of the last WINDOW_SECONDS completed seconds, oldest first. */
  perSecond: number[];
  /** Failed answers in each of those seconds. */
  errorsPerSecond: number[];
}

export class WindowStats {
  private slot = 0;
  private readonly counts: Uint32Array;
  private readonly errors: Uint32Array;
  private readonly latencies: Uint32Array;
  private readonly merged = new Float64Array(BUCKETS);

  constructor(readonly series: number) {
    this.counts = new Uint32Array(series * WINDOW_SECONDS);
    this.errors = new Uint32Array(series * WINDOW_SECONDS);
    this.latencies = new Uint32Array(series * WINDOW_SECONDS * BUCKETS);
  }

  /**
   * One answered request of series `index`: its status and time in milliseconds. `failed` when
   * the service did not give the answer (a 5xx, or a stale copy in its place).
   */
  record(index: number, status: number, durationMs: number, failed = status >= 500): void {
    const at = index * WINDOW_SECONDS + this.slot;
    this.counts[at]++;
    if (failed) this.errors[at]++;
    let bucket = durationMs <= FIRST_MS ? 0 : Math.ceil(Math.log(durationMs / FIRST_MS) / LOG_GROWTH);
    if (bucket >= BUCKETS) bucket = BUCKETS - 1;
    this.latencies[at * BUCKETS + bucket]++;
  }

  /** Closes the current second: called once a second. */
  tick(): void {
    this.slot = (this.slot + 1) % WINDOW_SECONDS;
    for (let i = 0; i < this.series; i++) {
      const at = i * WINDOW_SECONDS + this.slot;
      this.counts[at] = 0;
      this.errors[at] = 0;
      this.latencies.fill(0, at * BUCKETS, (at + 1) * BUCKETS);
    }
  }

  summary(index: number): WindowSummary {
    const base = index * WINDOW_SECONDS;
    const perSecond: number[] = [];
    const errorsPerSecond: number[] = [];
    // Completed seconds only, oldest first: the current slot is still filling.
    for (let back = WINDOW_SECONDS - 1; back >= 1; back--) {
      const at = base + ((this.slot - back + WINDOW_SECONDS) % WINDOW_SECONDS);
      perSecond.push(this.counts[at]);
      errorsPerSecond.push(this.errors[at]);
    }
    const merged = this.merged.fill(0);
    let requests = 0;
    let errors = 0;
    for (let back = 1; back <= RECENT_SECONDS; back++) {
      const at = base + ((this.slot - back + WINDOW_SECONDS) % WINDOW_SECONDS);
      requests += this.counts[at];
      errors += this.errors[at];
      for (let b = 0; b < BUCKETS; b++) merged[b] += this.latencies[at * BUCKETS + b];
    }
    return {
      rps: Math.round((requests / RECENT_SECONDS) * 10) / 10,
      errorPct: requests === 0 ? 0 : Math.round((errors / requests) * 1000) / 10,
      p50: percentile(merged, requests, 0.5),
      p99: percentile(merged, requests, 0.99),
      perSecond,
      errorsPerSecond,
    };
  }
}

/** The upper bound of the bucket holding the q-quantile, rounded for display. */
function percentile(buckets: Float64Array, total: number, q: number): number | null {
  if (total === 0) return null;
  const rank = Math.ceil(total * q);
  let seen = 0;
  for (let b = 0; b < BUCKETS; b++) {
    seen += buckets[b];
    if (seen >= rank) return Math.round(UPPER_MS[b] * 100) / 100;
  }
  return Math.round(UPPER_MS[BUCKETS - 1] * 100) / 100;
}

/**
 * Counters that only grow (totals since start, as the breaker and the metrics keep them), sampled
 * once a second: how much each grew over the last RECENT_SECONDS, so every figure of a tile covers
 * the same ten seconds. Keys are fixed by the configuration (service, instance, kind).
 */
export class GrowthWindow {
  // Oldest first; the first is all zeros, so a gateway younger than the window counts from start.
  private readonly samples: ReadonlyMap<string, number>[] = [new Map()];

  sample(totals: ReadonlyMap<string, number>): void {
    this.samples.push(totals);
    if (this.samples.length > RECENT_SECONDS + 1) this.samples.shift();
  }

  growth(key: string): number {
    const first = this.samples[0].get(key) ?? 0;
    const last = this.samples.at(-1)!.get(key) ?? 0;
    return Math.max(0, last - first);
  }

  /** Growth per second over the window. */
  rate(key: string): number {
    return Math.round((this.growth(key) / RECENT_SECONDS) * 10) / 10;
  }
}
