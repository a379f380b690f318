/**
 * Which local block device is which array volume.
 *
 *   1. the device map file (--device-map): lines "VOLUME DEVICE"; entries win over discovery;
 *   2. SCSI disks by WWN (VPD 0x83): /dev/disk/by-id/wwn-0x<wwn>, and /sys/block/X/device/wwid
 *      ("naa.<wwn>");
 *   3. SCSI disks by serial (VPD 0x80): /sys/block/X/device/vpd_pg80 (4-byte header, then the serial);
 *   4. NBD devices by export name: /sys/block/nbdN/pid -> /proc/PID/cmdline of the client
 *      ("-N NAME", "--name NAME", or an nbd:// URI), or /sys/block/nbdN/backend.
 *   5. virtio-blk disks (a guest's NBD volumes) by serial: /sys/block/vdX/serial is the export
 *      name, cut to 20 bytes by virtio; a cut serial is matched as a prefix only when exactly one
 *      volume has it (otherwise the device map must say).
 *
 * The /sys, /dev and /proc roots are parameters so that discovery is tested on a fake tree.
 */
import type { Stats } from 'node:fs';
import { readdir, readFile, readlink, realpath, stat } from 'node:fs/promises';
import { basename, join, resolve as resolvePath } from 'node:path';
import type { VolumeInfo } from '../../proto/views.js';
import type { DeviceMapping } from '../types.js';

export interface DeviceRoots {
  sysRoot?: string;
  devRoot?: string;
  procRoot?: string;
}

export interface DeviceMapEntry {
  volume: string;
  device: string;
  line: number;
}

/**
 * Parses a device map: "VOLUME DEVICE" per line, # comments and blank lines allowed. Throws for
 * a malformed line, naming the file, the line and the fix.
 */
export function parseDeviceMap(text: string, file: string): DeviceMapEntry[] {
  const out: DeviceMapEntry[] = [];
  const seen = new Map<string, number>();
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const content = raw.replace(/#.*$/, '').trim();
    if (!content) return;
    const fields = content.split(/\s+/);
    if (fields.length !== 2) {
      throw new Error(
        `device map ${file} line ${line}: expected "VOLUME DEVICE" (two fields), got ${JSON.stringify(raw.trim())}; fix the line or comment it out with #`,
      );
    }
    const [volume, device] = fields as [string, string];
    if (!device.startsWith('/')) {
      throw new Error(`device map ${file} line ${line}: device ${JSON.stringify(device)} of volume ${volume} is not an absolute path; write it as /dev/...`);
    }
    const before = seen.get(volume);
    if (before !== undefined)
      throw new Error(`device map ${file} line ${line}: volume ${volume} is already mapped on line ${before}; keep one line per volume`);
    seen.set(volume, line);
    out.push({ volume, device, line });
  });
  return out;
}

/** Reads and checks a device map file: every device must exist and be a block device. */
export async function readDeviceMap(file: string): Promise<DeviceMapEntry[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read device map ${file}: ${(err as Error).message}; create it or drop --device-map`);
  }
  const entries = parseDeviceMap(text, file);
  for (const e of entries) {
    let st: Stats;
    try {
      st = await stat(e.device);
    } catch {
      throw new Error(`device map ${file} line ${e.line}: device ${e.device} of volume ${e.volume} does not exist; attach the volume or fix the line`);
    }
    if (!st.isBlockDevice())
      throw new Error(`device map ${file} line ${e.line}: ${e.device} (volume ${e.volume}) is not a block device; map the volume to its /dev node`);
  }
  return entries;
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

/** The serial of a VPD page 0x80 (4-byte header: qualifier/type, page code, length). */
export function parseVpdSerial(buf: Buffer): string | null {
  if (buf.length < 4 || buf[1] !== 0x80) return null;
  const len = buf.readUInt16BE(2);
  return buf
    .subarray(4, 4 + len)
    .toString('latin1')
    .replace(/[\0 ]+$/g, '')
    .replace(/^[\0 ]+/g, '');
}

/** The export name an NBD client's command line asks for, if it says. */
export function nbdExportFromCmdline(args: string[]): string | null {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if ((a === '-N' || a === '--name' || a === '-name') && i + 1 < args.length) return args[i + 1]!;
    const eq = /^(?:--name|-N)=?(.+)$/.exec(a);
    if (eq && a !== '-N') return eq[1]!;
  }
  for (const a of args) {
    // nbd://host:port/NAME, nbds://..., nbd+unix:///NAME?socket=...
    const uri = /^nbds?(?:\+(?:unix|tcp|vsock))?:\/\/[^/]*\/([^?#]*)/.exec(a);
    if (uri) return decodeURIComponent(uri[1]!);
    // qemu --image-opts / blockdev style: driver=nbd,...,export=NAME
    const opt = /(?:^|,)export=([^,]+)/.exec(a);
    if (opt && /driver=nbd/.test(a)) return opt[1]!;
  }
  return null;
}

/** Discovers SCSI and NBD devices of the given volumes (without the map file). */
export async function discoverDevices(volumes: VolumeInfo[], roots: DeviceRoots = {}): Promise<DeviceMapping[]> {
  const sys = roots.sysRoot ?? '/sys';
  const dev = roots.devRoot ?? '/dev';
  const proc = roots.procRoot ?? '/proc';
  const found = new Map<string, DeviceMapping>();
  const byWwn = new Map(volumes.map((v) => [v.wwn.toLowerCase(), v]));
  const bySerial = new Map(volumes.filter((v) => v.serial).map((v) => [v.serial, v]));
  const byName = new Map(volumes.map((v) => [v.name, v]));

  // WWN through udev's links: /dev/disk/by-id/wwn-0x<wwn> -> ../../sdX
  const byIdDir = join(dev, 'disk', 'by-id');
  for (const link of (await readdir(byIdDir).catch(() => [] as string[])).sort()) {
    const m = /^wwn-0x([0-9a-fA-F]+)$/.exec(link);
    const v = m && byWwn.get(m[1]!.toLowerCase());
    if (!v || found.has(v.name)) continue;
    const target = await readlink(join(byIdDir, link)).catch(() => null);
    if (target) found.set(v.name, { volume: v.name, device: join(dev, basename(resolvePath(byIdDir, target))), how: 'wwn' });
  }

  const blocks = (await readdir(join(sys, 'block')).catch(() => [] as string[])).sort();
  // WWN and serial from sysfs (kernel's copy of VPD 0x83 and 0x80)
  for (const name of blocks) {
    const wwid = (await readText(join(sys, 'block', name, 'device', 'wwid')))?.trim().toLowerCase();
    const m = wwid ? /^naa\.([0-9a-f]+)$/.exec(wwid) : null;
    const v = m && byWwn.get(m[1]!);
    if (v && !found.has(v.name)) found.set(v.name, { volume: v.name, device: join(dev, name), how: 'wwn' });
  }
  const taken = new Set([...found.values()].map((d) => d.device));
  for (const name of blocks) {
    if (taken.has(join(dev, name))) continue;
    let pg80: Buffer;
    try {
      pg80 = await readFile(join(sys, 'block', name, 'device', 'vpd_pg80'));
    } catch {
      continue;
    }
    const serial = parseVpdSerial(pg80);
    const v = serial ? bySerial.get(serial) : undefined;
    if (v && !found.has(v.name)) found.set(v.name, { volume: v.name, device: join(dev, name), how: 'serial' });
  }

  // NBD: best effort, from what the client process was told or the backend identifier.
  for (const name of blocks.filter((n) => /^nbd\d+$/.test(n))) {
    let exportName: string | null = null;
    const pid = (await readText(join(sys, 'block', name, 'pid')))?.trim();
    if (pid && /^\d+$/.test(pid)) {
      const cmdline = await readText(join(proc, pid, 'cmdline'));
      if (cmdline) exportName = nbdExportFromCmdline(cmdline.split('\0').filter(Boolean));
    }
    if (exportName === null) {
      const backend = (await readText(join(sys, 'block', name, 'backend')))?.trim();
      if (backend && byName.has(backend)) exportName = backend;
    }
    const v = exportName !== null ? byName.get(exportName) : undefined;
    if (v && !found.has(v.name)) found.set(v.name, { volume: v.name, device: join(dev, name), how: 'nbd' });
  }

  // [G1] virtio-blk: qemu gives a guest's NBD disk the export name as its serial.
  for (const name of blocks.filter((n) => /^vd[a-z]+$/.test(n))) {
    const serial = (await readText(join(sys, 'block', name, 'serial')))?.replace(/[\0\s]+$/, '');
    const v = serial ? volumeOfVirtioSerial(serial, volumes) : undefined;
    if (v && !found.has(v.name)) found.set(v.name, { volume: v.name, device: join(dev, name), how: 'virtio' });
  }
  return [...found.values()];
}

/** virtio-blk serials hold at most 20 bytes (VIRTIO_BLK_ID_BYTES). */
export const VIRTIO_SERIAL_BYTES = 20;

/**
 * The volume a virtio-blk serial names: the one whose name, cut to 20 bytes, is the serial.
 * Two volumes whose names share the first 20 bytes cannot be told apart: none is returned.
 */
export function volumeOfVirtioSerial<V extends { name: string }>(serial: string, volumes: V[]): V | undefined {
  const cut = (s: string) => Buffer.from(s, 'utf8').subarray(0, VIRTIO_SERIAL_BYTES).toString('utf8');
  const candidates = volumes.filter((v) => v.name === serial || cut(v.name) === serial);
  return candidates.length === 1 ? candidates[0] : undefined;
}

/** The WWN a block device itself reports (sysfs's copy of VPD 0x83, "naa.<hex>"), or undefined. */
export async function deviceWwn(device: string, roots: DeviceRoots = {}): Promise<string | undefined> {
  const sys = roots.sysRoot ?? '/sys';
  const name = basename(await realpath(device).catch(() => device));
  const wwid = (await readText(join(sys, 'block', name, 'device', 'wwid')))?.trim().toLowerCase();
  const m = wwid ? /^naa\.([0-9a-f]+)$/.exec(wwid) : null;
  return m ? m[1]! : undefined;
}

/**
 * Every volume with a local device: map file entries first (they win), then discovery. Each
 * mapping carries the WWN the device itself reports, where it has one, so that the caller can
 * check it against the volume's pinned identity.
 */
export async function mapDevices(volumes: VolumeInfo[], opts: DeviceRoots & { deviceMapFile?: string } = {}): Promise<DeviceMapping[]> {
  const known = new Set(volumes.map((v) => v.name));
  const out = new Map<string, DeviceMapping>();
  if (opts.deviceMapFile) {
    for (const e of await readDeviceMap(opts.deviceMapFile)) {
      // A line for a volume the array does not have is not ours to report here (doctor does).
      if (known.has(e.volume)) out.set(e.volume, { volume: e.volume, device: e.device, how: 'map' });
    }
  }
  for (const d of await discoverDevices(volumes, opts)) if (!out.has(d.volume)) out.set(d.volume, d);
  const mapped = volumes.filter((v) => out.has(v.name)).map((v) => out.get(v.name)!);
  for (const d of mapped) {
    const wwn = await deviceWwn(d.device, opts);
    if (wwn !== undefined) d.wwn = wwn;
  }
  return mapped;
}
