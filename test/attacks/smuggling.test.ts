// Request smuggling through the gateway: whatever a client frames, the service reads exactly the
// requests the client made, each with exactly its own body, and the next client on the same
// pooled connection gets its own answer.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, type StartedGateway } from '../gateway-helpers.js';
import { eventually } from '../support/eventually.js';
import { startServices, type System } from '../system.js';
import { echo, startEchoUpstream, type EchoUpstream } from '../support/echo-upstream.js';
import { header } from '../support/http-messages.js';
import { jsonOf, rawExchange, statusOf, type RawAnswers } from '../support/raw-client.js';

// An unfinished request: left on a pooled socket, it would swallow the next client's request line.
const SMUGGLED = 'GET /users/1 HTTP/1.1\r\nHost: a\r\nX-Ignore: ';
const chunked = (body: string) => `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;

describe('request smuggling', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url, RATE_LIMIT: '10000', LOG_LEVEL: 'info' });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });
  beforeEach(() => upstream.reset());

  for (const method of ['DELETE', 'OPTIONS', 'GET', 'HEAD']) {
    for (const framing of ['chunked', 'content-length'] as const) {
      for (const prefix of ['/api/users', '/API/Users']) {
        test(`when ${method} ${prefix}/... carries a ${framing} body holding a request, with a request pipelined after it, then the service reads two requests and the next client gets its own answer`, async () => {
          const frame = framing === 'chunked' ? `Transfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}` : `Content-Length: ${Buffer.byteLength(SMUGGLED)}\r\n\r\n${SMUGGLED}`;
          const bytes = `${method} ${prefix}/999999 HTTP/1.1\r\nHost: x\r\n${frame}GET ${prefix}/2 HTTP/1.1\r\nHost: x\r\n\r\n`;
          const first = await rawExchange(gw.url, bytes, 2, new Set(method === 'HEAD' ? [0] : []));
          assert.equal(first.responses.length, 2, first.bytes.toString('latin1'));
          assert.equal(statusOf(first.responses[0]), 200);
          if (method !== 'HEAD') assert.deepEqual(jsonOf(first.responses[0]), { method, url: '/users/999999', body: SMUGGLED });
          assert.deepEqual(jsonOf(first.responses[1]), { method: 'GET', url: '/users/2', body: '' });

          const next = await rawExchange(gw.url, `GET ${prefix}/3 HTTP/1.1\r\nHost: x\r\n\r\n`);
          assert.deepEqual(jsonOf(next.responses[0]), { method: 'GET', url: '/users/3', body: '' });

          // Byte for byte: three messages (over one pooled connection or several, in any order), the
          // DELETE... with exactly the client's body, framed as the client framed it.
          const order = (line: string) => `${line.includes('/999999') ? 0 : 1}${line}`;
          const sent = upstream.messages().sort((a, b) => order(a.line).localeCompare(order(b.line)));
          assert.deepEqual(sent.map((m) => m.line), [`${method} /users/999999 HTTP/1.1`, 'GET /users/2 HTTP/1.1', 'GET /users/3 HTTP/1.1']);
          assert.equal(sent[0].framing, framing);
          assert.equal(sent[0].body.toString('latin1'), SMUGGLED);
          if (framing === 'content-length') assert.equal(header(sent[0], 'content-length'), String(Buffer.byteLength(SMUGGLED)));
          for (const m of sent.slice(1)) {
            assert.equal(m.framing, 'none', `${m.line} has no body`);
            assert.equal(header(m, 'content-length'), undefined);
          }
          assert.deepEqual(upstream.requests.map((r) => `${r.method} ${r.url}`).sort(), [`${method} /users/999999`, 'GET /users/2', 'GET /users/3'].sort());
        });
      }
    }
  }

  test('when a POST carries a chunked body, then the service gets it chunked, and a POST without a body is sent with Content-Length: 0', async () => {
    const body = '{"name":"Chunky","email":"c@example.com"}';
    const r = await rawExchange(gw.url, `POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(body)}POST /api/users HTTP/1.1\r\nHost: x\r\n\r\n`, 2);
    assert.equal(r.responses.length, 2);
    const sent = upstream.messages();
    assert.equal(sent.length, 2);
    assert.equal(sent[0].framing, 'chunked');
    assert.equal(sent[0].body.toString(), body);
    assert.equal(header(sent[1], 'content-length'), '0');
    assert.equal(header(sent[1], 'transfer-encoding'), undefined);
  });

  const refusedByParser: Array<[string, string]> = [
    ['Content-Length with Transfer-Encoding', `POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`],
    ['Transfer-Encoding with Content-Length', `POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${chunked(SMUGGLED)}`],
    ['two Content-Lengths', `POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    ['a folded header (obs-fold)', `GET /api/users/1 HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\n\r\n`],
    ['bare LF line ends', `GET /api/users/1 HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n${chunked(SMUGGLED)}`],
    ['a transfer coding other than chunked', `POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${chunked(SMUGGLED)}`],
    ['a chunked coding spelt twice', `POST /api/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n${chunked(SMUGGLED)}`],
  ];
  for (const [what, bytes] of refusedByParser) {
    test(`when a request has ${what}, then it is a 400, the connection is closed and nothing reaches the service`, async () => {
      const r = await rawExchange(gw.url, `${bytes}GET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n`, 2);
      assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
      assert.equal(statusOf(r.responses[0]), 400);
      assert.equal(jsonOf(r.responses[0]).code, 'BAD_REQUEST', 'the contract\'s error shape');
      assert.ok(r.closed, 'connection closed');
      assert.deepEqual(upstream.requests, []);
      const next = await rawExchange(gw.url, 'GET /api/users/3 HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.deepEqual(jsonOf(next.responses[0]), { method: 'GET', url: '/users/3', body: '' });
    });
  }

  /** One answer, `status` with `code` in the contract's shape, then the connection closed; nothing reached the service. */
  const assertRefused = (r: RawAnswers, status: number, code: string): void => {
    assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
    assert.equal(statusOf(r.responses[0]), status);
    assert.equal(jsonOf(r.responses[0]).code, code);
    assert.ok(r.closed, 'connection closed');
    assert.deepEqual(upstream.requests, []);
  };

  const refusedAtTheDoor: Array<[string, string, number]> = [
    ['Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1)', `POST /api/users HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n${chunked('{}')}`, 400],
    ['no Host in HTTP/1.1', 'GET /api/users/1 HTTP/1.1\r\n\r\n', 400],
    ['a Host with user information', 'GET /api/users/1 HTTP/1.1\r\nHost: user:pw@evil.example:81\r\n\r\n', 400],
    ['a Host with a space', 'GET /api/users/1 HTTP/1.1\r\nHost: a b\r\n\r\n', 400],
    ['a Host with a path', 'GET /api/users/1 HTTP/1.1\r\nHost: evil.example/x?y\r\n\r\n', 400],
    ['a Host that is not ASCII', 'GET /api/users/1 HTTP/1.1\r\nHost: \u00e9vil.example\r\n\r\n', 400],
    ['more header fields than the gateway passes on', `GET /api/users/1 HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 300 }, (_, i) => `X-${i}: 1\r\n`).join('')}\r\n`, 431],
  ];
  for (const [what, bytes, status] of refusedAtTheDoor) {
    test(`when a request has ${what}, then it is a ${status} in the contract's shape, the connection is closed and nothing reaches the service`, async () => {
      const r = await rawExchange(gw.url, Buffer.from(`${bytes}GET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n`, 'latin1'), 2);
      assertRefused(r, status, status === 431 ? 'HEADERS_TOO_LARGE' : 'BAD_REQUEST');
    });
  }

  test('when Host is a name, an address or an IP literal, with or without a port, or empty in HTTP/1.0, then the request goes through', async () => {
    for (const [version, host] of [['1.1', 'localhost:3010'], ['1.1', '127.0.0.1'], ['1.1', '[::1]:3010'], ['1.1', 'shop.example.com'], ['1.0', '']]) {
      const r = await rawExchange(gw.url, `GET /api/users/1 HTTP/${version}\r\n${host === '' ? '' : `Host: ${host}\r\n`}\r\n`);
      assert.equal(statusOf(r.responses[0]), 200, `Host ${JSON.stringify(host)} over HTTP/${version}`);
    }
  });

  test('when a target is in absolute form (RFC 9112 3.2.2), then it is routed by its path, its authority stands for Host, and its path is guarded as any other', async () => {
    const r = await rawExchange(gw.url, 'GET HTTP://shop.example:8080/api/users/1?x=1 HTTP/1.1\r\nHost: other.example\r\n\r\n');
    assert.equal(statusOf(r.responses[0]), 200, r.bytes.toString('latin1'));
    assert.deepEqual(jsonOf(r.responses[0]), { method: 'GET', url: '/users/1?x=1', body: '' });
    assert.equal(header(upstream.messages()[0], 'x-forwarded-host'), 'shop.example:8080');
    const own = await rawExchange(gw.url, 'GET http://shop.example/health HTTP/1.1\r\nHost: shop.example\r\n\r\n');
    assert.equal(statusOf(own.responses[0]), 200, 'the gateway\'s own routes too');
    const climbing = await rawExchange(gw.url, 'GET http://shop.example/api/users/%2e%2e/internal/reservations HTTP/1.1\r\nHost: shop.example\r\n\r\n');
    assert.equal(statusOf(climbing.responses[0]), 400);
    const badAuthority = await rawExchange(gw.url, 'GET http://user@shop.example/api/users/1 HTTP/1.1\r\nHost: shop.example\r\n\r\n');
    assert.notEqual(statusOf(badAuthority.responses[0]), 200, 'an authority with user information is not taken');
    assert.deepEqual(upstream.requests.map((q) => q.url), ['/users/1?x=1']);
  });

  test('when a request asks to upgrade the protocol and another is pipelined behind it, then the first is answered in HTTP/1.1 and the connection closes, never left waiting', async () => {
    const r = await rawExchange(gw.url, 'GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n', 2);
    assert.equal(statusOf(r.responses[0]), 200, r.bytes.toString('latin1'));
    assert.equal(header(r.responses[0], 'connection'), 'close');
    assert.ok(r.closed, 'connection closed');
    assert.equal(header(upstream.messages()[0], 'upgrade'), undefined, 'Upgrade is hop-by-hop');
  });

  test('when a request says Connection: close and another is pipelined behind it, then the first is answered, the second is not read, and the connection closes', async () => {
    const r = await rawExchange(gw.url, 'GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n', 2);
    assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
    assert.deepEqual(jsonOf(r.responses[0]), { method: 'GET', url: '/users/1', body: '' });
    assert.ok(r.closed);
    assert.deepEqual(upstream.requests.map((q) => q.url), ['/users/1']);
  });

  test('when a request carries an Expect other than 100-continue, then it is a 417 in the contract\'s shape and the connection closes', async () => {
    const r = await rawExchange(gw.url, 'POST /api/users HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}', 2);
    assertRefused(r, 417, 'EXPECTATION_FAILED');
  });

  test('when a client sends CONNECT, then it is a 400 in the contract\'s shape and the connection closes (no tunnel is opened)', async () => {
    const target = new URL(upstream.url);
    const r = await rawExchange(gw.url, `CONNECT ${target.host} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`, 2);
    assertRefused(r, 400, 'BAD_REQUEST');
  });

  test('when a service answers 204 with a Content-Length, then the client gets the 204 without one (RFC 9110 8.6)', async () => {
    upstream.answer = () => ({ status: 204, headers: { 'content-length': '5' } });
    try {
      const r = await rawExchange(gw.url, 'DELETE /api/users/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n', 2);
      assert.equal(statusOf(r.responses[0]), 204, r.bytes.toString('latin1'));
      assert.equal(header(r.responses[0], 'content-length'), undefined);
      assert.equal(r.responses.length, 2, 'the next answer on the connection is read as its own');
    } finally {
      upstream.answer = echo;
    }
  });

  // The head was read and the request is on its way when its body's framing breaks.
  const brokenBodies: Array<[string, string]> = [
    ['a chunk size that is not hexadecimal', 'zz\r\n{}\r\n0\r\n\r\n'],
    ['a good chunk, then a chunk size that is not hexadecimal', '2\r\n{"\r\n1x\r\n'],
    ['a chunk without the line end after its data', '2\r\n{}XX0\r\n\r\n'],
  ];
  for (const [what, body] of brokenBodies) {
    test(`when a chunked body has ${what}, then it is a 400 in the contract's shape, the connection is closed, and the service gets no whole request`, async () => {
      const r = await rawExchange(gw.url, `POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body}`, 2);
      assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
      assert.equal(statusOf(r.responses[0]), 400);
      assert.equal(jsonOf(r.responses[0]).code, 'BAD_REQUEST');
      assert.equal(header(r.responses[0], 'connection'), 'close');
      assert.ok(r.closed, 'connection closed');
      assert.deepEqual(upstream.requests, []);
      // Its trace id is the request's own: the one its request line is logged with.
      const traceId = jsonOf(r.responses[0]).traceId;
      assert.equal(header(r.responses[0], 'x-trace-id'), traceId);
      await eventually(() => gw.logs().some((l) => l.msg === 'request' && l.url === '/api/users' && l.traceId === traceId), 2_000, 'the request line with the answer\'s trace id');
      // The service's breaker learnt nothing from it: the next request goes through.
      const next = await rawExchange(gw.url, 'GET /api/users/3 HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.deepEqual(jsonOf(next.responses[0]), { method: 'GET', url: '/users/3', body: '' });
    });
  }

  test('when good requests are pipelined before one the parser refuses, then each good one is answered in order, then the 400, then the connection closes', async () => {
    const refused = refusedByParser[0][1];
    const r = await rawExchange(gw.url, `GET /api/users/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n${refused}GET /api/users/3 HTTP/1.1\r\nHost: x\r\n\r\n`, 4);
    assert.deepEqual(r.responses.map(statusOf), [200, 200, 400], r.bytes.toString('latin1'));
    assert.deepEqual(r.responses.slice(0, 2).map((m) => jsonOf(m).url), ['/users/1', '/users/2']);
    assert.equal(jsonOf(r.responses[2]).code, 'BAD_REQUEST');
    assert.ok(r.closed);
    assert.deepEqual(upstream.requests.map((q) => q.url).sort(), ['/users/1', '/users/2']);
  });

  describe('straight to a service', () => {
    let sys: System;
    before(async () => {
      sys = await startServices();
    });
    after(async () => {
      await sys?.stop();
    });
    for (const [what, bytes] of refusedByParser.slice(0, 5)) {
      test(`when a request with ${what} is sent to a service, then it is a 400 in the contract's shape, the connection closes, and nothing after it is read`, async () => {
        const r = await rawExchange(sys.users.url, `${bytes.replaceAll('/api/users', '/users')}POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`, 2);
        assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
        assert.equal(statusOf(r.responses[0]), 400);
        assert.equal(jsonOf(r.responses[0]).code, 'BAD_REQUEST');
        assert.ok(r.closed);
      });
    }
    test('when a chunked body sent to a service breaks its framing, then it is a 400 in the contract\'s shape and the connection closes', async () => {
      const r = await rawExchange(sys.users.url, 'POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{"\r\nzz\r\n', 2);
      assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
      assert.equal(statusOf(r.responses[0]), 400);
      assert.equal(jsonOf(r.responses[0]).code, 'BAD_REQUEST');
      assert.ok(r.closed);
    });
  });
});
