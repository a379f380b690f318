/**
 * A durable volume: a sparse data file plus an allocation map in a sidecar file.
 *
 * Files
 *   data  the volume's bytes at their own offsets; sparse (ftruncate) when thin,
 *         preallocated (fallocate) when thick.
 *   map   a 4 KiB header (MapHeader below), then the allocation bitmap, LSB-first, one bit
 *         per logical block, in CHUNK_BYTES pages. The file is sparse: pages of a map that was
 *         never written are holes. Only pages that changed are written back.
 *
 * The allocation map is the source of truth for content: a block whose bit is clear reads as
 * zeroes without touching the data file. So trim and write-zeroes on a thin volume are exact
 * and cost no data I/O, even though Node cannot punch holes (no fallocate in node:fs). The
 * space of trimmed blocks stays in the data file until they are written again; reclaiming
 * it (fallocate --punch-hole) is left out on purpose: a punch running beside a new write to
 * the same range would destroy that write unless the two were ordered, and the emulator
 * does not need the space back.
 *
 * Durability (tested with kill -9 in test/durability/fileBlockStoreCrash.test.ts)
 *   flush() makes every write, trim and write-zeroes that completed before the call durable:
 *     1. snapshot the dirty map pages (every bit in them belongs to a completed request),
 *     2. fdatasync the data file,
 *     3. write the snapshot pages to the map file,
 *     4. fdatasync the map file.
 *   Data goes before the map so that a set bit on disk never points at unsynced data. The
 *   snapshot comes before the data sync so that a write completing during step 2 (whose data
 *   that sync may miss) cannot have its bit persisted by this round. Crash cases:
 *     - before 4 ends: the map on disk is the previous flush's; blocks written since read as
 *       their old content (old data, or zeroes where the old bit was clear). Nothing flushed
 *       is lost, because an acknowledged flush had finished its own step 4.
 *     - after 4: everything that completed before the flush is on disk with its bit.
 *     - a flushed trim/write-zeroes followed by an unflushed write to the same block: the
 *       write's bit can reach disk only in a round whose step 2 synced its data, so the
 *       block reads either zeroes or the new data, never the data from before the zeroing.
 *   Flush rounds run one at a time. A flush that arrives during a round waits for it and
 *   then shares the next round with every flush that arrived meanwhile (coalescing), so no
 *   flush resolves before a round that started after it was called has finished.
 *   A request with fua runs a flush round after it completes: the same steps.
 *
 * Hot path
 *   Requests of at most SYNC_IO_MAX bytes use fs.readSync/fs.writeSync (pread/pwrite) on the
 *   calling thread, the event loop; larger ones go through the libuv threadpool with fs.read/
 *   fs.write callbacks on a raw fd (2.5x the IOPS of fs/promises FileHandle).
 *   Why: a threadpool round trip (queue, futex wake of a worker, eventfd wake of the loop,
 *   callback) costs more CPU than a 4 KiB copy to or from the page cache, and on a small
 *   machine that CPU is the bottleneck (profile: 4 KiB random I/O over NBD at QD16).
 *   Writes of up to SYNC_WRITE_MAX (1 MiB) are synchronous too, in WRITE_PIECE pieces (below).
 *   Trade-off: a small request that misses the page cache (cold read, or a write throttled
 *   by dirty-page writeback) blocks the event loop, and with it every connection, for the
 *   length of that disk access. The bound keeps each such stall to one small I/O; large
 *   transfers, whose copy time would stall the loop even when cached, stay asynchronous and
 *   run beside the loop. Durability is unchanged: both paths only reach the page cache, and
 *   flush/FUA (fdatasync, below) stay asynchronous.
 *   Page-cache folios: writes of client data larger than WRITE_PIECE are issued as
 *   WRITE_PIECE-sized pwrites. The kernel sizes page-cache folios after the write that
 *   creates them, and on ext4 with large folios (Linux 6.x) a later small write into a big
 *   folio walks every block of it: measured here, a 4 KiB overwrite costs 23 us in a file
 *   written with 1 MiB pwrites and 7 us in one written with 64 KiB pwrites, while sequential
 *   1 MiB writes lose nothing measurable (about 5 GB/s either way, far above what the socket
 *   delivers). So a volume filled by large sequential writes (an image copy) stays cheap to
 *   update in small random writes afterwards.
 *
 * Allocation limit (thin only; allocationLimit.ts): a request that would allocate past it
 * fails ENOSPC before any byte is written. It is not stored in the files: the array keeps it
 * in its database and sets it again at open.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { AllocationMap, CHUNK_BITS, CHUNK_BYTES } from './AllocationMap.js';
import { checkAllocation, fitsAnyway, makeAllocationLimit, type AllocationLimit, type AllocationLimitLabels } from './allocationLimit.js';
import { BlockDeviceError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from './BlockDevice.js';
import { mapExtents } from './MemoryBlockStore.js';
import { checkGeometry, checkIo, checkQuery, checkResize, readOnlyError, shutdownError } from './requestChecks.js';

const HEADER_BYTES = 4096;
const MAGIC = 'ARRAYLABBMAP';
const FORMAT_VERSION = 1;
const FLAG_THICK = 1;

/** Shared source of zeroes for writing zeroes to the data file; never written into. */
const ZERO_SLAB = Buffer.alloc(1024 * 1024);

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`FileBlockStore invariant: ${msg}`);
}

export interface FileBlockStorePaths {
  /** The volume's data file. */
  dataPath: string;
  /** The allocation-map sidecar file. */
  mapPath: string;
}

export interface CreateFileBlockStoreOptions extends FileBlockStorePaths {
  size: number;
  blockSize: 512 | 4096;
  /** Default true. */
  thin?: boolean;
  readOnly?: boolean;
}

export interface OpenFileBlockStoreOptions extends FileBlockStorePaths {
  readOnly?: boolean;
}

interface MapHeader {
  blockSize: number;
  blocks: number;
  thick: boolean;
}

function encodeHeader(h: MapHeader): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.write(MAGIC, 0, 'latin1'); // 12 bytes
  b.writeUInt32LE(FORMAT_VERSION, 12);
  b.writeUInt32LE(h.blockSize, 16);
  b.writeUInt32LE(h.thick ? FLAG_THICK : 0, 20);
  b.writeBigUInt64LE(BigInt(h.blocks), 24);
  b.writeUInt32LE(CHUNK_BITS, 32);
  b.writeUInt32LE(crc32(b.subarray(0, 36)), 36);
  return b;
}

function decodeHeader(b: Buffer, mapPath: string): MapHeader {
  const bad = (why: string) => new BlockDeviceError('EIO', `allocation map ${mapPath} is unusable: ${why}`);
  if (b.length < 40 || b.toString('latin1', 0, 12) !== MAGIC) throw bad('no arraylab map header');
  if (b.readUInt32LE(36) !== crc32(b.subarray(0, 36))) throw bad('header checksum mismatch');
  const version = b.readUInt32LE(12);
  if (version !== FORMAT_VERSION) throw bad(`format version ${version}, this build reads ${FORMAT_VERSION}`);
  if (b.readUInt32LE(32) !== CHUNK_BITS) throw bad(`page size ${b.readUInt32LE(32)} bits, this build uses ${CHUNK_BITS}`);
  const blockSize = b.readUInt32LE(16);
  const blocks = Number(b.readBigUInt64LE(24));
  if ((blockSize !== 512 && blockSize !== 4096) || !Number.isSafeInteger(blocks) || blocks <= 0) {
    throw bad(`bad geometry: ${blocks} blocks of ${blockSize} bytes`);
  }
  return { blockSize, blocks, thick: (b.readUInt32LE(20) & FLAG_THICK) !== 0 };
}

// ---- callback fs wrappers: the fastest path Node offers for positioned I/O ----

function preadFull(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err) {
        reject(ioError('read', pos, err));
        return;
      }
      if (n === len) {
        resolve();
        return;
      }
      // Short read: past EOF (a data file shorter than the map says) reads as zeroes.
      if (n === 0) {
        buf.fill(0, off, off + len);
        resolve();
        return;
      }
      off += n;
      pos += n;
      len -= n;
      fs.read(fd, buf, off, len, pos, step);
    };
    fs.read(fd, buf, off, len, pos, step);
  });
}

function pwriteFull(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err) {
        reject(ioError('write', pos, err));
        return;
      }
      if (n === len) {
        resolve();
        return;
      }
      off += n;
      pos += n;
      len -= n;
      fs.write(fd, buf, off, len, pos, step);
    };
    fs.write(fd, buf, off, len, pos, step);
  });
}

/** Largest read or write done synchronously on the event loop (see "Hot path" above). */
export const SYNC_IO_MAX = 64 * 1024;

function preadSyncFull(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  while (len > 0) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, off, len, pos);
    } catch (err) {
      throw ioError('read', pos, err as NodeJS.ErrnoException);
    }
    // Short read: past EOF (a data file shorter than the map says) reads as zeroes.
    if (n === 0) {
      buf.fill(0, off, off + len);
      return;
    }
    off += n;
    pos += n;
    len -= n;
  }
}

function pwriteSyncFull(fd: number, buf: Buffer, off: number, len: number, pos: number): void {
  while (len > 0) {
    let n: number;
    try {
      n = fs.writeSync(fd, buf, off, len, pos);
    } catch (err) {
      throw ioError('write', pos, err as NodeJS.ErrnoException);
    }
    off += n;
    pos += n;
    len -= n;
  }
}

/**
 * Largest single pwrite of client data (see "Hot path": page-cache folios). A larger request
 * is written as consecutive pieces of this size, one after another, on the threadpool.
 */
export const WRITE_PIECE = 64 * 1024;
/**
 * Largest write done synchronously, in WRITE_PIECE pieces. Measured: 64 KiB pieces issued one
 * after another on the threadpool cut 1 MiB sequential writes by a third (a hop per piece);
 * synchronous pieces matched unsplit threadpool writes. The loop stalls about 0.2-0.3 ms per
 * MiB on a page-cache write, comparable to copying the payload out of the socket, which it
 * does anyway; larger writes stay on the threadpool.
 */
export const SYNC_WRITE_MAX = 1024 * 1024;

/** pwriteFull in pieces of at most WRITE_PIECE bytes, issued in order. */
function pwritePieces(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (err: NodeJS.ErrnoException | null, n: number): void => {
      if (err) {
        reject(ioError('write', pos, err));
        return;
      }
      off += n;
      pos += n;
      len -= n;
      if (len === 0) {
        resolve();
        return;
      }
      fs.write(fd, buf, off, Math.min(len, WRITE_PIECE), pos, step);
    };
    fs.write(fd, buf, off, Math.min(len, WRITE_PIECE), pos, step);
  });
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(ioError('fdatasync', 0, err)) : resolve())));
}

function ioError(op: string, pos: number, err: NodeJS.ErrnoException): BlockDeviceError {
  const code = err.code === 'ENOSPC' || err.code === 'EDQUOT' ? 'ENOSPC' : 'EIO';
  return new BlockDeviceError(code, `backing file ${op} at ${pos} failed: ${err.message}`);
}

/** Runs util-linux fallocate; resolves false when it is missing or the filesystem refuses. */
function runFallocate(args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn('fallocate', args, { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('exit', (code) => resolve(code === 0));
  });
}

/** Reserves [offset, offset+length) of a data file: fallocate, else writes zeroes. */
async function preallocate(fd: number, file: string, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  if (await runFallocate(['--offset', String(offset), '--length', String(length), file])) return;
  // No fallocate (tool missing or filesystem without it): write real zeroes. Awaited rather
  // than left running in the background, because a background filler racing the client's
  // first writes could overwrite them.
  for (let pos = offset; pos < offset + length; pos += ZERO_SLAB.length) {
    await pwriteFull(fd, ZERO_SLAB, 0, Math.min(ZERO_SLAB.length, offset + length - pos), pos);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

export class FileBlockStore implements BlockDevice {
  private _size: number;
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly thin: boolean;
  readonly dataPath: string;
  readonly mapPath: string;

  private readonly dataFd: number;
  private readonly mapFd: number;
  private readonly map: AllocationMap;

  /** Requests that have completed since creation; compared with syncedGen to skip idle flushes. */
  private completedGen = 0;
  private syncedGen = 0;
  private roundInProgress: Promise<void> | undefined;
  private nextRound: Promise<void> | undefined;

  private resizing: Promise<void> = Promise.resolve();
  private inflight = 0;
  private idleWaiters: Array<() => void> = [];
  private closed = false;
  private closing: Promise<void> | undefined;

  private limit: AllocationLimit | undefined;
  /** Blocks that asynchronous requests in flight will allocate (counted against the limit). */
  private reserved = 0;

  private constructor(paths: FileBlockStorePaths, dataFd: number, mapFd: number, header: MapHeader, map: AllocationMap, readOnly: boolean) {
    this.dataPath = paths.dataPath;
    this.mapPath = paths.mapPath;
    this.dataFd = dataFd;
    this.mapFd = mapFd;
    this.blockSize = header.blockSize;
    this._size = header.blocks * header.blockSize;
    this.thin = !header.thick;
    this.readOnly = readOnly;
    this.map = map;
    assert(map.blocks * header.blockSize === this._size, `map of ${map.blocks} blocks for a ${this._size}-byte store`);
    assert(!header.thick || map.allocated === map.blocks, 'a thick store has every block allocated');
  }

  /**
   * Creates both files (refusing to overwrite) and makes them durable, directory entries
   * included, before resolving. A crash part-way leaves files that no volume row names;
   * StorageArray removes such orphans when it opens.
   */
  static async create(opts: CreateFileBlockStoreOptions): Promise<FileBlockStore> {
    checkGeometry(opts.size, opts.blockSize);
    const thin = opts.thin ?? true;
    const blocks = opts.size / opts.blockSize;
    const map = new AllocationMap(blocks, true);
    const header: MapHeader = { blockSize: opts.blockSize, blocks, thick: !thin };
    const dataFd = await openFd(opts.dataPath, 'wx+');
    let mapFd = -1;
    try {
      await ftruncate(dataFd, opts.size);
      if (!thin) await preallocate(dataFd, opts.dataPath, 0, opts.size);
      await fdatasync(dataFd);
      mapFd = await openFd(opts.mapPath, 'wx+');
      await ftruncate(mapFd, HEADER_BYTES + map.chunkCount * CHUNK_BYTES);
      await pwriteFull(mapFd, encodeHeader(header), 0, HEADER_BYTES, 0);
      if (!thin) map.set(0, blocks); // every page dirty: written by the flush below
      const store = new FileBlockStore(opts, dataFd, mapFd, header, map, opts.readOnly ?? false);
      await store.writeMapPages(map.takeDirty());
      await fdatasync(mapFd);
      await fsyncDir(path.dirname(opts.dataPath));
      if (path.dirname(opts.mapPath) !== path.dirname(opts.dataPath)) await fsyncDir(path.dirname(opts.mapPath));
      return store;
    } catch (err) {
      fs.closeSync(dataFd);
      if (mapFd >= 0) fs.closeSync(mapFd);
      throw err;
    }
  }

  /** Opens an existing store; geometry and provisioning come from the map header. */
  static async open(opts: OpenFileBlockStoreOptions): Promise<FileBlockStore> {
    const readOnly = opts.readOnly ?? false;
    const flags = readOnly ? 'r' : 'r+';
    const mapFd = await openFd(opts.mapPath, flags);
    let dataFd = -1;
    try {
      const headerBuf = Buffer.alloc(HEADER_BYTES);
      await preadFull(mapFd, headerBuf, 0, HEADER_BYTES, 0);
      const header = decodeHeader(headerBuf, opts.mapPath);
      dataFd = await openFd(opts.dataPath, flags);
      const dataSize = (await fstat(dataFd)).size;
      const size = header.blocks * header.blockSize;
      if (dataSize < size) {
        // Only a crash inside resize() can leave this (the header is written after the data
        // file grows), and a header never grows before the data file: treat as damage.
        throw new BlockDeviceError('EIO', `data file ${opts.dataPath} holds ${dataSize} bytes but its map describes ${size}`);
      }
      const map = new AllocationMap(header.blocks, true);
      await loadMap(mapFd, map);
      return new FileBlockStore(opts, dataFd, mapFd, header, map, readOnly);
    } catch (err) {
      fs.closeSync(mapFd);
      if (dataFd >= 0) fs.closeSync(dataFd);
      throw err;
    }
  }

  /** Removes a store's files; missing files are fine (idempotent, for cleanup after crashes). */
  static async remove(paths: FileBlockStorePaths): Promise<void> {
    await fsp.rm(paths.mapPath, { force: true });
    await fsp.rm(paths.dataPath, { force: true });
  }

  get size(): number {
    return this._size;
  }

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

  // ---- BlockDevice ----

  async read(offset: number, into: Buffer): Promise<void> {
    if (this.closed) throw shutdownError('read');
    checkIo(this, 'read', offset, into.length, 'EINVAL');
    const len = into.length;
    if (len === 0) return;
    const bs = this.blockSize;
    const first = offset / bs;
    const end = first + len / bs;
    if (len <= SYNC_IO_MAX) {
      this.readSmall(offset, into, first, end);
      return;
    }
    this.inflight++;
    try {
      // Common cases first: all allocated (one pread) or all holes (no I/O).
      const firstClear = this.map.nextClear(first, end);
      if (firstClear === end) return await preadFull(this.dataFd, into, 0, len, offset);
      if (firstClear === first && this.map.nextSet(first, end) === end) {
        into.fill(0);
        return;
      }
      const reads: Promise<void>[] = [];
      let b = first;
      while (b < end) {
        const allocated = this.map.test(b);
        const stop = allocated ? this.map.nextClear(b, end) : this.map.nextSet(b, end);
        const at = (b - first) * bs;
        const n = (stop - b) * bs;
        if (allocated) reads.push(preadFull(this.dataFd, into, at, n, offset + at));
        else into.fill(0, at, at + n);
        b = stop;
      }
      await Promise.all(reads);
    } finally {
      this.done();
    }
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (this.closed) throw shutdownError('write');
    if (this.readOnly) throw readOnlyError('write');
    checkIo(this, 'write', offset, data.length, 'ENOSPC');
    if (data.length === 0) return;
    const limit = this.limit;
    if (data.length <= SYNC_WRITE_MAX) {
      if (limit !== undefined && !fitsAnyway(this.map, limit, data.length / this.blockSize, this.reserved)) {
        checkAllocation(this.map, limit, this.blockSize, 'write', offset / this.blockSize, data.length / this.blockSize, this.reserved);
      }
      // Synchronous: nothing else runs between the pwrite and the bit (see "Hot path").
      for (let o = 0; o < data.length; o += WRITE_PIECE) {
        pwriteSyncFull(this.dataFd, data, o, Math.min(WRITE_PIECE, data.length - o), offset + o);
      }
      this.map.set(offset / this.blockSize, data.length / this.blockSize);
      this.completedGen++;
    } else {
      const reserve =
        limit === undefined
          ? 0
          : checkAllocation(this.map, limit, this.blockSize, 'write', offset / this.blockSize, data.length / this.blockSize, this.reserved);
      this.reserved += reserve;
      this.inflight++;
      try {
        await pwritePieces(this.dataFd, data, 0, data.length, offset);
        // The bit is set only once the data is in the file: a read never sees a set bit over
        // bytes that are not there yet, and a flush snapshot never includes an unfinished write.
        this.map.set(offset / this.blockSize, data.length / this.blockSize);
        this.completedGen++;
      } finally {
        this.reserved -= reserve;
        this.done();
      }
    }
    if (opts?.fua) await this.flushRound();
  }

  flush(): Promise<void> {
    if (this.closed) return Promise.reject(shutdownError('flush'));
    return this.flushRound();
  }

  async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (this.closed) throw shutdownError('trim');
    if (this.readOnly) throw readOnlyError('trim');
    checkIo(this, 'trim', offset, length, 'EINVAL');
    // Thick volumes keep their space and their data: trim is advisory.
    if (length === 0 || !this.thin) return;
    this.deallocate(offset, length);
    if (opts?.fua) await this.flushRound();
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    if (this.closed) throw shutdownError('write-zeroes');
    if (this.readOnly) throw readOnlyError('write-zeroes');
    checkIo(this, 'write-zeroes', offset, length, 'ENOSPC');
    if (length === 0) return;
    if (this.thin && !opts?.noHole) {
      this.deallocate(offset, length); // clearing bits: no data I/O, always fast
    } else {
      // Keeping the range allocated means writing zero bytes to the file: no faster than a
      // plain write, which is exactly when FAST_ZERO must fail.
      if (opts?.fastZero) {
        throw new BlockDeviceError(
          'ENOTSUP',
          `fast zero refused: zeroing ${length} bytes at ${offset} ${this.thin ? 'with no-hole' : 'on a thick volume'} means writing zeroes`,
        );
      }
      const reserve =
        this.limit === undefined
          ? 0
          : checkAllocation(this.map, this.limit, this.blockSize, 'write-zeroes', offset / this.blockSize, length / this.blockSize, this.reserved);
      this.reserved += reserve;
      this.inflight++;
      try {
        const writes: Promise<void>[] = [];
        for (let pos = offset; pos < offset + length; pos += ZERO_SLAB.length) {
          writes.push(pwriteFull(this.dataFd, ZERO_SLAB, 0, Math.min(ZERO_SLAB.length, offset + length - pos), pos));
          if (writes.length === 16) await Promise.all(writes.splice(0));
        }
        await Promise.all(writes);
        this.map.set(offset / this.blockSize, length / this.blockSize);
        this.completedGen++;
      } finally {
        this.reserved -= reserve;
        this.done();
      }
    }
    if (opts?.fua) await this.flushRound();
  }

  async blockStatus(offset: number, length: number, maxExtents = Number.POSITIVE_INFINITY): Promise<Extent[]> {
    if (this.closed) throw shutdownError('block-status');
    checkQuery(this, 'block-status', offset, length);
    return mapExtents(this.map, this.blockSize, offset, length, maxExtents);
  }

  async cache(offset: number, length: number): Promise<void> {
    if (this.closed) throw shutdownError('cache');
    checkQuery(this, 'cache', offset, length);
    // The page cache already does read-ahead; nothing useful to add here.
  }

  // ---- array operations ----

  /**
   * Grows the volume, durably before resolving: the data file first (extended, preallocated
   * when thick, synced), then the map (pages, header, synced). A crash in between leaves a
   * longer data file under the old header, which opens as the old size.
   */
  resize(newSize: number): Promise<void> {
    // One resize at a time: each reads the size it grows from.
    const run = this.resizing.then(() => this.doResize(newSize));
    this.resizing = run.catch(() => undefined);
    return run;
  }

  private async doResize(newSize: number): Promise<void> {
    if (this.closed) throw shutdownError('resize');
    if (this.readOnly) throw readOnlyError('resize');
    checkResize(this, newSize);
    if (newSize === this._size) return;
    const oldSize = this._size;
    const oldBlocks = this.map.blocks;
    const newBlocks = newSize / this.blockSize;
    await ftruncate(this.dataFd, newSize);
    if (!this.thin) await preallocate(this.dataFd, this.dataPath, oldSize, newSize - oldSize);
    await fdatasync(this.dataFd);
    assert(this.map.blocks === oldBlocks && newBlocks > oldBlocks, 'resize grows from the current size');
    this.map.grow(newBlocks);
    await ftruncate(this.mapFd, HEADER_BYTES + this.map.chunkCount * CHUNK_BYTES);
    // Thick: the new space is allocated; its data is the preallocated zeroes synced above.
    if (!this.thin) this.map.set(oldBlocks, newBlocks - oldBlocks);
    this._size = newSize;
    // A normal round writes the pages (after its own data sync, so pages carrying bits of
    // concurrent writes stay safe). Pages past the old end are ignored by an old header.
    await this.flushRound();
    await pwriteFull(this.mapFd, encodeHeader({ blockSize: this.blockSize, blocks: newBlocks, thick: !this.thin }), 0, HEADER_BYTES, 0);
    await fdatasync(this.mapFd);
  }

  /**
   * Refuses new requests, waits for those in flight, flushes, and closes both files.
   * Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    while (this.inflight > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    try {
      if (!this.readOnly) await this.flushRound();
    } finally {
      fs.closeSync(this.dataFd);
      fs.closeSync(this.mapFd);
    }
  }

  // ---- internals ----

  /** A read of at most SYNC_IO_MAX bytes, on the calling thread (see "Hot path"). */
  private readSmall(offset: number, into: Buffer, first: number, end: number): void {
    const map = this.map;
    const firstClear = map.nextClear(first, end);
    if (firstClear === end) {
      preadSyncFull(this.dataFd, into, 0, into.length, offset);
      return;
    }
    const bs = this.blockSize;
    let b = first;
    while (b < end) {
      const allocated = b !== firstClear && map.test(b);
      const stop = allocated ? map.nextClear(b, end) : map.nextSet(b, end);
      const at = (b - first) * bs;
      const n = (stop - b) * bs;
      if (allocated) preadSyncFull(this.dataFd, into, at, n, offset + at);
      else into.fill(0, at, at + n);
      b = stop;
    }
  }

  private done(): void {
    if (--this.inflight === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Clears allocation bits: the blocks read as zeroes from now on, with no data I/O. */
  private deallocate(offset: number, length: number): void {
    this.map.clear(offset / this.blockSize, length / this.blockSize);
    this.completedGen++;
  }

  /** One flush round at a time; callers arriving during a round share the next one. */
  private flushRound(): Promise<void> {
    if (this.roundInProgress === undefined) return this.startRound();
    this.nextRound ??= this.roundInProgress
      .catch(() => undefined)
      .then(() => {
        this.nextRound = undefined;
        return this.startRound();
      });
    return this.nextRound;
  }

  private startRound(): Promise<void> {
    const round = this.runRound().finally(() => {
      if (this.roundInProgress === round) this.roundInProgress = undefined;
    });
    this.roundInProgress = round;
    return round;
  }

  private async runRound(): Promise<void> {
    const gen = this.completedGen;
    if (gen === this.syncedGen && !this.map.hasDirty) return;
    // 1. snapshot: these pages hold only bits of requests completed before now.
    const pages = this.map.takeDirty();
    const snapshot = this.snapshotPages(pages);
    try {
      // 2. data first
      await fdatasync(this.dataFd);
      if (snapshot.length > 0) {
        // 3. + 4. then the map
        for (const run of snapshot) await pwriteFull(this.mapFd, run.bytes, 0, run.bytes.length, run.position);
        await fdatasync(this.mapFd);
      }
    } catch (err) {
      this.map.markDirty(pages); // retry the pages next round; their bits are still in memory
      throw err;
    }
    if (gen > this.syncedGen) this.syncedGen = gen;
    assert(this.syncedGen <= this.completedGen, 'synced no further than completed');
  }

  /** Serialises pages (ascending indices) into one buffer per contiguous run. */
  private snapshotPages(pages: number[]): Array<{ position: number; bytes: Buffer }> {
    const runs: Array<{ position: number; bytes: Buffer }> = [];
    for (let k = 1; k < pages.length; k++) assert(pages[k]! > pages[k - 1]!, 'dirty pages ascending and distinct');
    let i = 0;
    while (i < pages.length) {
      let j = i + 1;
      while (j < pages.length && pages[j] === pages[j - 1]! + 1 && j - i < 256) j++;
      const bytes = Buffer.allocUnsafe((j - i) * CHUNK_BYTES);
      for (let k = i; k < j; k++) this.map.serializeChunk(pages[k]!, bytes.subarray((k - i) * CHUNK_BYTES, (k - i + 1) * CHUNK_BYTES));
      runs.push({ position: HEADER_BYTES + pages[i]! * CHUNK_BYTES, bytes });
      i = j;
    }
    return runs;
  }

  /** Writes pages straight from the map (only before the store is shared: create()). */
  private async writeMapPages(pages: number[]): Promise<void> {
    for (const run of this.snapshotPages(pages)) await pwriteFull(this.mapFd, run.bytes, 0, run.bytes.length, run.position);
  }
}

async function loadMap(mapFd: number, map: AllocationMap): Promise<void> {
  const slabPages = 256; // read 1 MiB of bitmap at a time
  const slab = Buffer.alloc(slabPages * CHUNK_BYTES);
  const words = new Uint32Array(slab.buffer, slab.byteOffset, slab.length / 4);
  const wordsPerPage = CHUNK_BYTES / 4;
  for (let first = 0; first < map.chunkCount; first += slabPages) {
    const n = Math.min(slabPages, map.chunkCount - first);
    await preadFull(mapFd, slab, 0, n * CHUNK_BYTES, HEADER_BYTES + first * CHUNK_BYTES);
    for (let p = 0; p < n; p++) {
      let any = false;
      for (let w = p * wordsPerPage, end = w + wordsPerPage; w < end; w++) {
        if (words[w] !== 0) {
          any = true;
          break;
        }
      }
      if (any) map.loadChunk(first + p, slab.subarray(p * CHUNK_BYTES, (p + 1) * CHUNK_BYTES));
    }
  }
  assert(!map.hasDirty, 'a freshly loaded map has no dirty pages');
}

function openFd(file: string, flags: string): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.open(file, flags, 0o600, (err, fd) => {
      if (!err) return resolve(fd);
      const code = err.code === 'ENOENT' || err.code === 'EEXIST' ? 'EINVAL' : 'EIO';
      reject(new BlockDeviceError(code, `cannot open ${file}: ${err.message}`));
    }),
  );
}

function ftruncate(fd: number, len: number): Promise<void> {
  return new Promise((resolve, reject) => fs.ftruncate(fd, len, (err) => (err ? reject(ioError('ftruncate', len, err)) : resolve())));
}

function fstat(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => fs.fstat(fd, (err, st) => (err ? reject(ioError('fstat', 0, err)) : resolve(st))));
}
