import { describe, expect, it } from 'vitest';
import { BlockDeviceError, EXTENT_HOLE, EXTENT_ZERO } from '../../emulator/block/BlockDevice.js';
import { DATA_CHUNK, MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';

const GiB = 1024 ** 3;
const HOLE = EXTENT_HOLE | EXTENT_ZERO;

function filled(len: number, byte: number): Buffer {
  return Buffer.alloc(len, byte);
}

async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockDeviceError);
  expect((err as BlockDeviceError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

describe('MemoryBlockStore', () => {
  it('a 10 GiB thin device costs nothing until written', async () => {
    const s = new MemoryBlockStore({ size: 10 * GiB, blockSize: 512 });
    expect(s.thin).toBe(true);
    expect(s.readOnly).toBe(false);
    expect(s.residentBytes).toBe(0);
    expect(await s.blockStatus(0, 10 * GiB)).toEqual([{ length: 10 * GiB, flags: HOLE }]);
    const buf = filled(8192, 0xaa);
    await s.read(5 * GiB, buf);
    expect(buf.every((b) => b === 0)).toBe(true);
    await s.write(5 * GiB, filled(4096, 7));
    expect(s.residentBytes).toBe(DATA_CHUNK);
    expect(s.allocatedBytes).toBe(4096);
  });

  it('reads back what was written, across data-chunk boundaries', async () => {
    const s = new MemoryBlockStore({ size: 1024 * 1024, blockSize: 512 });
    const data = Buffer.alloc(DATA_CHUNK + 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    await s.write(DATA_CHUNK - 512, data);
    const back = Buffer.alloc(data.length);
    await s.read(DATA_CHUNK - 512, back);
    expect(back.equals(data)).toBe(true);
    expect(await s.blockStatus(0, 1024 * 1024)).toEqual([
      { length: DATA_CHUNK - 512, flags: HOLE },
      { length: data.length, flags: 0 },
      { length: 1024 * 1024 - (DATA_CHUNK - 512) - data.length, flags: HOLE },
    ]);
  });

  it('block status honours maxExtents and an unaligned length', async () => {
    const s = new MemoryBlockStore({ size: 64 * 512, blockSize: 512 });
    for (let b = 0; b < 64; b += 2) await s.write(b * 512, filled(512, 1));
    const ext = await s.blockStatus(0, 64 * 512, 3);
    expect(ext).toEqual([
      { length: 512, flags: 0 },
      { length: 512, flags: HOLE },
      { length: 512, flags: 0 },
    ]);
    expect(await s.blockStatus(512, 700)).toEqual([
      { length: 512, flags: HOLE },
      { length: 188, flags: 0 },
    ]);
    expect(await s.blockStatus(0, 512, 0)).toHaveLength(1);
  });

  it('trim deallocates on a thin device and reads back zeroes; frees memory', async () => {
    const s = new MemoryBlockStore({ size: 4 * DATA_CHUNK, blockSize: 4096 });
    await s.write(0, filled(2 * DATA_CHUNK, 9));
    await s.trim(4096, DATA_CHUNK);
    const buf = Buffer.alloc(2 * DATA_CHUNK);
    await s.read(0, buf);
    expect(buf.subarray(0, 4096).every((b) => b === 9)).toBe(true);
    expect(buf.subarray(4096, 4096 + DATA_CHUNK).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(4096 + DATA_CHUNK).every((b) => b === 9)).toBe(true);
    expect(s.allocatedBytes).toBe(DATA_CHUNK);
    await s.trim(0, 2 * DATA_CHUNK);
    expect(s.residentBytes).toBe(0);
    expect(s.allocatedBytes).toBe(0);
  });

  it('write-zeroes deallocates unless noHole; noHole keeps the range allocated', async () => {
    const s = new MemoryBlockStore({ size: 1 << 20, blockSize: 512 });
    await s.write(0, filled(8192, 5));
    await s.writeZeroes(0, 4096);
    expect(await s.blockStatus(0, 8192)).toEqual([
      { length: 4096, flags: HOLE },
      { length: 4096, flags: 0 },
    ]);
    await s.writeZeroes(4096, 8192, { noHole: true });
    expect(await s.blockStatus(0, 16384)).toEqual([
      { length: 4096, flags: HOLE },
      { length: 8192, flags: 0 },
      { length: 4096, flags: HOLE },
    ]);
    const buf = filled(16384, 0xff);
    await s.read(0, buf);
    expect(buf.every((b) => b === 0)).toBe(true);
    // memory zeroing is never slower than a write: fastZero always succeeds
    await s.writeZeroes(0, 4096, { noHole: true, fastZero: true });
    await s.writeZeroes(0, 4096, { fastZero: true });
  });

  it('thick: everything allocated from the start, trim keeps data, zeroing keeps allocation', async () => {
    const s = new MemoryBlockStore({ size: 1 << 20, blockSize: 4096, thin: false });
    expect(s.thin).toBe(false);
    expect(s.allocatedBytes).toBe(1 << 20);
    expect(await s.blockStatus(0, 1 << 20)).toEqual([{ length: 1 << 20, flags: 0 }]);
    await s.write(0, filled(8192, 3));
    await s.trim(0, 8192);
    const buf = Buffer.alloc(8192);
    await s.read(0, buf);
    expect(buf.every((b) => b === 3)).toBe(true);
    await s.writeZeroes(0, 4096);
    await s.read(0, buf);
    expect(buf.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(buf.subarray(4096).every((b) => b === 3)).toBe(true);
    expect(s.allocatedBytes).toBe(1 << 20);
    s.resize(2 << 20);
    expect(s.allocatedBytes).toBe(2 << 20);
  });

  it('validates alignment, range and read-only', async () => {
    const s = new MemoryBlockStore({ size: 1 << 20, blockSize: 512 });
    await expectCode(s.read(100, Buffer.alloc(512)), 'EINVAL', /multiples of the 512-byte block size/);
    await expectCode(s.read(0, Buffer.alloc(100)), 'EINVAL');
    await expectCode(s.read(1 << 20, Buffer.alloc(512)), 'EINVAL', /past the end/);
    await expectCode(s.write((1 << 20) - 512, Buffer.alloc(1024)), 'ENOSPC');
    await expectCode(s.writeZeroes(1 << 20, 512), 'ENOSPC');
    await expectCode(s.trim(1 << 20, 512), 'EINVAL');
    await expectCode(s.trim(3, 512), 'EINVAL');
    await expectCode(s.blockStatus(1 << 20, 512), 'EINVAL');
    await expectCode(s.blockStatus(0, 0), 'EINVAL');
    await expectCode(s.cache(0, (1 << 20) + 1), 'EINVAL');
    await s.cache(0, 1 << 20);
    await s.write(0, Buffer.alloc(0)); // zero-length is a no-op

    const ro = new MemoryBlockStore({ size: 1 << 20, blockSize: 512, readOnly: true });
    await expectCode(ro.write(0, Buffer.alloc(512)), 'EPERM', /read-only/);
    await expectCode(ro.trim(0, 512), 'EPERM');
    await expectCode(ro.writeZeroes(0, 512), 'EPERM');
    await ro.read(0, Buffer.alloc(512));
    await ro.flush();

    expect(() => new MemoryBlockStore({ size: 1000, blockSize: 512 })).toThrow(/multiple of the 512-byte/);
    expect(() => new MemoryBlockStore({ size: 4096, blockSize: 1024 as 512 })).toThrow(/512 or 4096/);
  });

  it('resize grows (new space is a hole) and refuses to shrink', async () => {
    const s = new MemoryBlockStore({ size: 1 << 20, blockSize: 512 });
    await s.write((1 << 20) - 512, filled(512, 1));
    s.resize(2 << 20);
    expect(s.size).toBe(2 << 20);
    await s.write((2 << 20) - 512, filled(512, 2));
    expect(await s.blockStatus(0, 2 << 20)).toEqual([
      { length: (1 << 20) - 512, flags: HOLE },
      { length: 512, flags: 0 },
      { length: (1 << 20) - 512, flags: HOLE },
      { length: 512, flags: 0 },
    ]);
    expect(() => s.resize(1 << 20)).toThrow(/cannot shrink/);
    expect(() => s.resize((3 << 20) + 1)).toThrow(/multiple/);
  });

  it('fails ESHUTDOWN after close', async () => {
    const s = new MemoryBlockStore({ size: 1 << 20, blockSize: 512 });
    await s.close();
    await expectCode(s.read(0, Buffer.alloc(512)), 'ESHUTDOWN');
    await expectCode(s.flush(), 'ESHUTDOWN');
  });
});
