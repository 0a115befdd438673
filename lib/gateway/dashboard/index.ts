// GET /dashboard: one page and its assets, served from memory, and GET /dashboard/events, a
// Server-Sent Events stream of the services' circuits and windowed stats, once a second.
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { Router, type RequestHandler, type Response } from 'express';
import type { Counter, Registry } from 'prom-client';
import { HttpError } from '../../platform/errors.js';
import type { RequestObserver } from '../../platform/http.js';
import type { RateLimiter } from '../rate-limit.js';
import type { ProbeResult, Upstream } from '../upstreams.js';
import { instancesOf, viewOf } from './upstream-view.js';
import { GrowthWindow, WindowStats, type WindowSummary } from './window-stats.js';

export interface DashboardOptions {
  upstreams: Upstream[];
  limiter: RateLimiter;
  /** The gateway's registry, for the counters the dashboard shows but does not count itself. */
  registry: Registry;
  /** In front of the event stream: the debug routes' guard. */
  guard: RequestHandler;
  /** Whether the debug routes exist: the page shows its controls, and the stream names top clients. */
  controls: boolean;
  rateLimit: { limit: number; windowMs: number };
  maxClients?: number;
  /** Streams one client address may hold at once, so that one client cannot take them all. */
  maxStreamsPerClient?: number;
  /** Milliseconds between updates; one second unless a test wants faster. */
  intervalMs?: number;
}

export interface Dashboard {
  router: Router;
  /** A requestContext observer: counts each proxied request into the windowed stats. */
  observe: RequestObserver;
  close(): void;
}

/** One instance of a service, as the gateway sees it now and over the last 10 s. */
interface InstanceRow {
  /** host:port with the debug controls (an operator's gateway), else `#1`, `#2`, ...: no addresses. */
  instance: string;
  state: 'up' | 'ejected';
  /** Requests the gateway has sent it and not yet had answered. */
  outstanding: number;
  /** Requests sent to it per second. */
  rps: number;
  /** Share of those that failed at it (refused, reset, timed out, 5xx), in percent. */
  errorPct: number;
}

interface ServiceTile extends Omit<WindowSummary, 'perSecond' | 'errorsPerSecond'> {
  name: string;
  state: string;
  spark: number[];
  errorSpark: number[];
  /** Like every count of a tile, over the last 10 s: refused by the circuit, stale answers, timeouts. */
  rejected: number;
  stale: number;
  timeouts: number;
  probe: ProbeResult | null;
  instances: InstanceRow[];
}

export interface DashboardSnapshot {
  time: string;
  controls: boolean;
  services: ServiceTile[];
  rateLimit: { limit: number; windowMs: number; limitedPerSecond: number; spark: number[]; topClients: { client: string; hits: number }[] };
}

const ASSETS: Record<string, { file: string; type: string }> = {
  '/dashboard': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};
// Everything the page loads is ours: no inline script, nothing from elsewhere.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/** A stream whose client reads slower than this much queued data is dropped. */
const MAX_BUFFERED_BYTES = 1024 * 1024;
const TOP_CLIENTS = 10;

export function createDashboard({ upstreams, limiter, registry, guard, controls, rateLimit, maxClients = 20, maxStreamsPerClient = 5, intervalMs = 1000 }: DashboardOptions): Dashboard {
  const dir = new URL('./public/', import.meta.url);
  const assets = new Map(Object.entries(ASSETS).map(([path, { file, type }]) => [path, { body: readFileSync(new URL(file, dir)), type }]));
  // Series 0..n-1 are the services; the last counts 429s, the rate limiter's refusals.
  const index: Record<string, number> = Object.fromEntries(upstreams.map((u, i) => [u.name, i]));
  const limitedSeries = upstreams.length;
  const stats = new WindowStats(upstreams.length + 1);
  const clients = new Set<Response>();
  // Open streams per client address; an entry goes with its last stream, so at most maxClients.
  const streamsOf = new Map<string, number>();
  let building = false;

  const observe: RequestObserver = (_req, res, durationMs) => {
    const status = res.statusCode;
    if (status === 429) return stats.record(limitedSeries, status, durationMs);
    const service = res.locals.proxiedTo;
    // A stale copy answered in the service's place is a failure of the service, not a success.
    if (service !== undefined && service !== 'aggregate') stats.record(index[service], status, durationMs, status >= 500 || res.getHeader('x-cache') === 'STALE');
  };

  // Totals since start (the breakers' and the metrics'), sampled each second for 10 s figures.
  const growth = new GrowthWindow();
  const counterValues = async (name: string) => (await (registry.getSingleMetric(name) as Counter | undefined)?.get())?.values ?? [];
  const sampleTotals = async () => {
    const totals = new Map<string, number>();
    const add = (key: string, value: number) => totals.set(key, (totals.get(key) ?? 0) + value);
    for (const u of upstreams) {
      const { rejects, timeouts } = viewOf(u);
      add(`rejected ${u.name}`, rejects);
      add(`timeouts ${u.name}`, timeouts);
    }
    const single = new Map<string, string>(upstreams.filter((u) => u.instances.single).map((u) => [u.name, u.instances.list[0].url]));
    const [stale, sent, failed] = await Promise.all(['gateway_stale_responses_total', 'gateway_upstream_requests_total', 'gateway_upstream_failures_total'].map(counterValues));
    for (const v of stale) add(`stale ${v.labels.service}`, v.value);
    for (const v of sent) add(`sent ${v.labels.service} ${v.labels.instance}`, v.value);
    // With one instance, failures are counted per service: they are that instance's.
    for (const v of failed) add(`failed ${v.labels.service} ${v.labels.instance ?? single.get(String(v.labels.service))}`, v.value);
    growth.sample(totals);
  };

  const instanceRows = (u: Upstream): InstanceRow[] =>
    instancesOf(u).map((i, n) => {
      const sent = growth.growth(`sent ${u.name} ${i.url}`);
      const failed = growth.growth(`failed ${u.name} ${i.url}`);
      return {
        instance: controls ? new URL(i.url).host : `#${n + 1}`,
        state: i.state === 'up' ? 'up' : 'ejected',
        outstanding: i.outstanding,
        rps: growth.rate(`sent ${u.name} ${i.url}`),
        errorPct: sent === 0 ? 0 : Math.min(100, Math.round((failed / sent) * 1000) / 10),
      };
    });

  const snapshot = async (): Promise<DashboardSnapshot> => {
    const probes = await Promise.all(upstreams.map((u) => u.probe()));
    const services = upstreams.map((u, i): ServiceTile => {
      const { perSecond, errorsPerSecond, ...summary } = stats.summary(i);
      return {
        name: u.name,
        state: viewOf(u).state,
        ...summary,
        spark: perSecond,
        errorSpark: errorsPerSecond,
        rejected: growth.growth(`rejected ${u.name}`),
        stale: growth.growth(`stale ${u.name}`),
        timeouts: growth.growth(`timeouts ${u.name}`),
        probe: probes[i] ?? null,
        instances: instanceRows(u),
      };
    });
    const limited = stats.summary(limitedSeries);
    return {
      time: new Date().toISOString(),
      controls,
      services,
      rateLimit: { ...rateLimit, limitedPerSecond: limited.rps, spark: limited.perSecond, topClients: controls ? limiter.topClients(TOP_CLIENTS) : [] },
    };
  };

  const send = (res: Response, data: string) => {
    // A stream whose server is closing, or whose reader has fallen behind, is ended.
    const socket: (Socket & { server?: Server }) | null = res.socket;
    const server = socket?.server;
    if (server?.listening === false || res.writableLength > MAX_BUFFERED_BYTES) {
      clients.delete(res);
      res.end();
      return;
    }
    res.write(data);
  };

  const broadcast = async () => {
    if (building || clients.size === 0) return;
    building = true;
    try {
      const data = `data: ${JSON.stringify(await snapshot())}\n\n`;
      for (const res of clients) send(res, data);
    } finally {
      building = false;
    }
  };

  const timer = setInterval(() => {
    stats.tick();
    // A sample or snapshot that cannot be made is skipped; the next second makes a new one.
    sampleTotals()
      .then(broadcast)
      .catch(() => undefined);
  }, intervalMs);
  timer.unref();

  const router = Router();
  for (const [path, asset] of assets) {
    router.get(path, (_req, res) => {
      res.setHeader('Content-Type', asset.type);
      res.setHeader('Cache-Control', 'no-cache');
      res.setHeader('Content-Security-Policy', CSP);
      res.setHeader('X-Content-Type-Options', 'nosniff');
      res.end(asset.body);
    });
  }
  router.get('/dashboard/events', guard, async (req, res) => {
    if (clients.size >= maxClients) throw new HttpError(503, 'TOO_MANY_STREAMS', 'Too many dashboards are open; close one and retry', undefined, { retryAfter: 5 });
    const address = req.ip ?? '';
    const own = streamsOf.get(address) ?? 0;
    if (own >= maxStreamsPerClient) throw new HttpError(429, 'TOO_MANY_STREAMS', 'This client has too many dashboards open; close one and retry', undefined, { retryAfter: 5 });
    streamsOf.set(address, own + 1);
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache, no-transform', 'X-Accel-Buffering': 'no' });
    clients.add(res);
    req.socket.setTimeout(0);
    const socket = req.socket;
    res.once('close', () => {
      clients.delete(res);
      const left = (streamsOf.get(address) ?? 1) - 1;
      if (left > 0) streamsOf.set(address, left);
      else streamsOf.delete(address);
      // The stream never ends by itself: once its reader is gone the connection is of no use, and
      // a half-closed one would hold up the server's close.
      socket.destroy();
    });
    res.write('retry: 2000\n\n');
    const first = await snapshot();
    if (clients.has(res)) send(res, `data: ${JSON.stringify(first)}\n\n`);
  });

  return {
    router,
    observe,
    close: () => {
      clearInterval(timer);
      for (const res of clients) res.end();
      clients.clear();
    },
  };
}
