/**
 * lockTransaction --lock unmount on real ext4 and xfs filesystems over loop devices: the volume
 * is dismounted, and unlock mounts it back at the same place with the same options (rw), files
 * intact. A busy filesystem is refused with the pid that holds it, and nothing changes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import { cleanupLoops, makeLoopFs, mountLine, sleep, writeCompletes } from './loopFs.js';
import { execFileSync } from 'node:child_process';

const log = pino({ level: 'silent' });
let children: ChildProcess[] = [];

afterEach(() => {
  for (const c of children) c.kill('SIGKILL');
  children = [];
  cleanupLoops();
});

describe.each([
  ['ext4', 'noatime,nodev,errors=remount-ro'],
  ['xfs', 'noatime,nosuid'],
] as const)('lock unmount on %s', (fsType, options) => {
  it('unmounts, then mounts back with the same options, rw, files intact', async () => {
    const fs = makeLoopFs(fsType, options);
    writeFileSync(join(fs.mountPoint, 'data.txt'), 'keep me\n');
    const before = mountLine(fs.mountPoint)!;
    expect(before.opts.split(',')).toContain('rw');
    const host = new LinuxHost({ log });

    const rec = await host.lockTransaction('tv1', fs.device, 'unmount');
    expect(rec.action).toBe('unmounted');
    expect(rec.mounts.map((m) => m.mountPoint)).toEqual([fs.mountPoint]);
    expect(mountLine(fs.mountPoint)).toBeUndefined();
    expect(await host.mountsOf(fs.device)).toEqual([]);

    // The record is JSON in the store: undo from a round-tripped copy, like resource-match does.
    await host.unlock(JSON.parse(JSON.stringify(rec)));
    const after = mountLine(fs.mountPoint)!;
    expect(after).toEqual(before);
    expect(readFileSync(join(fs.mountPoint, 'data.txt'), 'utf8')).toBe('keep me\n');
    expect(await writeCompletes(fs.mountPoint, 5000)).toBe(true);

    // Idempotent: undoing again changes nothing.
    await host.unlock(rec);
    expect(mountLine(fs.mountPoint)).toEqual(before);
  });

  it('refuses while a process has a file open there, naming the pid, and changes nothing', async () => {
    const fs = makeLoopFs(fsType, options);
    const holder = spawn('sh', ['-c', `exec sleep 1000 3>'${fs.mountPoint}/held'`], { stdio: 'ignore' });
    children.push(holder);
    for (let i = 0; i < 100 && !safeExists(join(fs.mountPoint, 'held')); i++) await sleep(20);
    await sleep(100);
    const before = mountLine(fs.mountPoint);
    const host = new LinuxHost({ log });
    await expect(host.lockTransaction('tv1', fs.device, 'unmount')).rejects.toThrow(
      new RegExp(`transaction volume tv1: ${fs.mountPoint} is busy \\(pid ${holder.pid} \\(sleep\\) has files open\\).*--lock freeze`),
    );
    expect(mountLine(fs.mountPoint)).toEqual(before);
  });
});

function safeExists(p: string): boolean {
  try {
    readFileSync(p);
    return true;
  } catch {
    return false;
  }
}

describe('lock unmount, more cases', () => {
  it('a volume that is not mounted: action none', async () => {
    const fs = makeLoopFs('ext4');
    execFileSync('umount', [fs.mountPoint]);
    const rec = await new LinuxHost({ log }).lockTransaction('tv1', fs.device, 'unmount');
    expect(rec).toMatchObject({ action: 'none', mounts: [] });
  });

  it('no device on this host: action none', async () => {
    const rec = await new LinuxHost({ log }).lockTransaction('tv1', '', 'unmount');
    expect(rec).toMatchObject({ action: 'none', mounts: [], device: '' });
  });

  it('two mounts, one busy: the other is mounted back before the error', async () => {
    const fs = makeLoopFs('ext4');
    const second = join(fs.dir, 'second');
    mkdirSync(second);
    execFileSync('mount', [fs.device, second]);
    const holder = spawn('sh', ['-c', `exec sleep 1000 3>'${fs.mountPoint}/held'`], { stdio: 'ignore' });
    children.push(holder);
    await sleep(300);
    const host = new LinuxHost({ log });
    await expect(host.lockTransaction('tv1', fs.device, 'unmount')).rejects.toThrow(/is busy/);
    expect(mountLine(second)).toBeDefined();
    expect(mountLine(fs.mountPoint)).toBeDefined();
  });

  it('mountsOf matches by device number: a symlink to the device and a mount point with a space', async () => {
    const fs = makeLoopFs('ext4');
    const spaced = join(fs.dir, 'with space');
    mkdirSync(spaced);
    execFileSync('mount', [fs.device, spaced]);
    const link = join(fs.dir, 'wwn-0x600000000000000000000000000000aa');
    symlinkSync(fs.device, link);
    const mounts = await new LinuxHost({ log }).mountsOf(link);
    expect(mounts.map((m) => m.mountPoint).sort()).toEqual([fs.mountPoint, spaced].sort());
    expect(mounts[0]).toMatchObject({ fsType: 'ext4', source: fs.device });

    // and unmount/remount round-trips the escaped path
    const host = new LinuxHost({ log });
    const rec = await host.lockTransaction('tv1', link, 'unmount');
    expect(await host.mountsOf(fs.device)).toEqual([]);
    await host.unlock(rec);
    expect((await host.mountsOf(fs.device)).map((m) => m.mountPoint).sort()).toEqual([fs.mountPoint, spaced].sort());
  });
});
