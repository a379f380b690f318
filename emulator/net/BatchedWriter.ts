/**
 * Everything a server sends on one connection, batched: what is produced in one tick goes to
 * the socket at the end of the tick as one write (one writev when buffers are queued), so a
 * burst of completions costs one syscall instead of one per reply. The NBD server's replies
 * (nbd/Output.ts, on top of this) and the iSCSI target's PDUs (iscsi/Connection.ts) both go
 * through it.
 *
 * Headers and small messages are encoded straight into a slab (`reserve`, then write at the
 * returned offset of `slab`); large payloads are queued by reference (`queue`), never copied.
 * A slab region or queued buffer handed to the socket is never written again: the slab moves
 * on past it (a fresh slab when full), and queued buffers belong to the socket until it is
 * done with them; `onSent` tells the owner of a queued buffer when that is.
 */
import type { Writable } from 'node:stream';

/** Told whether the socket is done with a queued buffer: true once it was written, false if it never will be (or failed). */
export type SentCallback = (ok: boolean) => void;

export class BatchedWriter {
  /** The current slab; reserve() says where in it to write. */
  slab: Buffer;
  /** [start, used) is encoded but not yet handed to the socket. */
  private start = 0;
  private used = 0;
  private scheduled = false;
  /** Messages sealed for this tick's write, in order: slab regions and queued buffers. */
  private parts: Buffer[] = [];
  /** Per part: the owner's callback for a queued buffer that has one, else undefined. */
  private cbs: Array<SentCallback | undefined> = [];
  private partsBytes = 0;

  /**
   * `slabSize`: bytes per slab, each protocol's own (the largest message it encodes in one
   * reserve() should fit; a larger one gets a slab of its own).
   */
  constructor(
    private target: Writable,
    private readonly slabSize: number,
  ) {
    this.slab = Buffer.allocUnsafe(slabSize);
  }

  /** Bytes handed to the socket but not yet sent, or waiting for this tick's write: the connection stops reading while this is high. */
  get pending(): number {
    return this.target.writableLength + this.partsBytes + (this.used - this.start);
  }

  get closed(): boolean {
    return this.target.destroyed || this.target.writableEnded;
  }

  /** Calls fn each time the socket has sent everything it was given after being full. */
  onDrain(fn: () => void): void {
    this.target.on('drain', fn);
  }

  /** Switches to a new stream (NBD's STARTTLS), dropping nothing already written. */
  retarget(target: Writable): void {
    this.flush();
    this.target = target;
  }

  /**
   * Space for n bytes at the returned offset in `slab`, sent after everything reserved or
   * queued before it, at the end of this tick. The caller fills it at once.
   */
  reserve(n: number): number {
    if (this.used + n > this.slabSize) {
      this.seal();
      this.slab = Buffer.allocUnsafe(Math.max(this.slabSize, n));
      this.start = this.used = 0;
    }
    const at = this.used;
    this.used += n;
    this.schedule();
    return at;
  }

  /**
   * A region of n bytes that is not sent by itself: the caller queues subarrays of it with
   * queue() (iSCSI Data-In headers between payload views). Never written again once returned.
   */
  scratch(n: number): Buffer {
    this.seal();
    if (this.used + n > this.slabSize) {
      this.slab = Buffer.allocUnsafe(Math.max(this.slabSize, n));
      this.start = this.used = 0;
    }
    const b = this.slab.subarray(this.used, this.used + n);
    this.used += n;
    this.start = this.used;
    return b;
  }

  /**
   * Sends buf by reference after everything before it, at the end of this tick; the caller
   * never writes into it again. `onSent`, if given, is called exactly once: true when the
   * socket has written buf and keeps no reference to it, false when it was not or may not have
   * been (closed socket, write error); then the caller must not reuse buf.
   */
  queue(buf: Buffer, onSent?: SentCallback): void {
    if (buf.length === 0 && onSent === undefined) return;
    this.seal();
    this.parts.push(buf);
    this.cbs.push(onSent);
    this.partsBytes += buf.length;
    this.schedule();
  }

  /** Writes everything encoded so far, now. */
  flush(): void {
    this.seal();
    const parts = this.parts;
    if (parts.length === 0) return;
    const cbs = this.cbs;
    this.parts = [];
    this.cbs = [];
    this.partsBytes = 0;
    if (this.closed) {
      for (const cb of cbs) cb?.(false);
      return;
    }
    const t = this.target;
    if (parts.length === 1) {
      t.write(parts[0], written(cbs[0]));
      return;
    }
    // One writev for the lot.
    t.cork();
    for (let i = 0; i < parts.length; i++) t.write(parts[i], written(cbs[i]));
    t.uncork();
  }

  /** Moves the slab's unsent region into parts; the socket will own it, so it is never written again. */
  private seal(): void {
    if (this.used === this.start) return;
    const part = this.slab.subarray(this.start, this.used);
    this.start = this.used;
    this.parts.push(part);
    this.cbs.push(undefined);
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

/** A stream write callback that reports to `cb` whether the write succeeded. */
function written(cb: SentCallback | undefined): ((err?: Error | null) => void) | undefined {
  if (cb === undefined) return undefined;
  return (err) => cb(err === undefined || err === null);
}
