// Bounded work per client: pipelined requests on one connection, requests in the whole gateway,
// and the observability routes that fan out to every service.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_PIPELINED } from '../../lib/gateway/front-door.js';
import { eventually, startGateway, type StartedGateway } from '../gateway-helpers.js';
import { http } from '../helpers.js';
import { echo, startEchoUpstream, type EchoAnswer, type EchoUpstream } from '../support/echo-upstream.js';
import { header, jsonOf, openRaw, statusOf } from '../support/raw-client.js';

describe('bounded work per client', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  let held: Array<() => void> = [];
  const hold = () => {
    upstream.answer = (req) => new Promise<EchoAnswer>((resolve) => held.push(() => resolve(echo(req))));
  };
  const releaseAll = () => {
    const waiting = held;
    held = [];
    for (const r of waiting) r();
  };
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({
      USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url,
      RATE_LIMIT: '100000', MAX_IN_FLIGHT: '20', OBSERVABILITY_MAX_IN_FLIGHT: '1', HEALTH_PROBE_TIMEOUT_MS: '2000',
    });
  });
  after(async () => {
    releaseAll();
    await gw?.close();
    await upstream?.close();
  });
  afterEach(() => {
    releaseAll();
    upstream.reset();
    upstream.answer = echo;
  });

  test(`when a client pipelines 40 requests on one connection, then at most ${MAX_PIPELINED} reach the services at once and all are answered in order`, async () => {
    hold();
    const conn = await openRaw(gw.url);
    try {
      conn.send(Array.from({ length: 40 }, (_, i) => `GET /api/products/${i + 1} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      await eventually(() => upstream.requests.length === MAX_PIPELINED, 3_000, 'the first requests');
      // A request on another connection reaching the service proves the gateway has gone on
      // working since it parsed the pipelined ones: none more of them went through meanwhile.
      const marker = openRaw(gw.url).then((other) => {
        other.send('GET /api/users/marker HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        return other;
      });
      await eventually(() => upstream.requests.some((r) => r.url === '/users/marker'), 3_000, 'the marker request');
      assert.equal(upstream.requests.filter((r) => r.url.startsWith('/products/')).length, MAX_PIPELINED, 'no more while those are unanswered');
      // Answer as they come: each answer lets one more through.
      const answering = setInterval(releaseAll, 5);
      const answers = await conn.read(40);
      clearInterval(answering);
      assert.equal(answers.responses.length, 40);
      assert.deepEqual(answers.responses.map((r) => jsonOf<{ url: string }>(r).url), Array.from({ length: 40 }, (_, i) => `/products/${i + 1}`));
      (await marker).close();
    } finally {
      conn.close();
    }
  });

  test('when more requests are in flight than MAX_IN_FLIGHT, then the next is a fast 503 OVERLOADED with Retry-After, and the gateway serves again once they end', async () => {
    hold();
    const conns = await Promise.all(Array.from({ length: 20 }, () => openRaw(gw.url)));
    try {
      conns.forEach((c, i) => c.send(`GET /api/users/${i} HTTP/1.1\r\nHost: x\r\n\r\n`));
      await eventually(() => upstream.requests.length === 20, 3_000, 'twenty in flight');
      const started = Date.now();
      const over = await http(gw.url, 'GET', '/api/users/99');
      assert.equal(over.status, 503);
      assert.equal(over.body.code, 'OVERLOADED');
      assert.equal(over.headers.get('retry-after'), '1');
      assert.ok(Date.now() - started < 1_000, 'answered at once, not queued');
      assert.equal(upstream.requests.length, 20, 'it never reached the service');
      upstream.answer = echo;
      releaseAll();
      for (const c of conns) assert.equal(statusOf((await c.read(1)).responses[0]), 200);
      assert.equal((await http(gw.url, 'GET', '/api/users/1')).status, 200);
    } finally {
      for (const c of conns) c.close();
    }
  });

  test('when clients pipeline held requests and hang up, then their places are freed and the gateway still serves', async () => {
    hold();
    for (let round = 0; round < 4; round++) {
      const conn = await openRaw(gw.url);
      conn.send(Array.from({ length: 12 }, (_, i) => `GET /api/orders/${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      await eventually(() => upstream.requests.length === (round + 1) * MAX_PIPELINED, 3_000, 'held requests');
      conn.close();
    }
    upstream.answer = echo;
    releaseAll();
    // 32 requests were started against MAX_IN_FLIGHT=20: had their places leaked, this would be a 503.
    await eventually(async () => (await http(gw.url, 'GET', '/api/users/1')).status === 200, 3_000, 'a 200');
  });

  test('when /traces is asked for while one is already gathering from the services, then it is a 503 OVERLOADED, not another fan-out', async () => {
    hold();
    const conn = await openRaw(gw.url);
    try {
      conn.send('GET /traces HTTP/1.1\r\nHost: x\r\n\r\n');
      // All three services (one upstream here) are asked; counting before the last arrives would
      // take its late arrival for a second fan-out.
      await eventually(() => upstream.requests.filter((r) => r.url.startsWith('/spans')).length === 3, 3_000, 'the fan-out');
      const asked = upstream.requests.length;
      const second = await http(gw.url, 'GET', '/traces');
      assert.equal(second.status, 503);
      assert.equal(second.body.code, 'OVERLOADED');
      assert.equal(upstream.requests.length, asked, 'no second fan-out');
      releaseAll();
      const first = await conn.read(1);
      assert.equal(statusOf(first.responses[0]), 200);
      assert.equal(header(first.responses[0], 'content-type')?.startsWith('application/json'), true);
    } finally {
      conn.close();
    }
  });
});
