/**
 * A volume held in memory: for tests, demos and the 'memory' backend.
 *
 * Data lives in DATA_CHUNK-byte buffers created on first write, so a 10 GiB thin device costs
 * nothing until written. Two invariants make reads simple:
 *   - a missing data chunk reads as zeroes;
 *   - inside a present data chunk, every block whose allocation bit is clear holds zeroes.
 * So read() never consults the allocation map; the map answers block status, exactly.
 *
 * Provisioning:
 *   thin   unwritten blocks are holes; trim and write-zeroes (without noHole) deallocate.
 *   thick  every block is allocated from the start and stays allocated. trim is a no-op
 *          (the data stays: a thick device has nothing to give back, and the interface lets
 *          trimmed data read back either way); write-zeroes zeroes the data.
 *   limit  a thin store may have an allocation limit (allocationLimit.ts): a request that
 *          would allocate past it fails ENOSPC before anything is written.
 *
 * FAST_ZERO: zeroing memory is a memset or a free, never slower than a plain write, so a
 * fastZero request never fails ENOTSUP here (FileBlockStore, which must write zero bytes to
 * its file for noHole/thick zeroing, does refuse).
 */
import { AllocationMap } from './AllocationMap.js';
import { checkAllocation, fitsAnyway, makeAllocationLimit, type AllocationLimit, type AllocationLimitLabels } from './allocationLimit.js';
import { EXTENT_HOLE, EXTENT_ZERO, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from './BlockDevice.js';
import { checkGeometry, checkIo, checkQuery, checkResize, readOnlyError, shutdownError } from './requestChecks.js';

/** Bytes per data chunk: small enough that scattered 4 KiB writes waste little. */
export const DATA_CHUNK = 64 * 1024;

export interface MemoryBlockStoreOptions {
  size: number;
  blockSize: 512 | 4096;
  /** Default true. */
  thin?: boolean;
  readOnly?: boolean;
}

export class MemoryBlockStore implements BlockDevice {
  private _size: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly thin: boolean;

  private readonly map: AllocationMap;
  private readonly data = new Map<number, Buffer>();
  private closed = false;
  private limit: AllocationLimit | undefined;

  constructor(opts: MemoryBlockStoreOptions) {
    checkGeometry(opts.size, opts.blockSize);
    this._size = opts.size;
    this.blockSize = opts.blockSize;
    this.thin = opts.thin ?? true;
    this.readOnly = opts.readOnly ?? false;
    const blocks = opts.size / opts.blockSize;
    this.map = new AllocationMap(blocks);
    if (!this.thin) this.map.set(0, blocks);
  }

  get size(): number {
    return this._size;
  }

  /** Bytes allocated in the allocation map (what the array reports as used). */
  get allocatedBytes(): number {
    return this.map.allocated * this.blockSize;
  }

  /** The allocation limit in bytes; undefined when there is none. */
  get allocLimitBytes(): number | undefined {
    return this.limit === undefined ? undefined : this.limit.blocks * this.blockSize;
  }

  /**
   * Sets (or with undefined removes) the allocation limit of a thin store; labels name the
   * volume and the fix in the ENOSPC message. Takes effect for the next request.
   */
  setAllocationLimit(limitBytes: number | undefined, labels?: AllocationLimitLabels): void {
    this.limit = makeAllocationLimit(this, limitBytes, labels);
  }

  /** Bytes of memory holding data, for tests of laziness. */
  get residentBytes(): number {
    return this.data.size * DATA_CHUNK;
  }

  async read(offset: number, into: Buffer): Promise<void> {
    if (this.closed) throw shutdownError('read');
    checkIo(this, 'read', offset, into.length, 'EINVAL');
    let pos = offset;
    let done = 0;
    const end = offset + into.length;
    while (pos < end) {
      const ci = Math.floor(pos / DATA_CHUNK);
      const inChunk = pos - ci * DATA_CHUNK;
      const n = Math.min(DATA_CHUNK - inChunk, end - pos);
      const chunk = this.data.get(ci);
      if (chunk === undefined) into.fill(0, done, done + n);
      else chunk.copy(into, done, inChunk, inChunk + n);
      pos += n;
      done += n;
    }
  }

  async write(offset: number, data: Buffer, _opts?: WriteOptions): Promise<void> {
    if (this.closed) throw shutdownError('write');
    if (this.readOnly) throw readOnlyError('write');
    checkIo(this, 'write', offset, data.length, 'ENOSPC');
    if (data.length === 0) return;
    const limit = this.limit;
    if (limit !== undefined && !fitsAnyway(this.map, limit, data.length / this.blockSize, 0)) {
      checkAllocation(this.map, limit, this.blockSize, 'write', offset / this.blockSize, data.length / this.blockSize, 0);
    }
    let pos = offset;
    let done = 0;
    const end = offset + data.length;
    while (pos < end) {
      const ci = Math.floor(pos / DATA_CHUNK);
      const inChunk = pos - ci * DATA_CHUNK;
      const n = Math.min(DATA_CHUNK - inChunk, end - pos);
      let chunk = this.data.get(ci);
      if (chunk === undefined) {
        chunk = Buffer.alloc(DATA_CHUNK);
        this.data.set(ci, chunk);
      }
      data.copy(chunk, inChunk, done, done + n);
      pos += n;
      done += n;
    }
    this.map.set(offset / this.blockSize, data.length / this.blockSize);
  }

  async flush(): Promise<void> {
    if (this.closed) throw shutdownError('flush');
  }

  async trim(offset: number, length: number, _opts?: WriteOptions): Promise<void> {
    if (this.closed) throw shutdownError('trim');
    if (this.readOnly) throw readOnlyError('trim');
    checkIo(this, 'trim', offset, length, 'EINVAL');
    if (length === 0 || !this.thin) return;
    this.deallocate(offset, length);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    if (this.closed) throw shutdownError('write-zeroes');
    if (this.readOnly) throw readOnlyError('write-zeroes');
    checkIo(this, 'write-zeroes', offset, length, 'ENOSPC');
    if (length === 0) return;
    if (this.thin && !opts?.noHole) {
      this.deallocate(offset, length);
      return;
    }
    if (this.limit !== undefined) checkAllocation(this.map, this.limit, this.blockSize, 'write-zeroes', offset / this.blockSize, length / this.blockSize, 0);
    this.zeroData(offset, length);
    this.map.set(offset / this.blockSize, length / this.blockSize);
  }

  async blockStatus(offset: number, length: number, maxExtents = Number.POSITIVE_INFINITY): Promise<Extent[]> {
    if (this.closed) throw shutdownError('block-status');
    checkQuery(this, 'block-status', offset, length);
    return mapExtents(this.map, this.blockSize, offset, length, maxExtents);
  }

  async cache(offset: number, length: number): Promise<void> {
    if (this.closed) throw shutdownError('cache');
    checkQuery(this, 'cache', offset, length);
  }

  /** Grows the device; new space is a hole (thin) or allocated zeroes (thick). */
  resize(newSize: number): void {
    if (this.closed) throw shutdownError('resize');
    checkResize(this, newSize);
    const oldBlocks = this.map.blocks;
    const newBlocks = newSize / this.blockSize;
    this.map.grow(newBlocks);
    if (!this.thin) this.map.set(oldBlocks, newBlocks - oldBlocks);
    this._size = newSize;
  }

  /** Drops all data; every later call fails ESHUTDOWN. */
  async close(): Promise<void> {
    this.closed = true;
    this.data.clear();
  }

  /** Zeroes the range and clears its allocation bits, freeing data chunks left empty. */
  private deallocate(offset: number, length: number): void {
    const bs = this.blockSize;
    this.zeroData(offset, length);
    this.map.clear(offset / bs, length / bs);
    // Partially zeroed chunks at either end may now hold no allocated block: free them.
    const blocksPerChunk = DATA_CHUNK / bs;
    const firstChunk = Math.floor(offset / DATA_CHUNK);
    const lastChunk = Math.floor((offset + length - 1) / DATA_CHUNK);
    for (const ci of firstChunk === lastChunk ? [firstChunk] : [firstChunk, lastChunk]) {
      if (!this.data.has(ci)) continue;
      const first = ci * blocksPerChunk;
      const count = Math.min(blocksPerChunk, this.map.blocks - first);
      if (this.map.countRange(first, count) === 0) this.data.delete(ci);
    }
  }

  /** Makes the range's bytes zero: whole chunks are freed (a missing chunk reads as zeroes). */
  private zeroData(offset: number, length: number): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const ci = Math.floor(pos / DATA_CHUNK);
      const inChunk = pos - ci * DATA_CHUNK;
      const n = Math.min(DATA_CHUNK - inChunk, end - pos);
      const chunk = this.data.get(ci);
      if (chunk !== undefined) {
        if (n === DATA_CHUNK) this.data.delete(ci);
        else chunk.fill(0, inChunk, inChunk + n);
      }
      pos += n;
    }
  }
}

/**
 * Block status from an allocation map: runs of allocated (flags 0) and unallocated
 * (HOLE|ZERO) blocks, contiguous from offset, the last one cut at offset + length.
 */
export function mapExtents(map: AllocationMap, blockSize: number, offset: number, length: number, maxExtents: number): Extent[] {
  const extents: Extent[] = [];
  const endByte = offset + length;
  const endBlock = Math.ceil(endByte / blockSize);
  let b = offset / blockSize;
  while (b < endBlock && (extents.length === 0 || extents.length < maxExtents)) {
    const allocated = map.test(b);
    const stop = allocated ? map.nextClear(b, endBlock) : map.nextSet(b, endBlock);
    const stopByte = Math.min(stop * blockSize, endByte);
    extents.push({ length: stopByte - b * blockSize, flags: allocated ? 0 : EXTENT_HOLE | EXTENT_ZERO });
    b = stop;
  }
  return extents;
}
