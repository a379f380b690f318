import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDeviceError, EXTENT_HOLE, EXTENT_ZERO, type Extent } from '../../emulator/block/BlockDevice.js';
import { FileBlockStore } from '../../emulator/block/FileBlockStore.js';
import { rng } from '../support/rng.js';

const HOLE = EXTENT_HOLE | EXTENT_ZERO;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-fbs-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

let seq = 0;
function paths(): { dataPath: string; mapPath: string } {
  seq++;
  return { dataPath: path.join(tmp, `v${seq}.data`), mapPath: path.join(tmp, `v${seq}.map`) };
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockDeviceError);
  expect((err as BlockDeviceError).code).toBe(code);
}

/** Reference model: bytes plus one allocation flag per block. */
class Model {
  readonly bytes: Buffer;
  readonly alloc: Uint8Array;
  constructor(
    readonly size: number,
    readonly bs: number,
    thick: boolean,
  ) {
    this.bytes = Buffer.alloc(size);
    this.alloc = new Uint8Array(size / bs).fill(thick ? 1 : 0);
  }
  write(off: number, data: Buffer): void {
    data.copy(this.bytes, off);
    this.alloc.fill(1, off / this.bs, (off + data.length) / this.bs);
  }
  deallocate(off: number, len: number): void {
    this.bytes.fill(0, off, off + len);
    this.alloc.fill(0, off / this.bs, (off + len) / this.bs);
  }
  zeroAllocated(off: number, len: number): void {
    this.bytes.fill(0, off, off + len);
    this.alloc.fill(1, off / this.bs, (off + len) / this.bs);
  }
  extents(off: number, len: number): Extent[] {
    const out: Extent[] = [];
    let b = off / this.bs;
    const end = (off + len) / this.bs;
    while (b < end) {
      const a = this.alloc[b];
      let e = b + 1;
      while (e < end && this.alloc[e] === a) e++;
      out.push({ length: (e - b) * this.bs, flags: a ? 0 : HOLE });
      b = e;
    }
    return out;
  }
}

async function compareAll(store: FileBlockStore, model: Model): Promise<void> {
  const back = Buffer.alloc(model.size);
  await store.read(0, back);
  expect(back.equals(model.bytes)).toBe(true);
  expect(await store.blockStatus(0, model.size)).toEqual(model.extents(0, model.size));
  expect(store.allocatedBytes).toBe(model.alloc.reduce((s, x) => s + x, 0) * model.bs);
}

describe('FileBlockStore', () => {
  for (const [bs, thin] of [
    [512, true],
    [4096, true],
    [4096, false],
  ] as const) {
    it(`matches a reference model under random I/O, and after reopening (${bs}-byte blocks, ${thin ? 'thin' : 'thick'})`, async () => {
      const p = paths();
      const size = 2 * 1024 * 1024;
      let store = await FileBlockStore.create({ ...p, size, blockSize: bs, thin });
      const model = new Model(size, bs, !thin);
      const next = rng(bs + (thin ? 1 : 2));
      const blocks = size / bs;
      for (let i = 0; i < 3000; i++) {
        // a batch of concurrent ops on disjoint ranges, like a multi-queue client
        const batch: Promise<void>[] = [];
        const used = new Uint8Array(blocks);
        const n = 1 + Math.floor(next() * 4);
        for (let k = 0; k < n; k++) {
          const count = 1 + Math.floor(next() * (next() < 0.1 ? 300 : 16));
          const first = Math.floor(next() * (blocks - count));
          if (used.subarray(first, first + count).some((x) => x)) continue;
          used.fill(1, first, first + count);
          const off = first * bs;
          const len = count * bs;
          const fua = next() < 0.05;
          const r = next();
          if (r < 0.5) {
            const data = Buffer.alloc(len);
            for (let j = 0; j < len; j += 8) data.writeDoubleLE(next(), j);
            model.write(off, data);
            batch.push(store.write(off, data, { fua }));
          } else if (r < 0.65) {
            if (thin) model.deallocate(off, len);
            batch.push(store.trim(off, len, { fua }));
          } else if (r < 0.75) {
            if (thin) model.deallocate(off, len);
            else model.zeroAllocated(off, len);
            batch.push(store.writeZeroes(off, len, { fua }));
          } else if (r < 0.8) {
            model.zeroAllocated(off, len);
            batch.push(store.writeZeroes(off, len, { noHole: true, fua }));
          } else if (r < 0.83) {
            batch.push(store.flush());
          } else {
            batch.push(
              (async () => {
                const got = Buffer.alloc(len);
                await store.read(off, got);
                expect(got.equals(model.bytes.subarray(off, off + len))).toBe(true);
                const maxExt = 1 + Math.floor(next() * 5);
                const ext = await store.blockStatus(off, len, maxExt);
                expect(ext).toEqual(model.extents(off, len).slice(0, maxExt));
              })(),
            );
          }
        }
        await Promise.all(batch);
        if (i % 500 === 0) await compareAll(store, model);
      }
      await compareAll(store, model);
      await store.close();
      store = await FileBlockStore.open(p);
      expect(store.size).toBe(size);
      expect(store.blockSize).toBe(bs);
      expect(store.thin).toBe(thin);
      await compareAll(store, model);
      await store.close();
    });
  }

  it('trim is exact: trimmed blocks read as zeroes without touching the data file', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 512 });
    await store.write(0, Buffer.alloc(8192, 0x5a));
    await store.trim(512, 1024);
    const buf = Buffer.alloc(8192);
    await store.read(0, buf);
    expect(buf.subarray(0, 512).every((x) => x === 0x5a)).toBe(true);
    expect(buf.subarray(512, 1536).every((x) => x === 0)).toBe(true);
    expect(buf.subarray(1536).every((x) => x === 0x5a)).toBe(true);
    // the old bytes are still in the file: the map alone makes them read as zeroes
    expect(
      fs
        .readFileSync(p.dataPath)
        .subarray(512, 1536)
        .every((x) => x === 0x5a),
    ).toBe(true);
    expect(await store.blockStatus(0, 8192)).toEqual([
      { length: 512, flags: 0 },
      { length: 1024, flags: HOLE },
      { length: 8192 - 1536, flags: 0 },
    ]);
    await store.close();
  });

  it('thick: preallocated, all allocated, trim keeps data, fast zero refused', async () => {
    const p = paths();
    const size = 4 << 20;
    const store = await FileBlockStore.create({ ...p, size, blockSize: 4096, thin: false });
    expect(store.thin).toBe(false);
    expect(store.allocatedBytes).toBe(size);
    expect(fs.statSync(p.dataPath).blocks * 512).toBeGreaterThanOrEqual(size);
    await store.write(0, Buffer.alloc(8192, 1));
    await store.trim(0, 8192);
    const buf = Buffer.alloc(8192);
    await store.read(0, buf);
    expect(buf.every((x) => x === 1)).toBe(true);
    await expectCode(store.writeZeroes(0, 4096, { fastZero: true }), 'ENOTSUP');
    await store.writeZeroes(0, 4096);
    await store.read(0, buf);
    expect(buf.subarray(0, 4096).every((x) => x === 0)).toBe(true);
    expect(await store.blockStatus(0, size)).toEqual([{ length: size, flags: 0 }]);
    await store.resize(2 * size);
    expect(store.allocatedBytes).toBe(2 * size);
    expect(fs.statSync(p.dataPath).blocks * 512).toBeGreaterThanOrEqual(2 * size);
    await store.close();
    const again = await FileBlockStore.open(p);
    expect(again.size).toBe(2 * size);
    expect(again.allocatedBytes).toBe(2 * size);
    await again.close();
  });

  it('thin fast zero: deallocating is fast, no-hole zeroing is refused', async () => {
    const store = await FileBlockStore.create({ ...paths(), size: 1 << 20, blockSize: 512 });
    await store.write(0, Buffer.alloc(4096, 1));
    await store.writeZeroes(0, 4096, { fastZero: true });
    expect(store.allocatedBytes).toBe(0);
    await expectCode(store.writeZeroes(0, 4096, { fastZero: true, noHole: true }), 'ENOTSUP');
    await store.writeZeroes(0, 4096, { noHole: true });
    expect(store.allocatedBytes).toBe(4096);
    await store.close();
  });

  it('resize grows durably; new space is a hole; shrinking is refused', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 512 });
    await store.write((1 << 20) - 512, Buffer.alloc(512, 7));
    await store.resize(64 << 20); // crosses map pages (one page covers 16 MiB)
    await store.write((64 << 20) - 512, Buffer.alloc(512, 8));
    await expectCode(store.resize(1 << 20), 'EINVAL');
    await store.flush();
    // no close(): reopen from what flush and resize made durable
    const again = await FileBlockStore.open({ ...p, readOnly: true });
    expect(again.size).toBe(64 << 20);
    expect(await again.blockStatus(0, 64 << 20)).toEqual([
      { length: (1 << 20) - 512, flags: HOLE },
      { length: 512, flags: 0 },
      { length: (63 << 20) - 512, flags: HOLE },
      { length: 512, flags: 0 },
    ]);
    await expectCode(again.write(0, Buffer.alloc(512)), 'EPERM');
    await again.close();
    await store.close();
  });

  it('validates requests and refuses I/O after close', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 4096 });
    await expectCode(store.read(512, Buffer.alloc(4096)), 'EINVAL');
    await expectCode(store.write(1 << 20, Buffer.alloc(4096)), 'ENOSPC');
    await expectCode(store.trim(1 << 20, 4096), 'EINVAL');
    await store.close();
    await store.close(); // idempotent
    await expectCode(store.read(0, Buffer.alloc(4096)), 'ESHUTDOWN');
    await expectCode(store.flush(), 'ESHUTDOWN');
    await expect(FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 4096 })).rejects.toThrow(/EEXIST|exists/);
    await expect(FileBlockStore.open(paths())).rejects.toThrow(/cannot open/);
  });

  it('refuses a damaged map header', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 512 });
    await store.close();
    const fd = fs.openSync(p.mapPath, 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, 20);
    fs.closeSync(fd);
    await expect(FileBlockStore.open(p)).rejects.toThrow(/checksum/);
  });

  it('a flush that overlaps another never resolves before its writes are in the map file', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 64 << 20, blockSize: 512 });
    const onDisk = (block: number): boolean => {
      const fd = fs.openSync(p.mapPath, 'r');
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, 4096 + Math.floor(block / 8));
      fs.closeSync(fd);
      return (b[0]! & (1 << (block % 8))) !== 0;
    };
    for (let i = 0; i < 200; i++) {
      const block = (i * 32771) % ((64 << 20) / 512); // spread over several map pages
      await store.write(block * 512, Buffer.alloc(512, 1));
      const first = store.flush(); // takes the dirty page
      await store.flush(); // must wait for the first round, not skip because nothing is dirty
      expect(onDisk(block)).toBe(true);
      await first;
      const fuaBlock = (block + 9) % ((64 << 20) / 512);
      await store.write(((block + 1) % ((64 << 20) / 512)) * 512, Buffer.alloc(512, 2));
      const racing = store.flush();
      await store.write(fuaBlock * 512, Buffer.alloc(512, 3), { fua: true });
      expect(onDisk(fuaBlock)).toBe(true);
      await racing;
    }
    await store.close();
  });

  it('close waits for in-flight writes and flushes them', async () => {
    const p = paths();
    const store = await FileBlockStore.create({ ...p, size: 1 << 20, blockSize: 512 });
    const writes = Array.from({ length: 64 }, (_, i) => store.write(i * 4096, Buffer.alloc(4096, i + 1)));
    await store.close();
    await Promise.all(writes);
    const again = await FileBlockStore.open(p);
    expect(again.allocatedBytes).toBe(64 * 4096);
    const b = Buffer.alloc(4096);
    await again.read(63 * 4096, b);
    expect(b.every((x) => x === 64)).toBe(true);
    await again.close();
  });
});
