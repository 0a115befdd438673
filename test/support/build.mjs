// The project's TypeScript as plain JavaScript under node_modules/.cache/test-build, for the
// processes the tests start (services, the chaos run, the load generator): a process that loads
// JavaScript needs no module hooks, which cost each process about 0.2 s of CPU at start. Each
// x.ts becomes x.js beside the others, so the `./x.js` imports resolve as they are written; the
// dashboard's files are linked, and package.json copied (the version, and "type": "module").
// test/run.mjs builds it before a run (only changed files are written) and names it to the tests
// in TEST_BUILD_DIR; test/process.ts starts entries from it when it is there.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { transpileFile } from './ts-hooks.mjs';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BUILD_DIR = join(ROOT, 'node_modules/.cache/test-build');
const SKIP = new Set(['node_modules', 'browser', 'tmp', 'data', '.git']);
// Non-TypeScript files the code reads at run time, relative to its own location.
const LINKED = ['lib/gateway/dashboard/public'];

function* tsFiles(dir, recurse) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory() && recurse && !SKIP.has(entry.name)) yield* tsFiles(path, true);
    else if (entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

/** Brings BUILD_DIR up to date with the sources; returns its path. */
export function buildForChildren() {
  const sources = [...tsFiles(ROOT, false), ...['lib', 'test', 'bench', 'scripts'].flatMap((d) => (existsSync(join(ROOT, d)) ? [...tsFiles(join(ROOT, d), true)] : []))];
  for (const source of sources) {
    const target = join(BUILD_DIR, `${relative(ROOT, source).slice(0, -3)}.js`);
    const code = transpileFile(source);
    let current;
    try {
      current = readFileSync(target, 'utf8');
    } catch {
      mkdirSync(dirname(target), { recursive: true });
    }
    if (current !== code) writeFileSync(target, code);
  }
  for (const dir of LINKED) {
    const link = join(BUILD_DIR, dir);
    if (!existsSync(link)) {
      mkdirSync(dirname(link), { recursive: true });
      symlinkSync(join(ROOT, dir), link, 'dir');
    }
  }
  copyFileSync(join(ROOT, 'package.json'), join(BUILD_DIR, 'package.json'));
  return BUILD_DIR;
}
