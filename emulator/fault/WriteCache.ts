/**
 * A volume's volatile write-back cache: the controller cache of a real array without its
 * battery, so that a power cut (powerCut.ts) can lose what hosts were told was written.
 *
 * Where it sits: on the volume's host path, above the copy engine's VolumeTap (Volume keeps
 * it the top of the layer stack), so copy sessions see destaged data only; StorageArray
 * destages it (hold()) before copy control operations so acknowledged writes are in every
 * point-in-time copy. A volume without a cache has none on its path: no cost at all.
 *
 * What it does:
 *   - write, write-zeroes and trim are acknowledged once they are in the cache (a write's data
 *     is copied: the caller may reuse its buffer); reads see cached data over the volume's;
 *     block status reports cached ranges as data (always a correct answer);
 *   - FLUSH destages every entry acknowledged before it, in log order, then flushes below;
 *   - FUA requests go below at once, and a request larger than the cache goes below too;
 *   - past the size limit, entries are destaged (oldest first) before a new one is taken.
 * Nothing is destaged in the background: what a flush did not cover stays volatile until the
 * cache fills, which keeps a power cut's losses exactly predictable.
 *
 * The data structure: a log of entries in acknowledgement order and a per-block index that
 * maps each cached block to the one entry whose data it reads as (the newest). A newer
 * request takes its blocks from older entries (they no longer destage them); a request that
 * goes below removes its blocks from the index, so an older cached write never lands on top
 * of a newer FUA write. Operations below on overlapping ranges are issued in the order they
 * were decided (the ordered range lock `below*`), since a store may complete concurrent
 * writes to the same block in either order.
 *
 * Memory: cached data lives in 4 KiB pages from the cache's own pool, reused as entries
 * destage or are superseded, so a busy cache allocates nothing per request once warm (fresh
 * buffers per write cost more in garbage collection than the copy itself). Nothing outside
 * the cache holds a page across an await: a read decides at its start which blocks were
 * cached, and after reading below copies them from the entries cached at its end, or reads
 * again below those that were destaged meanwhile.
 *
 * A destage that fails (ENOSPC past an allocation limit, EIO) loses that entry, as a real
 * array's failed destage does, and the next flush reports it once (Linux's writeback error).
 *
 * Power cut policies, applied to the entries still in the log (every request acknowledged and
 * not flushed, counted even when newer requests took all its blocks), in log order, with one seeded
 * generator (the reference model in test/fault/unit/writeCache.test.ts draws the same way):
 *   drop-unflushed  every entry is lost;
 *   keep-random     each entry draws once: below 0.5 it is applied (its live blocks), else lost;
 *   torn            each entry draws once per 512-byte sector of its live blocks; a sector is
 *                   applied when its draw is below 0.5 (all: kept, none: lost, else torn).
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block/BlockDevice.js';
import { checkIo, checkQuery } from '../block/requestChecks.js';
import type { WriteCacheMode } from '../../proto/views.js';
import type { SeededRandom } from './random.js';

export type { WriteCacheMode };
export const WRITE_CACHE_MODES: readonly WriteCacheMode[] = ['write-through', 'volatile'];
export type PowerCutPolicy = 'drop-unflushed' | 'keep-random' | 'torn';
export const POWER_CUT_POLICIES: readonly PowerCutPolicy[] = ['drop-unflushed', 'keep-random', 'torn'];

/** 64 MiB per volume unless the array says otherwise. */
export const DEFAULT_WRITE_CACHE_BYTES = 64 * 1024 * 1024;
/** What a cached block costs in the index (a Map entry, about), charged against the limit beside the data. */
const INDEX_COST = 64;
const SECTOR = 512;
/** Cached data is kept in pages of this size. */
const PAGE = 4096;
/** The longest write a destage issues below (a longer run of blocks is split). */
const MAX_DESTAGE = 1024 * 1024;

const KIND_WRITE = 0;
const KIND_ZERO = 1;
const KIND_TRIM = 2;

interface Entry {
  seq: number;
  kind: number;
  /** First block and block count. */
  first: number;
  count: number;
  /** KIND_WRITE: the cache's copy of the data, in pages (empty for zeroes and trims). */
  readonly pages: Buffer[];
  noHole: boolean;
  /** Blocks the index still maps to this entry. */
  live: number;
  /** What it is charged against the limit while live > 0. */
  cost: number;
  next: Entry | undefined;
}

/** One operation below in flight, for the ordered range lock. */
interface BelowOp {
  first: number;
  end: number;
  waiters: Array<() => void> | undefined;
}

export interface CacheCutReport {
  writesLost: number;
  writesKept: number;
  writesTorn: number;
  bytesLost: number;
}

export interface WriteCacheStats {
  /** Entries in the log (unflushed requests). */
  entries: number;
  /** Bytes charged against the limit (data and index). */
  bytes: number;
  /** Blocks cached (mapped by the index). */
  blocks: number;
}

export class WriteCache implements BlockDevice {
  private head: Entry | undefined;
  private tail: Entry | undefined;
  private entries = 0;
  private seq = 0;
  private readonly index = new Map<number, Entry>();
  /** Bounds of the cached blocks since the cache was last empty (a quick miss test). */
  private minBlock = Number.POSITIVE_INFINITY;
  private maxBlock = -1;
  private bytes = 0;
  private free: Entry | undefined;
  private readonly freePages: Buffer[] = [];
  /** The destage's contiguous copy of a run (destages run one at a time). */
  private scratch: Buffer | undefined;
  private readonly ops: BelowOp[] = [];
  private destaging: Promise<void> | undefined;
  private failed: Error | undefined;
  /** The gate: hold() stops modifying requests at the door. */
  private holds = 0;
  private inflight = 0;
  private gateWaiters: Array<() => void> = [];
  private drainWaiters: Array<() => void> = [];
  /** Once removed from the volume, every request goes straight below. */
  private detached = false;

  constructor(
    /** The device below (the volume's top layer under the cache); Volume updates it. */
    public below: BlockDevice,
    readonly limitBytes: number = DEFAULT_WRITE_CACHE_BYTES,
    private readonly onDestageError: (err: Error) => void = () => undefined,
  ) {}

  get size(): number {
    return this.below.size;
  }
  get blockSize(): number {
    return this.below.blockSize;
  }
  get readOnly(): boolean {
    return this.below.readOnly;
  }
  get thin(): boolean {
    return this.below.thin;
  }

  get stats(): WriteCacheStats {
    return { entries: this.entries, bytes: this.bytes, blocks: this.index.size };
  }

  /** Bytes of cached data that a power cut now would lose (blocks mapped by the index). */
  get dirtyBytes(): number {
    return this.index.size * this.blockSize;
  }

  // ---- BlockDevice ----

  read(offset: number, into: Buffer): Promise<void> {
    const bs = this.below.blockSize;
    const first = offset / bs;
    const end = first + into.length / bs;
    if (this.index.size === 0 || end <= this.minBlock || first > this.maxBlock || !Number.isInteger(first)) return this.below.read(offset, into);
    // The blocks cached now, as [first, end) runs: each reads as cache data (or, if destaged
    // meanwhile, as what is below after the destage), never as the data below from before.
    const lo = Math.max(first, this.minBlock);
    const hi = Math.min(end, this.maxBlock + 1);
    let runs: number[] | undefined;
    for (let b = lo; b < hi; b++) {
      if (!this.index.has(b)) continue;
      if (runs !== undefined && runs[runs.length - 1] === b) runs[runs.length - 1] = b + 1;
      else (runs ??= []).push(b, b + 1);
    }
    if (runs === undefined) return this.below.read(offset, into);
    return this.below.read(offset, into).then(() => this.overlay(first, into, runs));
  }

  private async overlay(first: number, into: Buffer, runs: number[]): Promise<void> {
    const bs = this.below.blockSize;
    let again: number[] | undefined;
    for (let i = 0; i < runs.length; i += 2) {
      const end = runs[i + 1]!;
      for (let b = runs[i]!; b < end; ) {
        const e = this.index.get(b);
        if (e === undefined) {
          if (again !== undefined && again[again.length - 1] === b) again[again.length - 1] = b + 1;
          else (again ??= []).push(b, b + 1);
          b++;
          continue;
        }
        // The run of blocks this entry holds, copied at once.
        let r = b + 1;
        while (r < end && this.index.get(r) === e) r++;
        this.copyOut(e, (b - e.first) * bs, into, (b - first) * bs, (r - b) * bs);
        b = r;
      }
    }
    if (again === undefined) return;
    // Destaged while the read was below: below holds them now (a destage leaves the index last).
    for (let i = 0; i < again.length; i += 2) {
      await this.below.read(again[i]! * bs, into.subarray((again[i]! - first) * bs, (again[i + 1]! - first) * bs));
    }
  }

  /** Copies `len` bytes of an entry's data from byte `from` (zeroes for zero and trim entries). */
  private copyOut(e: Entry, from: number, to: Buffer, at: number, len: number): void {
    if (e.kind !== KIND_WRITE) {
      to.fill(0, at, at + len);
      return;
    }
    while (len > 0) {
      const page = e.pages[Math.floor(from / PAGE)]!;
      const off = from % PAGE;
      const n = Math.min(len, PAGE - off);
      page.copy(to, at, off, off + n);
      from += n;
      at += n;
      len -= n;
    }
  }

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.mutate(KIND_WRITE, offset, data.length, data, opts?.fua === true, false);
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.mutate(KIND_ZERO, offset, length, undefined, opts?.fua === true, opts?.noHole === true);
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.mutate(KIND_TRIM, offset, length, undefined, opts?.fua === true, false);
  }

  async flush(): Promise<void> {
    if (!this.detached) await this.destageTo(this.seq);
    await this.below.flush();
    const failed = this.failed;
    if (failed !== undefined) {
      this.failed = undefined;
      throw failed;
    }
  }

  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    if (this.index.size === 0) return this.below.blockStatus(offset, length, maxExtents);
    try {
      checkQuery(this.below, 'block status', offset, length);
    } catch (err) {
      return Promise.reject(err);
    }
    const bs = this.below.blockSize;
    const lo = this.minBlock * bs;
    const hi = (this.maxBlock + 1) * bs;
    const end = Math.min(offset + length, this.size);
    if (end <= lo || offset >= hi) return this.below.blockStatus(offset, length, maxExtents);
    // Before the first cached block: what the volume says, up to it; from it: data.
    if (offset < lo) return this.below.blockStatus(offset, lo - offset, maxExtents);
    return Promise.resolve([{ length: Math.min(end, hi) - offset, flags: 0 }]);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.below.cache(offset, length);
  }

  // ---- control ----

  /**
   * Stops modifying requests at the door, waits for those in flight, and destages everything:
   * afterwards every acknowledged write is below (a copy cut sees it). Holds nest.
   */
  async hold(): Promise<void> {
    this.holds++;
    if (this.inflight > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    await this.destageTo(this.seq);
  }

  release(): void {
    if (this.holds === 0) throw new Error('write cache released without a hold');
    if (--this.holds > 0) return;
    const w = this.gateWaiters;
    this.gateWaiters = [];
    for (const go of w) go();
  }

  /** Destages everything acknowledged so far (not a flush below). */
  destage(): Promise<void> {
    return this.destageTo(this.seq);
  }

  /**
   * The cache is off the volume's path (write-through again): requests that were waiting at
   * the door, and any later ones through an old reference, go straight below. Call under a
   * hold, after destaging.
   */
  detach(): void {
    this.detached = true;
  }

  /**
   * A power cut: the entries still in the log are lost, kept or torn as the policy says and
   * the generator draws (see the top of the file), what survives is written below and
   * flushed, and the cache is empty. Waits for a destage in flight first (it reached the
   * volume). Requests arriving meanwhile wait at the door.
   */
  async powerCut(policy: PowerCutPolicy, rng: SeededRandom): Promise<CacheCutReport> {
    this.holds++;
    try {
      while (this.destaging !== undefined) await this.destaging;
      const report: CacheCutReport = { writesLost: 0, writesKept: 0, writesTorn: 0, bytesLost: 0 };
      const bs = this.below.blockSize;
      const spb = bs / SECTOR;
      // Decide synchronously (the index is the truth of what is live), apply afterwards.
      const apply: Array<{ e: Entry; block: number; sectors: number }> = [];
      for (let e = this.head; e !== undefined; e = e.next) {
        if (policy === 'drop-unflushed') {
          report.writesLost++;
          report.bytesLost += e.live * bs;
          continue;
        }
        if (policy === 'keep-random') {
          if (rng.next() < 0.5) {
            report.writesKept++;
            for (let b = e.first; b < e.first + e.count; b++) if (this.index.get(b) === e) apply.push({ e, block: b, sectors: -1 });
          } else {
            report.writesLost++;
            report.bytesLost += e.live * bs;
          }
          continue;
        }
        let applied = 0;
        let total = 0;
        for (let b = e.first; b < e.first + e.count; b++) {
          if (this.index.get(b) !== e) continue;
          let mask = 0;
          for (let s = 0; s < spb; s++) if (rng.next() < 0.5) mask |= 1 << s;
          const n = popcount(mask);
          applied += n;
          total += spb;
          report.bytesLost += (spb - n) * SECTOR;
          if (n > 0) apply.push({ e, block: b, sectors: n === spb ? -1 : mask });
        }
        if (applied === 0) report.writesLost++;
        else if (applied === total) report.writesKept++;
        else report.writesTorn++;
      }
      // The entries leave the cache now; their pages stay theirs until the survivors are written.
      const gone = this.head;
      this.clear();
      let firstErr: unknown;
      if (apply.length > 0) {
        // Ordered before anything newer below: a request that was past the door may cache a
        // block again and destage it while the survivors are being written.
        let lo = apply[0]!.block;
        let hi = lo;
        for (const a of apply) {
          lo = Math.min(lo, a.block);
          hi = Math.max(hi, a.block);
        }
        await this.ordered(lo, hi - lo + 1, async () => {
          for (const a of apply) {
            try {
              await this.applyBlock(a.e, a.block, a.sectors);
            } catch (err) {
              firstErr ??= err;
            }
          }
        });
      }
      this.recycle(gone);
      await this.below.flush();
      if (firstErr !== undefined) throw firstErr;
      return report;
    } finally {
      this.release();
    }
  }

  // ---- internals ----

  private async mutate(kind: number, offset: number, length: number, data: Buffer | undefined, fua: boolean, noHole: boolean): Promise<void> {
    while (this.holds > 0) await new Promise<void>((resolve) => this.gateWaiters.push(resolve));
    const op = kind === KIND_WRITE ? 'write' : kind === KIND_ZERO ? 'write-zeroes' : 'trim';
    if (this.detached || this.below.readOnly) return this.direct(kind, offset, length, data, fua, noHole);
    checkIo(this.below, op, offset, length, kind === KIND_TRIM ? 'EINVAL' : 'ENOSPC');
    if (length === 0) return;
    const bs = this.below.blockSize;
    const first = offset / bs;
    const count = length / bs;
    const cost = (data === undefined ? 0 : Math.ceil(data.length / PAGE) * PAGE) + count * INDEX_COST;
    this.inflight++;
    try {
      if (fua || cost > this.limitBytes) {
        // Below at once; older cached data of these blocks must never land on top of it.
        for (let b = first; b < first + count; b++) this.unmap(b);
        await this.ordered(first, count, () => this.direct(kind, offset, length, data, fua, noHole));
        return;
      }
      while (this.bytes + cost > this.limitBytes && this.head !== undefined) await this.destageTo(this.head.seq);
      const e = this.entry();
      e.seq = ++this.seq;
      e.kind = kind;
      e.first = first;
      e.count = count;
      e.noHole = noHole;
      e.cost = cost;
      if (data !== undefined) {
        for (let at = 0; at < data.length; at += PAGE) {
          const page = this.freePages.pop() ?? Buffer.allocUnsafeSlow(PAGE);
          data.copy(page, 0, at, Math.min(at + PAGE, data.length));
          e.pages.push(page);
        }
      }
      for (let b = first; b < first + count; b++) {
        const old = this.index.get(b);
        if (old !== undefined) this.takeFrom(old);
        this.index.set(b, e);
      }
      e.live = count;
      this.bytes += cost;
      if (first < this.minBlock) this.minBlock = first;
      if (first + count - 1 > this.maxBlock) this.maxBlock = first + count - 1;
      if (this.tail === undefined) this.head = e;
      else this.tail.next = e;
      this.tail = e;
      this.entries++;
    } finally {
      if (--this.inflight === 0 && this.drainWaiters.length > 0) {
        const w = this.drainWaiters;
        this.drainWaiters = [];
        for (const go of w) go();
      }
    }
  }

  private direct(kind: number, offset: number, length: number, data: Buffer | undefined, fua: boolean, noHole: boolean): Promise<void> {
    const opts = fua ? { fua: true } : undefined;
    if (kind === KIND_WRITE) return this.below.write(offset, data!, opts);
    if (kind === KIND_ZERO) return this.below.writeZeroes(offset, length, noHole ? { ...opts, noHole: true } : opts);
    return this.below.trim(offset, length, opts);
  }

  /** Takes a block from whichever entry held it. */
  private unmap(b: number): void {
    const old = this.index.get(b);
    if (old === undefined) return;
    this.index.delete(b);
    this.takeFrom(old);
  }

  /** One of the entry's blocks was taken from it. */
  private takeFrom(old: Entry): void {
    if (--old.live === 0) {
      this.bytes -= old.cost;
      this.freeData(old); // superseded entirely: its memory is free before it leaves the log
    }
  }

  private entry(): Entry {
    const e = this.free;
    if (e === undefined) return { seq: 0, kind: 0, first: 0, count: 0, pages: [], noHole: false, live: 0, cost: 0, next: undefined };
    this.free = e.next;
    e.next = undefined;
    return e;
  }

  private freeData(e: Entry): void {
    for (const p of e.pages) this.freePages.push(p);
    e.pages.length = 0;
  }

  /** Destages log entries up to seq (inclusive), one at a time, oldest first. */
  private async destageTo(seq: number): Promise<void> {
    while (this.head !== undefined && this.head.seq <= seq) {
      if (this.destaging !== undefined) {
        await this.destaging;
        continue;
      }
      const p = this.destageHead().finally(() => {
        this.destaging = undefined;
      });
      this.destaging = p;
      await p;
    }
  }

  private async destageHead(): Promise<void> {
    const e = this.head!;
    const bs = this.below.blockSize;
    try {
      // Runs of blocks this entry still holds; blocks taken by newer requests are theirs.
      let b = e.first;
      const end = e.first + e.count;
      while (b < end && e.live > 0) {
        if (this.index.get(b) !== e) {
          b++;
          continue;
        }
        let r = b + 1;
        // Data goes through the scratch buffer, so a write is split; zeroes and trims are not.
        while (r < end && (e.kind !== KIND_WRITE || r - b < MAX_DESTAGE / bs) && this.index.get(r) === e) r++;
        const len = (r - b) * bs;
        let data: Buffer | undefined;
        if (e.kind === KIND_WRITE) {
          if (this.scratch === undefined || this.scratch.length < len) this.scratch = Buffer.allocUnsafeSlow(Math.max(len, 64 * 1024));
          data = this.scratch.subarray(0, len);
          this.copyOut(e, (b - e.first) * bs, data, 0, len);
        }
        await this.ordered(b, r - b, () => this.direct(e.kind, b * bs, len, data, false, e.noHole));
        b = r;
      }
    } catch (err) {
      this.failed ??= err as Error;
      this.onDestageError(err as Error);
    }
    // Out of the log; blocks still mapped to it (none were taken meanwhile) leave the index.
    for (let b = e.first; b < e.first + e.count; b++) if (this.index.get(b) === e) this.unmap(b);
    this.head = e.next;
    if (this.head === undefined) this.tail = undefined;
    this.entries--;
    if (e.live > 0) this.bytes -= e.cost;
    if (this.index.size === 0) {
      this.minBlock = Number.POSITIVE_INFINITY;
      this.maxBlock = -1;
    }
    this.freeData(e);
    e.next = this.free;
    this.free = e;
  }

  /** Runs `io` below once every earlier operation below on overlapping blocks has finished. */
  private async ordered(first: number, count: number, io: () => Promise<void>): Promise<void> {
    const end = first + count;
    let waits: Promise<void>[] | undefined;
    for (const o of this.ops) {
      if (o.first < end && first < o.end) (waits ??= []).push(new Promise<void>((resolve) => (o.waiters ??= []).push(resolve)));
    }
    const me: BelowOp = { first, end, waiters: undefined };
    this.ops.push(me);
    try {
      if (waits !== undefined) await Promise.all(waits);
      await io();
    } finally {
      this.ops.splice(this.ops.indexOf(me), 1);
      if (me.waiters !== undefined) for (const go of me.waiters) go();
    }
  }

  /** Empties the cache without writing anything (the power cut's loss); the caller recycles the entries. */
  private clear(): void {
    this.head = this.tail = undefined;
    this.entries = 0;
    this.index.clear();
    this.bytes = 0;
    this.minBlock = Number.POSITIVE_INFINITY;
    this.maxBlock = -1;
  }

  /** Entries (a detached log from `e` on) back to the pools. */
  private recycle(e: Entry | undefined): void {
    while (e !== undefined) {
      const next = e.next;
      this.freeData(e);
      e.next = this.free;
      this.free = e;
      e = next;
    }
  }

  /** Writes one block of a surviving entry below; sectors: -1 for all, else a bit mask (read-modify-write). */
  private async applyBlock(e: Entry, block: number, sectors: number): Promise<void> {
    const bs = this.below.blockSize;
    const buf = Buffer.alloc(bs);
    if (sectors === -1) {
      if (e.kind !== KIND_WRITE) return this.direct(e.kind, block * bs, bs, undefined, false, e.noHole);
      this.copyOut(e, (block - e.first) * bs, buf, 0, bs);
      return this.below.write(block * bs, buf);
    }
    const data = Buffer.alloc(bs);
    this.copyOut(e, (block - e.first) * bs, data, 0, bs);
    await this.below.read(block * bs, buf);
    for (let s = 0; s < bs / SECTOR; s++) if ((sectors & (1 << s)) !== 0) data.copy(buf, s * SECTOR, s * SECTOR, (s + 1) * SECTOR);
    await this.below.write(block * bs, buf);
  }
}

function popcount(x: number): number {
  let n = 0;
  for (; x !== 0; x &= x - 1) n++;
  return n;
}

export function isWriteCacheMode(s: unknown): s is WriteCacheMode {
  return typeof s === 'string' && (WRITE_CACHE_MODES as readonly string[]).includes(s);
}
