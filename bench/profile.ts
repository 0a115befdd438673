// Reads a V8 .cpuprofile (from `node --cpu-prof`) and lists where the time went, by function.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  /** µs on the monotonic clock that process.hrtime reads too, in any process of the machine. */
  startTime: number;
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface HotModule {
  /** `node:http`, a package name, a repo file, or `(native)` / `(garbage collector)` / `(program)`. */
  module: string;
  selfMs: number;
  selfPct: number;
}

export interface HotFunction {
  name: string;
  /** File, shortened: repo-relative, or `pkg:<name>` inside node_modules, or `node:<module>`. */
  where: string;
  selfMs: number;
  selfPct: number;
}

function shorten(url: string, root: string): string {
  if (!url) return '';
  const path = url.replace(/^file:\/\//, '');
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(path);
  if (pkg) return `${pkg[1]}/${pkg[2]}`;
  return path.startsWith(root) ? path.slice(root.length) : path;
}

/** A span of the monotonic clock, in µs (`process.hrtime.bigint() / 1000n`). */
export interface Window {
  fromUs: number;
  toUs: number;
}

/**
 * Self time per function (samples where it was on top of the stack), largest first. With a
 * window, only samples taken inside it count: the load, not the start-up's module loading.
 */
export function hotFunctions(file: string, root: string, top = 15, window?: Window): { totalMs: number; functions: HotFunction[]; modules: HotModule[] } {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byNode = new Map<number, ProfileNode>(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<string, { name: string; where: string; us: number }>();
  const moduleUs = new Map<string, number>();
  let totalUs = 0;
  let at = profile.startTime;
  profile.samples.forEach((id, i) => {
    const node = byNode.get(id);
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (!node || (window && (at < window.fromUs || at > window.toUs))) return;
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url ? `${shorten(url, root)}:${lineNumber + 1}` : '';
    const key = `${functionName}|${where}`;
    const entry = selfUs.get(key) ?? { name: functionName || '(anonymous)', where, us: 0 };
    entry.us += delta;
    selfUs.set(key, entry);
    if (functionName !== '(idle)') {
      const module = moduleOf(url, functionName, root);
      moduleUs.set(module, (moduleUs.get(module) ?? 0) + delta);
    }
    totalUs += delta;
  });
  // Idle time is the process waiting, not working: leave it out of the shares.
  const idle = [...selfUs.values()].filter((e) => e.name === '(idle)').reduce((a, e) => a + e.us, 0);
  const busyUs = totalUs - idle;
  const functions = [...selfUs.values()]
    .filter((e) => e.name !== '(idle)')
    .sort((a, b) => b.us - a.us)
    .slice(0, top)
    .map((e) => ({ name: e.name, where: e.where, selfMs: e.us / 1000, selfPct: busyUs > 0 ? (e.us / busyUs) * 100 : 0 }));
  const modules = [...moduleUs.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([module, us]) => ({ module, selfMs: us / 1000, selfPct: busyUs > 0 ? (us / busyUs) * 100 : 0 }));
  return { totalMs: busyUs / 1000, functions, modules };
}

/** Where a function lives, coarsely: the package or node module, or our own file. */
function moduleOf(url: string, functionName: string, root: string): string {
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return url.replace(/^node:internal\//, 'node:').split('/')[0];
  const path = url.replace(/^file:\/\//, '');
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(path);
  if (pkg) return pkg[1];
  return path.startsWith(root) ? path.slice(root.length) : path;
}
