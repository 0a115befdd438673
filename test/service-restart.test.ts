// The user and product services as real processes: restarts keep data and never duplicate the
// demo rows, a kill -9 right after a 201 loses nothing, SIGTERM exits 0, bad config exits 1.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { demoProducts } from '../lib/demo/data.js';
import { http, tempDir } from './helpers.js';
import { nodeArgs, runToExit, spawnService, type ChildService } from './process.js';

const running = new Set<ChildService>();
const dirs: Array<{ remove: () => void }> = [];

after(async () => {
  await Promise.all([...running].map((s) => s.stop('SIGKILL')));
  for (const d of dirs) d.remove();
});

async function start(entry: string, dataDir: string): Promise<ChildService> {
  const svc = await spawnService(entry, { DATA_DIR: dataDir, SEED_DATA: 'true' });
  running.add(svc);
  return svc;
}

async function stop(svc: ChildService, signal: NodeJS.Signals): Promise<number | string> {
  const code = await svc.stop(signal);
  running.delete(svc);
  return code;
}

function newDataDir(): string {
  const d = tempDir('msvc-restart-');
  dirs.push(d);
  return d.dir;
}


// Each test has its own data dir and processes: they run side by side, as most of their time is
// spent waiting for a process to start or stop.
describe('user service process', { concurrency: true }, () => {
  test('restarts keep the 3 demo users without duplicating them; SIGTERM exits 0', async () => {
    const dataDir = newDataDir();
    // A first start and a restart: a restart that does not seed again leaves what a third would find.
    for (let i = 0; i < 2; i++) {
      const svc = await start('user-service.ts', dataDir);
      const r = await http(svc.url, 'GET', '/users');
      assert.equal(r.body.meta.total, 3, `start ${i + 1}`);
      assert.equal(await stop(svc, 'SIGTERM'), 0);
    }
  });

  test('Ctrl+C delivered twice at once (terminal and relay) still stops cleanly with exit 0', async () => {
    const svc = await start('user-service.ts', newDataDir());
    svc.child.kill('SIGINT');
    svc.child.kill('SIGINT');
    assert.equal(await stop(svc, 'SIGINT'), 0);
    assert.match(svc.output(), /"msg":"stopped"/);
  });

  test('a user acknowledged with 201 just before kill -9 is there after the restart', async () => {
    const dataDir = newDataDir();
    const first = await start('user-service.ts', dataDir);
    const created = await http(first.url, 'POST', '/users', { body: { name: 'Durable Dora', email: 'dora@example.com' } });
    assert.equal(created.status, 201);
    assert.equal(await stop(first, 'SIGKILL'), 'SIGKILL');
    const second = await start('user-service.ts', dataDir);
    const r = await http(second.url, 'GET', `/users/${created.body.id}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, created.body);
    assert.equal((await http(second.url, 'GET', '/users')).body.meta.total, 4);
    assert.equal(await stop(second, 'SIGTERM'), 0);
  });

  test('PORT=abc exits 1 with one line naming PORT', async () => {
    const { code, stderr, stdout } = await runToExit(nodeArgs('user-service.ts'), { env: { PORT: 'abc', DATA_DIR: newDataDir() } });
    assert.equal(code, 1);
    const lines = (stderr + stdout).trim().split('\n');
    assert.equal(lines.length, 1, stderr + stdout);
    assert.match(lines[0], /PORT/);
  });
});

describe('product service process', { concurrency: true }, () => {
  test('restarts keep the 5 demo products and their reservations without taking stock again; SIGTERM exits 0', async () => {
    const dataDir = newDataDir();
    for (let i = 0; i < 2; i++) {
      const svc = await start('product-service.ts', dataDir);
      const r = await http(svc.url, 'GET', '/products');
      assert.equal(r.body.meta.total, 5, `start ${i + 1}`);
      assert.deepEqual(r.body.data.map((p: { stock: number }) => p.stock), demoProducts.map((p) => p.stock));
      assert.equal((await http(svc.url, 'GET', '/internal/reservations/demo-order-1')).body.status, 'held');
      assert.equal(await stop(svc, 'SIGTERM'), 0);
    }
  });

  test('a product and a reservation acknowledged just before kill -9 are there after the restart', async () => {
    const dataDir = newDataDir();
    const first = await start('product-service.ts', dataDir);
    const created = await http(first.url, 'POST', '/products', { body: { name: 'Durable Desk', price: 250.5, stock: 7 } });
    assert.equal(created.status, 201);
    const reserved = await http(first.url, 'POST', '/internal/reservations', {
      body: { id: 'kill-9-reservation', items: [{ productId: created.body.id, quantity: 3 }] },
    });
    assert.equal(reserved.status, 201);
    assert.equal(await stop(first, 'SIGKILL'), 'SIGKILL');
    const second = await start('product-service.ts', dataDir);
    const product = await http(second.url, 'GET', `/products/${created.body.id}`);
    assert.equal(product.status, 200);
    assert.equal(product.body.stock, 4);
    assert.equal(product.body.price, 250.5);
    const reservation = await http(second.url, 'GET', '/internal/reservations/kill-9-reservation');
    assert.deepEqual(reservation.body, reserved.body);
    assert.equal(await stop(second, 'SIGTERM'), 0);
  });

  test('PORT=abc exits 1 with one line naming PORT', async () => {
    const { code, stderr, stdout } = await runToExit(nodeArgs('product-service.ts'), { env: { PORT: 'abc', DATA_DIR: newDataDir() } });
    assert.equal(code, 1);
    const lines = (stderr + stdout).trim().split('\n');
    assert.equal(lines.length, 1, stderr + stdout);
    assert.match(lines[0], /PORT/);
  });
});
