// `npm test`: every test file. Arguments replace the default list of test files. The type check
// is `npm run lint`'s (CI runs it first): on 2 cores the suite is bound by CPU, and the check's
// seconds of CPU were taken from the tests.
//   node test/run.mjs                      everything
//   node test/run.mjs test/users.test.ts   one file
//   TEST_WORKERS=1 node test/run.mjs       one worker: the files one after another
//
// The files run in a few worker processes (test/support/worker.mjs), each worker running one file
// at a time and asking for the next when it is done, longest files first (by the last run's
// times), so the workers end together. A process per file (`node --test`) loaded the project's
// modules, express, zod and OpenTelemetry once per file, which was most of the suite's CPU time.
// Files share a worker's process one after another, never at the same time: a file must close
// what it opens (its `after` hooks), as it had to before.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { buildForChildren } from './support/build.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CACHE = `${ROOT}node_modules/.cache/`;
const TIMES_FILE = `${CACHE}test-times.json`;
const testFiles = (dir) => readdirSync(new URL(`../${dir}/`, import.meta.url)).filter((f) => f.endsWith('.test.ts')).sort().map((f) => `${dir}/${f}`);
const files = process.argv.length > 2 ? process.argv.slice(2) : [...testFiles('test'), ...testFiles('test/attacks')];
// Most files wait on sockets, timers and child processes, so more workers than cores keep the cores busy.
const workerCount = Math.min(files.length, Number(process.env.TEST_WORKERS) || availableParallelism() + 2);
// A worker fails a file after this (worker.mjs); one that prints nothing for longer is killed.
const FILE_TIMEOUT_MS = 120_000;
const color = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code, text) => (color ? `\x1b[${code}m${text}\x1b[39m` : text);

function readTimes() {
  try {
    return JSON.parse(readFileSync(TIMES_FILE, 'utf8'));
  } catch {
    return {};
  }
}

// The processes the tests start run from JavaScript built once here (test/support/build.mjs).
const buildDir = buildForChildren();
const times = readTimes();
// A file never timed (a fresh clone) goes first, and first among those one that starts processes:
// those are the long ones, and a long file that starts last makes the run end late.
const startsProcesses = (file) => /\b(spawn|spawnService)\(/.test(readFileSync(`${ROOT}${file}`, 'utf8'));
const guess = (file) => times[file] ?? (startsProcesses(file) ? Infinity : Number.MAX_VALUE);
const queue = [...files].sort((a, b) => guess(b) - guess(a) || a.localeCompare(b));
const totals = { tests: 0, suites: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0, todo: 0 };
const failures = [];
// `{ what: 'file › suite', reason }` of each suite or test skipped (a missing PostgreSQL, Redis or Chromium:
// test/support/services.ts), repeated after the totals so that a skip is never missed.
const skips = [];
const problems = [];
const started = performance.now();

const FILE_END = /^([✔✖]) (\S+\.test\.ts) \(([\d.]+)ms\)/;
const SKIPPED = /^\s+﹣ (.+) \([\d.]+ms\) # (.+)$/u;
const SUMMARY = /^ℹ (tests|suites|pass|fail|cancelled|skipped|todo) (\d+)$/;
const ANSI = /\x1b\[[0-9;]*m/g;

function paintLine(line) {
  return line.replace(/^(\s*)([✔✖﹣ℹ▶])/u, (_, space, mark) => space + paint({ '✔': 32, '✖': 31, '﹣': 90, ℹ: 34, '▶': 39 }[mark], mark));
}

function startWorker() {
  const child = spawn(process.execPath, ['--import', './test/support/ts-register.mjs', '--test-reporter=spec', 'test/support/worker.mjs'], {
    cwd: ROOT,
    env: { ...process.env, TEST_FILE_TIMEOUT_MS: String(FILE_TIMEOUT_MS), TEST_BUILD_DIR: buildDir },
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  const worker = { child, current: undefined, ran: [], summary: false, block: [], failing: null, silentSince: performance.now() };
  let partial = '';
  const onLine = (raw) => {
    worker.silentSince = performance.now();
    const line = raw.replace(ANSI, '');
    if (worker.failing) {
      worker.failing.push(line);
      return;
    }
    if (line === '✖ failing tests:') {
      worker.failing = [];
      return;
    }
    const summary = SUMMARY.exec(line);
    if (summary) {
      // node counts a skipped test but not a skipped suite: `skipped` is counted from the lines below.
      if (summary[1] !== 'skipped') totals[summary[1]] += Number(summary[2]);
      worker.summary = true;
      return;
    }
    if (line.startsWith('ℹ duration_ms ')) return;
    worker.block.push(line);
    const end = FILE_END.exec(line);
    if (end) {
      // A file's lines are printed together, never mixed with another worker's.
      process.stdout.write(`${worker.block.map(paintLine).join('\n')}\n`);
      for (const skipped of worker.block.map((l) => SKIPPED.exec(l)).filter(Boolean)) skips.push({ what: `${end[2]} › ${skipped[1]}`, reason: skipped[2] });
      worker.block = [];
      times[end[2]] = Math.round(Number(end[3]));
    }
  };
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop();
    for (const l of lines) onLine(l);
  });
  child.on('message', (message) => {
    if (!message?.ready) return;
    worker.current = queue.shift();
    if (worker.current) {
      worker.ran.push(worker.current);
      child.send({ file: worker.current });
    }
    else child.disconnect();
  });
  worker.exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      if (partial) onLine(partial);
      if (worker.block.length) process.stdout.write(`${worker.block.map(paintLine).join('\n')}\n`);
      if (worker.failing) failures.push(worker.failing.join('\n').trim());
      resolve();
      if (code === 0 && worker.summary) return;
      if (!worker.summary && worker.current) {
        // It died inside a file (a process.exit, a crash): that file fails, the others go on.
        problems.push(`${worker.current}: its worker exited (${code ?? signal}) before the file ended`);
        totals.fail++;
        if (queue.length) workers.push(startWorker());
      } else if (!worker.summary) {
        problems.push(`the worker that ran ${worker.ran.join(', ')} exited (${code ?? signal}) without its summary (see the lines above)`);
      } else if (code !== 0 && totals.fail === 0) {
        problems.push(`a worker exited ${code ?? signal}`);
      }
    });
  });
  return worker;
}

const workers = Array.from({ length: workerCount }, startWorker);
const watchdog = setInterval(() => {
  for (const w of workers) {
    // After its last file a worker has EXIT_GRACE_MS (worker.mjs) to exit; one that cannot is stuck.
    const limit = w.child.connected ? FILE_TIMEOUT_MS + 30_000 : 15_000;
    if (w.child.exitCode === null && w.child.signalCode === null && performance.now() - w.silentSince > limit) {
      problems.push(`${w.current ?? `the worker that ran ${w.ran.join(', ')}`}: nothing printed for ${limit / 1000} s; the worker was killed`);
      w.current = undefined;
      w.child.kill('SIGKILL');
    }
  }
}, 5_000);
// Workers started to replace a dead one are added to the list while we wait.
for (let i = 0; i < workers.length; i++) await workers[i].exited;
clearInterval(watchdog);

try {
  mkdirSync(CACHE, { recursive: true });
  writeFileSync(TIMES_FILE, `${JSON.stringify(times, null, 1)}\n`);
} catch {
  // only a hint for the next run's order
}

totals.skipped = skips.length;
console.log(Object.entries(totals).map(([k, v]) => paintLine(`ℹ ${k} ${v}`)).join('\n'));
console.log(paintLine(`ℹ duration_ms ${Math.round(performance.now() - started)} (${workerCount} workers)`));
const skipsByReason = new Map();
for (const s of skips.sort((a, b) => a.what.localeCompare(b.what))) skipsByReason.set(s.reason, [...(skipsByReason.get(s.reason) ?? []), s]);
for (const [reason, list] of skipsByReason) console.log(`\n${paint(90, '﹣')} skipped: ${reason}\n${list.map((s) => `    ${s.what}`).join('\n')}`);
for (const f of failures) console.log(`\n${paint(31, '✖ failing tests:')}\n\n${f}`);
for (const p of problems) console.error(`\n${paint(31, '✖')} ${p}`);

const testsOk = totals.fail === 0 && totals.cancelled === 0 && problems.length === 0;
if (!testsOk) console.error('\ntests failed');
process.exitCode = testsOk ? 0 : 1;
