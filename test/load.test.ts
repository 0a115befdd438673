// `npm run load` against a system with the gateway's default rate limit (100 a minute per client):
// what a new user runs beside a plain `npm start`. More requests than one client may send in a
// minute must still come back 2xx, because the generator spreads its clients over addresses.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startGatewayFor, type StartedGateway } from './gateway-helpers.js';
import { nodeArgs, runToExit } from './process.js';
import { startServices, type System } from './system.js';

const RATE = 75;
const SECONDS = 2;

let sys: System;
let gw: StartedGateway;
before(async () => {
  sys = await startServices({ seed: true });
  gw = await startGatewayFor(sys);
});
after(async () => {
  await gw.close();
  await sys.stop();
});

test(`npm run load at ${RATE} req/s for ${SECONDS} s gets through the default rate limit and exits 0`, async () => {
  const run = await runToExit([...nodeArgs('bench/traffic.ts'), '--rate', String(RATE), '--duration', String(SECONDS), '--target', gw.url]);
  const { code } = run;
  const out = run.stdout + run.stderr;
  assert.equal(code, 0, out);

  const line = /^statuses: (.*)$/m.exec(out);
  assert.ok(line, out);
  const statuses = new Map(line[1].split(' ').map((pair) => {
    const [status, n] = pair.split(':');
    return [status, Number(n)] as const;
  }));
  const all = [...statuses.values()].reduce((a, b) => a + b, 0);
  const ok = [...statuses].filter(([status]) => /^2\d\d$/.test(status)).reduce((a, [, n]) => a + n, 0);
  // More than one client may send in the window: with a single address a third would be 429.
  assert.ok(all > 100, `only ${all} responses:\n${out}`);
  assert.equal(statuses.get('429') ?? 0, 0, out);
  assert.ok(ok >= all * 0.95, `${ok} of ${all} were 2xx:\n${out}`);
  // The mix ran: reads, orders placed (201) and cancelled (204).
  assert.ok((statuses.get('200') ?? 0) > 0 && (statuses.get('201') ?? 0) > 0, out);
});
