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
import { viewOf } from './upstream-view.js';
import { WindowStats, type WindowSummary } from './window-stats.js';

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

interface ServiceTile extends Omit<WindowSummary, 'perSecond' | 'errorsPerSecond'> {
  name: string;
  state: string;
  spark: number[];
  errorSpark: number[];
  rejected: number;
  stale: number;
  timeouts: number;
  probe: ProbeResult | null;
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
    if (service !== undefined && service !== 'aggregate') stats.record(index[service], status, durationMs);
  };

  const staleCounts = async (): Promise<Record<string, number>> => {
    const metric = registry.getSingleMetric('gateway_stale_responses_total') as Counter | undefined;
    const out: Record<string, number> = {};
    for (const v of (await metric?.get())?.values ?? []) out[String(v.labels.service)] = v.value;
    return out;
  };

  const snapshot = async (): Promise<DashboardSnapshot> => {
    const [probes, stale] = await Promise.all([Promise.all(upstreams.map((u) => u.probe())), staleCounts()]);
    const services = upstreams.map((u, i): ServiceTile => {
      const { perSecond, errorsPerSecond, ...summary } = stats.summary(i);
      const view = viewOf(u);
      return { name: u.name, state: view.state, ...summary, spark: perSecond, errorSpark: errorsPerSecond, rejected: view.rejects, stale: stale[u.name] ?? 0, timeouts: view.timeouts, probe: probes[i] ?? null };
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
    // A snapshot that cannot be made is skipped; the next second makes a new one.
    broadcast().catch(() => undefined);
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
