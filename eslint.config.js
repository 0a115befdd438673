// Lint for every TypeScript file: ESLint's and typescript-eslint's recommended rules, with the
// type-aware ones (a promise nobody awaits, an `any` leaking through, a misused async callback).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  { ignores: ['node_modules/', 'data/', 'logs/', 'bench/tmp/', 'test/browser/artifacts/', 'dist/', 'coverage/'] },
  {
    files: ['**/*.ts'],
    extends: [js.configs.recommended, tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // node:test's describe() and test() return promises the runner itself waits for.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'test', 'it', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] }],
      }],
      // `_name` marks a binding kept on purpose (an Express error handler's fourth argument, a
      // field left out of a rest object).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // The dashboard's page script, served as a file to the browser: plain ES modules, no build.
    files: ['lib/gateway/dashboard/public/*.js'],
    extends: [js.configs.recommended],
    languageOptions: {
      sourceType: 'module',
      globals: Object.fromEntries(['document', 'sessionStorage', 'fetch', 'AbortController', 'TextDecoderStream', 'FormData', 'URLSearchParams', 'setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'console', 'location'].map((name) => [name, 'readonly'])),
    },
  },
  {
    // Tests read answers of any shape (`body: any` in the HTTP helper) and assert on them.
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
);
