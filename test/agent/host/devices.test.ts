/**
 * Which device is which volume: discovery on a fake /sys, /dev and /proc tree in the kernel's
 * real file formats (wwid, binary VPD page 0x80, nbd pid and client cmdline, udev wwn- links),
 * and the --device-map file with a real loop device.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { discoverDevices, nbdExportFromCmdline, parseDeviceMap, parseVpdSerial, volumeOfVirtioSerial } from '../../../agent/host/devices.js';
import { LinuxHost } from '../../../agent/host/LinuxHost.js';
import { parseMountinfo } from '../../../agent/host/mounts.js';
import type { VolumeInfo } from '../../../emulator/array/types.js';
import { cleanupLoops, makeLoopDisk } from './loopFs.js';

const log = pino({ level: 'silent' });

function vol(name: string, wwn: string, serial: string): VolumeInfo {
  return {
    name,
    uuid: '00000000-0000-4000-8000-000000000000',
    wwn,
    serial,
    sizeBytes: 1 << 30,
    blockSize: 512,
    provisioning: 'thin',
    readOnly: false,
    description: '',
    createdAt: '2026-12-05T00:00:00.000Z',
    allocatedBytes: 0,
    allocLimitBytes: null,
  };
}

const WWN_A = '6001405a1b2c3d4e5f60718293a4b5c6';
const WWN_B = '6001405b0000000000000000000000bb';
const WWN_C = '6001405c0000000000000000000000cc';
const volumes = [
  vol('sda-by-wwid', WWN_A, 'ALSER0001'),
  vol('by-link', WWN_B, 'ALSER0002'),
  vol('by-serial', WWN_C, 'ALSER0003'),
  vol('nbdvol', '6001405d0000000000000000000000dd', 'ALSER0004'),
  vol('nbduri', '6001405e0000000000000000000000ee', 'ALSER0005'),
  vol('absent', '6001405f0000000000000000000000ff', 'ALSER0006'),
];

let root: string;
const put = (rel: string, data: string | Buffer) => {
  const p = join(root, rel);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, data);
};

function vpd80(serial: string): Buffer {
  const s = Buffer.from(serial, 'latin1');
  const b = Buffer.alloc(4 + s.length);
  b[1] = 0x80;
  b.writeUInt16BE(s.length, 2);
  s.copy(b, 4);
  return b;
}

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'arraylab-fakesys-'));
  // sdb: the kernel's wwid of an NAA-6 LU (lower-case hex) — matched by WWN
  put('sys/block/sdb/device/wwid', `naa.${WWN_A}\n`);
  put('sys/block/sdb/device/vpd_pg80', vpd80('ALSER0001'));
  // sdc: no wwid in sysfs, but udev made /dev/disk/by-id/wwn-0x<wwn> -> ../../sdc
  put('sys/block/sdc/device/vpd_pg80', vpd80('OTHER'));
  mkdirSync(join(root, 'dev/disk/by-id'), { recursive: true });
  symlinkSync('../../sdc', join(root, `dev/disk/by-id/wwn-0x${WWN_B}`));
  // sdd: a t10 wwid (no NAA) — found by its serial (padded with spaces, as targets do)
  put('sys/block/sdd/device/wwid', 't10.ARRAYLAB something\n');
  put('sys/block/sdd/device/vpd_pg80', vpd80('ALSER0003   '));
  // nbd0: nbd-client -N nbdvol; nbd1: qemu-nbd with an nbd:// URI; nbd2: not connected
  put('sys/block/nbd0/pid', '4242\n');
  put('proc/4242/cmdline', ['nbd-client', '127.0.0.1', '10809', '/dev/nbd0', '-N', 'nbdvol', ''].join('\0'));
  put('sys/block/nbd1/pid', '4343\n');
  put('proc/4343/cmdline', ['qemu-nbd', '-c', '/dev/nbd1', '-f', 'raw', 'nbd://127.0.0.1:10809/nbduri', ''].join('\0'));
  mkdirSync(join(root, 'sys/block/nbd2'), { recursive: true });
  // a disk of something else entirely
  put('sys/block/vda/device/vpd_pg80', vpd80('QEMU0001'));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
  cleanupLoops();
});

const roots = () => ({ sysRoot: join(root, 'sys'), devRoot: join(root, 'dev'), procRoot: join(root, 'proc') });

describe('discovery on a fake sysfs tree', () => {
  it('finds SCSI disks by WWN (wwid and by-id link), by serial, and NBD devices by export name', async () => {
    const found = await discoverDevices(volumes, roots());
    const dev = (n: string) => join(root, 'dev', n);
    expect(found.sort((a, b) => a.volume.localeCompare(b.volume))).toEqual([
      { volume: 'by-link', device: dev('sdc'), how: 'wwn' },
      { volume: 'by-serial', device: dev('sdd'), how: 'serial' },
      { volume: 'nbduri', device: dev('nbd1'), how: 'nbd' },
      { volume: 'nbdvol', device: dev('nbd0'), how: 'nbd' },
      { volume: 'sda-by-wwid', device: dev('sdb'), how: 'wwn' },
    ]);
  });

  it('LinuxHost.devices: map file entries win over discovery; volumes keep the array order', async () => {
    const disk = makeLoopDisk(1);
    const map = join(root, 'devices');
    writeFileSync(map, `# lab map\n\nby-serial ${disk.device}   # a FUSE export on a loop\nnot-on-array ${disk.device}\n`);
    const host = new LinuxHost({ log, deviceMapFile: map, ...roots() });
    const got = await host.devices(volumes);
    expect(got.map((d) => d.volume)).toEqual(['sda-by-wwid', 'by-link', 'by-serial', 'nbdvol', 'nbduri']);
    expect(got.find((d) => d.volume === 'by-serial')).toEqual({ volume: 'by-serial', device: disk.device, how: 'map' });
  });

  it('parses VPD 0x80 and NBD client command lines', () => {
    expect(parseVpdSerial(vpd80('  ABC 123  '))).toBe('ABC 123');
    expect(parseVpdSerial(Buffer.from([0, 0x83, 0, 1, 0x41]))).toBeNull();
    expect(nbdExportFromCmdline(['nbd-client', '-N', 'x', 'h', '/dev/nbd0'])).toBe('x');
    expect(nbdExportFromCmdline(['nbd-client', 'h', '10809', '/dev/nbd0', '--name', 'y'])).toBe('y');
    expect(nbdExportFromCmdline(['nbd-client', '--name=z', 'h'])).toBe('z');
    expect(nbdExportFromCmdline(['qemu-nbd', '-c', '/dev/nbd0', 'nbd+unix:///exp%201?socket=/s'])).toBe('exp 1');
    expect(nbdExportFromCmdline(['qemu-nbd', '--image-opts', 'driver=nbd,server.type=inet,server.host=h,server.port=1,export=w'])).toBe('w');
    expect(nbdExportFromCmdline(['nbd-client', 'h', '/dev/nbd0'])).toBeNull();
  });
});

// [G1] a guest's NBD volumes are virtio-blk disks whose serial is the export name (20 bytes at most)
describe('virtio-blk disks in a guest', () => {
  const guestVolumes = [
    ...volumes,
    vol('guestvol', '6001405a0000000000000000000000a1', 'ALSER0010'),
    vol('a-very-long-volume-name-1', '6001405a0000000000000000000000a2', 'ALSER0011'),
    vol('twin-volumes-with-long-names-1', '6001405a0000000000000000000000a3', 'ALSER0012'),
    vol('twin-volumes-with-long-names-2', '6001405a0000000000000000000000a4', 'ALSER0013'),
  ];

  it('maps vdX by its serial: exact, or a 20-byte cut when only one volume has that prefix', async () => {
    // The kernel's /sys/block/vdX/serial: the serial qemu was given, newline-terminated.
    put('sys/block/vdb/serial', 'guestvol\n');
    put('sys/block/vdc/serial', 'a-very-long-volume-n\n');
    put('sys/block/vdd/serial', 'twin-volumes-with-lo\n'); // two volumes share it: not guessed
    put('sys/block/vde/serial', 'no-such-volume\n');
    put('sys/block/vdf/serial', ''); // a disk given no serial
    const found = await discoverDevices(guestVolumes, roots());
    const dev = (n: string) => join(root, 'dev', n);
    const virtio = found.filter((d) => d.how === 'virtio').sort((a, b) => a.device.localeCompare(b.device));
    expect(virtio).toEqual([
      { volume: 'guestvol', device: dev('vdb'), how: 'virtio' },
      { volume: 'a-very-long-volume-name-1', device: dev('vdc'), how: 'virtio' },
    ]);
    // the fake tree's SCSI and NBD devices are still found as before
    expect(found.filter((d) => d.how !== 'virtio')).toHaveLength(5);
  });

  it('a WWN match wins over a virtio serial naming the same volume', async () => {
    put('sys/block/vdb/serial', 'sda-by-wwid\n');
    const found = await discoverDevices(volumes, roots());
    expect(found.find((d) => d.volume === 'sda-by-wwid')).toEqual({ volume: 'sda-by-wwid', device: join(root, 'dev', 'sdb'), how: 'wwn' });
  });

  it('volumeOfVirtioSerial: exact names, unambiguous prefixes, nothing when ambiguous', () => {
    const vs = [{ name: 'short' }, { name: '12345678901234567890' }, { name: '12345678901234567890x' }, { name: 'abcdefghijklmnopqrstuvwxyz' }];
    expect(volumeOfVirtioSerial('short', vs)?.name).toBe('short');
    expect(volumeOfVirtioSerial('abcdefghijklmnopqrst', vs)?.name).toBe('abcdefghijklmnopqrstuvwxyz');
    // a 20-byte name and a longer one with the same first 20 bytes: the disk could be either
    expect(volumeOfVirtioSerial('12345678901234567890', vs)).toBeUndefined();
    expect(volumeOfVirtioSerial('shor', vs)).toBeUndefined(); // a prefix shorter than 20 bytes is not a cut
  });
});

describe('device map file', () => {
  it('malformed lines are errors naming the file, the line and the fix', () => {
    expect(() => parseDeviceMap('vol1 /dev/loop0\nvol2\n', '/etc/m')).toThrow(
      'device map /etc/m line 2: expected "VOLUME DEVICE" (two fields), got "vol2"; fix the line or comment it out with #',
    );
    expect(() => parseDeviceMap('vol1 /dev/a /dev/b', '/etc/m')).toThrow(/line 1: expected "VOLUME DEVICE"/);
    expect(() => parseDeviceMap('# c\nvol1 loop0', '/etc/m')).toThrow(
      'device map /etc/m line 2: device "loop0" of volume vol1 is not an absolute path; write it as /dev/...',
    );
    expect(() => parseDeviceMap('v /dev/a\n v /dev/b', '/etc/m')).toThrow(
      'device map /etc/m line 2: volume v is already mapped on line 1; keep one line per volume',
    );
    expect(parseDeviceMap('  # only comments\n\n\tv1\t/dev/x  # trailing\n', 'f')).toEqual([{ volume: 'v1', device: '/dev/x', line: 3 }]);
  });

  it('a device that does not exist, or is not a block device, is an error; so is a missing file', async () => {
    const map = join(root, 'devices');
    const host = new LinuxHost({ log, deviceMapFile: map, ...roots() });
    await expect(host.devices(volumes)).rejects.toThrow(`cannot read device map ${map}`);
    writeFileSync(map, 'by-serial /dev/arraylab-no-such-device\n');
    await expect(host.devices(volumes)).rejects.toThrow(`device map ${map} line 1: device /dev/arraylab-no-such-device of volume by-serial does not exist`);
    writeFileSync(map, `\nby-serial ${map}\n`);
    await expect(host.devices(volumes)).rejects.toThrow(`device map ${map} line 2: ${map} (volume by-serial) is not a block device`);
  });
});

describe('mountinfo', () => {
  it('parses optional fields and octal escapes', () => {
    const [m] = parseMountinfo('36 35 98:0 /sub /mnt/with\\040space\\011tab rw,noatime master:1 shared:2 - ext4 /dev/my\\040disk rw,errors=continue\n');
    expect(m).toMatchObject({
      devNo: '98:0',
      root: '/sub',
      mountPoint: '/mnt/with space\ttab',
      mountOptions: 'rw,noatime',
      fsType: 'ext4',
      source: '/dev/my disk',
      superOptions: 'rw,errors=continue',
    });
  });
});
