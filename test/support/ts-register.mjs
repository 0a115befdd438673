// Loads the project's TypeScript in tests and in the processes tests start:
//   node --import ./test/support/ts-register.mjs --test test/x.test.ts
// It does what `tsx` does for this code base (ESM only, `./x.js` imports naming `./x.ts`) at a
// fraction of tsx's start-up cost, which every test file and every spawned service pays once.
import { register } from 'node:module';

// Stack traces point at the .ts lines (each transpiled file carries an inline source map).
process.setSourceMapsEnabled(true);
register('./ts-hooks.mjs', import.meta.url);
