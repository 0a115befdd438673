import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { spawnService, type ChildService } from './process.js';
import { eventually, rawRequest, startFakeUpstream, type FakeUpstream } from './gateway-helpers.js';

describe('gateway.ts as a process', () => {
  let up: FakeUpstream;
  const children: ChildService[] = [];
  before(async () => {
    up = await startFakeUpstream();
  });
  after(async () => {
    for (const c of children) await c.stop('SIGKILL');
    await up?.stop();
  });

  test('when RATE_LIMIT=-1, then it exits 1 with one line naming the variable', async () => {
    await assert.rejects(spawnService('gateway.ts', { RATE_LIMIT: '-1' }), (err: Error) => {
      assert.match(err.message, /exited \(1\) before listening/);
      const output = err.message.split('\n').slice(1).join('\n').trim();
      assert.equal(output, 'gateway: invalid configuration: RATE_LIMIT: must be a whole number from 1 to 1000000 (got "-1")');
      return true;
    });
  });

  test('when its port is taken, then it exits 1 with one line naming the port and PORT, without a stack', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const { port } = holder.address() as AddressInfo;
    try {
      await assert.rejects(spawnService('gateway.ts', { PORT: String(port), HOST: '127.0.0.1' }), (err: Error) => {
        assert.match(err.message, /exited \(1\) before listening/);
        const lines = err.message.split('\n').slice(1).filter((line) => line.includes('"level":60'));
        assert.equal(lines.length, 1, err.message);
        const line = JSON.parse(lines[0]) as Record<string, unknown>;
        assert.match(String(line.msg), new RegExp(`port ${port} is already in use: set PORT`));
        assert.equal(line.err, undefined, 'no error object, so no stack');
        assert.doesNotMatch(err.message, /\n\s+at /, 'no stack trace anywhere');
        return true;
      });
    } finally {
      holder.close();
    }
  });

  test('when SIGTERM arrives with a request in flight, then the request finishes, new connections are refused and it exits 0', async () => {
    const gw = await spawnService('gateway.ts', { USERS_URL: up.url, PRODUCTS_URL: up.url, ORDERS_URL: up.url });
    children.push(gw);
    up.behaviour = { kind: 'echo', delayMs: 400 };
    up.seen.length = 0;
    // A client that closes its connection after the answer: a keep-alive one would hold the
    // server open until its own idle timeout (closeServer closes only the connections idle when it starts).
    const inFlight = rawRequest(gw.url, 'GET', '/api/users/1');
    await eventually(() => up.seen.length > 0, 5_000, 'the request to reach the service');
    assert.equal(up.seen.length, 1, 'the request reached the service');
    gw.child.kill('SIGTERM');
    // The listener closes as soon as the signal is handled: poll until a new connection is refused.
    // rawRequest closes its connection after the answer, so a probe that still got in holds nothing open.
    await eventually(() => rawRequest(gw.url, 'GET', '/').then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ECONNREFUSED'), 5_000, 'new connections to be refused');
    const res = await inFlight;
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.text).url, '/users/1');
    // stop() would send a second signal (exit at once); wait for the first one to finish its work.
    await eventually(() => gw.child.exitCode !== null || gw.child.signalCode !== null, 10_000, 'the gateway to exit');
    assert.equal(await gw.stop(), 0, gw.output());
    assert.match(gw.output(), /"msg":"stopped"/);
  });
});
