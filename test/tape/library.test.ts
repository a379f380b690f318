/**
 * The tape library on a real StorageArray (memory backend: MemoryBlockStore volumes with the
 * copy engine's layers): round trip, sparseness, crash-cut records, damage detection, capacity,
 * hostile headers, exclusivity, restore refusals, and a SnapOPC+ snap volume's point-in-time image.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice } from '../../emulator/block/BlockDevice.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { crc32c } from '../../emulator/net/crc32c.js';
import { arrayTapeVolumes } from '../../emulator/tape/arrayVolumes.js';
import {
  CARTRIDGE_HEADER_SIZE,
  decodeExtentHeader,
  encodeCartridgeHeader,
  encodeEod,
  encodeExtentHeader,
  encodeRecordHeader,
  encodeTrailer,
  EXTENT_HEADER_SIZE,
  FormatError,
  RECORD_HEADER_SIZE,
  TRAILER_SIZE,
} from '../../emulator/tape/format.js';
import { TapeLibrary } from '../../emulator/tape/TapeLibrary.js';
import { TapeError, type HostProgress, type TapeVolumes, type VolumeImage } from '../../emulator/tape/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-tape-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const arrays: StorageArray[] = [];
const libs: TapeLibrary[] = [];
afterEach(async () => {
  await Promise.allSettled(libs.splice(0).map((l) => l.close()));
  await Promise.allSettled(arrays.splice(0).map((a) => a.close()));
});

let n = 0;
async function setup(): Promise<{ array: StorageArray; lib: TapeLibrary; dir: string }> {
  const array = await StorageArray.open({ backend: 'memory', logger, copyClock: 'manual' });
  arrays.push(array);
  const dir = path.join(tmp, `lib${++n}`);
  const lib = await TapeLibrary.open({ dir, volumes: arrayTapeVolumes(array), logger });
  libs.push(lib);
  return { array, lib, dir };
}

async function reopen(array: StorageArray, dir: string): Promise<TapeLibrary> {
  const lib = await TapeLibrary.open({ dir, volumes: arrayTapeVolumes(array), logger });
  libs.push(lib);
  return lib;
}

let conn = 0;
async function withDevice<T>(array: StorageArray, name: string, fn: (d: BlockDevice) => Promise<T>): Promise<T> {
  const h = array.openExport(name, { protocol: 'nbd', connectionId: `t${++conn}`, remoteAddress: '127.0.0.1:1', readOnly: false })!;
  try {
    return await fn(h.device);
  } finally {
    h.close();
  }
}

async function image(array: StorageArray, name: string): Promise<Buffer> {
  return withDevice(array, name, async (d) => {
    const b = Buffer.alloc(d.size);
    await d.read(0, b);
    return b;
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function failure(p: Promise<unknown>): Promise<TapeError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TapeError);
  return err as TapeError;
}

/** vol with 1 MiB of 0xaa at 0, 1 MiB of 0xbb at 8 MiB, 4 KiB of 0xcc at 12 MiB + 4 KiB. */
async function sparseVolume(array: StorageArray, name: string, size = SIZE): Promise<void> {
  await array.createVolume({ name, sizeBytes: size });
  await withDevice(array, name, async (d) => {
    await d.write(0, Buffer.alloc(MiB, 0xaa));
    await d.write(8 * MiB, Buffer.alloc(MiB, 0xbb));
    await d.write(12 * MiB + 4096, Buffer.alloc(4096, 0xcc));
  });
}

describe('tape library', () => {
  it('writes a sparse volume storing only its data, restores it exactly (holes zeroed), and keeps it across a reopen', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T0001', 64 * MiB);
    const progress: HostProgress[] = [];
    const rec = await lib.write({ volume: 'vol1', cartridge: 'T0001', tag: 'TV vol1 generation 1' }, (p) => progress.push(p));
    const original = await image(array, 'vol1');
    expect(rec).toMatchObject({
      cartridge: 'T0001',
      record: 1,
      volume: 'vol1',
      tag: 'TV vol1 generation 1',
      sizeBytes: SIZE,
      blockSize: 512,
      dataBytes: 2 * MiB + 4096,
    });
    expect(rec.sha256).toBe(sha(original));
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.at(-1)).toEqual({ doneBytes: SIZE, totalBytes: SIZE });
    expect(progress.every((p, i) => i === 0 || p.doneBytes >= progress[i - 1]!.doneBytes)).toBe(true);
    const cart = lib.list()[0]!;
    expect(cart.recordCount).toBe(1);
    expect(cart.usedBytes).toBeLessThan(2 * MiB + 64 * 1024); // data plus headers, not the 16 MiB image
    expect(fs.statSync(path.join(dir, 'T0001.tape')).size).toBeLessThan(3 * MiB);

    // The target is dirty everywhere: the record's holes must come back as zeroes.
    await array.createVolume({ name: 'vol2', sizeBytes: 2 * SIZE });
    await withDevice(array, 'vol2', async (d) => {
      for (let p = 0; p < 2 * SIZE; p += MiB) await d.write(p, Buffer.alloc(MiB, 0x11));
    });
    const restoreProgress: HostProgress[] = [];
    const restored = await lib.restore({ cartridge: 'T0001', record: 1, volume: 'vol2' }, (p) => restoreProgress.push(p));
    expect(restored).toEqual({ cartridge: 'T0001', record: 1, volume: 'vol2', bytes: SIZE, sha256: rec.sha256 });
    expect(restoreProgress.at(-1)).toEqual({ doneBytes: 2 * SIZE, totalBytes: 2 * SIZE });
    const back = await image(array, 'vol2');
    expect(back.subarray(0, SIZE).equals(original)).toBe(true);
    expect(back.subarray(SIZE).equals(Buffer.alloc(SIZE, 0x11))).toBe(true); // past the record: untouched

    await lib.close();
    const again = await reopen(array, dir);
    expect(again.get('T0001')).toEqual({ cartridge: cart, records: [rec] });
    expect(await again.verify({ cartridge: 'T0001' })).toEqual([{ record: 1, ok: true, error: '' }]);
  });

  it('ignores a record cut short by a crash, and the next write takes its place', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T1', 64 * MiB);
    const first = await lib.write({ volume: 'vol1', cartridge: 'T1' });
    const usedAfterFirst = lib.list()[0]!.usedBytes;
    await withDevice(array, 'vol1', (d) => d.write(MiB, Buffer.alloc(MiB, 0xdd)));
    await lib.write({ volume: 'vol1', cartridge: 'T1' });
    await lib.close();
    // A crash in the middle of record 2: the file ends inside its data.
    const file = path.join(dir, 'T1.tape');
    fs.truncateSync(file, usedAfterFirst + RECORD_HEADER_SIZE + EXTENT_HEADER_SIZE + 1000);

    const lib2 = await reopen(array, dir);
    expect(lib2.get('T1').records).toEqual([first]);
    expect(lib2.list()[0]!.usedBytes).toBe(usedAfterFirst);
    const second = await lib2.write({ volume: 'vol1', cartridge: 'T1', tag: 'after crash' });
    expect(second.record).toBe(2);
    expect(second.sha256).toBe(sha(await image(array, 'vol1')));
    expect(await lib2.verify({ cartridge: 'T1' })).toEqual([
      { record: 1, ok: true, error: '' },
      { record: 2, ok: true, error: '' },
    ]);
    await lib2.close();
    const lib3 = await reopen(array, dir);
    expect(lib3.get('T1').records.map((r) => [r.record, r.tag])).toEqual([
      [1, ''],
      [2, 'after crash'],
    ]);
  });

  it('a flipped byte in an extent fails verify and restore naming cartridge and record; restore writes nothing from the bad extent on', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T1', 64 * MiB);
    await lib.write({ volume: 'vol1', cartridge: 'T1' });
    // Record 1 at 256: header, extent 1 (0..1 MiB), then extent 2 (8 MiB..9 MiB): flip a byte in its data.
    const ext2 = CARTRIDGE_HEADER_SIZE + RECORD_HEADER_SIZE + EXTENT_HEADER_SIZE + MiB;
    const file = path.join(dir, 'T1.tape');
    const fd = fs.openSync(file, 'r+');
    const hdr = Buffer.alloc(EXTENT_HEADER_SIZE);
    fs.readSync(fd, hdr, 0, EXTENT_HEADER_SIZE, ext2);
    expect(hdr.readBigUInt64LE(8)).toBe(BigInt(8 * MiB)); // the layout the test assumes
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, ext2 + EXTENT_HEADER_SIZE + 12345);
    b[0]! ^= 0x40;
    fs.writeSync(fd, b, 0, 1, ext2 + EXTENT_HEADER_SIZE + 12345);
    fs.closeSync(fd);

    const checks = await lib.verify({ cartridge: 'T1' });
    expect(checks).toHaveLength(1);
    expect(checks[0]!.ok).toBe(false);
    expect(checks[0]!.error).toMatch(/cartridge T1 record 1 is damaged: extent 2 \(volume offset 8388608.*CRC32C/);

    await array.createVolume({ name: 'vol2', sizeBytes: SIZE });
    await withDevice(array, 'vol2', async (d) => {
      for (let p = 0; p < SIZE; p += MiB) await d.write(p, Buffer.alloc(MiB, 0x11));
    });
    const err = await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'vol2' }));
    expect(err.code).toBe('DATA_LOSS');
    expect(err.message).toMatch(/cartridge T1 record 1 is damaged/);
    const after = await image(array, 'vol2');
    expect(after.subarray(0, MiB).equals(Buffer.alloc(MiB, 0xaa))).toBe(true); // extent 1 was good and written
    expect(after.subarray(MiB).equals(Buffer.alloc(SIZE - MiB, 0x11))).toBe(true); // nothing from the bad extent on
  });

  it('refuses a write that does not fit, up front, naming the cartridge, its free bytes and the fix; picks the first cartridge with room', async () => {
    const { array, lib } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T1', MiB);
    const before = lib.list()[0]!;
    const err = await failure(lib.write({ volume: 'vol1', cartridge: 'T1' }));
    expect(err.code).toBe('RESOURCE_EXHAUSTED');
    expect(err.message).toMatch(/^cartridge T1 has \d+ bytes free; the copy of volume vol1 needs \d+ .*arraylab tape add LABEL --capacity SIZE/);
    expect(lib.list()[0]).toEqual(before);

    const none = await failure(lib.write({ volume: 'vol1' }));
    expect(none.code).toBe('RESOURCE_EXHAUSTED');
    expect(none.message).toMatch(/no cartridge has room for volume vol1.*T1.*arraylab tape add/);

    await lib.add('T3', 64 * MiB);
    await lib.add('T2', 64 * MiB);
    expect((await lib.write({ volume: 'vol1' })).cartridge).toBe('T2'); // first by label with room (T1 has none)
    expect(lib.list().map((c) => [c.label, c.recordCount])).toEqual([
      ['T1', 0],
      ['T2', 1],
      ['T3', 0],
    ]);
  });

  it('one operation per cartridge: a second is refused while a write runs, and so is remove', async () => {
    const { array, lib } = await setup();
    await array.createVolume({ name: 'big', sizeBytes: 64 * MiB });
    await withDevice(array, 'big', async (d) => {
      for (let p = 0; p < 64 * MiB; p += MiB) await d.write(p, Buffer.alloc(MiB, ((p / MiB) & 0xff) | 1));
    });
    await lib.add('T1', 256 * MiB);
    const writing = lib.write({ volume: 'big', cartridge: 'T1' });
    const second = await failure(lib.verify({ cartridge: 'T1' }));
    expect(second.code).toBe('FAILED_PRECONDITION');
    expect(second.message).toMatch(/cartridge T1 is busy writing volume big .*wait for it to finish/);
    expect((await failure(lib.remove('T1'))).message).toMatch(/busy/);
    expect((await failure(lib.erase('T1'))).message).toMatch(/busy/);
    await writing;
    expect(await lib.verify({ cartridge: 'T1' })).toEqual([{ record: 1, ok: true, error: '' }]);
    await lib.remove('T1');
    expect(lib.list()).toEqual([]);
  });

  it('erase keeps the capacity and drops the records; remove deletes the file', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'vol1');
    const added = await lib.add('T1', 64 * MiB);
    expect(added).toMatchObject({ label: 'T1', capacityBytes: 64 * MiB, usedBytes: CARTRIDGE_HEADER_SIZE, recordCount: 0 });
    expect((await failure(lib.add('T1', 64 * MiB))).code).toBe('ALREADY_EXISTS');
    expect((await failure(lib.add('bad label', 64 * MiB))).code).toBe('INVALID_ARGUMENT');
    expect((await failure(lib.add('T9', 1000))).message).toMatch(/too small/);
    await lib.write({ volume: 'vol1', cartridge: 'T1' });
    const erased = await lib.erase('T1');
    expect(erased).toEqual({ ...added });
    await lib.remove('T1');
    expect(fs.existsSync(path.join(dir, 'T1.tape'))).toBe(false);
    expect((await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'vol1' }))).code).toBe('NOT_FOUND');
  });

  it('hostile or corrupt headers give a clear error, no crash and no allocation by their lengths', async () => {
    const { array, dir } = await setup();
    fs.mkdirSync(dir, { recursive: true });
    // A cartridge header with a sealed (valid CRC) but absurd label length.
    const evil = encodeCartridgeHeader({ label: 'EVIL', capacityBytes: MiB, createdMs: 0 });
    evil.writeUInt8(250, 32);
    evil.writeUInt32LE(crc32c(evil, 0, 252), 252);
    fs.writeFileSync(path.join(dir, 'EVIL.tape'), evil);
    fs.writeFileSync(path.join(dir, 'JUNK.tape'), Buffer.alloc(4096, 0x5a));
    // A good header followed by a sealed record header claiming 2^40 extents and a huge size.
    const good = encodeCartridgeHeader({ label: 'HUGE', capacityBytes: MiB, createdMs: 0 });
    const rec = encodeRecordHeader({
      record: 1,
      blockSize: 512,
      sizeBytes: 2 ** 50,
      extentCount: 2 ** 40,
      dataBytes: 2 ** 49,
      createdMs: 0,
      imageMs: 0,
      volume: 'v',
      tag: '',
    });
    fs.writeFileSync(path.join(dir, 'HUGE.tape'), Buffer.concat([good, rec, Buffer.alloc(100)]));

    const lib = await reopen(array, dir);
    expect(lib.list().map((c) => [c.label, c.recordCount])).toEqual([['HUGE', 0]]); // its bogus record is an ignored tail
    const e1 = await failure(lib.verify({ cartridge: 'EVIL' }));
    expect(e1.code).toBe('FAILED_PRECONDITION');
    expect(e1.message).toMatch(/cartridge EVIL cannot be read \(.*label length 250 is more than 63\); remove it: arraylab tape remove EVIL/);
    expect((await failure(Promise.resolve().then(() => lib.get('JUNK')))).message).toMatch(/not an arraylab tape cartridge/);
    await lib.remove('EVIL');
    await lib.remove('JUNK');
    expect(fs.readdirSync(dir)).toEqual(['HUGE.tape']);

    // An extent header whose length would make a reader allocate 4 GiB is refused by the decoder.
    const ext = Buffer.alloc(EXTENT_HEADER_SIZE);
    Buffer.from('ARLTEXT\n', 'latin1').copy(ext, 0);
    ext.writeUInt32LE(0xffffffff, 16);
    ext.writeUInt32LE(crc32c(ext, 0, 28), 28);
    expect(() =>
      decodeExtentHeader(
        ext,
        { record: 1, blockSize: 512, sizeBytes: 2 ** 40, extentCount: 1, dataBytes: 0, createdMs: 0, imageMs: 0, volume: 'v', tag: '' },
        0,
      ),
    ).toThrow(FormatError);
  });

  it('restore is refused for a wrong block size, a volume too small, and a volume exported read-write unless force', async () => {
    const { array, lib } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T1', 64 * MiB);
    await lib.write({ volume: 'vol1', cartridge: 'T1' });
    await array.createVolume({ name: 'v4k', sizeBytes: SIZE, blockSize: 4096 });
    await array.createVolume({ name: 'small', sizeBytes: SIZE / 2 });
    await array.createVolume({ name: 'busy', sizeBytes: SIZE });
    expect((await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'v4k' }))).message).toMatch(/512-byte blocks, the volume 4096-byte/);
    expect((await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'small' }))).message).toMatch(/grow it first \(arraylab volume resize small/);
    expect((await failure(lib.restore({ cartridge: 'T1', record: 2, volume: 'busy' }))).code).toBe('NOT_FOUND');
    const h = array.openExport('busy', { protocol: 'nbd', connectionId: 'held', remoteAddress: '127.0.0.1:2', readOnly: false })!;
    try {
      const err = await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'busy' }));
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toBe(
        'cannot restore cartridge T1 record 1 onto busy: busy is exported read-write to 1 connected client; dismount it first or pass --force',
      );
      const forced = await lib.restore({ cartridge: 'T1', record: 1, volume: 'busy', force: true });
      expect(forced.sha256).toBe(sha(await image(array, 'vol1')));
    } finally {
      h.close();
    }
  });

  it('a SnapOPC+ snap volume goes to tape as its point-in-time image', async () => {
    const { array, lib } = await setup();
    await sparseVolume(array, 'src');
    const pointInTime = await image(array, 'src');
    await array.createVolume({ name: 'snap', sizeBytes: SIZE });
    await array.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snap' });
    await withDevice(array, 'src', async (d) => {
      await d.write(0, Buffer.alloc(2 * MiB, 0xee));
      await d.write(12 * MiB, Buffer.alloc(MiB, 0xef));
      await d.flush();
    });
    expect((await image(array, 'src')).equals(pointInTime)).toBe(false);
    await lib.add('T1', 64 * MiB);
    const rec = await lib.write({ volume: 'snap', cartridge: 'T1' });
    expect(rec.sha256).toBe(sha(pointInTime));
    expect(rec.dataBytes).toBeLessThan(SIZE); // all-zero pieces of the snap volume are not stored
    await array.createVolume({ name: 'copy', sizeBytes: SIZE });
    await lib.restore({ cartridge: 'T1', record: 1, volume: 'copy' });
    expect((await image(array, 'copy')).equals(pointInTime)).toBe(true);
    // Its block status says 16 MiB of data: too much for an 8 MiB cartridge, but what would
    // really be stored (read, zero pieces left out) fits, so it is not refused.
    await lib.add('T2', 8 * MiB);
    expect(await lib.write({ volume: 'snap', cartridge: 'T2' })).toMatchObject({ sha256: sha(pointInTime), dataBytes: rec.dataBytes });
    // A snap volume is read-only to hosts: no restore onto it.
    expect((await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'snap' }))).message).toMatch(/read-only/);
  });
});

/** A record header exactly as arraylab wrote it before imageAt: bytes 242-251 left zero. */
function recordHeaderBeforeImageAt(h: {
  record: number;
  sizeBytes: number;
  extentCount: number;
  dataBytes: number;
  createdMs: number;
  volume: string;
  tag: string;
}): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE);
  b.write('ARLTREC\n', 0, 'latin1');
  b.writeUInt32LE(h.record, 8);
  b.writeUInt32LE(512, 12);
  b.writeBigUInt64LE(BigInt(h.sizeBytes), 16);
  b.writeBigUInt64LE(BigInt(h.extentCount), 24);
  b.writeBigUInt64LE(BigInt(h.dataBytes), 32);
  b.writeBigUInt64LE(BigInt(h.createdMs), 40);
  b.writeUInt8(Buffer.byteLength(h.volume), 48);
  b.write(h.volume, 49);
  b.writeUInt16LE(Buffer.byteLength(h.tag), 112);
  b.write(h.tag, 114);
  b.writeUInt32LE(crc32c(b, 0, 252), 252);
  return b;
}

describe('tape records keep the point in time of their image', () => {
  const T = (ms: number) => new Date(ms).toISOString();

  it('a snap volume written seconds after the snapshot records the snapshot instant; a live volume the write start', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'src');
    await array.createVolume({ name: 'snap', sizeBytes: SIZE });
    const g = await array.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snap' });
    await withDevice(array, 'src', (d) => d.write(0, Buffer.alloc(MiB, 0xee)));
    await new Promise((r) => setTimeout(r, 1500));
    await lib.add('T1', 64 * MiB);
    const rec = await lib.write({ volume: 'snap', cartridge: 'T1' });
    expect(rec.imageAt).toBe(g.imageAt);
    expect(Date.parse(rec.createdAt) - Date.parse(rec.imageAt)).toBeGreaterThanOrEqual(1500);

    const before = Date.now();
    const live = await lib.write({ volume: 'src', cartridge: 'T1' });
    expect(Date.parse(live.imageAt)).toBeGreaterThanOrEqual(before);
    expect(live.imageAt).toBe(live.createdAt);

    // Both instants are in the cartridge file: a reopened library reads them back.
    const again = await reopen(array, dir);
    expect(again.get('T1').records).toEqual([rec, live]);
  });

  it('keeps an explicit point in time across a reopen; refuses one that is not ISO 8601 or is in the future', async () => {
    const { array, lib, dir } = await setup();
    await sparseVolume(array, 'vol1');
    await lib.add('T1', 64 * MiB);
    const rec = await lib.write({ volume: 'vol1', cartridge: 'T1', pointInTime: '2026-01-02T03:04:05.678Z' });
    expect(rec.imageAt).toBe('2026-01-02T03:04:05.678Z');
    expect(rec.createdAt).not.toBe(rec.imageAt);
    const offset = await lib.write({ volume: 'vol1', cartridge: 'T1', pointInTime: '2026-01-02T04:04:05+01:00' });
    expect(offset.imageAt).toBe('2026-01-02T03:04:05.000Z');
    expect((await reopen(array, dir)).get('T1').records.map((r) => r.imageAt)).toEqual(['2026-01-02T03:04:05.678Z', '2026-01-02T03:04:05.000Z']);

    const bad = await failure(lib.write({ volume: 'vol1', cartridge: 'T1', pointInTime: 'yesterday' }));
    expect(bad.code).toBe('INVALID_ARGUMENT');
    expect(bad.message).toBe('point in time "yesterday" is not an ISO 8601 instant after 1970; give a date, time and zone, e.g. 2026-01-31T12:00:00Z');
    const later = await failure(lib.write({ volume: 'vol1', cartridge: 'T1', pointInTime: T(Date.now() + 3_600_000) }));
    expect(later.code).toBe('INVALID_ARGUMENT');
    expect(later.message).toMatch(/^point in time \S+ for volume vol1 is later than now \(\S+\); an image cannot be of a later instant than it is read/);
    expect(lib.get('T1').records).toHaveLength(2);
  });

  /** Volume a (data) copied to b by a new session of `type`, and an empty cartridge T1. */
  async function pairAndCartridge(type: 'ec' | 'quickopc') {
    const { array, lib } = await setup();
    await sparseVolume(array, 'a');
    await array.createVolume({ name: 'b', sizeBytes: SIZE });
    await lib.add('T1', 64 * MiB);
    const s = await array.startCopy({ type, source: 'a', destination: 'b' });
    const copied = async () => {
      while (array.getCopy(s.id).state === 'copying') await array.copy.stepOne(s.id, 1000);
    };
    return { array, lib, s, copied };
  }

  it('EC destinations: refused while the image moves (copying, equivalent); the suspend instant once suspended', async () => {
    const { array, lib, s: ec, copied } = await pairAndCartridge('ec');
    const copying = await failure(lib.write({ volume: 'b', cartridge: 'T1' }));
    expect(copying.code).toBe('FAILED_PRECONDITION');
    expect(copying.message).toBe(
      `cannot write volume b to tape: volume b is the destination of EC session ${ec.id} (a -> b), copying: its image follows the source; suspend or split the session first (arraylab copy suspend ${ec.id}), or write the source`,
    );
    await copied();
    const equivalent = await failure(lib.write({ volume: 'b', cartridge: 'T1', pointInTime: '2026-01-02T03:04:05Z' }));
    expect(equivalent.message).toMatch(
      /^cannot write volume b to tape: volume b is the destination of EC session \S+ \(a -> b\), equivalent: its image follows the source; suspend or split/,
    );
    expect(lib.get('T1').records).toEqual([]);

    const suspended = await array.suspendCopy(ec.id);
    await new Promise((r) => setTimeout(r, 20));
    const rec = await lib.write({ volume: 'b', cartridge: 'T1' });
    expect(rec.imageAt).toBe(suspended.imageAt);
    expect(rec.createdAt > rec.imageAt).toBe(true);

    // Reversed, the destination is the original: the array does not know an instant for it.
    await array.reverseCopy(ec.id);
    const unknown = await failure(lib.write({ volume: 'a', cartridge: 'T1' }));
    expect(unknown.code).toBe('FAILED_PRECONDITION');
    expect(unknown.message).toMatch(
      /^cannot write volume a to tape: volume a is the destination of EC session \S+ \(b -> a\), suspended, which was reversed, .*--point-in-time ISO-8601/,
    );
    expect((await lib.write({ volume: 'a', cartridge: 'T1', pointInTime: '2026-01-02T03:04:05Z' })).imageAt).toBe('2026-01-02T03:04:05.000Z');
  });

  it('a QuickOPC destination records its last restart', async () => {
    const { array, lib, s: q, copied } = await pairAndCartridge('quickopc');
    await copied();
    await new Promise((r) => setTimeout(r, 20));
    const restarted = await array.startCopy({ type: 'quickopc', source: 'a', destination: 'b' });
    expect(restarted.imageAt! > q.imageAt!).toBe(true);
    expect((await lib.write({ volume: 'b', cartridge: 'T1' })).imageAt).toBe(restarted.imageAt);
  });

  it('a write during which the volume changes image keeps nothing', async () => {
    const { array, dir } = await setup();
    await sparseVolume(array, 'vol1');
    const real = arrayTapeVolumes(array);
    let calls = 0;
    const volumes: TapeVolumes = {
      open: (name) => {
        const v = real.open(name);
        // The first two looks (refusal check, write start) see one image, the one after the data another.
        return { ...v, image: (): VolumeImage => ({ kind: 'point-in-time', at: ++calls <= 2 ? 1000 : 2000, session: 's1' }) };
      },
    };
    const lib = await TapeLibrary.open({ dir, volumes, logger });
    libs.push(lib);
    await lib.add('T1', 64 * MiB);
    const err = await failure(lib.write({ volume: 'vol1', cartridge: 'T1' }));
    expect(err.code).toBe('FAILED_PRECONDITION');
    expect(err.message).toBe(
      `volume vol1 changed image during the tape write (now: an image of ${T(2000)}); nothing was kept: write it again once its copy session is stable`,
    );
    expect(lib.get('T1').records).toEqual([]);
    expect(lib.list()[0]!.usedBytes).toBe(CARTRIDGE_HEADER_SIZE);
  });

  it('an OPC that finishes during the write keeps the record; a snapshot cancelled during it keeps nothing', async () => {
    const { array, dir } = await setup();
    await sparseVolume(array, 'src');
    for (const v of ['opc', 'snap']) await array.createVolume({ name: v, sizeBytes: SIZE });
    // The first data read of a write waits (reading: resolved) until the test releases it.
    let release!: () => void;
    let reading!: Promise<void>;
    const real = arrayTapeVolumes(array);
    const volumes: TapeVolumes = {
      open: (name) => {
        const v = real.open(name);
        const gate = new Promise<void>((r) => (release = r));
        let reached!: () => void;
        reading = new Promise<void>((r) => (reached = r));
        let first = true;
        const read = async (offset: number, into: Buffer) => {
          if (first) {
            first = false;
            reached();
            await gate;
          }
          return v.device.read(offset, into);
        };
        return { ...v, device: Object.assign(Object.create(v.device) as BlockDevice, { read }) };
      },
    };
    const lib = await TapeLibrary.open({ dir, volumes, logger });
    libs.push(lib);
    await lib.add('T1', 64 * MiB);

    const opc = await array.startCopy({ type: 'opc', source: 'src', destination: 'opc', rate: 0 });
    const writing = lib.write({ volume: 'opc', cartridge: 'T1' });
    await reading;
    while (array.listCopies().some((s) => s.id === opc.id)) await array.copy.stepOne(opc.id, 1000);
    release();
    expect(await writing).toMatchObject({ record: 1, imageAt: opc.imageAt, sha256: sha(await image(array, 'src')) });

    const g = await array.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snap' });
    const failing = failure(lib.write({ volume: 'snap', cartridge: 'T1' }));
    await reading;
    await array.cancelCopy(g.id);
    release();
    expect((await failing).message).toBe(
      'volume snap changed image during the tape write (now: no copy session); nothing was kept: write it again once its copy session is stable',
    );
    expect(lib.get('T1').records).toHaveLength(1);
  });

  it('a cartridge written before imageAt lists, verifies and restores, with imageAt = createdAt, and takes new records', async () => {
    const { array, dir } = await setup();
    fs.mkdirSync(dir, { recursive: true });
    const createdMs = Date.parse('2025-11-05T08:09:10.123Z');
    const data = Buffer.alloc(4096, 0x5c);
    const whole = Buffer.concat([data, Buffer.alloc(4096)]);
    const records = CARTRIDGE_HEADER_SIZE + RECORD_HEADER_SIZE + EXTENT_HEADER_SIZE + data.length + TRAILER_SIZE;
    fs.writeFileSync(
      path.join(dir, 'OLD1.tape'),
      Buffer.concat([
        encodeCartridgeHeader({ label: 'OLD1', capacityBytes: 4 * MiB, createdMs }),
        recordHeaderBeforeImageAt({ record: 1, sizeBytes: whole.length, extentCount: 1, dataBytes: data.length, createdMs, volume: 'vol0', tag: 'old' }),
        encodeExtentHeader({ offset: 0, length: data.length, dataCrc: crc32c(data) }),
        data,
        encodeTrailer({ record: 1, dataBytes: data.length, sha256: sha(whole) }),
        encodeEod({ recordCount: 1, offset: records }),
      ]),
    );
    const lib = await reopen(array, dir);
    expect(lib.get('OLD1').records).toEqual([
      {
        cartridge: 'OLD1',
        record: 1,
        volume: 'vol0',
        tag: 'old',
        sizeBytes: 8192,
        blockSize: 512,
        dataBytes: 4096,
        sha256: sha(whole),
        createdAt: T(createdMs),
        imageAt: T(createdMs),
      },
    ]);
    expect(await lib.verify({ cartridge: 'OLD1' })).toEqual([{ record: 1, ok: true, error: '' }]);
    await array.createVolume({ name: 'back', sizeBytes: 8192 });
    expect((await lib.restore({ cartridge: 'OLD1', record: 1, volume: 'back' })).sha256).toBe(sha(whole));
    const rec = await lib.write({ volume: 'back', cartridge: 'OLD1', pointInTime: '2026-01-02T03:04:05Z' });
    expect(rec).toMatchObject({ record: 2, imageAt: '2026-01-02T03:04:05.000Z' });
    expect((await reopen(array, dir)).get('OLD1').records.map((r) => [r.record, r.imageAt])).toEqual([
      [1, T(createdMs)],
      [2, '2026-01-02T03:04:05.000Z'],
    ]);
  });
});
