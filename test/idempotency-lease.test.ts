// The claim a create holds on its Idempotency-Key, across order-service instances on one
// PostgreSQL schema: renewed while its create runs, lapsed soon after its instance dies, and a
// repeat that meets it answered before the repeat's own deadline.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ServiceDatabaseOptions } from '../lib/platform/config.js';
import { assertNoLeak, http, tempDir, type TestResponse } from './helpers.js';
import { spawnService, type ChildService } from './process.js';
import { testStorage, type TestStorage } from './support/engines.js';
import { skipUnless } from './support/services.js';
import { createProduct, createUser, startServices, stockOf, type System } from './system.js';
import { startOrderInstance, type OrderInstance } from './support/order-instance.js';
import { eventually } from './support/eventually.js';

// Short, so a lapse is quick; the renewals (every 200 ms) still have room on a busy machine.
const LEASE_MS = 600;


/**
 * A proxy in front of the product service that, while `holding`, keeps each reserve it receives
 * until the test lets it through (`pass()`) or drops it (`drop()`): a create stuck in its reserve,
 * for as long as the test needs, with no timing involved.
 */
interface HoldingProxy {
  url: string;
  holding: boolean;
  /** Resolves when the next reserve is being held. */
  nextHeld(): Promise<void>;
  pass(): void;
  drop(): void;
  close(): Promise<void>;
}

async function startHoldingProxy(target: string): Promise<HoldingProxy> {
  let held: { forward: () => void; res: ServerResponse }[] = [];
  let waiters: (() => void)[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const forward = () => {
        const url = new URL(req.url ?? '/', target);
        const upstream = request(url, { method: req.method, headers: { ...req.headers, host: url.host } }, (up: IncomingMessage) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
        });
        upstream.on('error', () => res.destroy());
        upstream.end(Buffer.concat(chunks));
      };
      if (proxy.holding && req.method === 'POST' && req.url === '/internal/reservations') {
        held.push({ forward, res });
        for (const w of waiters) w();
        waiters = [];
      } else {
        forward();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxy: HoldingProxy = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    holding: false,
    nextHeld: () => new Promise((resolve) => waiters.push(resolve)),
    pass() {
      for (const h of held) h.forward();
      held = [];
    },
    drop() {
      for (const h of held) h.res.destroy();
      held = [];
    },
    close: () =>
      new Promise((resolve) => {
        proxy.drop();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return proxy;
}

const post = async (base: string, body: unknown, headers: Record<string, string>): Promise<TestResponse & { ms: number }> => {
  const started = Date.now();
  const r = await http(base, 'POST', '/orders', { body, headers });
  assertNoLeak(r.text);
  return { ...r, ms: Date.now() - started };
};

describe('Idempotency-Key claims on PostgreSQL, several instances', { skip: skipUnless('postgres') }, () => {
  let sys: System;
  let storage: TestStorage;
  let proxy: HoldingProxy;
  let b: OrderInstance;
  let c: OrderInstance;
  let env: Record<string, string>;
  let options: ServiceDatabaseOptions;
  const dir = tempDir('msvc-key-lease-');

  const claimOf = (userId: number, key: string) =>
    b.db.get<{ holder: string; until_ms: string | number }>('SELECT holder, until_ms FROM idempotency_claims WHERE user_id = $1 AND key = $2', [userId, key])
      .then((row) => row && { holder: row.holder, until: Number(row.until_ms) });

  before(async () => {
    sys = await startServices();
    storage = testStorage('postgres');
    options = storage.options('orders');
    proxy = await startHoldingProxy(sys.products.url);
    env = { USERS_URL: sys.users.url, PRODUCTS_URL: proxy.url, DATA_DIR: dir.dir, IDEMPOTENCY_KEY_LEASE_MS: String(LEASE_MS) };
    b = await startOrderInstance(options, env);
    c = await startOrderInstance(options, env);
  });
  after(async () => {
    await b?.close();
    await c?.close();
    await proxy?.close();
    await sys?.stop();
    await storage?.remove();
    dir.remove();
  });

  test('when a create is still running, then its claim outlives the lease by renewals, and a repeat gets 409 IDEMPOTENCY_KEY_IN_USE with Retry-After before its Request-Timeout', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const body = { userId, items: [{ productId, quantity: 3 }] };
    const key = { 'idempotency-key': 'slow-create' };
    proxy.holding = true;
    const reserveHeld = proxy.nextHeld();
    const first = post(b.url, body, key);
    await reserveHeld;
    proxy.holding = false;
    const claimed = (await claimOf(userId, 'slow-create'))!;
    // Past the end the claim was first given, and renewed meanwhile by the same holder.
    await eventually(async () => {
      const now = await claimOf(userId, 'slow-create');
      return Date.now() > claimed.until + 50 && now !== undefined && now.holder === claimed.holder && now.until > Date.now();
    }, 10_000, 'a renewal past the first lease');

    // Another instance (the claim in the database) and the holder's own (its in-process gate).
    for (const instance of [c, b]) {
      const repeat = await post(instance.url, body, { ...key, 'request-timeout': '1000' });
      assert.equal(repeat.status, 409, repeat.text);
      assert.equal(repeat.body.code, 'IDEMPOTENCY_KEY_IN_USE');
      assert.equal(repeat.headers.get('retry-after'), '1');
      assert.ok(repeat.ms < 1000, `answered after ${repeat.ms} ms, past the caller's 1000 ms`);
    }

    proxy.pass();
    const created = await first;
    assert.equal(created.status, 201, created.text);
    const replayed = await post(c.url, body, key);
    assert.equal(replayed.status, 201, replayed.text);
    assert.equal(replayed.headers.get('idempotent-replayed'), 'true');
    assert.equal(replayed.body.id, created.body.id);
    assert.equal(await stockOf(sys, productId), 7, 'the stock was taken once');
    assert.equal(await claimOf(userId, 'slow-create'), undefined, 'the claim went with the commit');
  });

  test('when the instance holding a key is killed mid-create, then its claim lapses within the lease and a repeat on another instance makes the order before its Request-Timeout', async () => {
    const userId = await createUser(sys);
    const productId = await createProduct(sys, { stock: 10 });
    const body = { userId, items: [{ productId, quantity: 2 }] };
    const key = { 'idempotency-key': 'holder-killed' };
    let a: ChildService | undefined;
    try {
      a = await spawnService('order-service.ts', { ...env, DATABASE_URL: options.databaseUrl!, DATABASE_SCHEMA: options.schema! });
      proxy.holding = true;
      const reserveHeld = proxy.nextHeld();
      const first = post(a.url, body, key).catch(() => undefined);
      await reserveHeld;
      proxy.holding = false;
      await a.stop('SIGKILL');
      const killedAt = Date.now();
      proxy.drop();
      await first;
      const left = (await claimOf(userId, 'holder-killed'))!;
      assert.ok(left, 'the dead create left its claim');
      assert.ok(left.until <= killedAt + LEASE_MS, `the claim ends ${left.until - killedAt} ms after the kill, more than the ${LEASE_MS} ms lease`);

      // As the gateway sends it: what is left of its 5 s.
      const retry = await post(c.url, body, { ...key, 'request-timeout': '4900' });
      assert.equal(retry.status, 201, retry.text);
      assert.equal(retry.headers.get('idempotent-replayed'), null);
      assert.ok(retry.ms < 4900, `answered after ${retry.ms} ms`);
      assert.ok(Date.now() >= left.until, 'the order waited for the claim to lapse');
      assert.equal(await stockOf(sys, productId), 8, 'the dead create took nothing; the retry took its stock once');
      const again = await post(b.url, body, key);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.equal(again.body.id, retry.body.id);
    } finally {
      proxy.holding = false;
      proxy.drop();
      await a?.stop('SIGKILL');
    }
  });
});
