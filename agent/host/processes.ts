/**
 * Which processes keep a filesystem busy: a scan of /proc/PID/{fd,cwd,root,exe} and the file
 * mappings in /proc/PID/maps, matched by the filesystem's device number. (fuser -m does the same,
 * but psmisc is not installed by default.) Also which processes have a block device itself open.
 */
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { devNoString } from './mounts.js';

export interface ProcessUse {
  pid: number;
  command: string;
}

async function commandOf(procRoot: string, pid: number): Promise<string> {
  try {
    return (await readFile(`${procRoot}/${pid}/comm`, 'utf8')).trim();
  } catch {
    return '?';
  }
}

async function pids(procRoot: string): Promise<number[]> {
  const names = await readdir(procRoot);
  return names.filter((n) => /^\d+$/.test(n)).map(Number);
}

/** Does this /proc link point at a file whose st_dev is devNo (or, with rdev, a device node with that number)? */
async function linkMatches(path: string, devNo: string, which: 'dev' | 'rdev'): Promise<boolean> {
  try {
    const st = await stat(path);
    if (which === 'rdev') return st.isBlockDevice() && devNoString(st.rdev) === devNo;
    return devNoString(st.dev) === devNo;
  } catch {
    return false; // the process or fd went away, or it is a socket/pipe: not ours
  }
}

async function mapsMatch(procRoot: string, pid: number, devNo: string): Promise<boolean> {
  try {
    const maps = await readFile(`${procRoot}/${pid}/maps`, 'utf8');
    const [maj, min] = devNo.split(':').map(Number);
    // maps shows the device as hex "major:minor" in field 4, e.g. "07:00".
    for (const line of maps.split('\n')) {
      const f = line.split(/\s+/);
      if (f.length < 6 || f[4] === '0') continue;
      const [a, b] = (f[3] ?? '').split(':').map((x) => parseInt(x, 16));
      if (a === maj && b === min) return true;
    }
  } catch {
    // gone
  }
  return false;
}

/** Processes using files on the filesystem whose device number is devNo (except ourselves). */
export async function processesOnFilesystem(devNo: string, procRoot = '/proc'): Promise<ProcessUse[]> {
  return scan(procRoot, async (pid) => {
    for (const l of ['cwd', 'root', 'exe']) if (await linkMatches(`${procRoot}/${pid}/${l}`, devNo, 'dev')) return true;
    if (await anyFd(procRoot, pid, (p) => linkMatches(p, devNo, 'dev'))) return true;
    return mapsMatch(procRoot, pid, devNo);
  });
}

/** Processes that have the block device itself open (e.g. a dd, a qemu, another agent's hold). */
export async function processesWithDeviceOpen(devNo: string, procRoot = '/proc'): Promise<ProcessUse[]> {
  return scan(procRoot, (pid) => anyFd(procRoot, pid, (p) => linkMatches(p, devNo, 'rdev')));
}

async function anyFd(procRoot: string, pid: number, test: (path: string) => Promise<boolean>): Promise<boolean> {
  let fds: string[];
  try {
    fds = await readdir(`${procRoot}/${pid}/fd`);
  } catch {
    return false;
  }
  for (const fd of fds) {
    // readlink first: cheap to skip pipes, sockets and anon inodes without a stat.
    let target: string;
    try {
      target = await readlink(`${procRoot}/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!target.startsWith('/')) continue;
    if (await test(`${procRoot}/${pid}/fd/${fd}`)) return true;
  }
  return false;
}

async function scan(procRoot: string, test: (pid: number) => Promise<boolean>): Promise<ProcessUse[]> {
  const out: ProcessUse[] = [];
  for (const pid of await pids(procRoot)) {
    if (await test(pid)) out.push({ pid, command: await commandOf(procRoot, pid) });
  }
  return out;
}

/** "pid 1234 (python3), pid 99 (bash)" */
export function describeProcesses(list: ProcessUse[]): string {
  return list.map((p) => `pid ${p.pid} (${p.command})`).join(', ');
}

/** Does the process exist (and is it not a zombie)? */
export async function processAlive(pid: number, procRoot = '/proc'): Promise<boolean> {
  try {
    const st = await readFile(`${procRoot}/${pid}/stat`, 'utf8');
    return !/\) Z /.test(st);
  } catch {
    return false;
  }
}

export async function cmdlineOf(pid: number, procRoot = '/proc'): Promise<string[]> {
  try {
    return (await readFile(`${procRoot}/${pid}/cmdline`, 'utf8')).split('\0').filter((s) => s !== '');
  } catch {
    return [];
  }
}

export interface SignalProgramOptions {
  procRoot?: string;
  /** Default process.kill (tests record instead). */
  kill?: (pid: number, signal: NodeJS.Signals) => void;
}

/**
 * Sends signal to a pid taken from a record only if /proc/PID/cmdline shows the program the
 * record says it is (isExpected): a pid recycled by another program since (after a reboot, or a
 * long while) is never signalled. Returns whether the signal was sent.
 */
export async function signalIfProgram(
  pid: number,
  isExpected: (argv: string[]) => boolean,
  signal: NodeJS.Signals,
  opts: SignalProgramOptions = {},
): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 1) return false;
  const procRoot = opts.procRoot ?? '/proc';
  if (!(await processAlive(pid, procRoot))) return false;
  const argv = await cmdlineOf(pid, procRoot);
  if (argv.length === 0 || !isExpected(argv)) return false;
  try {
    (opts.kill ?? ((p, s) => process.kill(p, s)))(pid, signal);
    return true;
  } catch {
    return false; // gone meanwhile
  }
}

/** Is argv a freeze guard's (freezeGuardMain.js) of that mount point? */
export function isFreezeGuardOf(argv: string[], mountPoint: string): boolean {
  return argv.length >= 3 && /(^|\/)freezeGuardMain\.js$/.test(argv[1]!) && argv[2] === mountPoint;
}
