/**
 * Dismounting a volume's filesystems and mounting them back as they were.
 *
 * Unmount goes innermost first. A busy filesystem (EBUSY) is reported with the processes that
 * keep it busy, and whatever was already unmounted is mounted back before the error is thrown.
 * Remount uses the recorded fstype, source and options (per-mount and per-superblock), so a
 * filesystem that was rw comes back rw.
 */
import { mkdtemp, rmdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { MountEntry } from '../types.js';
import { devNoString, readMountinfo, type HostMountEntry } from './mounts.js';
import { describeProcesses, processesOnFilesystem } from './processes.js';
import { run, said } from './run.js';

/** Deepest mount point first; mounts at the same depth keep their mountinfo order reversed. */
export function innermostFirst<T extends MountEntry>(mounts: T[]): T[] {
  const depth = (p: string) => (p === '/' ? 0 : p.split('/').length);
  return mounts
    .map((m, i) => ({ m, i }))
    .sort((a, b) => depth(b.m.mountPoint) - depth(a.m.mountPoint) || b.i - a.i)
    .map((x) => x.m);
}

/**
 * Unmounts every mount in the list (innermost first). `what` names the volume in errors, e.g.
 * "transaction volume vol1"; `fix` is the advice for a busy filesystem.
 */
export async function unmountAll(mounts: HostMountEntry[], device: string, what: string, fix: string, log: Logger): Promise<void> {
  const done: HostMountEntry[] = [];
  for (const m of innermostFirst(mounts)) {
    const r = await run('umount', [m.mountPoint]);
    if (r.code === 0) {
      done.push(m);
      log.info({ mountPoint: m.mountPoint, device }, 'unmounted');
      continue;
    }
    let reason = said(r);
    if (/busy/i.test(reason)) reason = await whyBusy(m.mountPoint, device);
    // Undo our own work before reporting, so the caller sees the host as it was.
    const undoErrors: string[] = [];
    try {
      await remountAll(done.slice().reverse(), device, log);
    } catch (err) {
      undoErrors.push((err as Error).message);
    }
    const undo = undoErrors.length ? ` (and remounting what was already unmounted failed: ${undoErrors.join('; ')})` : '';
    throw new Error(`cannot ${what.startsWith('backup') ? 'dismount' : 'lock'} ${what}: ${m.mountPoint} is busy (${reason}); ${fix}${undo}`);
  }
}

async function whyBusy(mountPoint: string, device: string): Promise<string> {
  let devNo = '';
  try {
    devNo = devNoString((await stat(device)).rdev);
  } catch {
    // fall through: no process list
  }
  const users = devNo ? await processesOnFilesystem(devNo) : [];
  const nested = (await readMountinfo()).filter((l) => l.mountPoint.startsWith(mountPoint.endsWith('/') ? mountPoint : `${mountPoint}/`));
  const parts: string[] = [];
  if (users.length) parts.push(`${describeProcesses(users)} ${users.length === 1 ? 'has' : 'have'} files open`);
  if (nested.length) parts.push(`${nested.map((n) => n.mountPoint).join(', ')} ${nested.length === 1 ? 'is' : 'are'} mounted under it`);
  return parts.length ? parts.join('; ') : 'the kernel says it is in use, but no process was found holding it (a loop device or swap file on it?)';
}

/**
 * The options to mount with: per-mount options then superblock options, without duplicates,
 * with exactly one of ro/rw (ro when the mount was ro, else rw), and without options that are
 * only shown, never given (seclabel).
 */
export function remountOptions(m: MountEntry): string {
  const perMount = m.mountOptions.split(',').filter(Boolean);
  const ro = perMount.includes('ro');
  const seen = new Set<string>();
  const out = [ro ? 'ro' : 'rw'];
  for (const o of [...perMount, ...m.superOptions.split(',').filter(Boolean)]) {
    if (o === 'ro' || o === 'rw' || o === 'seclabel' || seen.has(o)) continue;
    seen.add(o);
    out.push(o);
  }
  return out.join(',');
}

/** Mounts the list back (outermost first: call with the record's order). Skips mounts already there. */
export async function remountAll(mounts: HostMountEntry[], device: string, log: Logger): Promise<void> {
  const devNo = devNoString((await stat(device)).rdev);
  for (const m of mounts) {
    const present = (await readMountinfo()).some((l) => l.mountPoint === m.mountPoint && l.devNo === devNo);
    if (present) continue; // idempotent: undone already
    const source = (await sameDevice(m.source, devNo)) ? m.source : device;
    const root = m.root ?? '/';
    if (root === '/') {
      await mountOnce(m, source, m.mountPoint);
    } else {
      // A bind mount of a subdirectory: mount the filesystem aside, bind the subdirectory, drop the aside.
      const aside = await mkdtemp(join(tmpdir(), 'arraylab-remount-'));
      try {
        await mountOnce(m, source, aside);
        const b = await run('mount', ['--bind', join(aside, root), m.mountPoint]);
        if (b.code !== 0) throw new Error(`cannot mount ${device} back at ${m.mountPoint} (bind of ${root}): ${said(b)}; mount it by hand`);
        if (m.mountOptions.split(',').includes('ro')) await run('mount', ['-o', 'remount,bind,ro', m.mountPoint]);
      } finally {
        await run('umount', [aside]);
        await rmdir(aside).catch(() => undefined);
      }
    }
    log.info({ mountPoint: m.mountPoint, device, options: remountOptions(m) }, 'mounted back');
  }
}

async function mountOnce(m: MountEntry, source: string, target: string): Promise<void> {
  const opts = remountOptions(m);
  const r = await run('mount', ['-t', m.fsType, '-o', opts, source, target]);
  if (r.code !== 0)
    throw new Error(`cannot mount ${source} back at ${target} (-t ${m.fsType} -o ${opts}): ${said(r)}; mount it by hand, then run resource-match`);
}

async function sameDevice(path: string, devNo: string): Promise<boolean> {
  try {
    const st = await stat(path);
    return st.isBlockDevice() && devNoString(st.rdev) === devNo;
  } catch {
    return false;
  }
}
