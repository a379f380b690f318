/**
 * The disks the agent never touches, whatever the array or the device map say: the ones that
 * hold `/`, `/boot` or an active swap area. A volume whose WWN an array (or a typo in the device
 * map) points at the system disk would otherwise have the agent unmount, hold or overwrite it.
 *
 * A device is resolved to the whole disks under it through sysfs: /sys/dev/block/MAJ:MIN is a
 * partition (its parent directory is the disk) or a disk, and a device-mapper or md device lists
 * the devices it is built on in slaves/. A candidate is refused when its disks and the system's
 * share one. The /proc and /sys roots and the two stat calls are options, so that the probe is
 * tested on a fake tree.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { devNoString, parseMountinfo, unescapeMountinfo } from './mounts.js';

/** The mount points whose disks are system disks. */
export const SYSTEM_MOUNT_POINTS = ['/', '/boot'] as const;

export interface SystemDiskProbeOptions {
  /** Default /proc: reads self/mountinfo and swaps there. */
  procRoot?: string;
  /** Default /sys: dev/block/MAJ:MIN, class/block/NAME, .../slaves. */
  sysRoot?: string;
  /** "major:minor" of a block device node, or null when path is no block device. */
  deviceNumber?: (path: string) => Promise<string | null>;
  /** "major:minor" of the filesystem holding a file (a swap file), or null. */
  fileDevice?: (path: string) => Promise<string | null>;
}

/** One system disk and why it is one, e.g. {disk: 'sda', why: 'holds / (/dev/sda2)'}. */
export interface SystemDisk {
  disk: string;
  why: string;
}

async function realDeviceNumber(path: string): Promise<string | null> {
  try {
    const st = await stat(path);
    return st.isBlockDevice() ? devNoString(st.rdev) : null;
  } catch {
    return null;
  }
}

async function realFileDevice(path: string): Promise<string | null> {
  try {
    return devNoString((await stat(path)).dev);
  } catch {
    return null;
  }
}

export class SystemDiskProbe {
  private readonly proc: string;
  private readonly sys: string;
  private readonly devNoOf: (path: string) => Promise<string | null>;
  private readonly fileDevOf: (path: string) => Promise<string | null>;

  constructor(opts: SystemDiskProbeOptions = {}) {
    this.proc = opts.procRoot ?? '/proc';
    this.sys = opts.sysRoot ?? '/sys';
    this.devNoOf = opts.deviceNumber ?? realDeviceNumber;
    this.fileDevOf = opts.fileDevice ?? realFileDevice;
  }

  /** The whole disks (sysfs names) under a device number: itself, its disk, and what dm/md builds on. */
  async disksOf(devNo: string): Promise<Set<string>> {
    const out = new Set<string>();
    let start: string;
    try {
      start = await realpath(join(this.sys, 'dev', 'block', devNo));
    } catch {
      return out; // not a block device the kernel lists (overlay, tmpfs, nfs): no disk under it
    }
    const visit = async (path: string, depth: number): Promise<void> => {
      const disk = existsSync(join(path, 'partition')) ? dirname(path) : path;
      const name = basename(disk);
      if (out.has(name) || depth > 16) return;
      out.add(name);
      for (const dir of [path, disk]) {
        for (const slave of await readdir(join(dir, 'slaves')).catch(() => [] as string[])) {
          try {
            await visit(await realpath(join(this.sys, 'class', 'block', slave)), depth + 1);
          } catch {
            // a slave that went away: nothing under it
          }
        }
      }
    };
    await visit(start, 0);
    return out;
  }

  /** The disks holding /, /boot and the active swap areas, each with why. */
  async systemDisks(): Promise<SystemDisk[]> {
    const found: Array<{ devNo: string; why: string }> = [];
    const mountinfo = parseMountinfo(await readFile(join(this.proc, 'self', 'mountinfo'), 'utf8').catch(() => ''));
    for (const mp of SYSTEM_MOUNT_POINTS) {
      for (const m of mountinfo.filter((l) => l.mountPoint === mp)) {
        found.push({ devNo: m.devNo, why: `holds ${mp} (${m.source})` });
        // btrfs and others show an anonymous device number: the source names the real one.
        if (m.source.startsWith('/')) {
          const d = await this.devNoOf(m.source);
          if (d && d !== m.devNo) found.push({ devNo: d, why: `holds ${mp} (${m.source})` });
        }
      }
    }
    const swaps = await readFile(join(this.proc, 'swaps'), 'utf8').catch(() => '');
    for (const line of swaps.split('\n').slice(1)) {
      const [file, type] = line.trim().split(/\s+/);
      if (!file || !type) continue;
      const path = unescapeMountinfo(file);
      const d = type === 'partition' ? await this.devNoOf(path) : await this.fileDevOf(path);
      if (d) found.push({ devNo: d, why: type === 'partition' ? `holds the swap area ${path}` : `holds the swap file ${path}` });
    }
    const out: SystemDisk[] = [];
    for (const f of found) for (const disk of await this.disksOf(f.devNo)) if (!out.some((o) => o.disk === disk)) out.push({ disk, why: f.why });
    return out;
  }

  /**
   * Why the device must not be acted on ('' when it may): it is, is part of, or is built on a
   * disk that holds /, /boot or swap. A device that cannot be resolved is left to the caller
   * (which fails on it anyway).
   */
  async refusal(device: string): Promise<string> {
    const devNo = await this.devNoOf(device);
    if (devNo === null) return '';
    const mine = await this.disksOf(devNo);
    if (mine.size === 0) return '';
    const hit = (await this.systemDisks()).find((s) => mine.has(s.disk));
    return hit ? `${device} is on the system disk ${hit.disk}, which ${hit.why}` : '';
  }
}
