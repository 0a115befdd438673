// The stale cache serves to everyone only what anyone may see, under a key no client header can
// bend: what one client makes the gateway store never reaches another client as someone else's.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from '../helpers.js';
import { startGateway, type StartedGateway } from '../gateway-helpers.js';
import { echo, startEchoUpstream, type EchoAnswer, type EchoUpstream } from '../support/echo-upstream.js';
import { rawExchange } from '../support/raw-client.js';

describe('stale cache poisoning', () => {
  let upstream: EchoUpstream;
  let gw: StartedGateway;
  let path = 0;
  // A fresh URL per test, so no test sees another's entry.
  const next = () => `/api/products/${++path}`;
  before(async () => {
    upstream = await startEchoUpstream();
    gw = await startGateway({ USERS_URL: upstream.url, PRODUCTS_URL: upstream.url, ORDERS_URL: upstream.url, RATE_LIMIT: '10000', CB_FAILURE_THRESHOLD: '1000' });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });
  beforeEach(() => {
    upstream.reset();
    upstream.answer = echo;
  });

  /** The answer a client gets for `url` once the service fails: the stale copy, if one was stored. */
  const whenDown = async (url: string) => {
    upstream.answer = () => ({ status: 503, body: '{"error":"down","code":"SERVICE_UNAVAILABLE"}' });
    const r = await http(gw.url, 'GET', url);
    upstream.answer = echo;
    return r;
  };

  test('when a plain 200 JSON answer was seen, then it stands in with X-Cache: STALE while the service fails', async () => {
    const url = next();
    assert.equal((await http(gw.url, 'GET', url)).status, 200);
    const r = await whenDown(url);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-cache'), 'STALE');
    assert.equal(r.body.url, url.slice(4));
  });

  const notStored: Array<[string, EchoAnswer | undefined, Record<string, string>]> = [
    ['the answer has a Set-Cookie', { headers: { 'set-cookie': 'session=abc' } }, {}],
    ['the answer has Cache-Control: private', { headers: { 'cache-control': 'private, max-age=60' } }, {}],
    ['the answer has Cache-Control: no-store', { headers: { 'cache-control': 'no-store' } }, {}],
    ['the answer varies on a request header', { headers: { vary: 'X-Tenant' } }, { 'x-tenant': 'evil' }],
    ['the answer has a Content-Encoding', { headers: { 'content-encoding': 'gzip' } }, {}],
    ['the request has Authorization', undefined, { authorization: 'Bearer someone' }],
    ['the request has a Cookie', undefined, { cookie: 'session=someone' }],
  ];
  for (const [what, answer, headers] of notStored) {
    test(`when ${what}, then the answer to that GET is never served to another client`, async () => {
      const url = next();
      if (answer) upstream.answer = (req) => ({ ...echo(req), ...answer });
      const lines = Object.entries(headers).map(([n, v]) => `${n}: ${v}\r\n`).join('');
      const first = await rawExchange(gw.url, `GET ${url} HTTP/1.1\r\nHost: x\r\n${lines}\r\n`);
      assert.match(first.responses[0].line, / 200 /);
      const r = await whenDown(url);
      assert.equal(r.status, 503);
      assert.equal(r.headers.get('x-cache'), null);
    });
  }

  test('when a GET carries a body, then its answer is not stored for the GETs without one', async () => {
    const url = next();
    const raw = await rawExchange(gw.url, `GET ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nplant!`);
    assert.match(raw.responses[0].body.toString(), /plant!/);
    const r = await whenDown(url);
    assert.equal(r.status, 503);
  });

  test('when a DELETE smuggles a request ahead of the next client\'s GET, then the answer stored for that GET is its own', async () => {
    const url = next();
    const smuggled = 'GET /products/999 HTTP/1.1\r\nHost: a\r\nX-Ignore: ';
    await rawExchange(gw.url, `DELETE /api/products/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`);
    const victim = await http(gw.url, 'GET', url);
    assert.equal(victim.body.url, url.slice(4));
    const r = await whenDown(url);
    assert.equal(r.headers.get('x-cache'), 'STALE');
    assert.equal(r.body.url, url.slice(4), 'the stored answer is the one for this URL');
  });
});
