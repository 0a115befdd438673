// The front door's reading of a pipelining connection under backpressure: it stops reading while
// requests wait their turn, and reads again once they have started, also when the answers piled up
// unsent (when Node pauses the socket too) and only drain once the client reads.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_PIPELINED } from '../lib/gateway/front-door.js';
import { eventually, startGateway, type StartedGateway } from './gateway-helpers.js';
import { startEchoUpstream, type EchoUpstream } from './support/echo-upstream.js';
import { openRaw, statusOf } from './support/raw-client.js';

describe('front door: a pipelining client that reads late', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url, RATE_LIMIT: '100000' });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  test('when answers of 256 kB pile up unread behind pipelined requests, then once the client reads, every answer comes in order and the connection reads the next request', async () => {
    const size = 256 * 1024;
    upstream.answer = (req) => ({ body: `${req.url} ${'x'.repeat(size)}` });
    const count = 3 * MAX_PIPELINED;
    const conn = await openRaw(gw.url);
    try {
      // Not reading: the answers fill the socket's buffers, and the gateway's.
      conn.socket.pause();
      conn.send(Array.from({ length: MAX_PIPELINED }, (_, i) => `GET /api/products/${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      await eventually(() => upstream.requests.length === MAX_PIPELINED, 5_000, 'the first requests');
      // More while those answers sit unsent: Node pauses the socket for them, the front door for
      // the requests beyond MAX_PIPELINED.
      conn.send(Array.from({ length: count - MAX_PIPELINED }, (_, i) => `GET /api/products/${MAX_PIPELINED + i} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      conn.socket.resume();
      const answers = await conn.read(count, 20_000);
      assert.equal(answers.responses.length, count, 'every answer');
      assert.deepEqual(answers.responses.map(statusOf), Array.from({ length: count }, () => 200));
      assert.deepEqual(answers.responses.map((r) => r.body.toString('latin1').split(' ')[0]), Array.from({ length: count }, (_, i) => `/products/${i}`));
      // The connection is read again: one more request is answered.
      conn.send('GET /api/products/last HTTP/1.1\r\nHost: x\r\n\r\n');
      const more = await conn.read(count + 1, 10_000);
      assert.equal(more.closed, false);
      assert.equal(more.responses.length, count + 1, 'the request after them');
      assert.equal(more.responses[count].body.toString('latin1').split(' ')[0], '/products/last');
    } finally {
      conn.close();
    }
  });
});
