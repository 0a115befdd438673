// Runs one of the entry files as a child process, as a user would, on port 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The TypeScript loader the tests run under (tsx's job, at a fraction of its start-up cost). */
export const TS_LOADER = new URL('./support/ts-register.mjs', import.meta.url).href;

/**
 * Node's arguments to run the .ts file `entry` (relative to the project): its JavaScript from
 * TEST_BUILD_DIR when `npm test` built it there (test/support/build.mjs: no module hooks to pay
 * for at start), else the .ts file under the TypeScript loader.
 */
export function nodeArgs(entry: string): string[] {
  const dir = process.env.TEST_BUILD_DIR;
  const built = dir ? join(dir, entry.replace(/\.ts$/, '.js')) : undefined;
  return built && existsSync(built) ? ['--enable-source-maps', built] : ['--import', TS_LOADER, entry];
}

export interface ChildService {
  child: ChildProcess;
  url: string;
  /** Every line the process printed so far (stdout and stderr). */
  output: () => string;
  /** Sends a signal and resolves with the exit code (or signal name). */
  stop: (signal?: NodeJS.Signals) => Promise<number | string>;
}

/**
 * Starts `<entry>` as `npx tsx <entry>` would, with `env` (PORT defaults to 0) and resolves once it logs `listening`
 * with its URL. Rejects if it exits first or takes longer than 20 s.
 */
export async function spawnService(entry: string, env: Record<string, string>): Promise<ChildService> {
  const child = spawn(process.execPath, nodeArgs(entry), {
    cwd: ROOT,
    // The lowest password hash cost: scrypt's work at each seeded start is not what tests test.
    env: { ...process.env, PORT: '0', LOG_PRETTY: 'false', LOG_LEVEL: 'info', PASSWORD_HASH_COST: '1024', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = once(child, 'exit').then(([code, signal]) => (code ?? signal) as number | string);
  const url = await new Promise<string>((resolve, reject) => {
    // A child that never listens is killed, so a failed start leaves no process behind.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${entry} did not start in 20 s:\n${out}`));
    }, 20_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /"url":"(http:\/\/[^"]+)"[^\n]*"msg":"listening"/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${entry} exited (${code}) before listening:\n${out}`));
    });
  });
  return {
    child,
    url,
    output: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
  pid: number;
}

/**
 * Runs Node with `args` from the project's root until it exits (killed after `timeoutMs`), for
 * scripts and entries a test expects to end by themselves; resolves with the code and the output.
 */
export async function runToExit(args: string[], { env = {}, timeoutMs = 20_000, detached = false }: { env?: Record<string, string>; timeoutMs?: number; detached?: boolean } = {}): Promise<Finished> {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    detached,
    env: { ...process.env, LOG_PRETTY: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr, pid: child.pid! };
}
