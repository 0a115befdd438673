// Header hygiene at the gateway: what a client may not tell a service is never passed on, what is
// not framed as RFC 9112 says is refused, and what a service says about its own paths is rewritten.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { circuit, startGateway, type StartedGateway } from '../gateway-helpers.js';
import { http } from '../helpers.js';
import { echo, startEchoUpstream, type EchoUpstream } from '../support/echo-upstream.js';
import { headersNamed } from '../support/http-messages.js';
import { jsonOf, rawExchange, statusOf } from '../support/raw-client.js';

const ADMIN_TOKEN = 'an-admin-token-of-some-length';

describe('header hygiene', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url, RATE_LIMIT: '10000', ADMIN_TOKEN });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });
  beforeEach(() => {
    upstream.reset();
    upstream.answer = echo;
  });

  test('when a client sends hop-by-hop headers, headers named in Connection, proxy credentials and address or URL overrides, then none reaches the service, and X-Real-IP and X-Forwarded-For are the gateway\'s', async () => {
    const sent = [
      'Connection: keep-alive, X-Secret-Hop', 'X-Secret-Hop: secret', 'Keep-Alive: timeout=5', 'Proxy-Connection: keep-alive', 'TE: trailers',
      'Proxy-Authorization: Basic c2VjcmV0', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA', 'X-Real-IP: 6.6.6.6', 'True-Client-IP: 6.6.6.6',
      'X-Client-IP: 6.6.6.6', 'CF-Connecting-IP: 6.6.6.6', 'X-Original-URL: /internal/reservations', 'X-Rewrite-URL: /internal/reservations',
      'X-Forwarded-Port: 1', 'X-Forwarded-Prefix: /evil', 'X-Forwarded-For: 6.6.6.6', 'Forwarded: for=6.6.6.6', 'X-Kept: kept', 'X-Kept: twice',
    ];
    const r = await rawExchange(gw.url, `GET /api/users/1 HTTP/1.1\r\nHost: x\r\n${sent.map((h) => `${h}\r\n`).join('')}\r\n`);
    assert.equal(statusOf(r.responses[0]), 200);
    const [m] = upstream.messages();
    const names = m.headers.map(([n]) => n);
    for (const gone of ['x-secret-hop', 'keep-alive', 'proxy-connection', 'te', 'proxy-authorization', 'http2-settings', 'true-client-ip', 'x-client-ip',
      'cf-connecting-ip', 'x-original-url', 'x-rewrite-url', 'x-forwarded-port', 'x-forwarded-prefix', 'forwarded']) {
      assert.ok(!names.includes(gone), `${gone} reached the service`);
    }
    assert.deepEqual(headersNamed(m, 'x-real-ip'), ['127.0.0.1']);
    assert.deepEqual(headersNamed(m, 'x-forwarded-for'), ['127.0.0.1']);
    assert.deepEqual(headersNamed(m, 'x-kept'), ['kept', 'twice'], 'other headers pass, repeated as sent');
    assert.deepEqual(headersNamed(m, 'connection'), ['keep-alive'], 'the pool\'s own');
  });

  const refused: Array<[string, string]> = [
    ['Host twice', 'GET /api/users/1 HTTP/1.1\r\nHost: x\r\nHost: internal.example\r\n\r\n'],
    ['a request line without an HTTP version', 'GET /api/users/1\r\nHost: x\r\n\r\n'],
    ['a fragment in the target', 'GET /api/users/1#x HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['a fragment on a route the router serves', 'GET /health#x HTTP/1.1\r\nHost: x\r\n\r\n'],
  ];
  for (const [what, bytes] of refused) {
    test(`when a request has ${what}, then it is a 400 BAD_REQUEST, the connection closes and nothing reaches the service`, async () => {
      const r = await rawExchange(gw.url, `${bytes}GET /api/users/2 HTTP/1.1\r\nHost: x\r\n\r\n`, 2);
      assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
      assert.equal(statusOf(r.responses[0]), 400);
      assert.equal(jsonOf(r.responses[0]).code, 'BAD_REQUEST');
      assert.ok(r.closed);
      assert.deepEqual(upstream.requests, []);
    });
  }

  test('when a service answers with a Location or Content-Location into itself, then the client gets the gateway\'s path; other places are left alone', async () => {
    const cases: Array<[string, string]> = [
      ['/users/4', '/api/users/4'],
      ['/users', '/api/users'],
      ['/users?page=2', '/api/users?page=2'],
      [`${upstream.url}/users/4`, '/api/users/4'],
      ['/usersfoo/4', '/usersfoo/4'],
      ['https://elsewhere.example/users/4', 'https://elsewhere.example/users/4'],
    ];
    for (const [given, expected] of cases) {
      upstream.answer = (req) => ({ ...echo(req), status: 201, headers: { location: given, 'content-location': given } });
      const r = await http(gw.url, 'POST', '/api/users', { body: {} });
      assert.equal(r.status, 201);
      assert.equal(r.headers.get('location'), expected, given);
      assert.equal(r.headers.get('content-location'), expected, given);
    }
  });

  test('when the gateway answers an error, then it says nosniff and no-store', async () => {
    for (const path of ['/nowhere', '/api/users/%2e%2e/internal']) {
      const r = await http(gw.url, 'GET', path);
      assert.ok(r.status >= 400, path);
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff', path);
      assert.equal(r.headers.get('cache-control'), 'no-store', path);
    }
  });

  test('when the admin token is sent with the scheme in any letter case, then it is accepted; a wrong token is not', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const r = await circuit(gw.url, 'users', 'reset', { authorization: `${scheme} ${ADMIN_TOKEN}` });
      assert.equal(r.status, 200, scheme);
    }
    assert.equal((await circuit(gw.url, 'users', 'reset', { authorization: `bearer ${ADMIN_TOKEN}x` })).status, 401);
    assert.equal((await circuit(gw.url, 'users', 'reset', { authorization: ADMIN_TOKEN })).status, 401);
  });
});
