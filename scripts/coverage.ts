// npm run coverage: `npm test` with V8's coverage, then the line, branch and function coverage of
// each directory of lib/, every figure checked against its floor in scripts/coverage-floors.json
// (today's figures rounded down): one that falls fails the run, so coverage can only rise. CI
// runs this in place of `npm test`.
//   npm run coverage                            every test file, floors checked
//   npm run coverage -- test/users.test.ts      those files only: the table, no floors
// Each process of the run writes its coverage (NODE_V8_COVERAGE is inherited by the test workers
// and by the services the tests start): the worker that loads lib/ through the TypeScript hooks,
// and the services started from the JavaScript test/support/build.mjs writes, whose source maps
// lead back to lib/. c8 turns them into coverage of the .ts files; the per-file report is in
// coverage/coverage-summary.json.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const REPORT_DIR = join(ROOT, 'coverage');
const FLOORS_FILE = join(ROOT, 'scripts/coverage-floors.json');
// The directories of the table; a file counts in the one its path starts with.
const DIRECTORIES = ['lib/gateway', 'lib/platform', 'lib/orders', 'lib/products', 'lib/users', 'lib/demo'];
// The dashboard's page script runs in the browser (npm run test:browser), never in node.
const BROWSER_CODE = 'lib/gateway/dashboard/public/**';
const METRICS = ['lines', 'branches', 'functions'] as const;
type Metric = (typeof METRICS)[number];
type Figures = Record<Metric, number>;

const ROOT_URL = pathToFileURL(ROOT).href.replace(/\/?$/, '/');
const LIB_URL = pathToFileURL(join(ROOT, 'lib')).href + '/';
// test/support/build.mjs writes lib/x.ts as <BUILD>/lib/x.js with a source map naming <BUILD>/lib/x.ts.
const BUILD_URL = pathToFileURL(join(ROOT, 'node_modules/.cache/test-build')).href + '/';
const BUILD_LIB_URL = `${BUILD_URL}lib/`;

interface RawCoverage {
  result: { url: string }[];
  'source-map-cache'?: Record<string, { data?: { sources?: string[] } }>;
}

function run(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: 'inherit' });
  return once(child, 'exit').then(([code]) => (code as number | null) ?? 1);
}

/**
 * Keeps only lib/'s modules in each process's file (the rest, node_modules and the tests, is most
 * of its size and would only be parsed to be dropped), and points the built copies' source maps
 * at the sources in lib/, so that both count as the same file.
 */
function keepLib(rawDir: string): void {
  for (const name of readdirSync(rawDir).filter((n) => n.endsWith('.json'))) {
    const path = join(rawDir, name);
    const raw = JSON.parse(readFileSync(path, 'utf8')) as RawCoverage;
    const ours = (url: string) => url.startsWith(LIB_URL) || url.startsWith(BUILD_LIB_URL);
    raw.result = raw.result.filter((r) => ours(r.url));
    const maps = raw['source-map-cache'] ?? {};
    for (const url of Object.keys(maps)) {
      if (!ours(url)) delete maps[url];
      else if (maps[url].data?.sources) maps[url].data.sources = maps[url].data.sources.map((s) => (s.startsWith(BUILD_URL) ? ROOT_URL + s.slice(BUILD_URL.length) : s));
    }
    writeFileSync(path, JSON.stringify(raw));
  }
}

function c8Bin(): string {
  try {
    return fileURLToPath(import.meta.resolve('c8/bin/c8.js'));
  } catch {
    process.stderr.write('npm run coverage: c8 is not installed (npm ci installs it with the dev dependencies)\n');
    process.exit(1);
  }
}

interface Summary { [file: string]: Record<Metric, { total: number; covered: number }> }

function byDirectory(summary: Summary): Map<string, Figures> {
  const sums = new Map(DIRECTORIES.map((d) => [d, Object.fromEntries(METRICS.map((m) => [m, { total: 0, covered: 0 }])) as Record<Metric, { total: number; covered: number }>]));
  for (const [file, figures] of Object.entries(summary)) {
    if (file === 'total') continue;
    const path = relative(ROOT, file).split(sep).join('/');
    const dir = DIRECTORIES.find((d) => path.startsWith(`${d}/`));
    if (!dir) continue;
    for (const m of METRICS) {
      sums.get(dir)![m].total += figures[m].total;
      sums.get(dir)![m].covered += figures[m].covered;
    }
  }
  // A directory without a branch or a function is fully covered in that respect.
  const pct = ({ total, covered }: { total: number; covered: number }) => (total === 0 ? 100 : Math.floor((covered / total) * 10_000) / 100);
  return new Map([...sums].map(([dir, s]) => [dir, Object.fromEntries(METRICS.map((m) => [m, pct(s[m])])) as Figures]));
}

const files = process.argv.slice(2);
const rawDir = mkdtempSync(join(tmpdir(), 'msvc-coverage-'));
// Failed until the report is made.
process.exitCode = 1;
try {
  const testsCode = await run(['test/run.mjs', ...files], { ...process.env, NODE_V8_COVERAGE: rawDir });
  keepLib(rawDir);
  rmSync(REPORT_DIR, { recursive: true, force: true });
  const reportCode = await run(
    [c8Bin(), 'report', '--temp-directory', rawDir, '--report-dir', REPORT_DIR, '--reporter', 'json-summary', '--all', '--src', 'lib', '--include', 'lib/**', '--exclude', BROWSER_CODE, '--exclude-node-modules=false', '--exclude-after-remap'],
    process.env,
  );
  if (reportCode !== 0) throw new Error(`c8 report exited ${reportCode}`);
  const figures = byDirectory(JSON.parse(readFileSync(join(REPORT_DIR, 'coverage-summary.json'), 'utf8')) as Summary);
  const floors = files.length === 0 ? (JSON.parse(readFileSync(FLOORS_FILE, 'utf8')) as Record<string, Figures>) : undefined;

  const below: string[] = [];
  const cell = (dir: string, m: Metric) => {
    const value = figures.get(dir)![m];
    const floor = floors?.[dir]?.[m];
    if (floors && (floor === undefined || value < floor)) below.push(`${dir} ${m}: ${value} % ${floor === undefined ? 'has no floor' : `< its floor ${floor} %`}`);
    return `${value.toFixed(2).padStart(7)}${floor === undefined ? '' : ` (${String(floor).padStart(2)})`}`;
  };
  const width = floors ? 13 : 9;
  process.stdout.write(`\n${(floors ? 'coverage % (floor)' : 'coverage %').padEnd(20)}${METRICS.map((m) => m.padStart(7).padEnd(width)).join('')}\n`);
  for (const dir of DIRECTORIES) process.stdout.write(`${dir.padEnd(20)}${METRICS.map((m) => cell(dir, m).padEnd(width)).join('')}\n`);
  process.stdout.write(`per file: ${relative(ROOT, join(REPORT_DIR, 'coverage-summary.json'))}\n`);
  for (const line of below) process.stderr.write(`✖ coverage ${line}\n`);
  if (below.length) process.stderr.write('coverage fell below its floor: add the tests (a floor is raised by hand in scripts/coverage-floors.json, never lowered)\n');
  process.exitCode = testsCode !== 0 ? testsCode : below.length ? 1 : 0;
} finally {
  rmSync(rawDir, { recursive: true, force: true });
}
