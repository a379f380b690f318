/**
 * Test support for the copy engine: real Volumes over memory stores, a store that can
 * crash (SimStore), a seeded random source, and block-tag helpers.
 */
import { BlockDeviceError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from '../../emulator/block/BlockDevice.js';
import { checkIo, checkQuery } from '../../emulator/block/requestChecks.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { Volume, type VolumeStore } from '../../emulator/array/Volume.js';
import { identityFromUuid } from '../../emulator/array/identity.js';

export const BS = 4096;

export function makeVolume(name: string, store: VolumeStore, n = 0): Volume {
  const uuid = `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
  return new Volume(
    {
      name,
      ...identityFromUuid(uuid),
      sizeBytes: store.size,
      blockSize: store.blockSize as 4096 | 512,
      provisioning: store.thin ? 'thin' : 'thick',
      readOnly: false,
      description: '',
      createdAt: new Date(0).toISOString(),
    },
    store,
  );
}

export function memVolume(name: string, blocks: number, n = 0): Volume {
  return makeVolume(name, new MemoryBlockStore({ size: blocks * BS, blockSize: 4096 }), n);
}

/** A client's device on a volume (what NBD would use). */
export function client(v: Volume): BlockDevice {
  return v.open({ protocol: 'nbd', connectionId: `c-${v.name}`, remoteAddress: 'test', readOnly: false }).device;
}

/** Blocks whose every 4-byte word is `tag` (tag 0 = zeroes). */
export function tagged(tag: number, blocks = 1, bs = BS): Buffer {
  const b = Buffer.alloc(blocks * bs);
  if (tag !== 0) for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(tag >>> 0, i);
  return b;
}

/** Tags of every block of a buffer; -2 where a block is not uniform (sampled: first, middle, last word). */
export function tagsOf(buf: Buffer, bs = BS): number[] {
  const out: number[] = [];
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2); // buffers from Buffer.alloc are aligned
  const w = bs >>> 2;
  for (let i = 0; i < words.length; i += w) {
    const t = words[i]!;
    out.push(words[i + (w >>> 1)] === t && words[i + w - 1] === t ? t : -2);
  }
  return out;
}

export async function readTags(dev: BlockDevice, firstBlock = 0, blocks = dev.size / dev.blockSize): Promise<number[]> {
  const bs = dev.blockSize;
  const b = Buffer.alloc(blocks * bs);
  await dev.read(firstBlock * bs, b);
  return tagsOf(b, bs);
}

export async function errCode(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    if (e instanceof BlockDeviceError) return e.code;
    if (e && typeof e === 'object' && 'code' in e) return String((e as { code: unknown }).code);
    throw e;
  }
}

/**
 * A 4 KiB-block store that can crash. Writes are volatile until flush(); crash() returns the
 * store a restarted process sees: for every block written since the last flush, the value of
 * any prefix of its writes (none, some, all), chosen at random; the old object is dead.
 * Every request yields a random number of microtasks before it takes effect, so concurrent
 * requests interleave (deterministically for one seed). capacityBlocks models a full pool.
 */
export class SimStore implements VolumeStore {
  readonly readOnly = false;
  readonly thin = true;
  private readonly cur: Buffer;
  private readonly durable: Buffer;
  private readonly hist = new Map<number, Buffer[]>();
  private readonly alloc = new Set<number>();
  dead = false;
  flushes = 0;

  constructor(
    readonly size: number,
    private readonly rand: () => number,
    readonly capacityBlocks = Number.POSITIVE_INFINITY,
    image?: Buffer,
    readonly blockSize: 512 | 4096 = BS,
  ) {
    // (Unzeroed buffers where the image fills them: the simulator restarts thousands of times.)
    const copyOf = (img: Buffer | undefined): Buffer => {
      const b = img !== undefined && img.length >= size ? Buffer.allocUnsafe(size) : Buffer.alloc(size);
      img?.copy(b, 0, 0, Math.min(size, img.length));
      return b;
    };
    this.cur = copyOf(image);
    this.durable = copyOf(image);
    if (image) {
      const bs = blockSize;
      const zero = Buffer.alloc(bs);
      // Only a capacity-limited store needs to know what is allocated.
      if (Number.isFinite(capacityBlocks))
        for (let b = 0; b < size / bs; b++) if ((b + 1) * bs > image.length || zero.compare(image, b * bs, (b + 1) * bs) !== 0) this.alloc.add(b);
    }
  }

  get allocatedBytes(): number {
    return this.alloc.size * this.blockSize;
  }

  private async pause(): Promise<void> {
    const n = Math.floor(this.rand() * 4);
    for (let i = 0; i < n; i++) await Promise.resolve();
    if (this.dead) throw new BlockDeviceError('ESHUTDOWN', 'store died in a crash');
  }

  async read(offset: number, into: Buffer): Promise<void> {
    checkIo(this, 'read', offset, into.length, 'EINVAL');
    await this.pause();
    this.cur.copy(into, 0, offset, offset + into.length);
  }

  async write(offset: number, data: Buffer, _opts?: WriteOptions): Promise<void> {
    checkIo(this, 'write', offset, data.length, 'ENOSPC');
    await this.pause();
    const first = offset / this.blockSize;
    const n = data.length / this.blockSize;
    let fresh = 0;
    for (let b = first; b < first + n; b++) if (!this.alloc.has(b)) fresh++;
    if (this.alloc.size + fresh > this.capacityBlocks)
      throw new BlockDeviceError('ENOSPC', `pool full: ${this.alloc.size} of ${this.capacityBlocks} blocks in use`);
    data.copy(this.cur, offset);
    for (let b = first; b < first + n; b++) {
      this.alloc.add(b);
      this.note(b);
    }
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    checkIo(this, 'write-zeroes', offset, length, 'ENOSPC');
    await this.pause();
    this.cur.fill(0, offset, offset + length);
    for (let b = offset / this.blockSize; b < (offset + length) / this.blockSize; b++) {
      if (!opts?.noHole) this.alloc.delete(b);
      this.note(b);
    }
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.writeZeroes(offset, length, { fua: opts?.fua });
  }

  async flush(): Promise<void> {
    await this.pause();
    this.cur.copy(this.durable);
    this.hist.clear();
    this.flushes++;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkQuery(this, 'block-status', offset, length);
    return [{ length: Math.min(length, this.size - offset), flags: 0 }];
  }

  async cache(): Promise<void> {}

  resize(): void {
    throw new Error('SimStore does not resize');
  }

  async close(): Promise<void> {
    this.dead = true;
  }

  private note(b: number): void {
    let h = this.hist.get(b);
    if (h === undefined) this.hist.set(b, (h = []));
    h.push(Buffer.from(this.cur.subarray(b * this.blockSize, (b + 1) * this.blockSize)));
  }

  /** The store after a crash; this one is dead from now on. */
  crash(): SimStore {
    this.dead = true;
    const image = Buffer.allocUnsafe(this.size);
    this.durable.copy(image);
    for (const [b, values] of this.hist) {
      const k = Math.floor(this.rand() * (values.length + 1));
      if (k > 0) values[k - 1]!.copy(image, b * this.blockSize);
    }
    return new SimStore(this.size, this.rand, this.capacityBlocks, image, this.blockSize);
  }
}

import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { rng } from '../support/rng.js';
export { rng };

export interface Rig {
  engine: CopyEngine;
  journal: MemoryJournal;
  vols: Record<string, Volume>;
  dev: Record<string, BlockDevice>;
}

/** An engine in manual clock mode over memory volumes of `blocks` 4 KiB blocks each. */
export function rig(names: string[], blocks = 64, unitSize = 16384): Rig {
  const journal = new MemoryJournal();
  let n = 0;
  const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: unitSize, newId: () => `s${++n}` });
  const vols: Record<string, Volume> = {};
  const dev: Record<string, BlockDevice> = {};
  names.forEach((name, i) => {
    vols[name] = memVolume(name, blocks, i);
    engine.addVolume(vols[name]!);
    dev[name] = client(vols[name]!);
  });
  return { engine, journal, vols, dev };
}

/** Writes block b of dev with tag. */
export function put(dev: BlockDevice, block: number, tag: number, blocks = 1): Promise<void> {
  return dev.write(block * BS, tagged(tag, blocks));
}

/** Runs every session's background copy to its end, whatever its rate. */
export async function drain(engine: CopyEngine): Promise<void> {
  for (let i = 0; i < 10_000; i++) {
    let n = 0;
    for (const s of engine.list()) if (s.state === 'copying') n += await engine.stepOne(s.id, 1000);
    if (n === 0 && !engine.list().some((s) => s.state === 'copying')) return;
  }
  throw new Error('copy did not finish');
}
