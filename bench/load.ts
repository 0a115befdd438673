// The two load generators: autocannon for saturation (closed loop: each connection sends its next
// request when the last one is answered) and a paced open loop for latency at a fixed rate.
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { LatencyHistogram, type LatencySummary } from './histogram.js';

export interface LoadSpec {
  /** Full URL of the request, e.g. http://127.0.0.1:41234/api/products/1 */
  url: string;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: Record<string, string>;
  connections: number;
  durationS: number;
  /** closedLoop only: stop after this many requests instead of after durationS. */
  amount?: number;
}

export interface LoadResult {
  /** Responses received, whatever their status. */
  requests: number;
  /** Responses per second over the round. */
  rps: number;
  latency: LatencySummary;
  /** Responses by status code. */
  statuses: Record<string, number>;
  non2xx: number;
  /** Connection errors and timeouts (timeouts are also counted in `timeouts`). */
  errors: number;
  timeouts: number;
  durationS: number;
}

const REQUEST_TIMEOUT_S = 10;

/**
 * Saturation: `connections` keep-alive connections, each one request in flight. Latency is taken
 * from autocannon's per-response times (fractional ms) rather than its histogram of whole ms.
 */
export function closedLoop(spec: LoadSpec, signal?: AbortSignal): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const histogram = new LatencyHistogram();
    const instance = autocannon({
      url: spec.url,
      method: spec.method ?? 'GET',
      body: spec.body,
      headers: spec.headers,
      connections: spec.connections,
      ...(spec.amount === undefined ? { duration: spec.durationS } : { amount: spec.amount }),
      timeout: REQUEST_TIMEOUT_S,
    }, (err: unknown, result: autocannon.Result) => {
      signal?.removeEventListener('abort', stop);
      if (err) return reject(err instanceof Error ? err : new Error(JSON.stringify(err)));
      const statuses: Record<string, number> = {};
      for (const [code, { count = 0 }] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = count;
      const requests = Object.values(statuses).reduce((a, b) => a + b, 0);
      const durationS = result.duration > 0 ? result.duration : spec.durationS;
      resolve({
        requests,
        rps: requests / durationS,
        latency: histogram.summary(),
        statuses,
        non2xx: result.non2xx,
        errors: result.errors,
        timeouts: result.timeouts,
        durationS,
      });
    });
    instance.on('response', (_client, _status, _bytes, responseTimeMs) => histogram.recordMs(responseTimeMs));
    const stop = () => instance.stop();
    signal?.addEventListener('abort', stop, { once: true });
  });
}

export interface PacedSpec extends LoadSpec {
  /** Requests per second from all connections together. */
  rate: number;
}

/** Beyond this many unanswered requests the target is not keeping up: further ones are not sent. */
const MAX_IN_FLIGHT = 2_000;

/**
 * A fixed rate, open loop (as wrk2 does): request i leaves at start + i / rate whether or not the
 * earlier ones were answered, on up to `connections` keep-alive sockets. autocannon's own
 * `overallRate` sends each connection's share of a second back to back at the start of the
 * second, which measures latency at saturation in bursts rather than at the rate asked for.
 * Latency runs from the moment a request is handed to the agent, so waiting for a free socket
 * counts too (but not the up to 1 ms our timer fires late, which would blur sub-ms figures).
 */
export function pacedLoop(spec: PacedSpec, signal?: AbortSignal): Promise<LoadResult> {
  const target = new URL(spec.url);
  const agent = new Agent({ keepAlive: true, maxSockets: spec.connections, maxFreeSockets: spec.connections });
  const histogram = new LatencyHistogram();
  const statuses: Record<string, number> = {};
  const total = Math.max(1, Math.round(spec.rate * spec.durationS));
  const body = spec.body === undefined ? undefined : Buffer.from(spec.body);
  const headers: Record<string, string | number> = { ...spec.headers };
  if (body) headers['content-length'] = body.length;
  let sent = 0;
  let answered = 0;
  let inFlight = 0;
  let errors = 0;
  let timeouts = 0;
  let non2xx = 0;
  let lastAnswerAt = 0;

  return new Promise((resolve) => {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      agent.destroy();
      const durationS = Math.max(spec.durationS, (lastAnswerAt - started) / 1000);
      resolve({ requests: answered, rps: answered / durationS, latency: histogram.summary(), statuses, non2xx, errors, timeouts, durationS });
    };
    const settle = () => {
      inFlight -= 1;
      if (sent >= total && inFlight === 0) finish();
    };
    const send = () => {
      inFlight += 1;
      const sentAt = performance.now();
      let settled = false;
      const once = (fn: () => void) => () => {
        if (settled) return;
        settled = true;
        fn();
        settle();
      };
      const req = request({
        agent, host: target.hostname, port: target.port, path: target.pathname + target.search, method: spec.method ?? 'GET', headers,
      }, (res) => {
        res.on('data', () => {});
        res.on('end', once(() => {
          lastAnswerAt = performance.now();
          histogram.recordMs(lastAnswerAt - sentAt);
          answered += 1;
          const code = String(res.statusCode);
          statuses[code] = (statuses[code] ?? 0) + 1;
          if (!res.statusCode || res.statusCode < 200 || res.statusCode >= 300) non2xx += 1;
        }));
        res.on('error', once(() => (errors += 1)));
      });
      req.setTimeout(REQUEST_TIMEOUT_S * 1000, () => {
        timeouts += 1;
        req.destroy(new Error('timeout'));
      });
      req.on('error', once(() => (errors += 1)));
      req.end(body);
    };
    const tick = () => {
      const elapsedS = (performance.now() - started) / 1000;
      const due = Math.min(total, Math.floor(elapsedS * spec.rate) + 1);
      while (sent < due) {
        sent += 1;
        if (inFlight >= MAX_IN_FLIGHT) errors += 1;
        else send();
      }
      if (sent < total) timer = setTimeout(tick, 1);
      else if (inFlight === 0) finish();
    };
    const abort = () => {
      sent = total;
      finish();
    };
    signal?.addEventListener('abort', abort, { once: true });
    tick();
  });
}
