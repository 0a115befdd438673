import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createTracing } from '../lib/platform/span-recorder.js';
import { newTraceId } from '../lib/platform/trace-context.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { eventually, startFakeUpstream, startGateway } from './gateway-helpers.js';
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
});
