/**
 * The volatile write cache (emulator/fault/WriteCache.ts) in process: a seeded randomised
 * check against a reference model (random writes, write-zeroes, trims, FUA and flushes, then a
 * power cut under each policy), the ordering of FUA writes and destages on a device below that
 * completes writes out of order, reads racing a destage, the memory bound, and the cache in
 * StorageArray (volume create/set, power cut, copy start, restart, no cost without a cache).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { StorageArray } from '../../../emulator/array/StorageArray.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../../emulator/block/MemoryBlockStore.js';
import { SeededRandom } from '../../../emulator/fault/random.js';
import { POWER_CUT_POLICIES, type PowerCutPolicy, WriteCache } from '../../../emulator/fault/WriteCache.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

type Kind = 'write' | 'zero' | 'trim';
interface ModelEntry {
  kind: Kind;
  first: number;
  count: number;
  data: Buffer | undefined;
}

/**
 * What the cache promises, written as plainly as possible: the durable image, the unflushed
 * entries in order, and for each cached block the entry it reads as. A power cut draws as
 * WriteCache's header says.
 */
class Model {
  readonly durable: Buffer;
  private log: ModelEntry[] = [];
  private live = new Map<number, ModelEntry>();

  constructor(
    size: number,
    readonly bs: number,
  ) {
    this.durable = Buffer.alloc(size);
  }

  apply(kind: Kind, first: number, count: number, data: Buffer | undefined, fua: boolean): void {
    if (fua) {
      for (let b = first; b < first + count; b++) this.live.delete(b);
      this.put(first, count, data);
      return;
    }
    const e: ModelEntry = { kind, first, count, data: data === undefined ? undefined : Buffer.from(data) };
    this.log.push(e);
    for (let b = first; b < first + count; b++) this.live.set(b, e);
  }

  flush(): void {
    for (const [b, e] of this.live) this.put(b, 1, e.data?.subarray((b - e.first) * this.bs, (b - e.first + 1) * this.bs));
    this.live.clear();
    this.log = [];
  }

  view(): Buffer {
    const v = Buffer.from(this.durable);
    for (const [b, e] of this.live) {
      if (e.data === undefined) v.fill(0, b * this.bs, (b + 1) * this.bs);
      else e.data.copy(v, b * this.bs, (b - e.first) * this.bs, (b - e.first + 1) * this.bs);
    }
    return v;
  }

  unflushed(): number {
    return this.log.length;
  }

  powerCut(policy: PowerCutPolicy, rng: SeededRandom): { lost: number; kept: number; torn: number } {
    let lost = 0;
    let kept = 0;
    let torn = 0;
    const spb = this.bs / 512;
    for (const e of this.log) {
      const blocks: number[] = [];
      for (let b = e.first; b < e.first + e.count; b++) if (this.live.get(b) === e) blocks.push(b);
      if (policy === 'drop-unflushed') {
        lost++;
      } else if (policy === 'keep-random') {
        if (rng.next() < 0.5) {
          kept++;
          for (const b of blocks) this.put(b, 1, e.data?.subarray((b - e.first) * this.bs, (b - e.first + 1) * this.bs));
        } else lost++;
      } else {
        let applied = 0;
        for (const b of blocks) {
          for (let s = 0; s < spb; s++) {
            if (rng.next() >= 0.5) continue;
            applied++;
            const at = b * this.bs + s * 512;
            if (e.data === undefined) this.durable.fill(0, at, at + 512);
            else e.data.copy(this.durable, at, (b - e.first) * this.bs + s * 512, (b - e.first) * this.bs + (s + 1) * 512);
          }
        }
        if (applied === 0) lost++;
        else if (applied === blocks.length * spb) kept++;
        else torn++;
      }
    }
    this.log = [];
    this.live.clear();
    return { lost, kept, torn };
  }

  private put(first: number, count: number, data: Buffer | undefined): void {
    if (data === undefined) this.durable.fill(0, first * this.bs, (first + count) * this.bs);
    else data.copy(this.durable, first * this.bs, 0, count * this.bs);
  }
}

async function contents(dev: BlockDevice): Promise<Buffer> {
  const b = Buffer.alloc(dev.size);
  await dev.read(0, b);
  return b;
}

describe('WriteCache against its reference model', () => {
  for (const bs of [512, 4096] as const) {
    for (const policy of POWER_CUT_POLICIES) {
      it(`random ops then a ${policy} power cut (${bs}-byte blocks, 20 seeds)`, async () => {
        for (let seed = 1; seed <= 20; seed++) {
          const blocks = 64;
          const store = new MemoryBlockStore({ size: blocks * bs, blockSize: bs, thin: true });
          const cache = new WriteCache(store);
          const model = new Model(blocks * bs, bs);
          const rng = new SeededRandom(seed);
          const ops = 40 + rng.below(80);
          for (let i = 0; i < ops; i++) {
            const r = rng.next();
            const first = rng.below(blocks);
            const count = 1 + rng.below(Math.min(8, blocks - first));
            const fua = rng.next() < 0.15;
            if (r < 0.08) {
              await cache.flush();
              model.flush();
            } else if (r < 0.7) {
              const data = Buffer.alloc(count * bs);
              for (let j = 0; j < data.length; j += 512) data.fill((seed * 31 + i * 7 + j / 512) & 0xff, j, j + 512);
              await cache.write(first * bs, data, { fua });
              data.fill(0xee); // the caller reuses its buffer: the cache kept its own copy
              const again = Buffer.alloc(count * bs);
              for (let j = 0; j < again.length; j += 512) again.fill((seed * 31 + i * 7 + j / 512) & 0xff, j, j + 512);
              model.apply('write', first, count, again, fua);
            } else if (r < 0.85) {
              await cache.writeZeroes(first * bs, count * bs, { fua });
              model.apply('zero', first, count, undefined, fua);
            } else {
              await cache.trim(first * bs, count * bs, { fua });
              model.apply('trim', first, count, undefined, fua);
            }
            if (i % 10 === 0) expect((await contents(cache)).equals(model.view()), `seed ${seed} op ${i}: read through the cache`).toBe(true);
          }
          expect((await contents(cache)).equals(model.view())).toBe(true);
          const expectedUnflushed = model.unflushed();
          expect(cache.stats.entries).toBe(expectedUnflushed);
          const report = await cache.powerCut(policy, new SeededRandom(seed * 1000));
          const want = model.powerCut(policy, new SeededRandom(seed * 1000));
          expect({ lost: report.writesLost, kept: report.writesKept, torn: report.writesTorn }, `seed ${seed}`).toEqual(want);
          expect((await contents(store)).equals(model.durable), `seed ${seed}: the store after the cut`).toBe(true);
          expect((await contents(cache)).equals(model.durable)).toBe(true);
          expect(cache.stats).toEqual({ entries: 0, bytes: 0, blocks: 0 });
        }
      });
    }
  }

  it('a flushed write survives a power cut and an unflushed one is gone', async () => {
    const store = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true });
    const cache = new WriteCache(store);
    await cache.write(0, Buffer.alloc(4096, 0xaa));
    await cache.flush();
    await cache.write(0, Buffer.alloc(4096, 0xbb));
    await cache.write(8192, Buffer.alloc(512, 0xcc), { fua: true });
    const b = Buffer.alloc(4096);
    await cache.read(0, b);
    expect(b.every((x) => x === 0xbb)).toBe(true); // reads see the cached write
    await store.read(0, b);
    expect(b.every((x) => x === 0xaa)).toBe(true); // the store does not, yet
    const r = await cache.powerCut('drop-unflushed', new SeededRandom(1));
    expect(r).toEqual({ writesLost: 1, writesKept: 0, writesTorn: 0, bytesLost: 4096 });
    await cache.read(0, b);
    expect(b.every((x) => x === 0xaa)).toBe(true);
    await cache.read(8192, b.subarray(0, 512));
    expect(b.subarray(0, 512).every((x) => x === 0xcc)).toBe(true);
  });

  it('block status reports cached ranges as data', async () => {
    const store = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true });
    const cache = new WriteCache(store);
    expect(await cache.blockStatus(0, MiB)).toEqual([{ length: MiB, flags: 3 }]);
    await cache.write(65536, Buffer.alloc(4096, 1));
    const ext = await cache.blockStatus(0, MiB);
    expect(ext[0]).toEqual({ length: 65536, flags: 3 });
    expect(await cache.blockStatus(65536, 4096)).toEqual([{ length: 4096, flags: 0 }]);
    await cache.flush();
    expect((await cache.blockStatus(65536, 4096))[0]!.flags).toBe(0);
  });
});

/** A device whose writes complete after a seeded random delay, so concurrent ones finish out of order. */
class Jittery implements BlockDevice {
  private readonly rng: SeededRandom;
  constructor(
    readonly inner: BlockDevice,
    seed: number,
  ) {
    this.rng = new SeededRandom(seed);
  }
  get size(): number {
    return this.inner.size;
  }
  get blockSize(): number {
    return this.inner.blockSize;
  }
  get readOnly(): boolean {
    return false;
  }
  get thin(): boolean {
    return true;
  }
  private later<T>(f: () => Promise<T>): Promise<T> {
    const ms = this.rng.below(6);
    return new Promise((resolve, reject) => setTimeout(() => f().then(resolve, reject), ms));
  }
  /** Takes the data at the call, delivers it later: a destage may land in between. */
  read(offset: number, into: Buffer): Promise<void> {
    const now = Buffer.alloc(into.length);
    const done = this.inner.read(offset, now);
    return this.later(() => done.then(() => void now.copy(into)));
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    const copy = Buffer.from(data); // applied later: keep the data as it was given
    return this.later(() => this.inner.write(offset, copy, opts));
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.later(() => this.inner.trim(offset, length, opts));
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.later(() => this.inner.writeZeroes(offset, length, opts));
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.inner.blockStatus(offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.inner.cache(offset, length);
  }
}

describe('WriteCache ordering below', () => {
  it('a FUA write issued while an older write of the same blocks destages ends up on top, and a newer cached write on top of it', async () => {
    for (let round = 0; round < 30; round++) {
      const store = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true });
      const cache = new WriteCache(new Jittery(store, round));
      for (let i = 0; i < 8; i++) await cache.write(i * 4096, Buffer.alloc(4096, 0x10 + i));
      const flushing = cache.flush(); // entry 0 (block 0) goes below at once
      const fua = cache.write(0, Buffer.alloc(4096, 0xf0), { fua: true });
      // Odd rounds: a newer cached write of the same block, destaged while the FUA write may still be below.
      const newer = round % 2 === 1 ? cache.write(0, Buffer.alloc(4096, 0xf1)).then(() => cache.flush()) : Promise.resolve();
      await Promise.all([flushing, fua, newer]);
      await cache.flush();
      const b = Buffer.alloc(4096);
      await store.read(0, b);
      expect(
        b.every((x) => x === (round % 2 === 1 ? 0xf1 : 0xf0)),
        `round ${round}`,
      ).toBe(true);
    }
  });

  it('a read racing a destage returns the acknowledged data', async () => {
    const store = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true });
    const cache = new WriteCache(new Jittery(store, 5));
    for (let round = 0; round < 30; round++) {
      await cache.write(0, Buffer.alloc(65536, round + 1));
      const flushing = cache.flush();
      const b = Buffer.alloc(65536);
      const reading = cache.read(0, b);
      // Takes the pages the destage frees while the read is below: the read must not see them.
      const other = cache.write(512 * 1024, Buffer.alloc(65536, 0xee));
      await Promise.all([flushing, reading, other]);
      expect(b.every((x) => x === round + 1)).toBe(true);
    }
  });

  it('stays under its memory limit by destaging the oldest entries first', async () => {
    const store = new MemoryBlockStore({ size: 8 * MiB, blockSize: 512, thin: true });
    const cache = new WriteCache(store, MiB);
    let peak = 0;
    for (let i = 0; i < 64; i++) {
      await cache.write(i * 65536, Buffer.alloc(65536, i + 1));
      peak = Math.max(peak, cache.stats.bytes);
    }
    expect(peak).toBeLessThanOrEqual(MiB);
    const all = await contents(cache);
    for (let i = 0; i < 64; i++) expect(all[i * 65536]).toBe(i + 1);
    // The oldest are on the store already; the newest are still volatile.
    const r = await cache.powerCut('drop-unflushed', new SeededRandom(1));
    expect(r.writesLost).toBeGreaterThan(0);
    const after = await contents(store);
    expect(after[0]).toBe(1);
    expect(after[63 * 65536]).toBe(0);
    // A request larger than the whole cache goes below at once.
    await cache.write(0, Buffer.alloc(2 * MiB, 0x55));
    expect(cache.stats.entries).toBe(0);
    expect((await contents(store))[2 * MiB - 1]).toBe(0x55);
  });

  it('a cached write longer than one destage (1 MiB) destages whole, around blocks newer writes took', async () => {
    const store = new MemoryBlockStore({ size: 8 * MiB, blockSize: 4096, thin: true });
    const cache = new WriteCache(store);
    const big = Buffer.alloc(3 * MiB + 4096);
    for (let i = 0; i < big.length; i += 4096) big.fill((i / 4096) & 0xff, i, i + 4096);
    await cache.write(4096, big);
    await cache.write(MiB, Buffer.alloc(8192, 0xee)); // takes two blocks from the middle
    await cache.trim(2 * MiB, 4096);
    const want = Buffer.alloc(8 * MiB);
    big.copy(want, 4096);
    want.fill(0xee, MiB, MiB + 8192);
    want.fill(0, 2 * MiB, 2 * MiB + 4096);
    expect((await contents(cache)).equals(want)).toBe(true);
    await cache.flush();
    expect(cache.stats).toEqual({ entries: 0, bytes: 0, blocks: 0 });
    expect((await contents(store)).equals(want)).toBe(true);
  });

  it('a failed destage is reported once, by the next flush', async () => {
    const store = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true });
    store.setAllocationLimit?.(4096);
    const errors: Error[] = [];
    const cache = new WriteCache(store, undefined, (e) => errors.push(e));
    await cache.write(0, Buffer.alloc(4096, 1));
    await cache.write(65536, Buffer.alloc(4096, 2)); // acknowledged; the store has no room for it
    await expect(cache.flush()).rejects.toThrow(/ENOSPC|allocat|limit/i);
    expect(errors).toHaveLength(1);
    await cache.flush(); // reported once
  });
});

describe('the write cache in the array', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-wcache-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const open: StorageArray[] = [];
  afterEach(async () => {
    await Promise.allSettled(open.splice(0).map((a) => a.close()));
  });
  async function openArray(dataDir?: string): Promise<StorageArray> {
    const a = await StorageArray.open({ backend: dataDir ? 'file' : 'memory', ...(dataDir ? { dataDir } : {}), logger });
    open.push(a);
    return a;
  }
  let conn = 0;
  const client = (a: StorageArray, name: string) =>
    a.openExport(name, { protocol: 'nbd', connectionId: `c${++conn}`, remoteAddress: '127.0.0.1:1', readOnly: false })!;

  it('costs nothing on a volume without a cache: its path has no cache on it', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'wt', sizeBytes: MiB });
    await a.createVolume({ name: 'wb', sizeBytes: MiB, writeCache: 'volatile' });
    const wt = a.volumeObject('wt');
    expect(wt.writeCache).toBeUndefined();
    expect(wt.top).toBe(a.copy.tapOf('wt')); // the copy engine's tap, as before: nothing added
    expect(a.volumeObject('wb').top).toBe(a.volumeObject('wb').writeCache);
    expect(a.volumeObject('wb').writeCache!.below).toBe(a.copy.tapOf('wb'));
    expect(a.getVolume('wt').writeCache).toBe('write-through');
    expect(a.getVolume('wb').writeCache).toBe('volatile');
  });

  it('power cut: connections drop, unflushed writes are lost, flushed and FUA ones survive, connections are refused while down', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'v', sizeBytes: MiB, writeCache: 'volatile' });
    await a.createVolume({ name: 'plain', sizeBytes: MiB });
    const h = client(a, 'v');
    const p = client(a, 'plain');
    const events: string[] = [];
    h.onEvent?.((e) => events.push(e.kind));
    await h.device.write(0, Buffer.alloc(4096, 1));
    await h.device.flush();
    await h.device.write(4096, Buffer.alloc(4096, 2));
    await h.device.write(8192, Buffer.alloc(4096, 3), { fua: true });
    await p.device.write(0, Buffer.alloc(4096, 4));
    expect(a.getVolume('v').writeCacheDirtyBytes).toBe(4096);
    const seq = a.faults.events().length;
    const r = await a.powerCut({ policy: 'drop-unflushed', seed: 3, downMs: 300 });
    expect(r).toEqual({
      policy: 'drop-unflushed',
      seed: 3,
      connectionsDropped: 2,
      volumes: [{ name: 'v', writesLost: 1, writesKept: 0, writesTorn: 0, bytesLost: 4096 }],
    });
    expect(events).toEqual(['disconnect']);
    expect(
      a.faults
        .events()
        .slice(seq)
        .map((e) => `${e.kind} ${e.target}`),
    ).toEqual(['power-cut array', 'power-cut volume:v']);
    expect(() => client(a, 'v')).toThrow(/power cut/);
    h.close();
    p.close();
    await new Promise((r) => setTimeout(r, 350));
    const h2 = client(a, 'v');
    const b = Buffer.alloc(12288);
    await h2.device.read(0, b);
    expect(b.subarray(0, 4096).every((x) => x === 1)).toBe(true);
    expect(b.subarray(4096, 8192).every((x) => x === 0)).toBe(true);
    expect(b.subarray(8192).every((x) => x === 3)).toBe(true);
    h2.close();
    await expect(a.powerCut({ policy: 'melt' })).rejects.toThrow(/unknown power cut policy "melt": use drop-unflushed, keep-random or torn/);
  });

  it('a copy start destages the source first: acknowledged writes are in the point-in-time copy', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'src', sizeBytes: MiB, writeCache: 'volatile' });
    await a.createVolume({ name: 'dst', sizeBytes: MiB });
    const h = client(a, 'src');
    await h.device.write(0, Buffer.alloc(65536, 7)); // acknowledged, never flushed
    await a.startCopy({ type: 'opc', source: 'src', destination: 'dst' });
    await h.device.write(0, Buffer.alloc(65536, 8)); // after the copy's instant
    h.close();
    const d = client(a, 'dst');
    const b = Buffer.alloc(65536);
    await d.device.read(0, b);
    expect(b.every((x) => x === 7)).toBe(true);
    d.close();
  });

  it('switching to write-through destages; the mode survives a restart', async () => {
    const dir = path.join(tmp, 'restart');
    let a = await openArray(dir);
    await a.createVolume({ name: 'v', sizeBytes: MiB });
    expect((await a.setVolumeWriteCache('v', 'volatile')).writeCache).toBe('volatile');
    const h = client(a, 'v');
    await h.device.write(0, Buffer.alloc(4096, 9));
    const info = await a.setVolumeWriteCache('v', 'write-through');
    expect(info.writeCache).toBe('write-through');
    expect(a.volumeObject('v').top).toBe(a.copy.tapOf('v'));
    await h.device.write(4096, Buffer.alloc(4096, 10)); // the open connection goes write-through at once
    const r = await a.powerCut({});
    expect(r.volumes).toEqual([]);
    const b = Buffer.alloc(8192);
    await client(a, 'v').device.read(0, b);
    expect(b[0]).toBe(9);
    expect(b[4096]).toBe(10);
    await a.setVolumeWriteCache('v', 'volatile');
    await a.close();
    a = await openArray(dir);
    expect(a.getVolume('v').writeCache).toBe('volatile');
    await expect(a.setVolumeWriteCache('v', 'lazy' as never)).rejects.toThrow(/invalid write cache mode "lazy" for volume v: use volatile or write-through/);
  });

  it('an orderly shutdown destages the cache', async () => {
    const dir = path.join(tmp, 'shutdown');
    let a = await openArray(dir);
    await a.createVolume({ name: 'v', sizeBytes: MiB, writeCache: 'volatile' });
    const h = client(a, 'v');
    await h.device.write(0, Buffer.alloc(4096, 5));
    await a.flushAll(); // what ArrayServer.stop calls first
    expect(a.getVolume('v').writeCacheDirtyBytes).toBe(0);
    await h.device.write(4096, Buffer.alloc(4096, 6)); // and close() destages again
    h.close();
    await a.close();
    a = await openArray(dir);
    const b = Buffer.alloc(8192);
    await client(a, 'v').device.read(0, b);
    expect(b[0]).toBe(5);
    expect(b[4096]).toBe(6);
  });
});
