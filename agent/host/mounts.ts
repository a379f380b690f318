/**
 * Mounts of a block device, from /proc/self/mountinfo, matched by device number (major:minor)
 * rather than by path, so that /dev/disk/by-id/* links and /dev/mapper names all match.
 */
import type { Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { MountEntry } from '../types.js';

/**
 * A MountEntry plus the mount's root within its filesystem (field 4: "/" for a plain mount, a
 * subdirectory for a bind mount of one), so that undo can re-create bind mounts. Optional: records
 * written without it are plain mounts.
 */
export interface HostMountEntry extends MountEntry {
  root?: string;
}

/** One parsed mountinfo line (the fields we use). */
export interface MountInfoLine extends HostMountEntry {
  root: string;
  mountId: number;
  parentId: number;
  /** "major:minor" of the filesystem (field 3). */
  devNo: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
export function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountinfo(text: string): MountInfoLine[] {
  const out: MountInfoLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0 || fields.length < sep + 3) continue; // not a line we understand; skip, never guess
    const f = (i: number) => fields[i]!; // present: checked just above
    out.push({
      mountId: Number(f(0)),
      parentId: Number(f(1)),
      devNo: f(2),
      root: unescapeMountinfo(f(3)),
      mountPoint: unescapeMountinfo(f(4)),
      mountOptions: f(5),
      fsType: unescapeMountinfo(f(sep + 1)),
      source: unescapeMountinfo(f(sep + 2)),
      superOptions: fields[sep + 3] ?? '',
    });
  }
  return out;
}

/** "major:minor" of a block device (following symlinks); throws naming the device and the fix. */
export async function deviceNumber(device: string): Promise<string> {
  let st: Stats;
  try {
    st = await stat(device);
  } catch (err) {
    throw new Error(`block device ${device} cannot be read: ${(err as Error).message}; check the device map or that the volume is attached`);
  }
  if (!st.isBlockDevice()) throw new Error(`${device} is not a block device; map the volume to its /dev node`);
  return devNoString(st.rdev);
}

/** Linux's dev_t encoding (glibc's gnu_dev_major / gnu_dev_minor). */
export function devNoString(rdev: number): string {
  const r = BigInt(rdev);
  const major = ((r >> 8n) & 0xfffn) | ((r >> 32n) & ~0xfffn);
  const minor = (r & 0xffn) | ((r >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

export async function readMountinfo(path = '/proc/self/mountinfo'): Promise<MountInfoLine[]> {
  return parseMountinfo(await readFile(path, 'utf8'));
}

/** Mounts of the device, in mountinfo order (parents before the mounts on top of them). */
export async function mountsOfDevice(device: string, mountinfoPath?: string): Promise<MountInfoLine[]> {
  const devNo = await deviceNumber(device);
  return (await readMountinfo(mountinfoPath)).filter((m) => m.devNo === devNo);
}

/** A MountEntry as the contract has it (plus root), without mountinfo's ids. */
export function toEntry(m: MountInfoLine): HostMountEntry {
  return { mountPoint: m.mountPoint, fsType: m.fsType, source: m.source, mountOptions: m.mountOptions, superOptions: m.superOptions, root: m.root };
}
