/**
 * Large I/O buffers kept for reuse, one pool per server (NBD READ replies and WRITE payloads,
 * iSCSI write data).
 *
 * Why: a READ reply or WRITE payload of 1 MiB allocated fresh per request is served by glibc
 * with mmap/munmap (it is above the malloc mmap threshold), so every request paid ~256 page
 * faults and the kernel zeroing those pages, and the external memory drove V8 into frequent
 * major GCs. Profile of 1 MiB sequential I/O over NBD: faults, zeroing and GC marking were a
 * third of the server's CPU.
 *
 * Buffers come in power-of-two size classes from MIN_CLASS to MAX_CLASS (the largest
 * request). A buffer goes back to the pool only once nothing refers to it any more: the
 * caller releases it after the device call that used it succeeded and, for read replies,
 * after the socket write that sent it completed (BatchedWriter.queue's onSent). A buffer whose
 * request failed is never released (a device or the socket may still hold it): it is simply
 * dropped and garbage-collected. Free buffers are capped at `maxBytes` in total; beyond
 * that, released buffers are dropped.
 */

export const MIN_CLASS = 128 * 1024;
export const MAX_CLASS = 32 * 1024 * 1024;
/** Default cap on the bytes held by free buffers: enough for QD8 of 1 MiB both ways, small next to the RSS budget. */
export const DEFAULT_POOL_BYTES = 32 * 1024 * 1024;

/** Smallest class index whose buffers hold n bytes: class k holds MIN_CLASS << k. */
function classOf(n: number): number {
  let k = 0;
  while (MIN_CLASS * 2 ** k < n) k++;
  return k;
}

export class BufferPool {
  private readonly free: Buffer[][] = [];
  private freeBytes = 0;
  /** Memory of the free buffers: a second release of one is a bug that would hand it out twice. */
  private readonly isFree = new WeakSet<ArrayBufferLike>();

  constructor(readonly maxBytes = DEFAULT_POOL_BYTES) {
    for (let size = MIN_CLASS; size <= MAX_CLASS; size *= 2) this.free.push([]);
  }

  /** Bytes held by free buffers. */
  get pooledBytes(): number {
    return this.freeBytes;
  }

  /** The size of the buffer acquire(n) returns (n <= MAX_CLASS). */
  static bufferSize(n: number): number {
    if (n > MAX_CLASS) return n;
    return MIN_CLASS * 2 ** classOf(n);
  }

  /** A buffer of at least n bytes (exactly bufferSize(n)); its contents are arbitrary. */
  acquire(n: number): Buffer {
    if (n > MAX_CLASS) return Buffer.allocUnsafeSlow(n);
    const k = classOf(n);
    const b = this.free[k]!.pop();
    if (b !== undefined) {
      this.isFree.delete(b.buffer);
      this.freeBytes -= b.length;
      return b;
    }
    return Buffer.allocUnsafeSlow(MIN_CLASS * 2 ** k);
  }

  /**
   * Returns a buffer from acquire() (the whole buffer, not a view). The caller must hold
   * the only reference that will ever be used again: no pending I/O or socket write.
   */
  release(b: Buffer): void {
    const n = b.length;
    if (n < MIN_CLASS || n > MAX_CLASS || b.byteOffset !== 0 || b.buffer.byteLength !== n) return;
    const k = classOf(n);
    if (MIN_CLASS * 2 ** k !== n) return;
    if (this.isFree.has(b.buffer)) throw new Error('BufferPool: buffer released twice');
    if (this.freeBytes + n > this.maxBytes) return;
    this.isFree.add(b.buffer);
    this.free[k]!.push(b);
    this.freeBytes += n;
  }
}
