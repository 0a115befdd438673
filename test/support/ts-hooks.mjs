// Module hooks behind ts-register.mjs. A relative `.js` import from a .ts file resolves to the .ts
// file beside it when there is one (TypeScript's NodeNext convention); .ts files are transpiled by
// TypeScript's own transpileModule (no type check: `npm run typecheck` does that) and kept in
// node_modules/.cache/ts-hooks, one file per source path, so the cache never outgrows the tree and
// TypeScript itself is loaded only when a file changed.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const CACHE = fileURLToPath(new URL('../../node_modules/.cache/ts-hooks/', import.meta.url));
/** @type {typeof import('typescript') | undefined} */
let ts;

function isRelative(specifier) {
  return specifier.startsWith('./') || specifier.startsWith('../') || specifier.startsWith('/') || specifier.startsWith('file:');
}

export async function resolve(specifier, context, nextResolve) {
  if (specifier.endsWith('.js') && context.parentURL?.endsWith('.ts') && isRelative(specifier)) {
    const url = new URL(`${specifier.slice(0, -3)}.ts`, context.parentURL);
    if (existsSync(url)) return { url: url.href, format: 'module', shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

function transpile(path, source) {
  ts ??= createRequireTs();
  return ts.transpileModule(source, {
    fileName: path,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      verbatimModuleSyntax: true,
      inlineSourceMap: true,
      inlineSources: true,
    },
  }).outputText;
}

function createRequireTs() {
  // Loaded lazily: only a changed file pays TypeScript's own start-up.
  return createRequire(import.meta.url)('typescript');
}

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !(url.endsWith('.ts') || url.endsWith('.mts'))) return nextLoad(url, context);
  return { format: 'module', source: transpileFile(fileURLToPath(url)), shortCircuit: true };
}

/** The JavaScript of the .ts file at `path`, from the cache when its source has not changed. */
export function transpileFile(path) {
  const source = readFileSync(path, 'utf8');
  const digest = createHash('sha1').update(source).digest('hex');
  const cached = `${CACHE}${createHash('sha1').update(path).digest('hex')}.js`;
  try {
    const text = readFileSync(cached, 'utf8');
    const header = `// ${digest}\n`;
    if (text.startsWith(header)) return text.slice(header.length);
  } catch {
    // not cached yet
  }
  const code = transpile(path, source);
  // Written whole under a unique name, then renamed: parallel test processes never read half a file.
  mkdirSync(CACHE, { recursive: true });
  const temp = `${cached}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  writeFileSync(temp, `// ${digest}\n${code}`);
  renameSync(temp, cached);
  return code;
}
