// Latency histogram with microsecond resolution and a fixed size. autocannon's own histogram
// keeps whole milliseconds, too coarse for "the gateway adds at most 2 ms".

// Exact below 2048 µs; above, 1024 buckets per power of two (under 0.1 % relative error).
const SUB_BITS = 10;
const SUB = 1 << SUB_BITS;
const MAX_US = 120_000_000;
const BUCKETS = indexOf(MAX_US) + 1;

function indexOf(us: number): number {
  if (us < 2 * SUB) return us;
  const shift = 31 - Math.clz32(us) - SUB_BITS;
  return SUB * (shift + 1) + ((us >>> shift) - SUB);
}

/** The middle of bucket `i`, in µs. */
function valueOf(i: number): number {
  if (i < 2 * SUB) return i;
  const shift = Math.floor(i / SUB) - 1;
  const low = ((i % SUB) + SUB) * 2 ** shift;
  return low + (2 ** shift - 1) / 2;
}

export interface LatencySummary {
  count: number;
  meanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class LatencyHistogram {
  private readonly counts = new Uint32Array(BUCKETS);
  private total = 0;
  private sumUs = 0;
  private maxUs = 0;

  recordMs(ms: number): void {
    const us = Math.min(MAX_US, Math.max(0, Math.round(ms * 1000)));
    this.counts[indexOf(us)] += 1;
    this.total += 1;
    this.sumUs += us;
    if (us > this.maxUs) this.maxUs = us;
  }

  /** The value at percentile `p` (0..100), in ms. */
  percentileMs(p: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(valueOf(i), this.maxUs) / 1000;
    }
    return this.maxUs / 1000;
  }

  summary(): LatencySummary {
    return {
      count: this.total,
      meanMs: this.total ? this.sumUs / this.total / 1000 : 0,
      p50Ms: this.percentileMs(50),
      p90Ms: this.percentileMs(90),
      p99Ms: this.percentileMs(99),
      maxMs: this.maxUs / 1000,
    };
  }
}
