// Answers for a request no route takes: 405 with Allow where the path exists under other methods
// (RFC 9110 15.5.6), 404 elsewhere, and neither names the path the service saw behind the gateway.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from './helpers.js';
import { startGatewayFor, type StartedGateway } from './gateway-helpers.js';
import { startServices, type System } from './system.js';

describe('requests no route takes', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices({ seed: true });
    gw = await startGatewayFor(sys, { RATE_LIMIT: '1000000' });
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });

  test('when PATCH reaches /api/users/1 through the gateway, then 405 with the methods that exist, and no internal path', async () => {
    const r = await http(gw.url, 'PATCH', '/api/users/1', { body: { name: 'x' } });
    assert.equal(r.status, 405);
    assert.equal(r.body.code, 'METHOD_NOT_ALLOWED');
    assert.equal(r.headers.get('allow'), 'DELETE, GET, HEAD, PUT');
    assert.doesNotMatch(r.body.error, /\/users/);
    assert.match(r.body.traceId, /\S/);
  });

  test('when a service is asked with a method its path lacks, then 405 with Allow; HEAD is allowed wherever GET is', async () => {
    const r = await http(sys.products.url, 'DELETE', '/products');
    assert.equal(r.status, 405);
    assert.equal(r.headers.get('allow'), 'GET, HEAD, POST');
    const health = await http(sys.orders.url, 'POST', '/health', { body: {} });
    assert.equal(health.status, 405);
    assert.equal(health.headers.get('allow'), 'GET, HEAD');
  });

  test('when the path exists nowhere, then 404 NOT_FOUND that names neither the service path nor the client path', async () => {
    for (const [base, path] of [[gw.url, '/api/users/1/nothing-here'], [sys.users.url, '/users/1/nothing-here'], [gw.url, '/nothing-here']]) {
      const r = await http(base, 'GET', path);
      assert.equal(r.status, 404, `${base}${path}`);
      assert.equal(r.body.code, 'NOT_FOUND');
      assert.doesNotMatch(r.body.error, /nothing-here|\/users/);
    }
  });

  test('when a gateway route of its own is asked with another method, then 405 with Allow', async () => {
    const r = await http(gw.url, 'DELETE', '/health');
    assert.equal(r.status, 405);
    assert.match(r.headers.get('allow') ?? '', /\bGET\b/);
  });
});
