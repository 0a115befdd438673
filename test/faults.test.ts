import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createFaultSwitches, createFaultSwitchesFromConfig } from '../lib/platform/faults.js';
import { DEFAULT_AUDIENCE, DEFAULT_ISSUER } from '../lib/platform/identity.js';
import { createUserApp } from '../lib/users/app.js';
import { issueToken } from '../lib/users/auth.js';
import { openUserDatabase } from '../lib/users/db.js';
import { deadUrl, eventually, startGatewayFor, type StartedGateway } from './gateway-helpers.js';
import { assertNoLeak, http, startCheckedService } from './helpers.js';
import { openUserAuth } from './support/service-auth.js';
import { startServices, type System } from './system.js';

const TOKEN = 'fault-admin-token-0123456789';

describe('fault switches through the gateway', () => {
  let sys: System;
  let gw: StartedGateway;
  before(async () => {
    sys = await startServices();
    gw = await startGatewayFor(sys, { CB_FAILURE_THRESHOLD: '1000', CACHE_MAX_ENTRIES: '0' });
  });
  after(async () => {
    await gw?.close();
    await sys?.stop();
  });
  const setFaults = (service: string, body: unknown) => http(gw.url, 'POST', `/debug/faults/${service}`, { body });

  test('when errorRate is 1 on users, then users answers 500 through the gateway while products answers 200, and GET /debug/faults shows it', async () => {
    const r = await setFaults('users', { errorRate: 1 });
    assert.equal(r.status, 200);
    assert.deepEqual({ service: r.body.service, instances: r.body.instances, reached: r.body.reached }, { service: 'users', instances: 1, reached: 1 });
    assert.equal(r.body.faults.errorRate, 1);
    assert.ok(Date.parse(r.body.faults.expiresAt) > Date.now());
    const direct = await http(sys.users.url, 'GET', '/users');
    assert.equal(direct.status, 500);
    assert.equal(direct.body.code, 'INJECTED_FAULT');
    assert.ok(direct.body.traceId);
    assert.ok((await http(gw.url, 'GET', '/api/users')).status >= 500);
    assert.equal((await http(gw.url, 'GET', '/api/products')).status, 200);
    assert.equal((await http(sys.users.url, 'GET', '/health')).status, 200, 'health still answers');
    const shown = await http(gw.url, 'GET', '/debug/faults');
    const users = shown.body.services.find((s: { service: string }) => s.service === 'users');
    assert.equal(users.faults.errorRate, 1);
    assert.equal(shown.body.services.find((s: { service: string }) => s.service === 'products').faults.errorRate, 0);
    assert.equal((await setFaults('users', {})).body.faults.expiresAt, null);
    assert.equal((await http(gw.url, 'GET', '/api/users')).status, 200);
  });

  test('when down, then everything but /health answers 503', async () => {
    await setFaults('products', { down: true });
    const r = await http(sys.products.url, 'GET', '/products');
    assert.equal(r.status, 503);
    assert.equal(r.body.code, 'SERVICE_DOWN');
    assert.equal((await http(sys.products.url, 'GET', '/health')).status, 200);
    await setFaults('products', {});
    assert.equal((await http(sys.products.url, 'GET', '/products')).status, 200);
  });

  test('when resetRate is 1, then the connection is cut; when latencyMs is set, then answers are that much slower', async () => {
    await setFaults('users', { resetRate: 1 });
    await assert.rejects(fetch(`${sys.users.url}/users`));
    await setFaults('users', { latencyMs: 150 });
    const started = performance.now();
    assert.equal((await http(sys.users.url, 'GET', '/users')).status, 200);
    assert.ok(performance.now() - started >= 140);
    await setFaults('users', {});
  });

  test('when the body or the service is wrong, then 400 or 404 in the contract shape', async () => {
    for (const body of [{ errorRate: 2 }, { latencyMs: -1 }, { down: 'yes' }, { nope: 1 }]) {
      const r = await setFaults('users', body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(r.body.code, 'VALIDATION_ERROR');
      assert.ok(Array.isArray(r.body.details) && r.body.traceId);
    }
    const bad = await http(gw.url, 'POST', '/debug/faults/users', { raw: '{', headers: { 'content-type': 'application/json' } });
    assert.equal(bad.status, 400);
    assertNoLeak(bad.text);
    assert.equal((await setFaults('nope', {})).status, 404);
  });
});

describe('fault switch protection and expiry', () => {
  test('when the time to live passes, then the switches turn off by themselves', async () => {
    const faults = createFaultSwitches({ ttlMs: 100 });
    const svc = await startCheckedService('user-service', openUserDatabase, (deps) => createUserApp({ ...deps, faults }, openUserAuth()));
    try {
      assert.equal((await svc.call('POST', '/internal/faults', { body: { down: true } })).status, 200);
      assert.equal((await svc.call('GET', '/users')).status, 503);
      await eventually(async () => (await svc.call('GET', '/users')).status === 200, 2000, 'faults to expire');
      assert.equal((await svc.call('GET', '/internal/faults')).body.expiresAt, null);
    } finally {
      await svc.close();
    }
  });

  test('when the service has an admin token, then its route needs it, and a gateway with the same token passes it on', async () => {
    const faults = createFaultSwitches({ adminToken: TOKEN });
    const svc = await startCheckedService('user-service', openUserDatabase, (deps) => createUserApp({ ...deps, faults }, openUserAuth()));
    const sys = await startServices();
    const gw = await startGatewayFor(sys, { USERS_URL: svc.url, ADMIN_TOKEN: TOKEN });
    try {
      assert.equal((await svc.call('POST', '/internal/faults', { body: { down: true } })).status, 401);
      assert.equal((await http(gw.url, 'POST', '/debug/faults/users', { body: { down: true } })).status, 401);
      const r = await http(gw.url, 'POST', '/debug/faults/users', { body: { down: true }, headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(r.status, 200);
      assert.equal(faults.state().down, true);
      assert.equal((await http(gw.url, 'GET', '/debug/faults')).status, 401);
    } finally {
      await gw.close();
      await sys.stop();
      await svc.close();
    }
  });

  test('when no instance of the service answers, then the gateway says 503 and GET /debug/faults shows it unreached', async () => {
    const sys = await startServices();
    const dead = await deadUrl();
    const gw = await startGatewayFor(sys, { ORDERS_URL: dead.url });
    try {
      const r = await http(gw.url, 'POST', '/debug/faults/orders', { body: { down: true } });
      assert.equal(r.status, 503);
      assert.equal(r.body.code, 'SERVICE_UNAVAILABLE');
      assertNoLeak(r.text);
      const shown = (await http(gw.url, 'GET', '/debug/faults')).body.services.find((s: { service: string }) => s.service === 'orders');
      assert.deepEqual(shown, { service: 'orders', faults: null, instances: 1, reached: 0 });
    } finally {
      await gw.close();
      await sys.stop();
      await dead.close();
    }
  });

  test('when in production without an admin token, then services have no switch route', async () => {
    assert.equal(createFaultSwitchesFromConfig({ NODE_ENV: 'production', FAULT_TTL_MS: 1000 }), null);
    const svc = await startCheckedService('user-service', openUserDatabase, (deps) => createUserApp({ ...deps, faults: null }, openUserAuth()));
    try {
      assert.equal((await svc.call('POST', '/internal/faults', { body: { down: true } })).status, 404);
    } finally {
      await svc.close();
    }
  });

  test('when in production with INTERNAL_TOKEN and no admin token, then the switch route is 404 to every caller while the other internal routes stay guarded', async () => {
    const internalToken = 'internal-token-for-fault-tests-0123';
    const faults = createFaultSwitchesFromConfig({ NODE_ENV: 'production', FAULT_TTL_MS: 1000 });
    const auth = { ...openUserAuth(), mode: 'required' as const, internalToken };
    const svc = await startCheckedService('user-service', openUserDatabase, (deps) => createUserApp({ ...deps, faults, internalToken }, auth), true);
    try {
      const admin = await issueToken(auth.key!, { id: 1, role: 'admin' }, { issuer: DEFAULT_ISSUER, audience: DEFAULT_AUDIENCE, ttlS: 600 });
      for (const authorization of [undefined, `Bearer ${admin}`, `Bearer ${internalToken}`, 'Bearer wrong-token']) {
        const headers: Record<string, string> = authorization === undefined ? {} : { authorization };
        for (const method of ['GET', 'POST']) {
          const r = await svc.call(method, '/internal/faults', { headers, ...(method === 'POST' ? { body: { down: true } } : {}) });
          assert.equal(r.status, 404, `${method} with ${authorization?.slice(0, 20)}: ${r.text}`);
          assert.equal(r.body.code, 'NOT_FOUND');
        }
      }
      assert.equal((await svc.call('GET', '/users/1', { headers: { authorization: `Bearer ${admin}` } })).status, 200, 'no switch is on');
      assert.equal((await svc.call('GET', '/internal/users/1/token-version')).status, 401);
      assert.equal((await svc.call('GET', '/internal/users/1/token-version', { headers: { authorization: `Bearer ${admin}` } })).status, 403);
      assert.equal((await svc.call('GET', '/internal/users/1/token-version', { headers: { authorization: `Bearer ${internalToken}` } })).status, 200);
    } finally {
      await svc.close();
    }
  });
});
