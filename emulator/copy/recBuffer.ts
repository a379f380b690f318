/**
 * The REC buffer of consistency mode: host writes of every consistency-mode pair to one remote
 * array, kept in memory in cycles and sent to the remote one cycle at a time. A cycle is applied
 * on the remote as a whole (its remote ends stage it, then CommitCycle applies it), so the
 * remote volumes are always a crash-consistent image of the instant some cycle closed. All
 * pairs on one buffer share the cycle sequence: they are one consistency group.
 *
 * Order. A write joins the open cycle under its unit lock, after it landed on the source and
 * before it is acknowledged: a write issued after another was acknowledged is never in an
 * earlier cycle, and overlapping writes join in the order they landed. Closing a cycle is one
 * synchronous step.
 *
 * Bounds. The buffer holds at most `bytes` of write data (pending and in transfer). A write that
 * does not fit waits for space up to the halt wait timer (0, 5, 10 or 15 s); if there is still
 * none, every pair on the buffer halts (buffer-overload). If the buffer stays at least half full
 * for the monitoring time, every pair halts too (an overload that never clears).
 *
 * Failures. A transfer or commit that fails (the link) halts every pair on the buffer; their
 * pending entries are dropped (their units are in the pairs' write intent, which a halt merges
 * into diff: the resync copies them).
 */
import { RemoteLinkError } from './CopySession.js';
import type { RecLink } from './SessionBase.js';

export interface RecBufferSettings {
  /** Bytes of write data the buffer holds (default 128 MiB). */
  bytes: number;
  /** How long a write waits for space before the pairs halt: 0, 5000, 10000 or 15000 ms (default 5 s). */
  haltWaitMs: number;
  /** How long the buffer may stay at least half full before the pairs halt (default 5 min). */
  monitorMs: number;
  /** A cycle closes this often when it holds writes (default 1 s). */
  cycleMs: number;
}

export const DEFAULT_REC_BUFFER: RecBufferSettings = { bytes: 128 * 1024 * 1024, haltWaitMs: 5000, monitorMs: 300_000, cycleMs: 1000 };
export const HALT_WAIT_CHOICES_MS = [0, 5000, 10_000, 15_000] as const;

/** One pair on a buffer (RecSession in consistency mode). */
export interface BufferMember {
  readonly id: string;
  readonly link: RecLink;
  /** The buffer cannot carry on (link lost, overload): the pair halts (through the engine's queue). */
  bufferFailed(err: RemoteLinkError): void;
  /** Every entry of the pair up to `closedAt` is applied on the remote (a cycle committed). */
  cycleCommitted(closedAt: number, drained: boolean): void;
}

interface Entry {
  member: BufferMember;
  offset: number;
  length: number;
  /** undefined: zeroes. */
  data: Buffer | undefined;
}

interface Cycle {
  seq: number;
  entries: Entry[];
  bytes: number;
  closedAt: number;
  /** Where its entries' data lives (copied in at append): SLAB-sized, reused once the cycle is gone. */
  slabs: Buffer[];
  /** Bytes used in the last slab. */
  fill: number;
}

/**
 * Write data is copied into slabs rather than a Buffer per write: a fresh Buffer per 1 MiB
 * write cost a fifth of the source's CPU in allocation and GC (profile of bench:rec).
 */
const SLAB = 4 * 1024 * 1024;
/** Slabs kept for reuse (beyond them, freed slabs go to the GC). */
const SLABS_KEPT = 16;
const slabPool: Buffer[] = [];

export class RecBuffer {
  private readonly members = new Map<string, BufferMember>();
  private open: Cycle;
  private readonly closed: Cycle[] = [];
  private seq = 0;
  /** Bytes of data in the open cycle, the closed ones and the one in transfer. */
  private used = 0;
  private sending = false;
  private waiters: Array<{ bytes: number; resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout | undefined }> = [];
  private cycleTimer: NodeJS.Timeout | undefined;
  private monitorTimer: NodeJS.Timeout | undefined;
  private highSince: number | undefined;
  /** Counts failAll()s, so drain() can tell that one happened while it waited. */
  private failures = 0;
  /** The close instant of the newest cycle the remote applied (ms), for RPO. */
  lastConsistentAt: number | undefined;

  constructor(
    readonly remote: string,
    public settings: RecBufferSettings,
    private readonly commit: (seq: number, pairIds: string[]) => Promise<void>,
    private readonly now: () => number = Date.now,
  ) {
    this.open = this.newCycle();
  }

  get bytesUsed(): number {
    return this.used;
  }

  get memberCount(): number {
    return this.members.size;
  }

  /** New settings, at once: timers re-armed, waiters re-checked against the new size. */
  configure(settings: RecBufferSettings): void {
    this.settings = settings;
    const armed = this.cycleTimer !== undefined;
    this.disarm();
    if (armed) this.arm();
    this.wakeWaiters();
  }

  add(m: BufferMember): void {
    this.members.set(m.id, m);
    this.arm();
  }

  /**
   * The pair leaves (halted, suspended, cancelled): its entries go, their space is freed.
   * Returns what they covered ([offset, length]): the caller records it for a resync.
   */
  remove(id: string): Array<[number, number]> {
    const dropped: Array<[number, number]> = [];
    if (!this.members.delete(id)) return dropped;
    for (const c of [this.open, ...this.closed]) {
      const keep = c.entries.filter((e) => e.member.id !== id);
      for (const e of c.entries) {
        if (e.member.id !== id) continue;
        this.free(e, c);
        dropped.push([e.offset, e.length]);
      }
      c.entries = keep;
    }
    this.wakeWaiters();
    if (this.members.size === 0) this.disarm();
    return dropped;
  }

  /** Bytes of a pair's entries still to be applied on the remote. */
  pendingOf(id: string): number {
    let n = 0;
    for (const c of [this.open, ...this.closed]) for (const e of c.entries) if (e.member.id === id) n += e.length;
    return n;
  }

  /**
   * Space for a write of `bytes`: undefined when it fits now (the fast path), else a promise
   * that resolves when it does, or rejects (RemoteLinkError buffer-overload) after the halt
   * wait timer, when every pair on the buffer has been told to halt.
   */
  reserve(bytes: number): Promise<void> | undefined {
    const size = this.dataBytes(bytes);
    if (this.used + size <= this.settings.bytes && this.waiters.length === 0) return undefined;
    if (size > this.settings.bytes || this.settings.haltWaitMs === 0) return Promise.reject(this.overload(`a ${bytes}-byte write does not fit`));
    return new Promise((resolve, reject) => {
      const w = { bytes: size, resolve, reject, timer: undefined as NodeJS.Timeout | undefined };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(this.overload(`a write waited ${this.settings.haltWaitMs} ms (the halt wait timer) for space`));
      }, this.settings.haltWaitMs);
      this.waiters.push(w);
    });
  }

  /** A write that landed on the source joins the open cycle (its data is copied). Synchronous. */
  append(m: BufferMember, offset: number, length: number, data: Buffer | undefined): void {
    const copy = data === undefined ? undefined : this.copyIn(this.open, data);
    const e: Entry = { member: m, offset, length, data: copy };
    this.open.entries.push(e);
    const size = this.dataBytes(copy?.length ?? 0);
    this.open.bytes += size;
    this.used += size;
  }

  /** Closes the open cycle now (a suspend, a mode change) and sends everything; resolves when the remote applied it. */
  async drain(): Promise<void> {
    const failures = this.failures;
    this.closeCycle();
    while (this.closed.length > 0 || this.sending) {
      await this.pump();
      if (this.failures !== failures) throw this.lastFailure!;
      if (this.sending) await new Promise((r) => setTimeout(r, 5));
    }
    if (this.failures !== failures) throw this.lastFailure!;
  }

  private lastFailure: RemoteLinkError | undefined;

  close(): void {
    this.disarm();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new RemoteLinkError(`the REC buffer to ${this.remote} closed`, 'link-down'));
    }
  }

  /**
   * What the cycle timer does: closes the open cycle (if it holds writes) and sends. Returns the
   * closed cycle's number, or undefined. Also for tests that drive cycles themselves (the REC
   * simulator, with a cycleMs out of reach).
   */
  cycleNow(): number | undefined {
    const seq = this.open.entries.length > 0 ? this.open.seq : undefined;
    this.closeCycle();
    void this.pump();
    return seq;
  }

  // ---- cycles ----

  private newCycle(): Cycle {
    return { seq: ++this.seq, entries: [], bytes: 0, closedAt: 0, slabs: [], fill: SLAB };
  }

  /** The data, copied into the cycle's slabs (a larger write gets a buffer of its own). */
  private copyIn(c: Cycle, data: Buffer): Buffer {
    if (data.length > SLAB / 4) return Buffer.from(data);
    if (c.fill + data.length > SLAB) {
      c.slabs.push(slabPool.pop() ?? Buffer.allocUnsafeSlow(SLAB));
      c.fill = 0;
    }
    const slab = c.slabs[c.slabs.length - 1]!;
    const at = c.fill;
    data.copy(slab, at);
    c.fill += data.length;
    return slab.subarray(at, at + data.length);
  }

  /** A cycle that is gone (committed, or every entry dropped and not in transfer): its slabs are reused. */
  private releaseSlabs(c: Cycle): void {
    for (const s of c.slabs) if (slabPool.length < SLABS_KEPT) slabPool.push(s);
    c.slabs = [];
    c.fill = SLAB;
  }

  private closeCycle(): void {
    if (this.open.entries.length === 0) return;
    const c = this.open;
    c.closedAt = this.now();
    this.closed.push(c);
    this.open = this.newCycle();
  }

  private arm(): void {
    if (this.cycleTimer === undefined) {
      this.cycleTimer = setInterval(() => this.cycleNow(), this.settings.cycleMs);
      this.cycleTimer.unref();
    }
    if (this.monitorTimer === undefined) {
      this.monitorTimer = setInterval(() => this.monitor(), Math.min(1000, Math.max(10, this.settings.monitorMs / 10)));
      this.monitorTimer.unref();
    }
  }

  private disarm(): void {
    clearInterval(this.cycleTimer);
    clearInterval(this.monitorTimer);
    this.cycleTimer = undefined;
    this.monitorTimer = undefined;
  }

  private monitor(): void {
    if (this.used * 2 < this.settings.bytes) {
      this.highSince = undefined;
      return;
    }
    this.highSince ??= this.now();
    if (this.now() - this.highSince >= this.settings.monitorMs) {
      this.highSince = undefined;
      this.overload(
        `the buffer stayed at least half full (${this.used} of ${this.settings.bytes} bytes) for the monitoring time (${this.settings.monitorMs} ms)`,
      );
    }
  }

  /** Sends the oldest closed cycle, then commits it; one at a time. */
  private async pump(): Promise<void> {
    if (this.sending) return;
    const c = this.closed[0];
    if (c === undefined) return;
    this.sending = true;
    try {
      const byMember = new Map<BufferMember, Entry[]>();
      for (const e of c.entries) {
        const list = byMember.get(e.member);
        if (list === undefined) byMember.set(e.member, [e]);
        else list.push(e);
      }
      await Promise.all(
        [...byMember].map(async ([m, entries]) => {
          await Promise.all(entries.map((e) => (e.data === undefined ? m.link.writeZeroes(e.offset, e.length) : m.link.write(e.offset, e.data))));
          await m.link.flush(); // the stage is durable on the remote before the commit
        }),
      );
      const ids = [...byMember.keys()].map((m) => m.id);
      if (ids.length > 0) await this.commit(c.seq, ids);
      if (this.closed[0] !== c) return; // its pairs left meanwhile (they halted)
      this.closed.shift();
      for (const e of c.entries) this.free(e, c);
      c.entries = [];
      this.releaseSlabs(c);
      this.lastConsistentAt = c.closedAt;
      const drained = this.open.entries.length === 0 && this.closed.length === 0;
      for (const m of byMember.keys()) if (this.members.has(m.id)) m.cycleCommitted(c.closedAt, drained || this.pendingOf(m.id) === 0);
      this.wakeWaiters();
    } catch (err) {
      const e =
        err instanceof RemoteLinkError ? err : new RemoteLinkError(`sending cycle ${c.seq} to ${this.remote} failed: ${(err as Error).message}`, 'link-down');
      this.failAll(e);
      return; // nothing more is sent: the pairs halt and leave, and a resume starts anew
    } finally {
      this.sending = false;
    }
    if (this.closed.length > 0) void this.pump();
  }

  private free(e: Entry, c: Cycle): void {
    const size = this.dataBytes(e.data?.length ?? 0);
    c.bytes -= size;
    this.used -= size;
  }

  /** Zero writes take no data, but count a little so a flood of them is bounded too. */
  private dataBytes(n: number): number {
    return Math.max(n, 64);
  }

  private wakeWaiters(): void {
    while (this.waiters.length > 0 && this.used + this.waiters[0]!.bytes <= this.settings.bytes) {
      const w = this.waiters.shift()!;
      clearTimeout(w.timer);
      w.resolve();
    }
  }

  private overload(why: string): RemoteLinkError {
    const err = new RemoteLinkError(
      `REC buffer to remote ${this.remote} overloaded: ${why}; raise it with 'arraylab remote set ${this.remote} --buffer SIZE', slow the writers, or use a faster link`,
      'buffer-overload',
    );
    this.failAll(err);
    return err;
  }

  /**
   * Every pair halts; waiting writers learn why. The entries stay until each pair leaves
   * (remove(), in its halt), which records what they covered; the pump stops meanwhile.
   */
  private failAll(err: RemoteLinkError): void {
    this.failures++;
    this.lastFailure = err;
    const members = [...this.members.values()];
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    for (const m of members) m.bufferFailed(err);
  }
}
