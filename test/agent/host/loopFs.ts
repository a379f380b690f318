/**
 * Test support: a loop device over a sparse file in a temp dir, optionally with a filesystem
 * mounted on it, and a cleanup that undoes everything even after a failed test (thaw, unmount,
 * losetup -d, rm).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTool } from '../../support/tools.js';

export interface LoopDisk {
  dir: string;
  image: string;
  device: string;
}

export interface LoopFs extends LoopDisk {
  mountPoint: string;
  fsType: 'ext4' | 'xfs';
}

const made: LoopDisk[] = [];

export function makeLoopDisk(sizeMiB: number): LoopDisk {
  requireTool('losetup');
  const dir = mkdtempSync(join(tmpdir(), 'arraylab-host-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, '');
  truncateSync(image, sizeMiB * 1024 * 1024);
  const device = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim();
  const d = { dir, image, device };
  made.push(d);
  return d;
}

/** ext4 on 64 MiB, xfs on 300 MiB (its minimum), mounted with the given options. */
export function makeLoopFs(fsType: 'ext4' | 'xfs', mountOptions = ''): LoopFs {
  requireTool(`mkfs.${fsType}`);
  const disk = makeLoopDisk(fsType === 'xfs' ? 300 : 64);
  execFileSync(`mkfs.${fsType}`, fsType === 'xfs' ? ['-q', '-f', disk.device] : ['-q', '-F', disk.device], { stdio: 'pipe' });
  const mountPoint = join(disk.dir, 'mnt');
  mkdirSync(mountPoint);
  execFileSync('mount', [...(mountOptions ? ['-o', mountOptions] : []), disk.device, mountPoint], { stdio: 'pipe' });
  return { ...disk, mountPoint, fsType };
}

/** Every mount under dir (deepest first), for cleanup. */
function mountsUnder(dir: string): string[] {
  const lines = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  return lines
    .map((l) => l.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((mp): mp is string => !!mp && (mp === dir || mp.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

/** Undo everything made so far: never leave a filesystem frozen or mounted. */
export function cleanupLoops(): void {
  while (made.length) {
    const d = made.pop()!;
    for (const mp of mountsUnder(d.dir)) {
      spawnSync('fsfreeze', ['-u', mp], { stdio: 'ignore', timeout: 10_000 });
      spawnSync('umount', [mp], { stdio: 'ignore', timeout: 10_000 });
      spawnSync('umount', ['-l', mp], { stdio: 'ignore', timeout: 10_000 });
    }
    // the device may have been mounted elsewhere by a test
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      const sep = f.indexOf('-');
      if (sep > 0 && f[sep + 2] === d.device) {
        spawnSync('fsfreeze', ['-u', f[4]!], { stdio: 'ignore', timeout: 10_000 });
        spawnSync('umount', ['-l', f[4]!], { stdio: 'ignore', timeout: 10_000 });
      }
    }
    spawnSync('losetup', ['-d', d.device], { stdio: 'ignore' });
    rmSync(d.dir, { recursive: true, force: true });
  }
}

/** Does a small write to the filesystem complete within ms? (A frozen one blocks writers.) */
export function writeCompletes(mountPoint: string, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', `echo probe >> '${mountPoint}/write-probe'`], { stdio: 'ignore' });
    const timer = setTimeout(() => {
      child.kill('SIGKILL'); // takes effect when the filesystem thaws
      child.unref();
      resolve(false);
    }, ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code === 0);
    });
  });
}

/** The mountinfo fields a remount must restore, for comparison. */
export function mountLine(mountPoint: string): { opts: string; fsType: string; source: string; superOpts: string } | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (sep > 0 && f[4] === mountPoint) return { opts: f[5]!, fsType: f[sep + 1]!, source: f[sep + 2]!, superOpts: f[sep + 3]! };
  }
  return undefined;
}

export { sleep } from '../../support/wait.js';
