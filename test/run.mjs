// `npm test`: the type check and every test file at once, so the wall time is the longer of the
// two, not their sum. Fails when either fails. Arguments replace the default list of test files.
//   node test/run.mjs                      everything
//   node test/run.mjs test/users.test.ts   one file (still type-checked)
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const testFiles = (dir) => readdirSync(new URL(`../${dir}/`, import.meta.url)).filter((f) => f.endsWith('.test.ts')).sort().map((f) => `${dir}/${f}`);
const files = process.argv.length > 2 ? process.argv.slice(2) : [...testFiles('test'), ...testFiles('test/attacks')];
// Most tests wait on sockets and child processes, so more files than cores keep the cores busy.
const concurrency = String(Math.max(2, availableParallelism() + 1));

function run(command, args) {
  const child = spawn(command, args, { cwd: ROOT, stdio: 'inherit' });
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal));
    child.once('error', (err) => resolve(err.message));
  });
}

// The incremental build info lets an unchanged tree be checked in a third of the time.
const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
const [typecheck, tests] = await Promise.all([
  run(process.execPath, [tsc, '--noEmit', '--incremental', '--tsBuildInfoFile', 'node_modules/.cache/tsc/test.tsbuildinfo']),
  // A file that never ends (a handle left open after a failure) fails after 2 minutes instead of
  // holding the run forever; the slowest file takes about 10 s.
  run(process.execPath, ['--import', './test/support/ts-register.mjs', '--test', `--test-concurrency=${concurrency}`, '--test-timeout=120000', ...files]),
]);
if (typecheck !== 0) console.error(`\ntypecheck failed (${typecheck})`);
if (tests !== 0) console.error(`\ntests failed (${tests})`);
process.exitCode = typecheck === 0 && tests === 0 ? 0 : 1;
