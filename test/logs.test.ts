import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createTracing } from '../lib/platform/span-recorder.js';
import { newTraceId, runWithTrace } from '../lib/platform/trace-context.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { eventually, startFakeUpstream, startGateway } from './gateway-helpers.js';
import { Writable } from 'node:stream';
import { createGateway } from '../lib/gateway/app.js';
import { GatewayConfigSchema } from '../lib/gateway/config.js';
import { parseConfig } from '../lib/platform/config.js';
import { createLogger, requestLineWriter } from '../lib/platform/logger.js';
import { pino } from 'pino';
import { closeServer, listen } from '../lib/platform/server.js';
import { http, memoryLogger } from './helpers.js';

const DEBUG = 20;
const INFO = 30;
const WARN = 40;

describe('logs for people', () => {
  test('when probes, scrapes and 429s arrive, then their request lines are at debug while API requests stay at info', async () => {
    const up = await startFakeUpstream();
    const gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, RATE_LIMIT: '1', LOG_LEVEL: 'debug' });
    try {
      await http(gw.url, 'GET', '/health');
      await http(gw.url, 'GET', '/metrics');
      assert.equal((await http(gw.url, 'GET', '/api/users')).status, 200);
      assert.equal((await http(gw.url, 'GET', '/api/users')).status, 429);
      const lines = gw.logs().filter((l) => l.msg === 'request');
      const levelOf = (url: string, status: number) => lines.find((l) => l.url === url && l.status === status)?.level;
      assert.equal(levelOf('/health', 200), DEBUG);
      assert.equal(levelOf('/metrics', 200), DEBUG);
      assert.equal(levelOf('/api/users', 200), INFO);
      assert.equal(levelOf('/api/users', 429), DEBUG);
    } finally {
      await gw.close();
      await up.stop();
    }
  });

  test('when spans are exported, then the start says where, and a failing collector is warned about once', async () => {
    const { logger, lines } = memoryLogger('gateway', 'info');
    // A collector that refuses every batch at once (400 is not retried).
    let batches = 0;
    const collector = createServer((req, res) => {
      req.resume();
      req.once('end', () => {
        batches++;
        res.writeHead(400).end();
      });
    });
    await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
    const endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
    const tracing = createTracing({ service: 'gateway', otlpEndpoint: endpoint, logger, exportDelayMs: 20 });
    const oneSpan = () => tracing.runServerSpan({ traceId: '', w3cTraceId: newTraceId(), spanId: '' }, 'GET /x', {}, (span) => span.end());
    const warnings = () => lines().filter((l) => l.level === WARN && /span export failed/.test(String(l.msg))).length;
    try {
      oneSpan();
      await eventually(() => warnings() === 1, 5000, 'the first failed export');
      oneSpan();
      await eventually(() => batches >= 2, 5000, 'a second export');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(warnings(), 1);
      assert.ok(lines().some((l) => l.level === INFO && l.url === `${endpoint}/v1/traces` && /exporting spans/.test(String(l.msg))));
    } finally {
      await tracing.shutdown().catch(() => {});
      await new Promise((r) => collector.close(r));
    }
  });

  test('when a circuit opens and later half-opens by its timer, then each line names the service, no line has a key twice, and the timer\'s line carries no request\'s trace id', async () => {
    const up = await startFakeUpstream();
    up.behaviour = { kind: 'status', status: 500 };
    const raw: string[] = [];
    const destination = new Writable({
      write(chunk, _enc, cb) {
        raw.push(String(chunk));
        cb();
      },
    });
    const config = parseConfig(GatewayConfigSchema, { USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, CB_FAILURE_THRESHOLD: '2', CB_RESET_TIMEOUT_MS: '200', CB_PROBE_INTERVAL_MS: '0', CACHE_MAX_ENTRIES: '0', LOG_LEVEL: 'info' });
    const gateway = createGateway({ config, logger: createLogger({ service: 'gateway', level: 'info', destination }) });
    const listening = await listen(gateway, 0, '127.0.0.1');
    const url = listening.url;
    const lines = () => raw.join('').split('\n').filter(Boolean);
    try {
      for (let i = 0; i < 2; i++) await http(url, 'GET', '/api/users', { headers: { 'x-trace-id': `tripping-${i}` } });
      await eventually(() => lines().some((l) => l.includes('users circuit half-open')), 5000, 'the half-open line');
      // JSON.parse keeps the last of two equal keys: count them in the text.
      for (const line of lines()) {
        for (const key of ['service', 'level', 'time', 'msg', 'traceId', 'spanId', 'upstream', 'component']) {
          assert.ok((line.match(new RegExp(`"${key}":`, 'g')) ?? []).length <= 1, `${key} twice in ${line}`);
        }
      }
      const parsed = lines().map((l) => JSON.parse(l) as Record<string, unknown>);
      const opened = parsed.find((l) => l.msg === 'users circuit opened');
      assert.ok(opened, 'an opened line that names the service');
      assert.equal(opened.service, 'gateway');
      assert.equal(opened.upstream, 'users');
      assert.equal(opened.instance, up.url.replace('localhost', '127.0.0.1'));
      assert.equal(opened.traceId, 'tripping-1', 'the request that tripped it');
      const halfOpen = parsed.find((l) => l.msg === 'users circuit half-open');
      assert.equal(halfOpen?.traceId, undefined, 'a timer\'s line belongs to no request');
    } finally {
      await closeServer(listening.server, 2000);
      await gateway.close();
      await up.stop();
    }
  });
});

describe('the request line writer', () => {
  test('when request lines and a mistaken secret are logged, then each line matches the root logger\'s and the secret is still redacted', async () => {
    const { logger, lines } = memoryLogger('gateway', 'info');
    const line = { traceId: 't1', spanId: 's1', method: 'GET', url: '/api/products/1?token=x&q="a\\b"\u00e9', status: 200, durationMs: 1.5 };
    const aborted = { ...line, status: 503, durationMs: 12, aborted: true };
    const other = { traceId: 't2', w3cTraceId: 't2', spanId: 's2' };
    const writeLine = requestLineWriter(logger);
    // Inside another request's trace: the line's own ids win, as with the root logger.
    runWithTrace(other, () => {
      writeLine(line, false);
      logger.info({ ...line }, 'request');
      writeLine(aborted, false);
      logger.info({ ...aborted }, 'request');
      // Below the logger's level: not written.
      writeLine(line, true);
      logger.info({ authorization: 'Bearer secret', body: { password: 'p' } }, 'mistake');
    });
    await new Promise((resolve) => setImmediate(resolve));
    const [fromLine, fromRoot, abortedLine, abortedRoot, mistake] = lines();
    const withoutTime = ({ time, ...rest }: Record<string, unknown>) => {
      assert.match(String(time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      return rest;
    };
    assert.deepEqual(withoutTime(fromLine), withoutTime(fromRoot));
    assert.deepEqual(withoutTime(abortedLine), withoutTime(abortedRoot));
    assert.equal(fromLine.traceId, 't1');
    assert.equal(fromLine.service, 'gateway');
    assert.equal(fromLine.url, line.url);
    assert.equal(abortedLine.aborted, true);
    assert.equal(mistake.msg, 'mistake');
    assert.equal(mistake.authorization, '[redacted]');
    assert.equal((mistake.body as { password: string }).password, '[redacted]');
    assert.equal(mistake.traceId, 't2');
  });

  test('when the logger is not one of createLogger\'s, then the line still goes through it, at debug when quiet', () => {
    const written: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'debug' }, { write: (s: string) => void written.push(JSON.parse(s) as Record<string, unknown>) });
    requestLineWriter(logger)({ traceId: 't', spanId: 's', method: 'GET', url: '/health', status: 200, durationMs: 0.2 }, true);
    assert.equal(written.length, 1);
    assert.equal(written[0].level, 20);
    assert.equal(written[0].msg, 'request');
    assert.equal(written[0].url, '/health');
  });
});
