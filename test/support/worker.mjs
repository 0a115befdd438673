// One worker of `npm test` (test/run.mjs starts a few): runs the test files the runner hands it
// over IPC, one after another in this one process, each as a suite named after its file, so the
// file's own top-level hooks (`before`, `after`) are that suite's. Loading the project's modules
// once per worker rather than once per file is most of what a process per file cost.
//   node --import ./test/support/ts-register.mjs --test-reporter=spec test/support/worker.mjs
import { describe } from 'node:test';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

// A file still running after this fails (a hung request or hook), and the worker goes on with the next.
const FILE_TIMEOUT_MS = Number(process.env.TEST_FILE_TIMEOUT_MS) || 120_000;
// Once the runner has no more files, every handle should be closed by the files' `after` hooks;
// one still open after this would hold the worker forever.
const EXIT_GRACE_MS = 5_000;

if (!process.send) throw new Error('worker.mjs is started by test/run.mjs, with an IPC channel');

process.on('message', (message) => {
  const file = message?.file;
  if (typeof file !== 'string') return;
  // The suite's promise settles once the file's tests and hooks have all ended: then the next one.
  void describe(file, { timeout: FILE_TIMEOUT_MS }, async () => {
    await import(pathToFileURL(resolve(file)).href);
  }).finally(() => process.send?.({ ready: true }));
});

process.once('disconnect', () => {
  setTimeout(() => {
    console.error(`\n✖ a handle was still open ${EXIT_GRACE_MS} ms after the last file ended: ${process.getActiveResourcesInfo().join(', ')}`);
    process.exit(1);
  }, EXIT_GRACE_MS).unref();
});

process.send({ ready: true });
