/**
 * Range locks of one device server: COMPARE AND WRITE, ORWRITE and WRITE ATOMIC each run under
 * a lock that excludes the others on overlapping ranges of the same device; reads and writes
 * (READ, WRITE, WRITE SAME, UNMAP...) that start while it is held wait for it, and it waits for
 * the ones already in flight when it took the lock (each holds a ticket: a Set add and delete,
 * no promise or closure while no lock is held). Commands through other front ends (NBD) do not
 * see these locks.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';

interface Held {
  readonly dev: BlockDevice;
  readonly start: number;
  readonly end: number;
  readonly done: Promise<void>;
  release: () => void;
}

export class RangeLocks {
  private readonly held: Held[] = [];
  private writeSeq = 0;
  /** Tickets of writes in flight, in ascending order (a Set iterates in insertion order). */
  private readonly inflight = new Set<number>();
  private drainWaiters: { upTo: number; resolve: () => void }[] = [];

  /** Number of locks held; writers skip enterWrite when it is 0. */
  get active(): number {
    return this.held.length;
  }

  private overlapping(dev: BlockDevice, start: number, end: number): Held | undefined {
    for (const h of this.held) if (h.dev === dev && h.start < end && start < h.end) return h;
    return undefined;
  }

  /**
   * Registers a write (or a read: see READ in readWrite.ts) to [start, end) of dev, first
   * waiting out overlapping locks; returns the ticket for endWrite(). Callers take the fast
   * path `active === 0 ? beginWrite() : enterWrite()`.
   */
  async enterWrite(dev: BlockDevice, start: number, end: number): Promise<number> {
    for (let h = this.overlapping(dev, start, end); h !== undefined; h = this.overlapping(dev, start, end)) await h.done;
    return this.beginWrite(); // same synchronous step as the last check: no lock can slip in between
  }

  beginWrite(): number {
    const ticket = ++this.writeSeq;
    this.inflight.add(ticket);
    return ticket;
  }

  endWrite(ticket: number): void {
    this.inflight.delete(ticket);
    if (this.drainWaiters.length !== 0) this.wakeDrained();
  }

  private oldestInflight(): number {
    for (const t of this.inflight) return t;
    return Number.POSITIVE_INFINITY;
  }

  private wakeDrained(): void {
    const oldest = this.oldestInflight();
    this.drainWaiters = this.drainWaiters.filter((w) => {
      if (oldest <= w.upTo) return true;
      w.resolve();
      return false;
    });
  }

  /** Waits for every write registered up to ticket upTo (on any device: simple and short). */
  private drained(upTo: number): Promise<void> {
    if (this.oldestInflight() > upTo) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push({ upTo, resolve }));
  }

  /** Takes an exclusive lock on [start, end) of dev; call release() exactly once. */
  async acquire(dev: BlockDevice, start: number, end: number): Promise<Held> {
    for (;;) {
      const h = this.overlapping(dev, start, end);
      if (h === undefined) break;
      await h.done;
    }
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const held: Held = {
      dev,
      start,
      end,
      done,
      release: () => {
        const i = this.held.indexOf(held);
        if (i >= 0) this.held.splice(i, 1);
        resolve();
      },
    };
    this.held.push(held);
    // From here on new overlapping writes wait for us; wait for the ones already started.
    await this.drained(this.writeSeq);
    return held;
  }
}
