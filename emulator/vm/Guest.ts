/**
 * Launches a Linux guest (the vm-images/ kernel and initramfs) under qemu-system-x86_64 with
 * software emulation, with the array's volumes attached, and drives its serial console.
 *
 *   const image = readGuestImage();                     // vm-images/build/image.json
 *   const guest = await launchGuest({ name: 'g1', ...image, disks: [{ via: 'nbd', host, port, export: 'vol1' }], log });
 *   await guest.runOk('mkfs.ext4 -q /dev/vda && mount /dev/vda /mnt');
 *   await guest.stop();                                 // poweroff, then kill; always ends qemu
 *
 * launchGuest resolves once the guest's shell is ready (boot time in guest.bootMs, logged);
 * if the guest does not get there, qemu is killed and the error holds the console's last lines
 * and qemu's own messages. Every guest still running when the process exits is killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { ConsoleShell, GUEST_READY, POWEROFF_KEYS, type RunOptions, type RunResult } from './ConsoleShell.js';
import { qemuArgs, type GuestDisk } from './qemuArgs.js';

export type { GuestDisk, IscsiDisk, NbdDisk } from './qemuArgs.js';
export type { RunOptions, RunResult } from './ConsoleShell.js';

export interface GuestOptions {
  /** Letters, digits, '.', '_', '-'; qemu's -name and the default iSCSI initiator name. */
  name: string;
  kernel: string;
  initrd: string;
  /** Default 1024: the initramfs (Node included) lives in RAM. */
  memoryMiB?: number;
  /** Default 1. */
  cpus?: number;
  disks?: GuestDisk[];
  /** Unix socket for the agent's virtio-serial port; default: in a private temp dir. */
  agentSocket?: string;
  /** Appended to the kernel command line (e.g. arraylab.run=... to run a command and power off). */
  cmdline?: string;
  log: Logger;
  /** Default: qemu-system-x86_64 on PATH. */
  qemu?: string;
  /** Wait for the shell prompt before resolving (default true; false for arraylab.run guests). */
  waitForShell?: boolean;
  /** How long the boot may take; default 60 s. */
  bootTimeoutMs?: number;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Guest {
  readonly name: string;
  readonly pid: number;
  /** The qemu command line, for logs and for running it by hand. */
  readonly argv: string[];
  /** Unix socket of the virtio-serial port org.arraylab.agent. */
  readonly agentSocket: string;
  /** Launch to shell prompt in ms (NaN until the shell is ready). */
  readonly bootMs: number;
  /** Everything the serial console prints, as it comes. */
  readonly console: Readable;
  /** The console output so far (its last 8 MiB). */
  output(): string;
  /** What qemu itself wrote to stderr (attach errors, for example). */
  qemuLog(): string;
  /** First match of re in the console output (after offset `from`, default 0). */
  waitFor(re: RegExp, timeoutMs?: number, from?: number): Promise<RegExpExecArray>;
  /** Runs a shell command in the guest (each in its own sh; calls queue). */
  run(command: string, opts?: RunOptions): Promise<RunResult>;
  /** run(), throwing unless it exits 0; returns the output. */
  runOk(command: string, opts?: RunOptions): Promise<string>;
  /** Powers the guest off (sync; poweroff -f), kills qemu after timeoutMs (default 10 s). */
  stop(opts?: { timeoutMs?: number }): Promise<Exit>;
  /** Resolves when qemu exits. */
  readonly exited: Promise<Exit>;
}

const running = new Set<ChildProcess>();
// Last resort: never leave a qemu behind if the caller forgets stop() or crashes.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function launchGuest(opts: GuestOptions): Promise<Guest> {
  const runDir = mkdtempSync(join(tmpdir(), `arraylab-vm-${opts.name}-`));
  const agentSocket = opts.agentSocket ?? join(runDir, 'agent.sock');
  const argv = qemuArgs({
    name: opts.name,
    kernel: opts.kernel,
    initrd: opts.initrd,
    memoryMiB: opts.memoryMiB ?? 1024,
    cpus: opts.cpus ?? 1,
    disks: opts.disks ?? [],
    agentSocket,
    ...(opts.cmdline !== undefined ? { cmdline: opts.cmdline } : {}),
  });
  const qemu = opts.qemu ?? 'qemu-system-x86_64';
  const log = opts.log.child({ guest: opts.name });
  log.debug({ argv: [qemu, ...argv] }, 'starting guest');

  const started = performance.now();
  const child = spawn(qemu, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin!.on('error', () => undefined); // qemu gone: write() reports it through the console
  const shell = new ConsoleShell(opts.name, child.stdout!, child.stdin!);

  const exited = new Promise<Exit>((resolve) => {
    child.on('error', (err) => {
      running.delete(child);
      const reason =
        (err as NodeJS.ErrnoException).code === 'ENOENT'
          ? `${qemu} is not installed; install Debian package qemu-system-x86 (bash vm-images/build.sh does)`
          : err.message;
      shell.close(new Error(reason));
      rmSync(runDir, { recursive: true, force: true });
      resolve({ code: null, signal: null });
    });
    child.on('exit', (code, signal) => {
      running.delete(child);
      const qemuSaid = stderr.trim() ? `; qemu said: ${stderr.trim()}` : '';
      shell.close(new Error(`qemu exited (${signal ?? `code ${code}`})${qemuSaid}`));
      rmSync(runDir, { recursive: true, force: true });
      log.debug({ code, signal }, 'guest exited');
      resolve({ code, signal });
    });
  });

  let bootMs = Number.NaN;
  let stopping: Promise<Exit> | null = null;
  const guest: Guest = {
    name: opts.name,
    pid: child.pid ?? -1,
    argv: [qemu, ...argv],
    agentSocket,
    get bootMs() {
      return bootMs;
    },
    console: shell.stream,
    output: () => shell.all(),
    qemuLog: () => stderr,
    waitFor: (re, timeoutMs = 30_000, from = 0) => shell.waitFor(re, timeoutMs, from),
    run: (command, runOpts) => shell.run(command, runOpts),
    async runOk(command, runOpts) {
      const r = await shell.run(command, runOpts);
      if (r.code !== 0) throw new Error(`guest ${opts.name}: \`${command}\` exited ${r.code}: ${r.output.trim()}`);
      return r.output;
    },
    stop(stopOpts = {}) {
      stopping ??= stopGuest(stopOpts.timeoutMs ?? 10_000);
      return stopping;
    },
    exited,
  };

  async function stopGuest(timeoutMs: number): Promise<Exit> {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        shell.write(POWEROFF_KEYS);
      } catch {
        // the console is gone; the kill below still runs
      }
      const timer = setTimeout(() => {
        log.warn({ timeoutMs }, 'guest did not power off in time; killing qemu');
        child.kill('SIGKILL');
      }, timeoutMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    }
    return exited;
  }

  if (opts.waitForShell === false) return guest;
  try {
    await shell.waitFor(GUEST_READY, opts.bootTimeoutMs ?? 60_000);
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`guest ${opts.name} did not boot to its shell: ${(err as Error).message}${stderr.trim() ? `\nqemu: ${stderr.trim()}` : ''}`);
  }
  bootMs = performance.now() - started;
  log.info({ bootMs: Math.round(bootMs) }, `guest ${opts.name} booted to its shell in ${(bootMs / 1000).toFixed(2)} s`);
  return guest;
}
