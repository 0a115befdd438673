// The README is a front page (short, with the prerequisites on its first screen), and no link of
// the README or of docs/ leads nowhere: every relative link names a file that exists, and every
// #anchor a heading of the file it points into.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = join(ROOT, 'README.md');
const DOCS = [README, ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join(ROOT, 'docs', f))];
/** The README's first screen: what someone sees before scrolling. */
const FIRST_SCREEN_LINES = 50;

/** The text outside fenced code blocks, where Markdown links and headings are. */
function prose(markdown: string): string {
  return markdown.replace(/^```[^\n]*\n[\s\S]*?^```$/gm, '');
}

/** GitHub's anchors of a file's headings: lower-cased, punctuation dropped, spaces as dashes, repeats numbered. */
function anchorsOf(file: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  for (const m of prose(readFileSync(file, 'utf8')).matchAll(/^#{1,6} (.+)$/gm)) {
    const base = m[1].trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Every relative link target (`[text](target)`, `![alt](target)`) of a Markdown file. */
function linksOf(file: string): string[] {
  const text = prose(readFileSync(file, 'utf8')).replace(/`[^`\n]*`/g, '');
  return [...text.matchAll(/!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]).filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t));
}

describe('README and docs/', () => {
  test('the README is under 300 lines and names Node 20 and what each optional service adds on its first screen', () => {
    const lines = readFileSync(README, 'utf8').split('\n');
    assert.ok(lines.length < 300, `README.md has ${lines.length} lines`);
    const first = lines.slice(0, FIRST_SCREEN_LINES).join('\n');
    assert.match(first, /^## Prerequisites/m);
    for (const word of ['Node 20', 'PostgreSQL', 'Redis', 'Chromium', 'Docker']) assert.ok(first.includes(word), `${word} on the first screen`);
  });

  test('every relative link in README.md and docs/*.md points to a file that exists, and its anchor to a heading there', () => {
    const broken: string[] = [];
    let checked = 0;
    for (const file of DOCS) {
      for (const target of linksOf(file)) {
        checked++;
        const [path, anchor] = target.split('#', 2) as [string, string | undefined];
        const into = path === '' ? file : resolve(dirname(file), decodeURI(path));
        const where = `${relative(ROOT, file)}: ${target}`;
        if (!existsSync(into)) broken.push(`${where} (no such file)`);
        else if (anchor !== undefined && into.endsWith('.md') && !anchorsOf(into).has(anchor)) broken.push(`${where} (no such heading)`);
      }
    }
    assert.deepEqual(broken, []);
    assert.ok(checked >= 10, `only ${checked} links found: is the link pattern still right?`);
  });

  test('the README links to each document of docs/', () => {
    const readme = readFileSync(README, 'utf8');
    for (const file of DOCS.filter((f) => f !== README)) assert.ok(readme.includes(`](docs/${relative(join(ROOT, 'docs'), file)}`), `README.md links to ${relative(ROOT, file)}`);
  });
});
