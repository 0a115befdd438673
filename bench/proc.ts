// What the kernel says about our processes and the host: CPU time, memory, steal, affinity.
// /proc works the same for Node and nginx, so every process is measured the same way.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';

/** Clock ticks per second of /proc/<pid>/stat's utime and stime. */
export function clockTicksPerSecond(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** utime + stime of every thread of `pid`, in clock ticks; undefined once the process is gone. */
export function cpuTicks(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Resident set size in bytes. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export interface HostCpu {
  /** All clock ticks of all CPUs (guest time is already inside user time). */
  total: number;
  /** Idle and waiting for I/O. */
  idle: number;
  /** Interrupt handling, mostly the loopback network stack our own requests go through. */
  interrupts: number;
  steal: number;
}

export function hostCpu(): HostCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).slice(1, 9).map(Number);
  return { total: user + nice + system + idle + iowait + irq + softirq + steal, idle: idle + iowait, interrupts: irq + softirq, steal };
}

/** Share of the host's CPU time the hypervisor took between two samples, in percent. */
export function stealPercent(before: HostCpu, after: HostCpu): number {
  const total = after.total - before.total;
  return total > 0 ? ((after.steal - before.steal) / total) * 100 : 0;
}

/**
 * Share of the host's CPU time used by processes other than ours (`ownTicks`) between two
 * samples, in percent of all CPUs: other people's work on a shared machine. Interrupt time is
 * left out: on loopback it is mostly our own requests crossing the network stack.
 */
export function foreignPercent(before: HostCpu, after: HostCpu, ownTicks: number): number {
  const total = after.total - before.total;
  if (total <= 0) return 0;
  const busy = total - (after.idle - before.idle) - (after.steal - before.steal) - (after.interrupts - before.interrupts);
  return Math.max(0, ((busy - ownTicks) / total) * 100);
}

/** Direct children of `pid` (nginx's workers), found through each process's parent pid. */
export function childPids(pid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // The process ended while we listed /proc.
    }
  }
  return found;
}

/**
 * The TCP ports `pid` listens on (IPv4 and IPv6), from its open sockets and the kernel's socket
 * tables: how a process started with PORT=0 is found without reading its output.
 */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // The descriptor closed while we listed them.
      }
    }
  } catch {
    return [];
  }
  const ports: number[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let lines: string[];
    try {
      lines = readFileSync(table, 'utf8').split('\n').slice(1);
    } catch {
      continue;
    }
    for (const line of lines) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      if (fields[3] === '0A' /* LISTEN */ && inodes.has(fields[9] ?? '')) ports.push(parseInt(fields[1].split(':')[1], 16));
    }
  }
  return ports;
}

export function hasTaskset(): boolean {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Moves every thread of `pid` to the CPUs in `cpuList` (taskset syntax, e.g. `0` or `1-3`). */
export function setAffinity(pid: number, cpuList: string): void {
  execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(pid)], { stdio: 'ignore' });
}

export interface Machine {
  cores: number;
  cpuModel: string;
  node: string;
  platform: string;
  kernel: string;
  memoryGb: number;
}

export function describeMachine(): Machine {
  return {
    cores: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${os.type()} ${os.arch()}`,
    kernel: os.release(),
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
  };
}
