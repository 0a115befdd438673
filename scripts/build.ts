// npm run build: the production build in dist/, run with `node dist/gateway.js` (and the three
// services) and no dev dependency: tsc with tsconfig.build.json, then the files the code reads at
// run time relative to its own module, copied to the same place under dist/.
//   npm run build                   into dist/
//   npm run build -- /tmp/out       elsewhere (the directory is emptied first)
import { execFileSync } from 'node:child_process';
import { cpSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const out = resolve(process.argv[2] ?? join(ROOT, 'dist'));
// Relative to the repository's root; each module finds them with `new URL(..., import.meta.url)`:
// lib/platform/version.ts reads ../../package.json (which also gives dist/ "type": "module").
const ASSETS = ['lib/gateway/dashboard/public', 'package.json'];

// tsc never deletes what it once wrote: a module removed from lib/ must not live on in dist/.
rmSync(out, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
try {
  execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', out], { stdio: 'inherit' });
} catch {
  process.exit(1);
}
for (const asset of ASSETS) cpSync(join(ROOT, asset), join(out, asset), { recursive: true });
process.stdout.write(`built into ${out}\n`);
