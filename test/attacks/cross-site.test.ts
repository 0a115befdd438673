// A page on another site drives a browser against the gateway: no-cors fetches and form posts,
// which need no preflight, at the debug routes and the API. Each is refused before it acts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { circuitState, rawRequest, startFakeUpstream, startGateway, type FakeUpstream, type RawResponse, type StartedGateway } from '../gateway-helpers.js';

const EVIL = 'https://evil.example';
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const TEXT = { 'content-type': 'text/plain;charset=UTF-8' };

function assertRefused(r: RawResponse, what: string): void {
  assert.equal(r.status, 403, `${what}: ${r.text}`);
  const body = JSON.parse(r.text) as { code: string; error: string; traceId: string };
  assert.equal(body.code, 'CROSS_SITE_REQUEST', what);
  assert.ok(body.error && body.traceId, what);
}

describe('cross-site requests', () => {
  let up: FakeUpstream;
  let gw: StartedGateway;
  let own: string;
  before(async () => {
    up = await startFakeUpstream();
    gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url });
    own = gw.url;
  });
  after(async () => {
    await gw?.close();
    await up?.stop();
  });

  test('when another site\'s page opens a circuit by form post or no-cors fetch, then 403 and the circuit stays closed', async () => {
    assertRefused(await rawRequest(gw.url, 'POST', '/debug/circuit/users/open', { ...FORM, origin: EVIL, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate' }, { body: 'x=1' }), 'form post');
    assertRefused(await rawRequest(gw.url, 'POST', '/debug/circuit/orders/open', { ...TEXT, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' }, { body: '' }), 'no-cors fetch');
    // An older browser sends Origin alone.
    assertRefused(await rawRequest(gw.url, 'POST', '/debug/circuit/products/open', { ...TEXT, origin: EVIL }), 'Origin alone');
    // A sandboxed frame or a redirect across sites sends Origin: null.
    assertRefused(await rawRequest(gw.url, 'POST', '/debug/circuit/products/open', { origin: 'null' }), 'Origin: null');
    assertRefused(await rawRequest(gw.url, 'POST', '/debug/faults/users', { ...TEXT, origin: EVIL }, { body: '{"down":true}' }), 'fault switch');
    for (const service of ['users', 'products', 'orders']) assert.equal(await circuitState(gw.url, service), 'CLOSED', service);
  });

  test('when another site\'s page changes the API (text/plain, any method, a sibling subdomain too), then 403 and the service hears nothing', async () => {
    up.seen.length = 0;
    assertRefused(await rawRequest(gw.url, 'POST', '/api/users', { ...TEXT, origin: EVIL }, { body: '{"name":"Mallory","email":"m@example.com"}' }), 'POST /api/users');
    assertRefused(await rawRequest(gw.url, 'DELETE', '/api/products/1', { 'sec-fetch-site': 'same-site', origin: `http://shop.${new URL(own).hostname}` }), 'DELETE from a sibling');
    assertRefused(await rawRequest(gw.url, 'PUT', '/api/orders/1/status', { 'content-type': 'application/json', 'sec-fetch-site': 'cross-site' }, { body: '{"status":"cancelled"}' }), 'PUT');
    assertRefused(await rawRequest(gw.url, 'PATCH', '/api/products/1/stock', { origin: 'http://127.0.0.1:1' }), 'PATCH from another port');
    assertRefused(await rawRequest(gw.url, 'POST', '/api/auth/login', { ...FORM, origin: EVIL }, { body: 'email=a&password=b' }), 'login');
    assertRefused(await rawRequest(gw.url, 'POST', '/api/dashboard', { origin: EVIL }), 'a route the router answers');
    assert.deepEqual(up.seen, []);
  });

  test('when the request is the gateway\'s own page, a typed URL or a client without browser headers, then it is served', async () => {
    const { host } = new URL(own);
    const sameOrigin = await rawRequest(gw.url, 'POST', '/debug/circuit/users/open', { origin: own, 'sec-fetch-site': 'same-origin', host });
    assert.equal(sameOrigin.status, 200, sameOrigin.text);
    const originAlone = await rawRequest(gw.url, 'POST', '/debug/circuit/users/close', { origin: own, host });
    assert.equal(originAlone.status, 200, originAlone.text);
    const typed = await rawRequest(gw.url, 'POST', '/debug/circuit/users/reset', { 'sec-fetch-site': 'none' });
    assert.equal(typed.status, 200, typed.text);
    const curl = await rawRequest(gw.url, 'POST', '/api/users', { 'content-type': 'application/json' }, { body: '{}' });
    assert.equal(curl.status, 200, 'passed on to the (fake) service');
    assert.equal(up.seen.at(-1)?.method, 'POST');
  });

  test('when another site\'s page only reads, then it is answered (a read changes nothing; the browser keeps the answer from the page)', async () => {
    const read = await rawRequest(gw.url, 'GET', '/api/products/1', { origin: EVIL, 'sec-fetch-site': 'cross-site' });
    assert.equal(read.status, 200);
    const preflight = await rawRequest(gw.url, 'OPTIONS', '/api/products/1', { origin: EVIL, 'sec-fetch-site': 'cross-site', 'access-control-request-method': 'DELETE' });
    assert.notEqual(preflight.status, 403);
    assert.equal(preflight.headers['access-control-allow-origin'], undefined, 'no CORS grant');
  });
});
