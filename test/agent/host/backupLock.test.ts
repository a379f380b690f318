/**
 * lockBackup: a mounted backup volume is dismounted (and never remounted), then held open
 * O_EXCL so that nothing can mount it until unlock.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import { cleanupLoops, makeLoopFs, mountLine } from './loopFs.js';

const log = pino({ level: 'silent' });
afterEach(() => {
  cleanupLoops();
});

function mount(device: string, dir: string): { ok: boolean; stderr: string } {
  const r = spawnSync('mount', [device, dir], { encoding: 'utf8' });
  return { ok: r.status === 0, stderr: r.stderr };
}

describe('lockBackup', () => {
  it('dismounts a mounted backup volume, blocks mounts while held, and leaves it dismounted after', async () => {
    const fs = makeLoopFs('ext4');
    const host = new LinuxHost({ log });
    const rec = await host.lockBackup('bv1', fs.device);
    expect(rec).toMatchObject({ volume: 'bv1', role: 'backup', action: 'held', device: fs.device });
    expect(rec.mounts.map((m) => m.mountPoint)).toEqual([fs.mountPoint]);
    expect(mountLine(fs.mountPoint)).toBeUndefined();

    const dir = join(fs.dir, 'try');
    mkdirSync(dir);
    const refused = mount(fs.device, dir);
    expect(refused.ok).toBe(false);
    expect(refused.stderr).toMatch(/busy/i);

    // a second exclusive holder (another agent) is refused, naming the volume
    await expect(new LinuxHost({ log }).lockBackup('bv1', fs.device)).rejects.toThrow(/cannot lock backup volume bv1: .* is in use/);

    await host.unlock(rec);
    expect(mountLine(fs.mountPoint)).toBeUndefined(); // a backup volume is not remounted
    expect(mount(fs.device, dir).ok).toBe(true);
    await host.unlock(rec); // idempotent
  });

  it('an unmounted backup volume is just held; no device means nothing to do', async () => {
    const fs = makeLoopFs('ext4');
    spawnSync('umount', [fs.mountPoint]);
    const host = new LinuxHost({ log });
    const rec = await host.lockBackup('bv1', fs.device);
    expect(rec).toMatchObject({ action: 'held', mounts: [] });
    expect(mount(fs.device, fs.mountPoint).ok).toBe(false);
    await host.unlock(rec);
    expect(mount(fs.device, fs.mountPoint).ok).toBe(true);
    expect(await host.lockBackup('bv2', '')).toMatchObject({ action: 'none', device: '' });
  });
});
