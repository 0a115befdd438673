// `npm run bench:soak`: a million proxied GETs through the gateway (BENCH_SOAK_REQUESTS), in
// chunks, with the gateway's memory after each: does it stay flat once its bounded buffers (span
// buffer, stale cache, limiter window) have filled? Writes bench/soak.json and bench/SOAK.md.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { closedLoop } from './load.js';
import { describeMachine, rssBytes, type Machine } from './proc.js';
import { ROOT, startSystem, type Supervisor } from './system.js';

export interface SoakOptions {
  requests: number;
  chunks: number;
  connections: number;
  outDir?: string;
}

interface SoakChunk {
  /** Requests answered by the gateway so far, this chunk included. */
  requests: number;
  rps: number;
  /** Lowest and highest RSS sampled during the chunk: a leak raises the floor. */
  rssFloorMb: number;
  rssPeakMb: number;
  /** Lowest `nodejs_heap_size_used_bytes` scraped during the chunk: about the live heap. */
  heapFloorMb: number;
  errors: number;
  non2xx: number;
}

const SAMPLE_MS = 500;
const SOAK_GROWTH_LIMIT = 0.1;

const log = (line = '') => process.stdout.write(`${line}\n`);

async function heapUsedMb(metricsUrl: string): Promise<number> {
  try {
    const res = await fetch(metricsUrl, { signal: AbortSignal.timeout(2_000) });
    const text = await res.text();
    const m = /^nodejs_heap_size_used_bytes(?:\{[^}]*\})? ([\d.e+]+)$/m.exec(text);
    return m ? Number(m[1]) / 2 ** 20 : NaN;
  } catch {
    return NaN;
  }
}

/** Samples RSS and heap while `work` runs; returns their floors and the RSS peak. */
async function sampled<T>(pid: number, metricsUrl: string, work: Promise<T>): Promise<{ result: T; rss: number[]; heap: number[] }> {
  const rss: number[] = [];
  const heap: number[] = [];
  let done = false;
  const loop = (async () => {
    while (!done) {
      const bytes = rssBytes(pid);
      if (bytes !== undefined) rss.push(bytes / 2 ** 20);
      const h = await heapUsedMb(metricsUrl);
      if (Number.isFinite(h)) heap.push(h);
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS));
    }
  })();
  try {
    return { result: await work, rss, heap };
  } finally {
    done = true;
    await loop;
  }
}

export async function soak(o: SoakOptions, supervisor: Supervisor, workDir: string, signal: AbortSignal): Promise<void> {
  const started = new Date();
  const system = await startSystem(supervisor, { workDir, withReferences: false });
  const gateway = system.get('gateway')!;
  const url = `${gateway.url}/api/products/1`;
  const metricsUrl = `${gateway.url}/metrics`;
  const perChunk = Math.ceil(o.requests / o.chunks);
  log(`Soak: ${o.requests.toLocaleString('en-US')} x GET /api/products/1 through the gateway at c=${o.connections}, in ${o.chunks} chunks; memory after each.`);
  const chunks: SoakChunk[] = [];
  let total = 0;
  for (let i = 0; i < o.chunks && !signal.aborted; i++) {
    const { result, rss, heap } = await sampled(gateway.mainPid, metricsUrl, closedLoop({ url, connections: o.connections, durationS: 0, amount: perChunk }, signal));
    total += result.requests;
    const chunk: SoakChunk = {
      requests: total,
      rps: result.rps,
      rssFloorMb: Math.min(...rss),
      rssPeakMb: Math.max(...rss),
      heapFloorMb: Math.min(...heap),
      errors: result.errors,
      non2xx: result.non2xx,
    };
    chunks.push(chunk);
    log(`  ${total.toLocaleString('en-US').padStart(9)} requests  ${Math.round(result.rps)} req/s  RSS ${chunk.rssFloorMb.toFixed(0)}-${chunk.rssPeakMb.toFixed(0)} MB  heap floor ${chunk.heapFloorMb.toFixed(1)} MB  errors ${chunk.errors} non-2xx ${chunk.non2xx}`);
  }
  if (signal.aborted) throw new Error('interrupted');

  const report = soakReport({ startedAt: started.toISOString(), finishedAt: new Date().toISOString(), machine: describeMachine(), connections: o.connections, chunks });
  log();
  log(report.results.verdict);
  const outDir = o.outDir ?? join(ROOT, 'bench');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'soak.json'), `${JSON.stringify(report.results, null, 2)}\n`);
  writeFileSync(join(outDir, 'SOAK.md'), report.markdown);
  log(`Wrote ${join(outDir, 'soak.json')} and ${join(outDir, 'SOAK.md')}.`);
}

interface SoakRun {
  startedAt: string;
  finishedAt: string;
  machine: Machine;
  connections: number;
  chunks: SoakChunk[];
}

const medianOf = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

/**
 * The verdict and the report. The first chunk fills the bounded buffers and is left out; then the
 * median floor of the first quarter of the chunks is compared with that of the last quarter, so
 * that one chunk caught in a transient (a collection, V8 resizing its heap) decides nothing.
 */
function soakReport(run: SoakRun): { results: SoakRun & { version: 1; pass: boolean; verdict: string }; markdown: string } {
  const { chunks } = run;
  const quarter = Math.max(1, Math.floor((chunks.length - 1) / 4));
  const early = chunks.slice(1, 1 + quarter);
  const late = chunks.slice(-quarter);
  const floors = (cs: SoakChunk[], pick: (c: SoakChunk) => number) => medianOf(cs.map(pick));
  const rssEarly = floors(early, (c) => c.rssFloorMb);
  const rssLate = floors(late, (c) => c.rssFloorMb);
  const heapEarly = floors(early, (c) => c.heapFloorMb);
  const heapLate = floors(late, (c) => c.heapFloorMb);
  const rssGrowth = rssLate / rssEarly - 1;
  const heapGrowth = heapLate / heapEarly - 1;
  const total = chunks.at(-1)?.requests ?? 0;
  const range = (cs: SoakChunk[]) => `${cs[0].requests.toLocaleString('en-US')}-${cs.at(-1)!.requests.toLocaleString('en-US')}`;
  const failed = chunks.reduce((a, c) => a + c.errors + c.non2xx, 0);
  const pass = failed === 0 && rssGrowth <= SOAK_GROWTH_LIMIT && heapGrowth <= SOAK_GROWTH_LIMIT;
  const verdict = `${pass ? 'PASS' : 'MISS'} gateway memory over ${total.toLocaleString('en-US')} requests, median floors of the chunks ending at ${range(early)} vs ${range(late)}: `
    + `RSS ${rssEarly.toFixed(0)} -> ${rssLate.toFixed(0)} MB (${(rssGrowth * 100).toFixed(1)} %), `
    + `heap ${heapEarly.toFixed(1)} -> ${heapLate.toFixed(1)} MB (${(heapGrowth * 100).toFixed(1)} %), ${failed} errors or non-2xx `
    + `(goal: each <= +${SOAK_GROWTH_LIMIT * 100} %, no errors)`;
  const header = ['requests', 'req/s', 'RSS floor MB', 'RSS peak MB', 'heap floor MB', 'errors/non-2xx'];
  const body = chunks.map((c) => [c.requests.toLocaleString('en-US'), String(Math.round(c.rps)), c.rssFloorMb.toFixed(0), c.rssPeakMb.toFixed(0), c.heapFloorMb.toFixed(1), `${c.errors}/${c.non2xx}`]);
  const seconds = (Date.parse(run.finishedAt) - Date.parse(run.startedAt)) / 1000;
  const markdown = [
    '# Soak: the gateway\'s memory over a million requests',
    '',
    `Run of \`npm run bench:soak\` finished ${run.finishedAt} (${seconds.toFixed(0)} s).`,
    `Machine: ${run.machine.cores} cores, ${run.machine.cpuModel}, Node ${run.machine.node}. The four processes with default settings but RATE_LIMIT=1000000;`,
    `GET /api/products/1 at ${run.connections} connections, in ${chunks.length} chunks. RSS sampled from /proc and \`nodejs_heap_size_used_bytes\``,
    `scraped from the gateway's /metrics every ${SAMPLE_MS} ms during each chunk; the floors (lowest samples) are what a leak would raise.`,
    'The first chunk fills the bounded buffers (10 000 spans, the stale cache, the limiter window) and is left out; the median floors of the',
    'next quarter of the chunks are compared with those of the last quarter.',
    '',
    `**${verdict}**`,
    '',
    `| ${header.join(' | ')} |`,
    `|${header.map(() => '---:').join('|')}|`,
    ...body.map((r) => `| ${r.join(' | ')} |`),
    '',
  ].join('\n');
  return { results: { version: 1, ...run, pass, verdict }, markdown };
}
