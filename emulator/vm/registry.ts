/**
 * The registry of detached guests (`arraylab vm`): one directory per VM in the run directory,
 * holding vm.json (the record below), qemu's pidfile, log and the console, QMP and agent
 * sockets. A VM is running while its qemu is: the pid is alive and its command line names
 * this VM's console socket (so a reused pid is not mistaken for it).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GuestDisk } from './qemuArgs.js';

export interface VmDisk {
  /** The array volume. */
  volume: string;
  via: 'nbd' | 'iscsi';
  /** What the guest should call it: /dev/vdX for NBD (in order), /dev/sdX for iSCSI. */
  guestDevice: string;
  /** How qemu attaches it. */
  attach: GuestDisk;
}

export interface VmRecord {
  name: string;
  pid: number;
  /** The control API of the array the disks are on. */
  api: string;
  memoryMiB: number;
  disks: VmDisk[];
  sockets: { console: string; qmp: string; agent: string };
  files: { dir: string; pidFile: string; qemuLog: string; consoleLog: string };
  /** ISO 8601. */
  started: string;
  /** Launch to shell prompt; null while booting. */
  bootMs: number | null;
  argv: string[];
}

export type VmState = 'booting' | 'running' | 'exited';

export function defaultRunDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.ARRAYLAB_RUN_DIR) return env.ARRAYLAB_RUN_DIR;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'arraylab', 'vms');
  if (process.getuid?.() === 0) return '/run/arraylab/vms';
  return join(tmpdir(), `arraylab-${process.getuid?.() ?? 'user'}`, 'vms');
}

export function vmDir(runDir: string, name: string): string {
  return join(runDir, name);
}

export function recordPath(runDir: string, name: string): string {
  return join(vmDir(runDir, name), 'vm.json');
}

export function readRecord(runDir: string, name: string): VmRecord | null {
  const file = recordPath(runDir, name);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as VmRecord;
  } catch {
    return null; // half-written by a start that crashed: treated as absent
  }
}

/** Atomic: a reader never sees half a record. */
export function writeRecord(runDir: string, rec: VmRecord): void {
  mkdirSync(vmDir(runDir, rec.name), { recursive: true });
  const file = recordPath(runDir, rec.name);
  writeFileSync(`${file}.tmp`, `${JSON.stringify(rec, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
}

export function listRecords(runDir: string): VmRecord[] {
  if (!existsSync(runDir)) return [];
  return readdirSync(runDir)
    .sort()
    .map((name) => readRecord(runDir, name))
    .filter((r): r is VmRecord => r !== null);
}

export function removeVm(runDir: string, name: string): void {
  rmSync(vmDir(runDir, name), { recursive: true, force: true });
}

export function isQemuAlive(rec: Pick<VmRecord, 'pid' | 'sockets'>): boolean {
  if (!(rec.pid > 0)) return false;
  try {
    const cmdline = readFileSync(`/proc/${rec.pid}/cmdline`, 'utf8');
    const state = /^\d+ \([^)]*\) (\S)/.exec(readFileSync(`/proc/${rec.pid}/stat`, 'utf8'))?.[1];
    return state !== 'Z' && cmdline.includes(rec.sockets.console);
  } catch {
    return false; // no such process
  }
}

export function vmState(rec: VmRecord): VmState {
  if (!isQemuAlive(rec)) return 'exited';
  return rec.bootMs === null ? 'booting' : 'running';
}
