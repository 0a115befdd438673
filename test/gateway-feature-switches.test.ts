import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { http } from './helpers.js';
import { startFakeUpstream, startGateway, type FakeUpstream, type StartedGateway } from './gateway-helpers.js';

// The switches `npm run bench` turns off one at a time to show what each feature costs.
describe('feature switches', () => {
  let up: FakeUpstream;
  const gateways: StartedGateway[] = [];
  const gatewayWith = async (env: Record<string, string>) => {
    const gw = await startGateway({ USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url, ...env });
    gateways.push(gw);
    return gw;
  };
  const statuses = async (gw: StartedGateway, n: number) => {
    const seen: number[] = [];
    for (let i = 1; i <= n; i++) seen.push((await http(gw.url, 'GET', `/api/products/${i}`)).status);
    return seen;
  };
  const requestSeries = async (gw: StartedGateway) => {
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    return text.split('\n').filter((l) => /^(http_requests_total|http_request_duration_seconds_count|gateway_requests_total)\{/.test(l));
  };
  before(async () => {
    up = await startFakeUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await up?.stop();
  });

  test('when RATE_LIMIT_DISABLED=true, then a client past RATE_LIMIT and ADDRESS_RATE_LIMIT is still answered, without rate-limit headers', async () => {
    const limited = await gatewayWith({ RATE_LIMIT: '2', ADDRESS_RATE_LIMIT: '2' });
    assert.deepEqual(await statuses(limited, 3), [200, 200, 429]);
    const open = await gatewayWith({ RATE_LIMIT: '2', ADDRESS_RATE_LIMIT: '2', RATE_LIMIT_DISABLED: 'true' });
    assert.deepEqual(await statuses(open, 3), [200, 200, 200]);
    const res = await http(open.url, 'GET', '/api/products/4');
    assert.equal(res.headers.get('x-ratelimit-limit'), null);
  });

  test('when RATE_LIMIT_DISABLED=true, then login attempts still count against LOGIN_RATE_LIMIT', async () => {
    const gw = await gatewayWith({ LOGIN_RATE_LIMIT: '1', RATE_LIMIT_DISABLED: 'true' });
    const login = () => http(gw.url, 'POST', '/api/auth/login', { body: { email: 'a@example.com', password: 'whatever1' } });
    assert.notEqual((await login()).status, 429);
    assert.equal((await login()).status, 429);
  });

  test('when REQUEST_METRICS_DISABLED=true, then proxied requests are neither counted nor timed in /metrics, which still answers', async () => {
    const counted = await gatewayWith({});
    await statuses(counted, 2);
    assert.ok((await requestSeries(counted)).length > 0, 'the default gateway counts its requests');
    const quiet = await gatewayWith({ REQUEST_METRICS_DISABLED: 'true' });
    await statuses(quiet, 2);
    assert.deepEqual(await requestSeries(quiet), []);
    assert.match(await (await fetch(`${quiet.url}/metrics`)).text(), /^process_cpu_user_seconds_total/m);
  });
});
