/**
 * One bit per logical block: set = the block holds data, clear = it reads as zeroes.
 *
 * Lazily chunked: a chunk of CHUNK_BITS bits exists only while at least one of its bits is
 * set, so an untouched thin volume costs a Map and a few numbers whatever its size. Range
 * operations work a 32-bit word at a time and keep a per-chunk population count, so
 * count() is O(1) and scans skip empty and full chunks without reading them.
 *
 * Persistence (FileBlockStore): chunks changed since the last takeDirty() are tracked, and
 * a chunk serialises to CHUNK_BYTES bytes, LSB-first (block b is bit b%8 of byte b/8), the
 * layout of a dense bitmap file in which a missing chunk is a run of zero bytes.
 *
 * Block numbers are plain numbers (volumes stay far below 2^53 bytes), so chunk indices use
 * Math.floor rather than shifts, which would wrap at 2^32 blocks.
 */
import { endianness } from 'node:os';

/** Blocks covered by one chunk: 32768 bits = 4 KiB of bitmap = 16 MiB of 512-byte blocks. */
export const CHUNK_BITS = 32768;
export const CHUNK_BYTES = CHUNK_BITS / 8;
const CHUNK_WORDS = CHUNK_BITS / 32;

const LITTLE_ENDIAN = endianness() === 'LE';

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(`AllocationMap invariant: ${msg}`);
}

function popcount(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a non-zero word. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Bits [0, n) of a word, n in [0, 32]. */
function lowMask(n: number): number {
  return n >= 32 ? -1 : (1 << n) - 1;
}

class Chunk {
  readonly words = new Uint32Array(CHUNK_WORDS);
  /** Set bits in words; CHUNK_BITS when full. */
  count = 0;
}

export class AllocationMap {
  private _blocks: number;
  private _allocated = 0;
  private readonly chunks = new Map<number, Chunk>();
  private readonly dirty: Set<number> | undefined;

  /** @param trackDirty remember which chunks changed, for writing them back (FileBlockStore). */
  constructor(blocks: number, trackDirty = false) {
    assert(Number.isSafeInteger(blocks) && blocks >= 0, `block count ${blocks} must be a non-negative integer`);
    this._blocks = blocks;
    this.dirty = trackDirty ? new Set() : undefined;
  }

  get blocks(): number {
    return this._blocks;
  }

  /** Blocks whose bit is set. */
  get allocated(): number {
    return this._allocated;
  }

  /** Number of chunks that span the map, present or not. */
  get chunkCount(): number {
    return Math.ceil(this._blocks / CHUNK_BITS);
  }

  /** Chunks holding memory right now (for tests and diagnostics). */
  get residentChunks(): number {
    return this.chunks.size;
  }

  test(block: number): boolean {
    const chunk = this.chunks.get(Math.floor(block / CHUNK_BITS));
    if (chunk === undefined) return false;
    const bit = block % CHUNK_BITS;
    return (chunk.words[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Sets [start, start + count); returns how many bits were newly set. */
  set(start: number, count: number): number {
    this.checkRange(start, count);
    let added = 0;
    let b = start;
    const end = start + count;
    while (b < end) {
      const ci = Math.floor(b / CHUNK_BITS);
      const base = ci * CHUNK_BITS;
      const lo = b - base;
      const hi = Math.min(end - base, CHUNK_BITS);
      let chunk = this.chunks.get(ci);
      if (chunk === undefined) {
        chunk = new Chunk();
        this.chunks.set(ci, chunk);
      }
      if (chunk.count !== CHUNK_BITS) {
        const n = lo === 0 && hi === CHUNK_BITS ? fillChunk(chunk) : setBits(chunk.words, lo, hi);
        if (n !== 0) {
          chunk.count += n;
          added += n;
          this.dirty?.add(ci);
        }
      }
      b = base + hi;
    }
    this._allocated += added;
    return added;
  }

  /** Clears [start, start + count); returns how many bits were cleared. Frees emptied chunks. */
  clear(start: number, count: number): number {
    this.checkRange(start, count);
    if (this._allocated === 0) return 0;
    let removed = 0;
    let b = start;
    const end = start + count;
    while (b < end) {
      const ci = Math.floor(b / CHUNK_BITS);
      const base = ci * CHUNK_BITS;
      const lo = b - base;
      const hi = Math.min(end - base, CHUNK_BITS);
      const chunk = this.chunks.get(ci);
      if (chunk !== undefined) {
        const n = lo === 0 && hi === CHUNK_BITS ? chunk.count : clearBits(chunk.words, lo, hi);
        if (n !== 0) {
          chunk.count -= n;
          removed += n;
          this.dirty?.add(ci);
        }
        if (chunk.count === 0) this.chunks.delete(ci);
      }
      b = base + hi;
    }
    this._allocated -= removed;
    return removed;
  }

  /** Set bits in [start, start + count). */
  countRange(start: number, count: number): number {
    this.checkRange(start, count);
    let total = 0;
    let b = start;
    const end = start + count;
    while (b < end) {
      const ci = Math.floor(b / CHUNK_BITS);
      const base = ci * CHUNK_BITS;
      const lo = b - base;
      const hi = Math.min(end - base, CHUNK_BITS);
      const chunk = this.chunks.get(ci);
      if (chunk !== undefined) {
        if (chunk.count === CHUNK_BITS) total += hi - lo;
        else if (lo === 0 && hi === CHUNK_BITS) total += chunk.count;
        else total += countBits(chunk.words, lo, hi);
      }
      b = base + hi;
    }
    return total;
  }

  /** First set block in [from, end), or end if none. */
  nextSet(from: number, end: number): number {
    if (this._allocated === 0) return end;
    let b = from;
    while (b < end) {
      const ci = Math.floor(b / CHUNK_BITS);
      const base = ci * CHUNK_BITS;
      const chunk = this.chunks.get(ci);
      if (chunk !== undefined) {
        if (chunk.count === CHUNK_BITS) return b;
        const hi = Math.min(end - base, CHUNK_BITS);
        const found = scanBits(chunk.words, b - base, hi, 0);
        if (found < hi) return base + found;
      }
      b = base + CHUNK_BITS;
    }
    return end;
  }

  /** First clear block in [from, end), or end if none. */
  nextClear(from: number, end: number): number {
    let b = from;
    while (b < end) {
      const ci = Math.floor(b / CHUNK_BITS);
      const base = ci * CHUNK_BITS;
      const chunk = this.chunks.get(ci);
      if (chunk === undefined) return b;
      if (chunk.count !== CHUNK_BITS) {
        const hi = Math.min(end - base, CHUNK_BITS);
        const found = scanBits(chunk.words, b - base, hi, -1);
        if (found < hi) return base + found;
      }
      b = base + CHUNK_BITS;
    }
    return end;
  }

  /** Length of the run of blocks in the same state as `start`, capped at `end`. */
  runLength(start: number, end: number): number {
    const stop = this.test(start) ? this.nextClear(start, end) : this.nextSet(start, end);
    return Math.min(stop, end) - start;
  }

  /** Extends the map; new blocks are clear. */
  /** A copy of the bits, with no dirty chunks (dirty tracking if asked). */
  clone(trackDirty = false): AllocationMap {
    const m = new AllocationMap(this._blocks, trackDirty);
    m.assign(this);
    m.dirty?.clear();
    return m;
  }

  /** Makes the bits those of `other` (same size); every chunk that changes becomes dirty. */
  assign(other: AllocationMap): void {
    assert(other._blocks === this._blocks, `assigning a ${other._blocks}-block map to a ${this._blocks}-block one`);
    for (const ci of new Set([...this.chunks.keys(), ...other.chunks.keys()])) {
      const theirs = other.chunks.get(ci);
      const mine = this.chunks.get(ci);
      if (theirs === undefined) {
        this._allocated -= mine!.count;
        this.chunks.delete(ci);
      } else {
        const copy = new Chunk();
        copy.words.set(theirs.words);
        copy.count = theirs.count;
        this._allocated += copy.count - (mine?.count ?? 0);
        this.chunks.set(ci, copy);
      }
      this.dirty?.add(ci);
    }
  }

  grow(newBlocks: number): void {
    assert(Number.isSafeInteger(newBlocks) && newBlocks >= this._blocks, `cannot shrink map from ${this._blocks} to ${newBlocks} blocks`);
    this._blocks = newBlocks;
  }

  // ---- persistence ----

  /** True when some chunk changed since the last takeDirty(). */
  get hasDirty(): boolean {
    return this.dirty !== undefined && this.dirty.size > 0;
  }

  /** Indices of chunks changed since the last call, ascending; forgets them. */
  takeDirty(): number[] {
    assert(this.dirty !== undefined, 'takeDirty on a map without dirty tracking');
    const list = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    return list;
  }

  /** Marks chunks dirty again (a write-back failed and must be retried). */
  markDirty(indices: Iterable<number>): void {
    if (this.dirty === undefined) return;
    for (const i of indices) this.dirty.add(i);
  }

  /**
   * Copies chunk `index` into `into` (CHUNK_BYTES long) in file layout: LSB-first bitmap.
   * A copy, so the caller may write it out while the map keeps changing.
   */
  serializeChunk(index: number, into: Buffer): void {
    assert(into.length === CHUNK_BYTES, `chunk buffer is ${into.length} bytes, want ${CHUNK_BYTES}`);
    const chunk = this.chunks.get(index);
    if (chunk === undefined) {
      into.fill(0);
      return;
    }
    if (LITTLE_ENDIAN) {
      into.set(new Uint8Array(chunk.words.buffer, chunk.words.byteOffset, CHUNK_BYTES));
    } else {
      for (let w = 0; w < CHUNK_WORDS; w++) into.writeUInt32LE(chunk.words[w]!, w * 4);
    }
  }

  /** Replaces chunk `index` from file layout; bits past the end of the map are ignored. */
  loadChunk(index: number, bytes: Uint8Array): void {
    assert(bytes.length === CHUNK_BYTES, `chunk is ${bytes.length} bytes, want ${CHUNK_BYTES}`);
    assert(index < this.chunkCount, `chunk ${index} lies past the end of a ${this._blocks}-block map`);
    const old = this.chunks.get(index);
    if (old !== undefined) {
      this._allocated -= old.count;
      this.chunks.delete(index);
    }
    const chunk = new Chunk();
    const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    for (let w = 0; w < CHUNK_WORDS; w++) chunk.words[w] = view.readUInt32LE(w * 4);
    // Stray bits past the last block would make the map claim space that does not exist.
    const valid = Math.min(this._blocks - index * CHUNK_BITS, CHUNK_BITS);
    if (valid < CHUNK_BITS) clearBits(chunk.words, valid, CHUNK_BITS);
    chunk.count = countBits(chunk.words, 0, CHUNK_BITS);
    if (chunk.count > 0) {
      this.chunks.set(index, chunk);
      this._allocated += chunk.count;
    }
  }

  private checkRange(start: number, count: number): void {
    assert(
      Number.isSafeInteger(start) && Number.isSafeInteger(count) && start >= 0 && count >= 0 && start + count <= this._blocks,
      `range [${start}, +${count}) outside a ${this._blocks}-block map`,
    );
  }
}

function fillChunk(chunk: Chunk): number {
  const added = CHUNK_BITS - chunk.count;
  chunk.words.fill(0xffffffff);
  return added;
}

/** Sets bits [lo, hi) of a chunk's words, 0 <= lo < hi <= CHUNK_BITS; returns bits newly set. */
function setBits(words: Uint32Array, lo: number, hi: number): number {
  let w = lo >>> 5;
  const last = (hi - 1) >>> 5;
  let added = 0;
  let mask = ~lowMask(lo & 31);
  if (w === last) mask &= lowMask(((hi - 1) & 31) + 1);
  let old = words[w]!;
  added += popcount(mask & ~old);
  words[w] = old | mask;
  if (w === last) return added;
  for (w++; w < last; w++) {
    added += 32 - popcount(words[w]!);
    words[w] = 0xffffffff;
  }
  mask = lowMask(((hi - 1) & 31) + 1);
  old = words[last]!;
  added += popcount(mask & ~old);
  words[last] = old | mask;
  return added;
}

/** Clears bits [lo, hi); returns bits cleared. */
function clearBits(words: Uint32Array, lo: number, hi: number): number {
  let w = lo >>> 5;
  const last = (hi - 1) >>> 5;
  let removed = 0;
  let mask = ~lowMask(lo & 31);
  if (w === last) mask &= lowMask(((hi - 1) & 31) + 1);
  let old = words[w]!;
  removed += popcount(mask & old);
  words[w] = old & ~mask;
  if (w === last) return removed;
  for (w++; w < last; w++) {
    old = words[w]!;
    if (old !== 0) {
      removed += popcount(old);
      words[w] = 0;
    }
  }
  mask = lowMask(((hi - 1) & 31) + 1);
  old = words[last]!;
  removed += popcount(mask & old);
  words[last] = old & ~mask;
  return removed;
}

/** Counts set bits in [lo, hi). */
function countBits(words: Uint32Array, lo: number, hi: number): number {
  let w = lo >>> 5;
  const last = (hi - 1) >>> 5;
  let mask = ~lowMask(lo & 31);
  if (w === last) return popcount(words[w]! & mask & lowMask(((hi - 1) & 31) + 1));
  let total = popcount(words[w]! & mask);
  for (w++; w < last; w++) total += popcount(words[w]!);
  mask = lowMask(((hi - 1) & 31) + 1);
  return total + popcount(words[last]! & mask);
}

/**
 * First bit in [lo, hi) that is set in (word ^ invert): invert 0 finds set bits, -1 clear
 * bits. Returns hi if none.
 */
function scanBits(words: Uint32Array, lo: number, hi: number, invert: number): number {
  let w = lo >>> 5;
  const last = (hi - 1) >>> 5;
  let x = (words[w]! ^ invert) & ~lowMask(lo & 31);
  for (;;) {
    if (x !== 0) {
      const bit = (w << 5) + ctz(x);
      return Math.min(bit, hi);
    }
    if (++w > last) return hi;
    x = words[w]! ^ invert;
  }
}
