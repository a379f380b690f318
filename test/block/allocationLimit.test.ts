/**
 * The allocation limit of thin stores, on both backends: a request that would allocate past
 * it fails ENOSPC and writes nothing; overwrites keep working; trim and write-zeroes free
 * space; the limit can be lowered, raised and removed; thick stores cannot have one.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDeviceError, EXTENT_HOLE, EXTENT_ZERO, type Extent } from '../../emulator/block/BlockDevice.js';
import { FileBlockStore, SYNC_WRITE_MAX } from '../../emulator/block/FileBlockStore.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const HOLE = EXTENT_HOLE | EXTENT_ZERO;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-alloclimit-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

type Store = FileBlockStore | MemoryBlockStore;
let seq = 0;

const backends: Array<[string, (size: number, thin?: boolean) => Promise<Store>]> = [
  ['MemoryBlockStore', async (size, thin = true) => new MemoryBlockStore({ size, blockSize: 512, thin })],
  [
    'FileBlockStore',
    async (size, thin = true) => {
      seq++;
      return FileBlockStore.create({ dataPath: path.join(tmp, `v${seq}.data`), mapPath: path.join(tmp, `v${seq}.map`), size, blockSize: 512, thin });
    },
  ],
];

async function rejection(p: Promise<unknown>): Promise<BlockDeviceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockDeviceError);
  return err as BlockDeviceError;
}

async function readBack(s: Store, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length);
  await s.read(offset, b);
  return b;
}

function uniform(b: Buffer, byte: number): boolean {
  for (const x of b) if (x !== byte) return false;
  return true;
}

const LABELS = { subject: 'volume snap1', fix: "raise it with 'arraylab volume set snap1 --alloc-limit SIZE', trim data, or use a larger volume" };

describe.each(backends)('%s allocation limit', (_name, make) => {
  it('refuses a write that would allocate past the limit, all or nothing, with a message naming the volume and the fix', async () => {
    const s = await make(4 * MiB);
    s.setAllocationLimit(MiB, LABELS);
    expect(s.allocLimitBytes).toBe(MiB);
    await s.write(0, Buffer.alloc(768 * KiB, 0x11));
    // 256 KiB left: a 512 KiB write that would allocate 512 KiB is refused whole.
    const before: Extent[] = await s.blockStatus(0, 4 * MiB);
    const err = await rejection(s.write(2 * MiB, Buffer.alloc(512 * KiB, 0x22)));
    expect(err.code).toBe('ENOSPC');
    expect(err.message).toBe(
      "volume snap1 has reached its allocation limit of 1 MiB (768 KiB allocated, the write needs 512 KiB more); raise it with 'arraylab volume set snap1 --alloc-limit SIZE', trim data, or use a larger volume",
    );
    expect(s.allocatedBytes).toBe(768 * KiB);
    expect(await s.blockStatus(0, 4 * MiB)).toEqual(before);
    expect(uniform(await readBack(s, 2 * MiB, 512 * KiB), 0)).toBe(true);
    // A write that straddles allocated and new blocks counts only the new ones: 512 KiB at
    // 512 KiB overlaps 256 KiB allocated and needs 256 KiB more, which fits exactly.
    await s.write(512 * KiB, Buffer.alloc(512 * KiB, 0x33));
    expect(s.allocatedBytes).toBe(MiB);
    // Full: one more block fails; nothing of it is written.
    expect((await rejection(s.write(3 * MiB, Buffer.alloc(512, 0x44)))).code).toBe('ENOSPC');
    expect((await rejection(s.write(MiB - 512, Buffer.alloc(1024, 0x44)))).code).toBe('ENOSPC'); // last allocated block + one new
    expect(uniform(await readBack(s, MiB - 512, 512), 0x33)).toBe(true);
    expect(uniform(await readBack(s, MiB, 512), 0)).toBe(true);
    expect(s.allocatedBytes).toBe(MiB);
    await s.close();
  });

  it('overwrites allocated blocks at the limit; trim and write-zeroes free space', async () => {
    const s = await make(4 * MiB);
    s.setAllocationLimit(MiB);
    await s.write(0, Buffer.alloc(MiB, 0x11));
    await s.write(256 * KiB, Buffer.alloc(64 * KiB, 0x55)); // overwrite: no new space
    expect(uniform(await readBack(s, 256 * KiB, 64 * KiB), 0x55)).toBe(true);
    const full = await rejection(s.write(2 * MiB, Buffer.alloc(4 * KiB, 1)));
    expect(full.message).toMatch(
      /^the device has reached its allocation limit of 1 MiB \(1 MiB allocated, the write needs 4 KiB more\); raise the limit, trim data, or use a larger device$/,
    );
    await s.trim(0, 64 * KiB);
    expect(s.allocatedBytes).toBe(MiB - 64 * KiB);
    await s.write(2 * MiB, Buffer.alloc(64 * KiB, 0x66));
    expect(uniform(await readBack(s, 2 * MiB, 64 * KiB), 0x66)).toBe(true);
    await s.writeZeroes(2 * MiB, 32 * KiB); // deallocates
    expect(s.allocatedBytes).toBe(MiB - 32 * KiB);
    // Write-zeroes that must keep the range allocated needs space like a write.
    const nh = await rejection(s.writeZeroes(3 * MiB, 64 * KiB, { noHole: true }));
    expect(nh.code).toBe('ENOSPC');
    expect(nh.message).toContain('the write-zeroes needs 64 KiB more');
    await s.writeZeroes(3 * MiB, 32 * KiB, { noHole: true });
    expect(s.allocatedBytes).toBe(MiB);
    expect(await s.blockStatus(3 * MiB, 64 * KiB)).toEqual([
      { length: 32 * KiB, flags: 0 },
      { length: 32 * KiB, flags: HOLE },
    ]);
    await s.close();
  });

  it('can be lowered below what is allocated, raised and removed', async () => {
    const s = await make(4 * MiB);
    await s.write(0, Buffer.alloc(2 * MiB, 0x11));
    s.setAllocationLimit(MiB);
    await s.write(MiB, Buffer.alloc(MiB, 0x22)); // overwrite: fine though over the limit
    expect((await rejection(s.write(3 * MiB, Buffer.alloc(512, 1)))).code).toBe('ENOSPC');
    await s.trim(0, MiB + 512 * KiB); // 512 KiB left allocated: under the limit again
    await s.write(3 * MiB, Buffer.alloc(512 * KiB, 0x33));
    expect((await rejection(s.write(3 * MiB + 512 * KiB, Buffer.alloc(512, 1)))).code).toBe('ENOSPC');
    s.setAllocationLimit(2 * MiB);
    await s.write(3 * MiB + 512 * KiB, Buffer.alloc(512 * KiB, 0x44));
    s.setAllocationLimit(undefined);
    expect(s.allocLimitBytes).toBeUndefined();
    await s.write(0, Buffer.alloc(2 * MiB, 0x55));
    expect(s.allocatedBytes).toBe(3 * MiB); // [0, 2 MiB) and [3 MiB, 4 MiB)
    await s.close();
  });

  it('refuses a limit on a thick store and a limit that is not a positive block multiple', async () => {
    const thick = await make(MiB, false);
    expect(() => thick.setAllocationLimit(512 * KiB)).toThrow(/needs a thin store/);
    await thick.close();
    const s = await make(MiB);
    for (const bad of [0, -512, 1000, 1.5, Number.NaN]) {
      let err: unknown;
      try {
        s.setAllocationLimit(bad);
      } catch (e) {
        err = e;
      }
      expect(err, String(bad)).toBeInstanceOf(BlockDeviceError);
      expect((err as BlockDeviceError).code).toBe('EINVAL');
    }
    expect(s.allocLimitBytes).toBeUndefined();
    await s.close();
  });
});

describe('FileBlockStore allocation limit with asynchronous requests', () => {
  it('large writes in flight reserve their space: concurrent ones cannot pass the limit together', async () => {
    const s = await backends[1]![1](16 * MiB);
    const big = 2 * SYNC_WRITE_MAX; // above SYNC_WRITE_MAX: the threadpool path, across an await
    s.setAllocationLimit(3 * MiB);
    const results = await Promise.allSettled([
      s.write(0, Buffer.alloc(big, 0x11)),
      s.write(4 * MiB, Buffer.alloc(big, 0x22)),
      s.write(8 * MiB, Buffer.alloc(64 * KiB, 0x33)), // small, synchronous: fits beside the first
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((results[1] as PromiseRejectedResult).reason as BlockDeviceError).code).toBe('ENOSPC');
    expect(s.allocatedBytes).toBe(big + 64 * KiB);
    expect(uniform(await readBack(s, 4 * MiB, big), 0)).toBe(true);
    // The reservation is released when the write completes: an overwrite of it works, and
    // so does the space that is left.
    await s.write(0, Buffer.alloc(big, 0x44));
    await s.write(12 * MiB, Buffer.alloc(3 * MiB - big - 64 * KiB, 0x55));
    expect(s.allocatedBytes).toBe(3 * MiB);
    await s.close();
  });

  it('a failed write releases its reservation', async () => {
    const s = await backends[1]![1](8 * MiB);
    s.setAllocationLimit(4 * MiB);
    const closing = s.close();
    await expect(s.write(0, Buffer.alloc(2 * MiB))).rejects.toThrow(/closed/);
    await closing;
    // A fresh store on the same files: the limit is not stored in them (the array keeps it).
    const file = s as FileBlockStore; // the file store's case of this test
    const again = await FileBlockStore.open({ dataPath: file.dataPath, mapPath: file.mapPath });
    expect(again.allocLimitBytes).toBeUndefined();
    await again.close();
  });
});
