// Test helpers: temp dirs, apps on port 0, a small HTTP client. Everything started is cleaned up.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import assert from 'node:assert/strict';
import type { Express } from 'express';
import type { ServiceDatabaseOptions } from '../lib/platform/config.js';
import type { SqlDatabase } from '../lib/platform/sql.js';
import { createMetrics } from '../lib/platform/metrics.js';
import type { ServiceDeps } from '../lib/platform/service-app.js';
import { createLogger, type Logger } from '../lib/platform/logger.js';
import { closeServer, listen, type Listening } from '../lib/platform/server.js';

export function tempDir(prefix = 'msvc-test-'): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A logger that keeps its JSON lines in memory, so tests stay quiet and can read them. */
export function memoryLogger(service = 'test', level = 'debug'): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      if (out.length < 10_000) out.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger({ service, level, destination });
  return { logger, lines: () => out.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

export interface Started extends Listening {
  close: () => Promise<void>;
}

export async function startApp(app: Express): Promise<Started> {
  const listening = await listen(app, 0, '127.0.0.1');
  return { ...listening, close: () => closeServer(listening.server, 2_000) };
}

export interface TestResponse<T = any> {
  status: number;
  headers: Headers;
  text: string;
  body: T;
}

export interface TestRequest {
  body?: unknown;
  /** Sent as is (no JSON encoding). */
  raw?: string | Uint8Array;
  headers?: Record<string, string>;
  /** How long to wait for the whole answer (default 15 s). */
  timeoutMs?: number;
}

/** One HTTP request; `body` is parsed JSON when the answer is JSON. */
export async function http<T = any>(base: string, method: string, path: string, req: TestRequest = {}): Promise<TestResponse<T>> {
  const headers: Record<string, string> = { ...req.headers };
  let body: string | Uint8Array | undefined = req.raw;
  if (req.body !== undefined) {
    body = JSON.stringify(req.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(base + path, { method, headers, body: body as BodyInit | undefined, signal: AbortSignal.timeout(req.timeoutMs ?? 15_000) });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, text, body: parsed as T };
}

/** No response may carry a stack trace or a file path. */
export function assertNoLeak(text: string): void {
  if (/\bat [\w.<>]+ \(|node_modules|\/work\/|\.ts:\d+|\bSQLITE_|SELECT |INSERT /.test(text)) {
    throw new Error(`response leaks internals: ${text.slice(0, 300)}`);
  }
}

/** Every span but one has its parent among the spans: one tree. */
export function assertOneTree(spans: { spanId: string; parentSpanId: string | null }[]): void {
  const ids = new Set(spans.map((s) => s.spanId));
  const roots = spans.filter((s) => !s.parentSpanId || !ids.has(s.parentSpanId));
  assert.equal(roots.length, 1, `one root expected, got ${roots.length}: ${JSON.stringify(spans.map((s) => [s.spanId, s.parentSpanId]))}`);
}

export interface CheckedService {
  url: string;
  db: SqlDatabase;
  /** One request; every answer is checked for leaks, the trace header and the error body shape. */
  call: (method: string, path: string, req?: TestRequest) => Promise<TestResponse>;
  close: () => Promise<void>;
}

/** A service app from its factory, on port 0 over its own temp-dir database. */
export async function startCheckedService(
  service: string,
  openDatabase: (options: ServiceDatabaseOptions) => Promise<SqlDatabase>,
  createApp: (deps: ServiceDeps) => Express,
  seed = false,
  dir: { dir: string; remove: () => void } | { options: (service: string, seed?: boolean) => ServiceDatabaseOptions; remove: () => Promise<void> } = tempDir(),
): Promise<CheckedService> {
  // A temp dir (SQLite), or a TestStorage (test/support/engines.ts) the caller removes.
  const owned = 'dir' in dir;
  const db = await openDatabase(owned ? { dataDir: dir.dir, seed } : dir.options(service, seed));
  const started = await startApp(createApp({ logger: memoryLogger(service).logger, db, metrics: createMetrics(service) }));
  return {
    url: started.url,
    db,
    call: async (method, path, req) => {
      const res = await http(started.url, method, path, req);
      assertNoLeak(res.text);
      assert.ok(res.headers.get('x-trace-id'), 'every response carries X-Trace-Id');
      if (res.status >= 400) assert.equal(typeof res.body?.error, 'string', `error body for ${method} ${path}`);
      return res;
    },
    close: async () => {
      await started.close();
      await db.close();
      if (owned) dir.remove();
    },
  };
}
