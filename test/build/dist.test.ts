// The production build (npm run build: dist/) runs on its own: its entries start with plain node,
// no TypeScript loader, and find what they read beside their modules (the dashboard's files, the
// version from package.json). `npm run test:build` builds first; BUILD_DIR names another build.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { http, tempDir } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DIST = process.env.BUILD_DIR ?? join(ROOT, 'dist');

interface Running { child: ChildProcess; url: string; output: () => string }

/** `node <DIST>/<file>` on port 0, resolved once it logs `listening`. */
async function startBuilt(file: string, env: Record<string, string>): Promise<Running> {
  // No NODE_OPTIONS from the test run: nothing but node and the built file.
  const { NODE_OPTIONS: _ignored, ...inherited } = process.env;
  const child = spawn(process.execPath, [join(DIST, file)], {
    cwd: ROOT,
    env: { ...inherited, PORT: '0', HOST: '127.0.0.1', LOG_PRETTY: 'false', LOG_LEVEL: 'info', PASSWORD_HASH_COST: '1024', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = once(child, 'exit');
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${file} did not start in 60 s:\n${out}`));
    }, 60_000);
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /"url":"(http:\/\/[^"]+)"[^\n]*"msg":"listening"/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    void exited.then(([code, signal]) => {
      clearTimeout(timer);
      reject(new Error(`${file} exited (${code ?? signal}) before listening:\n${out}`));
    });
  });
  return { child, url, output: () => out };
}

describe('the production build', () => {
  const data = tempDir('msvc-dist-');
  const running: Running[] = [];
  let gateway: Running;
  let users: Running;

  before(async () => {
    assert.ok(existsSync(join(DIST, 'gateway.js')), `no build in ${DIST}: run npm run build first (npm run test:build does)`);
    users = await startBuilt('user-service.js', { DATA_DIR: data.dir, SEED_DATA: 'false' });
    running.push(users);
    gateway = await startBuilt('gateway.js', { USERS_URL: users.url });
    running.push(gateway);
  });
  after(async () => {
    for (const r of running) {
      if (r.child.exitCode === null && r.child.signalCode === null) {
        const exited = once(r.child, 'exit');
        r.child.kill('SIGTERM');
        await exited;
      }
    }
    data.remove();
  });

  test('runs from JavaScript alone: no .ts module and no loader in the processes', () => {
    for (const r of running) assert.deepEqual(r.child.spawnargs.slice(1).map((a) => a.endsWith('.ts')), [false]);
  });

  test('the gateway answers with the version of package.json, read from the build', async () => {
    const res = await http<{ name: string; version: string }>(gateway.url, 'GET', '/');
    assert.equal(res.status, 200);
    assert.equal(res.body.name, 'api-gateway');
    assert.equal(res.body.version, (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version);
  });

  test('the gateway serves the dashboard files copied beside its modules', async () => {
    for (const file of ['index.html', 'app.js', 'style.css']) {
      const res = await http(gateway.url, 'GET', file === 'index.html' ? '/dashboard' : `/dashboard/${file}`);
      assert.equal(res.status, 200, file);
      assert.equal(res.text, readFileSync(join(ROOT, 'lib/gateway/dashboard/public', file), 'utf8'), file);
    }
  });

  test('a request through the gateway reaches the built user service and its database', async () => {
    const created = await http<{ id: number; email: string }>(gateway.url, 'POST', '/api/users', { body: { name: 'Built User', email: 'built@example.com' } });
    assert.equal(created.status, 201, created.text);
    const read = await http<{ email: string }>(users.url, 'GET', `/users/${created.body.id}`);
    assert.equal(read.status, 200, read.text);
    assert.equal(read.body.email, 'built@example.com');
  });
});
