/**
 * lockTransaction --lock freeze through the freeze guard, on a real ext4 filesystem: writers
 * block while frozen and go on after unlock; the filesystem thaws when the agent is killed with
 * SIGKILL (the guard's pipe closes) and when the agent stays alive but never unlocks (deadline).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import type { LockRecord } from '../../../agent/types.js';
import { requireTool } from '../../support/tools.js';
import { cleanupLoops, makeLoopFs, mountLine, sleep, writeCompletes } from './loopFs.js';

const log = pino({ level: 'silent' });
const CHILD = fileURLToPath(new URL('./freezeChild.mjs', import.meta.url));
let children: ChildProcess[] = [];
let guardPids: number[] = [];

/** Exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function gone(pid: number, ms = 3000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end && alive(pid); ) await sleep(50);
  return !alive(pid);
}

afterEach(() => {
  for (const c of children) c.kill('SIGKILL');
  children = [];
  for (const pid of guardPids) if (alive(pid)) process.kill(pid, 'SIGTERM'); // the guard thaws on SIGTERM
  guardPids = [];
  cleanupLoops(); // also fsfreeze -u, whatever happened
});

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

/** Starts freezeChild.mjs and waits for its lock record. */
async function frozenByChild(device: string, deadlineMs: number): Promise<{ child: ChildProcess; rec: LockRecord }> {
  const child = spawn(process.execPath, [CHILD, device, String(deadlineMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`freezeChild exited ${code} before freezing`)));
  });
  const rec = JSON.parse(line) as LockRecord;
  if (rec.freezeGuardPid) guardPids.push(rec.freezeGuardPid);
  return { child, rec };
}

describe('lock freeze', () => {
  requireTool('fsfreeze');

  it.each(['ext4', 'xfs'] as const)('%s: a writer blocks while frozen and continues after unlock', async (fsType) => {
    const fs = makeLoopFs(fsType);
    const logFile = join(fs.mountPoint, 'log');
    const writer = spawn('sh', ['-c', `while :; do echo line >> '${logFile}'; sleep 0.02; done`], { stdio: 'ignore' });
    children.push(writer);
    for (let i = 0; i < 100 && fileSize(logFile) === 0; i++) await sleep(20);
    expect(fileSize(logFile)).toBeGreaterThan(0);

    const host = new LinuxHost({ log });
    const rec = await host.lockTransaction('tv1', fs.device, 'freeze', { freezeDeadlineMs: 60_000 });
    guardPids.push(rec.freezeGuardPid!);
    expect(rec).toMatchObject({ action: 'frozen', volume: 'tv1', device: fs.device });
    expect(rec.mounts[0]!.mountPoint).toBe(fs.mountPoint);
    expect(Date.parse(rec.thawDeadline!) - Date.now()).toBeGreaterThan(50_000);
    expect(alive(rec.freezeGuardPid!)).toBe(true);

    await sleep(200);
    const frozenSize = fileSize(logFile);
    await sleep(1000);
    expect(fileSize(logFile)).toBe(frozenSize);
    expect(await host.isFrozen(fs.mountPoint)).toBe(true);

    await host.unlock(rec);
    expect(alive(rec.freezeGuardPid!)).toBe(false);
    await sleep(500);
    expect(fileSize(logFile)).toBeGreaterThan(frozenSize);
    expect(await host.isFrozen(fs.mountPoint)).toBe(false);

    // Idempotent: the guard is gone and the filesystem is not frozen; unlock again succeeds.
    await host.unlock(rec);
    await new LinuxHost({ log }).unlock(rec);
  });

  it('is refused for a volume that is not mounted, naming the volume and the fix', async () => {
    const fs = makeLoopFs('ext4');
    await new LinuxHost({ log }).lockTransaction('tv1', fs.device, 'unmount'); // now not mounted
    await expect(new LinuxHost({ log }).lockTransaction('tv1', fs.device, 'freeze')).rejects.toThrow(
      /transaction volume tv1: .* not mounted; nothing to freeze; register it with --lock unmount or mount it/,
    );
  });

  it('thaws when the agent is killed with SIGKILL (the guard sees its pipe close)', async () => {
    const fs = makeLoopFs('ext4');
    const { child, rec } = await frozenByChild(fs.device, 60_000);
    expect(rec.action).toBe('frozen');
    expect(await writeCompletes(fs.mountPoint, 700)).toBe(false);

    child.kill('SIGKILL');
    const t0 = Date.now();
    expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(await gone(rec.freezeGuardPid!)).toBe(true);
    expect(mountLine(fs.mountPoint)).toBeDefined();
  });

  it('thaws at the deadline when the agent lives on but never unlocks', async () => {
    const fs = makeLoopFs('ext4');
    const { rec } = await frozenByChild(fs.device, 2000);
    const frozenAt = Date.now();
    // still frozen at ~1 s: a write started now has not finished by then
    const write = writeCompletes(fs.mountPoint, 3500);
    await sleep(1000 - (Date.now() - frozenAt));
    expect(fileSize(join(fs.mountPoint, 'write-probe'))).toBe(0);
    expect(await write).toBe(true);
    const thawedAfter = Date.now() - frozenAt;
    expect(thawedAfter).toBeGreaterThan(1500);
    expect(thawedAfter).toBeLessThan(3500);
    expect(await gone(rec.freezeGuardPid!)).toBe(true);
    // The agent (still alive) unlocks late: nothing frozen any more, and that is success.
    await new LinuxHost({ log }).unlock(rec);
  });

  it('the guard is in its own process group', async () => {
    const fs = makeLoopFs('ext4');
    const host = new LinuxHost({ log });
    const rec = await host.lockTransaction('tv1', fs.device, 'freeze');
    guardPids.push(rec.freezeGuardPid!);
    const stat = readFileSync(`/proc/${rec.freezeGuardPid}/stat`, 'utf8');
    const pgrp = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
    expect(pgrp).toBe(rec.freezeGuardPid);
    expect(pgrp).not.toBe(Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ')[2]));
    await host.unlock(rec);
  });
});
