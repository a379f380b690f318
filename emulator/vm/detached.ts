/**
 * Guests that outlive the command that started them (`arraylab vm`): qemu runs detached in its
 * own session, its console on a unix socket (also logged to console.log), QMP on another, the
 * agent's virtio-serial port on a third, and a record in the run directory (registry.ts).
 *
 * The console socket takes one client at a time; start, stop and `vm console` each connect,
 * do their part and leave.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { delimiter, join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoleShell, GUEST_READY, POWEROFF_KEYS } from './ConsoleShell.js';
import { writeQemuPskDir, type NbdPsk } from './nbdPsk.js';
import { qemuArgs } from './qemuArgs.js';
import { qmpCommand } from './qmp.js';
import { isQemuAlive, readRecord, removeVm, vmDir, vmState, writeRecord, type VmDisk, type VmRecord } from './registry.js';

export const QEMU = 'qemu-system-x86_64';
/** In a VM's directory: keys.psk for its NBD disks over TLS-PSK. */
export const NBD_PSK_DIR = 'nbd-psk';

export interface DetachedStartOptions {
  name: string;
  kernel: string;
  initrd: string;
  memoryMiB?: number;
  cpus?: number;
  disks: VmDisk[];
  runDir: string;
  /** The array's API address, kept in the record. */
  api: string;
  log: Logger;
  qemu?: string;
  /** Default 90 s. */
  bootTimeoutMs?: number;
  cmdline?: string;
  /** Written to NAME/nbd-psk/keys.psk (0600) for disks whose attach has tls (their pskDir). */
  nbdPsk?: NbdPsk;
}

/** Throws with the install command unless qemu is on PATH (or the path given is executable). */
export function findQemu(qemu = QEMU): string {
  const candidates = qemu.includes('/')
    ? [qemu]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter(Boolean)
        .map((d) => join(d, qemu));
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  throw new Error(`${qemu} is not installed (not on PATH); install it with: apt-get install qemu-system-x86`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitUntil(cond: () => boolean, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(stepMs);
  }
  return cond();
}

/** Connects to a unix socket; rejects after timeoutMs. */
export function connectUnix(path: string, timeoutMs = 3000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`cannot connect to ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** The VM's console as a shell (ConsoleShell over the socket); close the socket when done. */
export async function openConsole(rec: VmRecord): Promise<{ shell: ConsoleShell; socket: Socket }> {
  let socket: Socket;
  try {
    socket = await connectUnix(rec.sockets.console);
  } catch (err) {
    throw new Error(`vm ${rec.name}: cannot open its console ${rec.sockets.console}: ${(err as Error).message}; is it running (arraylab vm list)?`);
  }
  socket.on('error', () => undefined);
  const shell = new ConsoleShell(rec.name, socket, socket);
  socket.on('close', () => shell.close(new Error('the console socket closed')));
  return { shell, socket };
}

function tailOf(path: string, lines = 20): string {
  try {
    return readFileSync(path, 'utf8').replace(/\r/g, '').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * Starts qemu detached and waits for the guest's shell prompt. The record is written as soon
 * as qemu runs (state booting), then again with the boot time. On failure qemu is killed and
 * the VM's directory removed; the error holds qemu's log and the console's last lines.
 */
export async function startDetachedGuest(o: DetachedStartOptions): Promise<VmRecord> {
  const qemu = findQemu(o.qemu);
  const dir = vmDir(o.runDir, o.name);
  const existing = readRecord(o.runDir, o.name);
  if (existing && vmState(existing) !== 'exited') {
    throw new Error(
      `vm ${o.name} is already running (pid ${existing.pid}, started ${existing.started}); stop it with: arraylab vm stop ${o.name}, or choose another name`,
    );
  }
  // An exited VM's leftovers (or a start that crashed) make way for the new one.
  removeVm(o.runDir, o.name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (o.nbdPsk) writeQemuPskDir(join(dir, NBD_PSK_DIR), o.nbdPsk);

  const files = { dir, pidFile: join(dir, 'qemu.pid'), qemuLog: join(dir, 'qemu.log'), consoleLog: join(dir, 'console.log') };
  const sockets = { console: join(dir, 'console.sock'), qmp: join(dir, 'qmp.sock'), agent: join(dir, 'agent.sock') };
  const memoryMiB = o.memoryMiB ?? 1024;
  const argv = qemuArgs({
    name: o.name,
    kernel: o.kernel,
    initrd: o.initrd,
    memoryMiB,
    cpus: o.cpus ?? 1,
    disks: o.disks.map((d) => d.attach),
    agentSocket: sockets.agent,
    console: { socket: sockets.console, logFile: files.consoleLog },
    qmpSocket: sockets.qmp,
    pidFile: files.pidFile,
    ...(o.cmdline !== undefined ? { cmdline: o.cmdline } : {}),
  });
  const log = o.log.child({ vm: o.name });
  log.debug({ argv: [qemu, ...argv] }, 'starting detached guest');

  const started = Date.now();
  const logFd = openSync(files.qemuLog, 'a');
  // Its own session: a Ctrl-C at the terminal of `vm start`, or the CLI exiting, does not reach qemu.
  const child = spawn(qemu, argv, { detached: true, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  let spawnError: Error | null = null;
  child.on('error', (err) => (spawnError = err));
  child.unref();

  const rec: VmRecord = {
    name: o.name,
    pid: child.pid ?? -1,
    api: o.api,
    memoryMiB,
    disks: o.disks,
    sockets,
    files,
    started: new Date(started).toISOString(),
    bootMs: null,
    argv: [qemu, ...argv],
  };

  const fail = (why: string): Error => {
    if (rec.pid > 0 && isQemuAlive(rec)) process.kill(rec.pid, 'SIGKILL');
    const qemuSaid = tailOf(files.qemuLog);
    const consoleSaid = tailOf(files.consoleLog, 15);
    removeVm(o.runDir, o.name);
    return new Error(
      `vm ${o.name} did not boot to its shell: ${why}${qemuSaid ? `\nqemu: ${qemuSaid}` : ''}${consoleSaid ? `\nconsole:\n${consoleSaid}` : ''}`,
    );
  };

  const up = await waitUntil(() => spawnError !== null || child.exitCode !== null || existsSync(sockets.console), 10_000, 20);
  if (spawnError) throw fail((spawnError as Error).message);
  if (!up || child.exitCode !== null || child.signalCode !== null) {
    // give qemu's last words a moment to reach the log
    await sleep(100);
    throw fail(child.exitCode !== null ? `qemu exited with code ${child.exitCode}` : 'qemu did not create its console socket within 10 s');
  }
  writeRecord(o.runDir, rec);

  let socket: Socket | undefined;
  try {
    ({ socket } = await openConsoleOnceListening(rec, child, 10_000).then(async ({ shell, socket: s }) => {
      await shell.waitFor(GUEST_READY, o.bootTimeoutMs ?? 90_000);
      return { socket: s };
    }));
  } catch (err) {
    throw fail((err as Error).message.split('\n')[0]!);
  } finally {
    socket?.destroy();
  }
  rec.bootMs = Date.now() - started;
  writeRecord(o.runDir, rec);
  log.info({ bootMs: rec.bootMs }, `vm ${o.name} booted to its shell in ${(rec.bootMs / 1000).toFixed(2)} s`);
  return rec;
}

/**
 * qemu creates the console socket file at bind() and listens a moment later: on a loaded machine
 * a connect in between is refused, so a refusal while qemu runs is retried until the deadline.
 */
async function openConsoleOnceListening(rec: VmRecord, child: ChildProcess, timeoutMs: number): Promise<{ shell: ConsoleShell; socket: Socket }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await openConsole(rec);
    } catch (err) {
      const refused = /ECONNREFUSED/.test((err as Error).message);
      if (!refused || child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

export type StopHow = 'powered off' | 'quit (QMP)' | 'killed' | 'had already exited';

/**
 * Stops a detached guest: `sync; poweroff -f` on its console (unless force), then QMP quit,
 * then SIGKILL; each step waits for qemu to go. Removes the VM's directory.
 */
export async function stopDetachedGuest(
  rec: VmRecord,
  opts: { force?: boolean; timeoutMs?: number; runDir: string; log: Logger },
): Promise<{ how: StopHow; ms: number }> {
  const started = Date.now();
  const gone = () => !isQemuAlive(rec);
  let how: StopHow | null = gone() ? 'had already exited' : null;
  if (!how && !opts.force) {
    try {
      // A client attached with `vm console` holds the socket: then this connects but nothing
      // is read, the wait below times out and QMP quit follows.
      const socket = await connectUnix(rec.sockets.console, 2000);
      socket.on('error', () => undefined);
      socket.write(POWEROFF_KEYS);
      if (await waitUntil(gone, opts.timeoutMs ?? 10_000)) how = 'powered off';
      socket.destroy();
    } catch (err) {
      opts.log.warn({ vm: rec.name, err: (err as Error).message }, 'cannot power off through the console; quitting qemu');
    }
  }
  if (!how) {
    try {
      await qmpCommand(rec.sockets.qmp, 'quit');
      if (await waitUntil(gone, 5000)) how = 'quit (QMP)';
    } catch (err) {
      opts.log.warn({ vm: rec.name, err: (err as Error).message }, 'QMP quit failed; killing qemu');
    }
  }
  if (!how) {
    try {
      process.kill(rec.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    if (!(await waitUntil(gone, 5000))) throw new Error(`vm ${rec.name}: qemu (pid ${rec.pid}) did not die after SIGKILL; check it with: ps -p ${rec.pid}`);
    how = 'killed';
  }
  removeVm(opts.runDir, rec.name);
  return { how, ms: Date.now() - started };
}
