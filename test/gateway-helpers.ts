// Test helpers for the gateway: the gateway app on port 0, a controllable upstream server
// (answers, fails, hangs, breaks off, goes away), and raw HTTP for paths fetch would normalise.
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import express from 'express';
import { createGateway, type Gateway } from '../lib/gateway/app.js';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { parseConfig } from '../lib/platform/config.js';
import { createMetrics, type Metrics } from '../lib/platform/metrics.js';
import { closeServer, listen } from '../lib/platform/server.js';
import { http, memoryLogger, type TestResponse } from './helpers.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';
import type { System } from './system.js';

export interface StartedGateway {
  url: string;
  gateway: Gateway;
  metrics: Metrics;
  logs: () => Record<string, unknown>[];
  close: () => Promise<void>;
}

/** The gateway app built from `env` as its config schema reads it, listening on port 0. */
export async function startGateway(env: Record<string, string>): Promise<StartedGateway> {
  const config = parseConfig(GatewayConfigSchema, { LOG_LEVEL: 'warn', ...env });
  const { logger, lines } = memoryLogger('gateway', config.LOG_LEVEL);
  const metrics = createMetrics('gateway');
  const gateway = createGateway({ config, logger, metrics });
  const listening = await listen(gateway, 0, '127.0.0.1');
  return {
    url: listening.url,
    gateway,
    metrics,
    logs: lines,
    close: async () => {
      await closeServer(listening.server, 2_000);
      await gateway.close();
    },
  };
}

/** The gateway in front of the three in-process services of `sys`. */
export const startGatewayFor = (sys: System, env: Record<string, string> = {}): Promise<StartedGateway> =>
  startGateway({ USERS_URL: sys.users.url, PRODUCTS_URL: sys.products.url, ORDERS_URL: sys.orders.url, ...env });

/** What the upstream does with the next requests. */
export type Behaviour =
  | { kind: 'echo'; delayMs?: number }
  | { kind: 'status'; status: number }
  | { kind: 'hang' }
  /** Headers and part of the body, then the connection dies. */
  /** Headers announcing `length` bytes (default 1000), part of the body, then the connection cut. */
  | { kind: 'break'; length?: number };

export interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** The connection closed before the answer was complete (the gateway gave up). */
  closedEarly: boolean;
  /** performance.now() when its body had arrived. */
  at: number;
}

export interface FakeUpstream {
  url: string;
  port: number;
  behaviour: Behaviour;
  /** Requests other than GET /health (the gateway's probes), in arrival order. */
  seen: Seen[];
  /** Stops listening and drops every connection: the port now refuses. */
  stop(): Promise<void>;
  /** Listens again on the same port. */
  start(): Promise<void>;
}

/**
 * A small Express server standing in for a service, for the failures a real one does not make on
 * demand. GET /health always answers 200 while it runs.
 */
export async function startFakeUpstream(): Promise<FakeUpstream> {
  const app = express();
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const fake: FakeUpstream = {
    url: '',
    port: 0,
    behaviour: { kind: 'echo' },
    seen: [],
    stop: async () => {
      const s = server;
      server = undefined;
      if (!s) return;
      for (const socket of sockets) socket.destroy();
      await closeServer(s, 500);
    },
    start: async () => {
      if (server) return;
      const listening = await listen(app, port, '127.0.0.1');
      server = listening.server;
      server.on('connection', (socket) => {
        sockets.add(socket);
        socket.once('close', () => sockets.delete(socket));
      });
      port = listening.port;
      fake.port = port;
      fake.url = listening.url;
    },
  };

  app.get('/health', (_req, res) => {
    res.json({ status: 'healthy', service: 'fake' });
  });
  app.use((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('end', () => {
      const seen: Seen = { method: req.method, url: req.originalUrl, headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), closedEarly: false, at: performance.now() };
      fake.seen.push(seen);
      res.once('close', () => {
        if (!res.writableFinished) seen.closedEarly = true;
      });
      const b = fake.behaviour;
      switch (b.kind) {
        case 'echo': {
          const answer = () => res.json({ method: seen.method, url: seen.url, body: seen.body });
          if (b.delayMs) setTimeout(answer, b.delayMs);
          else answer();
          return;
        }
        case 'status':
          res.status(b.status).json({ error: `fake ${b.status}`, code: b.status >= 500 ? 'INTERNAL_ERROR' : 'NOT_FOUND' });
          return;
        case 'hang':
          return;
        case 'break':
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(b.length ?? 1000) });
          res.write('{"partial":');
          setTimeout(() => res.socket?.destroy(), 20);
          return;
      }
    });
  });
  await fake.start();
  return fake;
}

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

/**
 * A request whose path is sent exactly as given (fetch would resolve `..` and re-encode), and
 * whose Origin and Sec-Fetch-* headers are sent as given. `from`: the local address to send from
 * (another loopback address, 127.0.0.2..., is another client); `body`: sent as is.
 */
export function rawRequest(base: string, method: string, path: string, headers: Record<string, string> = {}, { from, body }: { from?: string; body?: string } = {}): Promise<RawResponse> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    // agent: false sends Connection: close, so no idle socket outlives the exchange.
    const req = httpRequest({ host: hostname, port, method, path, headers, timeout: 10_000, agent: false, ...(from === undefined ? {} : { localAddress: from }) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.once('error', reject);
    });
    req.once('timeout', () => req.destroy(new Error('raw request timed out')));
    req.once('error', reject);
    req.end(body);
  });
}

/** POST /debug/circuit/:service/:action */
export function circuit(base: string, service: string, action: string, headers: Record<string, string> = {}): Promise<TestResponse> {
  return http(base, 'POST', `/debug/circuit/${service}/${action}`, { headers });
}

/** The circuit state /health reports for a service (`headers`: the admin token, where one is needed to see it). */
export async function circuitState(base: string, service: string, headers: Record<string, string> = {}): Promise<string> {
  const r = await http(base, 'GET', '/health', { headers });
  return r.body.services[service].circuitState as string;
}

export { eventually } from './support/eventually.js';

/**
 * A URL where connections are refused: the port is held by a listener on 127.0.0.1 chosen by the
 * OS, and the URL names 127.0.0.2 (loopback too on Linux), where nothing listens on it. Holding
 * the port keeps another test from taking it while this URL is in use; close() releases it.
 */
export async function deadUrl(): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.2:${port}`, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** A gateway whose calls reach a fake upstream through a fault proxy. */
export interface FaultedGateway {
  up: FakeUpstream;
  proxy: FaultProxy;
  gw: StartedGateway;
  close(): Promise<void>;
}

/** `env` names which services go through the proxy (`proxy`) and which straight to the upstream (`up`). */
export async function startFaultedGateway(env: (urls: { proxy: string; up: string }) => Record<string, string>): Promise<FaultedGateway> {
  const up = await startFakeUpstream();
  const proxy = await startFaultProxy(up.url);
  const gw = await startGateway(env({ proxy: proxy.url, up: up.url }));
  return {
    up,
    proxy,
    gw,
    close: async () => {
      await gw.close();
      await proxy.close();
      await up.stop();
    },
  };
}
