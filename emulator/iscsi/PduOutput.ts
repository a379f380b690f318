/**
 * Everything the target sends on one connection.
 *
 * Headers and small data segments are encoded straight into a slab; large payloads (Data-In
 * from a READ) are queued by reference. Everything produced in one tick goes out at the end of
 * the tick in one write (one writev when payloads are queued), so a burst of completions costs
 * one syscall. A slab region handed to the socket is never written again: the slab moves on
 * past it (a fresh slab when full).
 */
import type { Writable } from 'node:stream';

const SLAB = 256 * 1024;

export class PduOutput {
  /** The current slab; reserve() says where in it to write. */
  slab = Buffer.allocUnsafe(SLAB);
  /** [start, used) is encoded but not yet handed to the socket. */
  private start = 0;
  private used = 0;
  private scheduled = false;
  private parts: Buffer[] = [];
  private partsBytes = 0;

  constructor(private readonly target: Writable) {}

  /** Bytes not yet sent: the connection stops reading while this is high (a client that does not read). */
  get pending(): number {
    return this.target.writableLength + this.partsBytes + (this.used - this.start);
  }

  get closed(): boolean {
    return this.target.destroyed || this.target.writableEnded;
  }

  onDrain(fn: () => void): void {
    this.target.on('drain', fn);
  }

  /**
   * Space for n bytes (n <= 64 KiB) at the returned offset in `slab`, sent after everything
   * reserved or queued before it. The caller fills it at once.
   */
  reserve(n: number): number {
    if (this.used + n > SLAB) {
      this.seal();
      this.slab = Buffer.allocUnsafe(Math.max(SLAB, n));
      this.start = this.used = 0;
    }
    const at = this.used;
    this.used += n;
    this.schedule();
    return at;
  }

  /**
   * A region of n bytes that is not sent by itself: the caller queues subarrays of it with
   * queue() (Data-In headers between payload views). Never written again once returned.
   */
  scratch(n: number): Buffer {
    this.seal();
    if (this.used + n > SLAB) {
      this.slab = Buffer.allocUnsafe(Math.max(SLAB, n));
      this.start = this.used = 0;
    }
    const b = this.slab.subarray(this.used, this.used + n);
    this.used += n;
    this.start = this.used;
    return b;
  }

  /** Sends buf by reference after everything before it; the caller never writes into it again. */
  queue(buf: Buffer): void {
    if (buf.length === 0) return;
    this.seal();
    this.parts.push(buf);
    this.partsBytes += buf.length;
    this.schedule();
  }

  /** Writes everything encoded so far, now. */
  flush(): void {
    this.seal();
    const parts = this.parts;
    if (parts.length === 0) return;
    this.parts = [];
    this.partsBytes = 0;
    if (this.closed) return;
    const t = this.target;
    if (parts.length === 1) {
      t.write(parts[0]);
      return;
    }
    t.cork();
    for (let i = 0; i < parts.length; i++) t.write(parts[i]);
    t.uncork();
  }

  private seal(): void {
    if (this.used === this.start) return;
    const part = this.slab.subarray(this.start, this.used);
    this.start = this.used;
    this.parts.push(part);
    this.partsBytes += part.length;
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      process.nextTick(this.onTick);
    }
  }

  private readonly onTick = (): void => {
    this.scheduled = false;
    this.flush();
  };
}
