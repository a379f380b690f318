/**
 * SnapOPC+: copy-on-write generations of a source, each on its own thin snap volume that
 * stores only before-images (at the unit's own offset, so a thin store allocates only them).
 *
 * One SnapChain per source volume is the source role; each generation (a session, state
 * 'snap') is the destination role of its snap volume. Generations are ordered oldest first.
 *
 *   saved[g]   generation g's snap volume holds unit u's before-image (J1, durable first)
 *
 * Reading generation g at unit u: the first generation h >= g (g itself, then newer ones)
 * with saved[h][u] holds the data; if none does, the source still holds it.
 * Writing the source at unit u: if some generation h >= n (n = the newest healthy one) has
 * saved u, every generation already finds its data; otherwise u's current data is saved
 * into generation n, durably, before the source store receives the write (J2; the host may
 * be answered earlier: write-behind, below). Older generations then read it through n.
 *
 * Snap space: a save that fails with ENOSPC, or whose read or write an injected copy-error
 * fault fails (CopyFaultError), puts that generation in 'error-suspended' (an
 * 'error' event says which volume is full and what to do); the write goes on, and the save
 * moves to the next older healthy generation. The failed generation's reads fail EIO. Its
 * saved units stay where they are, because older generations may read through them.
 *
 * Snap volumes are read-only for hosts: a write would change data older generations read.
 *
 * Write-behind (an array's NVRAM write cache, in memory). A source write that needs a save
 * does not wait for the before-image to be durable: under the units' locks the old data is
 * read from the source and written (unflushed) into the generation's store, the unit joins
 * the open *round* (pending), and the host's write is *held*: its payload is copied, it is
 * queued in order, and the host is answered at once. One round commits at a time (group
 * commit): flush the stores written in it (J1), append and sync the saved bits (J2), set
 * them in memory (J6); only then are the round's held writes applied to the source below,
 * in queue order, through the same continuation (next) they would have used, so inner
 * source roles (EC mirror, OPC from the same source) see them in order. Saves that arrive
 * meanwhile join the next round. A round starts no sooner than ROUND_GATHER_MS after the
 * previous one unless something waits on it (a writer, a flush, a cut, a half-full bound), so
 * a stream of first writes pays the rounds' fixed flushes and journal commits boundedly often.
 *
 * Invariants (checked where cheap):
 *   W1 the source below receives a write over unit u only once u's before-image is durable
 *      in some generation >= the newest healthy one (or none needs it): a held write is
 *      applied only when its round (the newest round any of its units was pending in) has
 *      committed; pending[u] is cleared only when u's bit is durable (or no generation needs
 *      it, or the round failed: then its writes are dropped, never applied).
 *   W2 no reordering on a unit: while any held write touches unit u, every later write to u
 *      is held behind it (heldUnits[u] > 0); the queue is applied strictly in order.
 *   W3 while u is pending or has held writes, the source below still holds u's point-in-time
 *      data, so generation reads that fall through to the source stay exact; a held write is
 *      applied under the chain's unit lock, so such a read is never torn by it.
 *   W4 a held write keeps its in-flight token on the source's tap (pin) until applied: cuts
 *      (hold) wait for it, so an acknowledged write is in every later point-in-time copy.
 *   W5 host reads of the source overlay held writes (read your own writes), block status
 *      reports data where writes are held; a host flush
 *      waits until every write held before it is applied (settle), then flushes.
 *   W6 held payload is bounded (HELD_BYTES_MAX per source); past it, and for FUA writes, the
 *      write is queued the same way but the host waits until it is applied.
 *   W7 a generation's failure is durable before any write relies on it: a writer that finds
 *      no healthy generation needing its unit (so saves nothing), or saves into an older one
 *      instead, first syncs the journal (failures > synced); else a crash would recover the
 *      failed generation healthy, without the before-image, reading the new data through.
 * Errors: a store flush that fails in a round error-suspends that generation (as ENOSPC on
 * the save does) and the round re-saves its units into the next older healthy generation
 * (the source below still holds them, W3). A journal sync that fails fails the round: its
 * held writes are dropped (never applied: W1), writers still waiting get the error, and an
 * acknowledged one's error is reported by the next flush of the source (like a write-back
 * cache's deferred error). A held write whose application fails is reported the same way.
 */
import { BlockDeviceError } from '../block/BlockDevice.js';
import { CopyBitmap } from './CopyBitmap.js';
import { CopyError, CopyFaultError, invariant, type Mutation, type SessionInfo } from './CopySession.js';
import { OpcSession } from './opc.js';
import { SessionBase, type SessionContext } from './SessionBase.js';
import type { JournalSession } from './SessionJournal.js';
import { UnitLocks } from './UnitLocks.js';
import type { DestRole, Next, SourceRole, VolumeTap } from './VolumeTap.js';

export class SnapGeneration extends SessionBase implements DestRole {
  readonly saved: CopyBitmap;
  readonly hostReadOnly = true;
  chain!: SnapChain;

  constructor(ctx: SessionContext, j: JournalSession, blockSize: number) {
    super(ctx, j.record, blockSize);
    this.check(j.record.type === 'snapopcplus' && j.record.generation !== undefined, 'not a SnapOPC+ generation record');
    this.saved = CopyBitmap.fromRuns(this.geo.units, j.bitmaps.saved ?? []);
  }

  get sessionId(): string {
    return this.id;
  }
  get generation(): number {
    return this.record.generation!;
  }
  get healthy(): boolean {
    return this.state === 'snap';
  }

  /** Adds the place in the chain as the host agent numbers generations (1 = newest). */
  override info(): SessionInfo {
    const gens = this.chain?.gens ?? [];
    const i = gens.indexOf(this);
    return i < 0 ? super.info() : { ...super.info(), generationIndex: gens.length - i, generationCount: gens.length };
  }

  attach(): void {
    this.dst.setDest(this);
  }
  detach(): void {
    this.dst.setDest(undefined);
  }
  protected bitmaps(): CopyBitmap[] {
    return [this.saved];
  }

  copiedUnits(): number {
    return this.saved.count;
  }
  pendingUnits(): number {
    return 0;
  }
  async copyStep(): Promise<number> {
    return 0; // copy-on-write only: nothing to copy in the background
  }

  /** The engine's check of this generation's own I/O (a before-image save), for the chain. */
  checkFault(op: 'read' | 'write', volume: string, offset: number, length: number): void {
    this.faultCheck(op, volume, offset, length);
  }

  /** Records the failure (caller syncs). */
  fail(err: Error): void {
    const full = err instanceof BlockDeviceError && err.code === 'ENOSPC';
    const msg =
      `snap volume ${this.record.destination} of SnapOPC+ generation ${this.generation} (session ${this.id}) ${full ? 'is full' : 'failed'}: ${err.message}; ` +
      `the generation is error-suspended and can no longer be read; cancel it and use a ${full ? 'larger' : 'healthy'} snap volume`;
    this.setState('error-suspended', msg, { error: msg });
  }

  checkRead(op: string): void {
    if (!this.healthy) {
      throw new BlockDeviceError('EIO', `${op} refused: ${this.record.error ?? `SnapOPC+ session ${this.id} is ${this.state}`}`);
    }
  }

  destRead(offset: number, into: Buffer, _next: Next): Promise<void> {
    return this.chain.readGeneration(this, offset, into);
  }

  destWrite(_m: Mutation, _next: Next): Promise<void> {
    return Promise.reject(
      new BlockDeviceError(
        'EPERM',
        `write refused: volume ${this.record.destination} is the snap volume of SnapOPC+ session ${this.id} (generation ${this.generation} of ${this.record.source}); snap volumes are read-only: copy it with OPC to get a writable volume`,
      ),
    );
  }
}

/** Acknowledged but not yet applied payload bytes per source (write-behind bound, W6). */
export const HELD_BYTES_MAX = 32 * 1024 * 1024;
/** What a held write-zeroes counts against the bound (it has no payload). */
const HELD_ZERO_COST = 4096;
/** Held writes applied to the source at once (non-overlapping ones; a libuv threadpool's worth). */
const APPLY_CONCURRENCY = 16;
/** Before-image buffers, reused (a fresh 64 KiB Buffer per save is GC churn on the hot path). */
const saveBuffers: Buffer[] = [];
/**
 * Copies of acknowledged payloads, reused by length (a 4 KiB Buffer.from gets its own
 * ArrayBuffer: per-write garbage). Only payloads up to HELD_POOL_MAX bytes, and at most
 * HELD_POOL_BYTES kept free in all (the process's chains share it).
 */
const heldBuffers = new Map<number, Buffer[]>();
const HELD_POOL_MAX = 64 * 1024;
const HELD_POOL_BYTES = 8 * 1024 * 1024;
let heldPoolBytes = 0;
/**
 * Least time between the starts of two rounds while nobody waits on one (ms). Each round has
 * fixed costs beside its before-images: the stores' map flushes and the journal's commit, an
 * fsync on the event loop that stalls every connection. Under a stream of first writes the
 * rounds ran back to back, up to ~100 a second of a few units each; held (acknowledged) writes
 * do not mind waiting a little longer. A writer that waits (FUA, bound, EC), a flush (settle)
 * or a half-full bound starts the round at once.
 */
const ROUND_GATHER_MS = 20;

/** A held source write (see the file comment). */
interface Held {
  m: Mutation;
  next: Next;
  u0: number;
  u1: number;
  /** It is applied once this round has committed (<= committed: ready now, in queue order). */
  round: number;
  seq: number;
  /** Payload bytes held for an acknowledged write; 0 when its writer waits (done is set before it can be applied). */
  bytes: number;
  applied: boolean;
  failure: unknown;
  done: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  /** m.data came from heldBuffers: it goes back there once retired (if no read may still copy from it). */
  pooled: boolean;
}

/** Before-images written (unflushed) into generation stores, committed together. */
interface Round {
  id: number;
  units: number[];
  /** gens[i] holds units[i]'s before-image. */
  gens: SnapGeneration[];
}

export class SnapChain implements SourceRole {
  /** For tests: how often write-behind paths ran (all chains of the process). */
  static readonly stats = { held: 0, waited: 0, rounds: 0, failedRounds: 0, committing: 0, queued: 0 };

  /** Oldest first. */
  readonly gens: SnapGeneration[] = [];
  readonly locks = new UnitLocks();

  /** unit -> round whose commit makes its before-image durable (written, not yet durable). */
  private readonly pending = new Map<number, number>();
  private open: Round = { id: 1, units: [], gens: [] };
  /** Every round with id <= committed has committed (or failed). */
  private committed = 0;
  private committing = false;
  /** Held writes in order; queue[head..] are not yet applied. */
  private queue: Array<Held | undefined> = [];
  private head = 0;
  /** unit -> number of held writes touching it (W2). */
  private readonly heldUnits = new Map<number, number>();
  private heldBytes = 0;
  private seq = 0;
  /** Every held write with seq <= appliedSeq has been applied (or dropped). */
  private appliedSeq = 0;
  /** queue[head..dispatched) are being applied (or applied, waiting to retire in order). */
  private dispatched = 0;
  private applyingCount = 0;
  /** Units with a held write being applied: a later one on them waits (W2). */
  private readonly applyingUnits = new Set<number>();
  private settleWaiters: Array<{ seq: number; resolve: () => void; reject: (err: unknown) => void }> = [];
  /** A held (acknowledged) write that failed: reported by the next flush. */
  private deferred: unknown;
  /** Rounds that failed to commit: their held writes are dropped. */
  private readonly roundErrors = new Map<number, unknown>();
  /** Generation failures so far, and how many of them a finished sync made durable (W7). */
  private failures = 0;
  private syncedFailures = 0;
  /** Queued writes whose writer waits for them (not acknowledged): rounds start at once. */
  private waiting = 0;
  /** readOver calls between taking held writes and copying from them: payloads are not reused meanwhile. */
  private reading = 0;
  /** When the last round started (performance.now()), and how to end a round's gathering early. */
  private lastRound = 0;
  private wake: (() => void) | undefined;

  constructor(
    /** Renamed with the volume (CopyEngine.renameVolume). */
    public source: string,
    private readonly ctx: SessionContext,
  ) {}

  get sessionId(): string {
    return `snapchain:${this.source}`;
  }
  get src(): VolumeTap {
    return this.ctx.tap(this.source);
  }

  add(g: SnapGeneration): void {
    const last = this.gens[this.gens.length - 1];
    if (last !== undefined) {
      if (g.generation <= last.generation) throw new Error(`copy engine invariant: generation ${g.generation} after ${last.generation}`);
      if (g.geo.unitSize !== last.geo.unitSize || g.geo.units !== last.geo.units) {
        throw new CopyError('INVALID_ARGUMENT', `SnapOPC+ generations of ${this.source} must share one copy granularity (${last.geo.unitSize} bytes)`);
      }
    }
    invariant(this.head === this.queue.length, `SnapOPC+ generation added to ${this.source} with held writes (not under a hold?)`);
    g.chain = this;
    this.gens.push(g);
  }

  remove(g: SnapGeneration): void {
    invariant(this.head === this.queue.length, `SnapOPC+ generation removed from ${this.source} with held writes (not under a hold?)`);
    const i = this.gens.indexOf(g);
    if (i >= 0) this.gens.splice(i, 1);
  }

  /** Index of the newest healthy generation, or -1. */
  private newestHealthy(): number {
    for (let i = this.gens.length - 1; i >= 0; i--) if (this.gens[i]!.healthy) return i;
    return -1;
  }

  /** Some generation at index >= i has saved u. */
  private coveredFrom(i: number, u: number): boolean {
    for (let h = this.gens.length - 1; h >= i; h--) if (this.gens[h]!.saved.test(u)) return true;
    return false;
  }

  /** Some held write touches a unit of [u0, u1). */
  private heldIn(u0: number, u1: number): boolean {
    if (this.head === this.queue.length) return false;
    for (let u = u0; u < u1; u++) if (this.heldUnits.has(u)) return true;
    return false;
  }

  /** Locks [u0, u1) in ascending order (as every locker); undefined when taken at once: no promise, no closure. */
  private lockUnits(u0: number, u1: number): Promise<void> | undefined {
    for (let u = u0; u < u1; u++) {
      const p = this.locks.lock(u);
      if (p !== undefined) return this.lockRest(p, u + 1, u1);
    }
    return undefined;
  }

  private async lockRest(first: Promise<void>, u: number, u1: number): Promise<void> {
    await first;
    for (; u < u1; u++) {
      const p = this.locks.lock(u);
      if (p !== undefined) await p;
    }
  }

  private unlockUnits(u0: number, u1: number): void {
    for (let u = u0; u < u1; u++) this.locks.unlock(u);
  }

  // ---- writes ----

  sourceWrite(m: Mutation, next: Next): Promise<void> {
    const newest = this.gens[this.gens.length - 1];
    if (newest === undefined) return next();
    const [u0, u1] = newest.geo.unitsOf(m.offset, m.length);
    if (u0 === u1) return next();
    // Hot path: saved in the newest generation and behind no held write (W2): one test, one lookup.
    if (newest.healthy && newest.saved.allSet(u0, u1) && !this.heldIn(u0, u1)) return next();
    return this.slowWrite(m, u0, u1, next);
  }

  private async slowWrite(m: Mutation, u0: number, u1: number, next: Next): Promise<void> {
    let round = 0;
    let e: Held | undefined;
    const locking = this.lockUnits(u0, u1);
    if (locking !== undefined) await locking;
    try {
      for (let u = u0; u < u1; u++) {
        const p = this.pending.get(u);
        if (p !== undefined) {
          if (p > round) round = p;
          continue;
        }
        const g = await this.save(u);
        if (g === undefined) continue;
        // The before-image is in g's store (not yet durable): the open round commits it.
        this.open.units.push(u);
        this.open.gens.push(g);
        this.pending.set(u, this.open.id);
        round = this.open.id;
      }
      if (round > this.committed || this.heldIn(u0, u1)) e = this.enqueue(m, u0, u1, round, next);
    } finally {
      this.unlockUnits(u0, u1);
    }
    if (e === undefined) return next(); // every unit durably saved, nothing held before it
    if (e.bytes > 0) {
      this.kick();
      return; // acknowledged now; applied after its round (write-behind)
    }
    const held = e;
    const applied = new Promise<void>((resolve, reject) => (held.done = { resolve, reject }));
    this.waiting++;
    this.hurry();
    this.kick();
    await applied; // FUA or over the bound: the writer waits until it is applied
  }

  /** Queues a write behind its round and the held writes before it (units locked). */
  private enqueue(m: Mutation, u0: number, u1: number, round: number, next: Next): Held {
    const cost = m.kind === 'write' ? m.length : HELD_ZERO_COST;
    // FUA must be durable when answered; a fast zero must be able to answer ENOTSUP itself.
    const ack =
      m.opts?.fua !== true && !(m.kind === 'zero' && m.opts?.fastZero === true) && this.heldBytes + cost <= HELD_BYTES_MAX && this.writeBehindAllowed();
    // The caller owns its buffer again once we resolve: hold a copy. `next` closes over this
    // same Mutation object, so replacing its data makes every inner role apply the copy.
    let pooled = false;
    if (ack && m.kind === 'write') {
      const len = m.data.length;
      const copy = len <= HELD_POOL_MAX ? heldBuffers.get(len)?.pop() : undefined;
      if (copy !== undefined) {
        heldPoolBytes -= len;
        m.data.copy(copy);
        m.data = copy;
      } else m.data = Buffer.from(m.data);
      pooled = len <= HELD_POOL_MAX;
    }
    const e: Held = { m, next, u0, u1, round, seq: ++this.seq, bytes: ack ? cost : 0, applied: false, failure: undefined, done: undefined, pooled };
    this.queue.push(e);
    for (let u = u0; u < u1; u++) this.heldUnits.set(u, (this.heldUnits.get(u) ?? 0) + 1);
    this.heldBytes += e.bytes;
    if (this.heldBytes * 2 > HELD_BYTES_MAX) this.hurry();
    this.src.pin(); // W4
    SnapChain.stats.queued++;
    if (ack) SnapChain.stats.held++;
    else SnapChain.stats.waited++;
    return e;
  }

  /**
   * Write-behind only while every other source role of the volume is an OPC/QuickOPC session:
   * what they do with a write (copy-on-write, tracking) is invisible to hosts until it is
   * applied. An EC mirror would make an acknowledged write visible on its destination only
   * once applied, so with one attached writers wait (still through the queue, in order).
   */
  private writeBehindAllowed(): boolean {
    for (const role of this.src.sources) if (role !== this && !(role instanceof OpcSession)) return false;
    return true;
  }

  /**
   * Saves unit u's before-image where the chain needs it (u locked, or pending in a round
   * being committed): reads it from the source below and writes it into the newest healthy
   * generation's store, unflushed. Returns that generation, or undefined if none needs it.
   */
  private async save(u: number): Promise<SnapGeneration | undefined> {
    for (;;) {
      // W7; checked again after each wait (a failure beside us), and no await between the last
      // check and reading the generations' health.
      while (this.syncedFailures < this.failures) await this.failuresDurable();
      const n = this.newestHealthy();
      if (n < 0 || this.coveredFrom(n, u)) return undefined;
      const g = this.gens[n]!;
      const len = g.geo.length(u);
      const pooled = saveBuffers.pop();
      const buf = pooled !== undefined && pooled.length >= len ? (pooled.length === len ? pooled : pooled.subarray(0, len)) : Buffer.allocUnsafeSlow(len);
      try {
        g.checkFault('read', this.source, g.geo.start(u), len);
        await this.src.below.read(g.geo.start(u), buf);
        g.checkFault('write', g.record.destination, g.geo.start(u), len);
        await g.dst.below.write(g.geo.start(u), buf);
        return g;
      } catch (err) {
        if (!((err instanceof BlockDeviceError && err.code === 'ENOSPC') || err instanceof CopyFaultError)) throw err;
        if (g.healthy) this.failGeneration(g, err);
        await this.failuresDurable();
        // the next older healthy generation takes the before-image
      } finally {
        if (saveBuffers.length < 64) saveBuffers.push(pooled !== undefined && pooled.length >= len ? pooled : buf);
      }
    }
  }

  /** Error-suspends a generation (journalled by the next sync; W7). */
  private failGeneration(g: SnapGeneration, err: Error): void {
    g.fail(err);
    this.failures++;
  }

  /** W7: every generation failure so far is durable (a sync that began after it finished). */
  private async failuresDurable(): Promise<void> {
    const upTo = this.failures;
    if (this.syncedFailures >= upTo) return;
    await this.ctx.journal.sync(); // a failed sync throws to the writer, and the next one retries
    if (this.syncedFailures < upTo) this.syncedFailures = upTo;
  }

  // ---- rounds (group commit) ----

  private kick(): void {
    if (!this.committing && this.roundWanted()) void this.runRounds();
    this.pumpApply();
  }

  private roundWanted(): boolean {
    if (this.open.units.length > 0) return true;
    const e = this.queue[this.head];
    return e !== undefined && e.round > this.committed;
  }

  /** One round in flight at a time; saves that arrive meanwhile join the next one. */
  private async runRounds(): Promise<void> {
    this.committing = true;
    SnapChain.stats.committing++;
    try {
      while (this.roundWanted()) {
        await this.gather();
        const r = this.open;
        this.open = { id: r.id + 1, units: [], gens: [] };
        try {
          await this.commitRound(r);
        } catch (err) {
          this.failRound(r, err);
        }
        invariant(r.id === this.committed + 1, 'SnapOPC+ rounds commit in order');
        this.committed = r.id;
        this.pumpApply();
      }
    } finally {
      this.committing = false;
      SnapChain.stats.committing--;
    }
  }

  /** Lets saves gather into the open round until ROUND_GATHER_MS after the last round began, unless someone waits. */
  private async gather(): Promise<void> {
    const wait = this.lastRound + ROUND_GATHER_MS - performance.now();
    if (wait >= 1 && !this.urgent()) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        timer = setTimeout(resolve, wait);
      });
      clearTimeout(timer);
      this.wake = undefined;
    }
    this.lastRound = performance.now();
  }

  private urgent(): boolean {
    return this.waiting > 0 || this.settleWaiters.length > 0 || this.heldBytes * 2 > HELD_BYTES_MAX || this.src.held;
  }

  /** Someone waits on the next round: end its gathering. */
  private hurry(): void {
    const w = this.wake;
    if (w === undefined) return;
    this.wake = undefined;
    w();
  }

  private async commitRound(r: Round): Promise<void> {
    let units = r.units;
    let gens = r.gens;
    while (units.length > 0) {
      SnapChain.stats.rounds++;
      // J1: the stores are flushed before the bits saying they hold the before-images.
      const stores = gens.every((g) => g === gens[0]) ? [gens[0]!] : [...new Set(gens)];
      await Promise.all(
        stores.map(async (g) => {
          if (!g.healthy) return;
          try {
            await g.dst.below.flush();
          } catch (err) {
            if (g.healthy) this.failGeneration(g, err as Error); // synced with the bits below too
          }
        }),
      );
      const ok: boolean[] = [];
      for (let i = 0; i < units.length; i++) {
        ok.push(gens[i]!.healthy);
        if (ok[i]) this.ctx.journal.setBits(gens[i]!.id, 'saved', units[i]!, 1);
      }
      await this.ctx.journal.sync(); // J2: durable before any held write over them is applied
      const redo: number[] = [];
      for (let i = 0; i < units.length; i++) {
        const u = units[i]!;
        if (!ok[i]) {
          redo.push(u);
          continue;
        }
        gens[i]!.saved.set(u); // J6
        invariant(this.pending.get(u) === r.id, `SnapOPC+ unit ${u} pending in round ${this.pending.get(u)}, committed in ${r.id}`);
        this.pending.delete(u);
      }
      // A generation failed: its units' before-images go to the next older healthy one. The
      // source below still holds them (W3): nothing over them is applied before this round.
      units = [];
      gens = [];
      for (const u of redo) {
        const g = await this.save(u);
        if (g === undefined) {
          this.pending.delete(u);
        } else {
          units.push(u);
          gens.push(g);
        }
      }
    }
  }

  /** The round could not commit: its held writes are dropped, never applied (W1). */
  private failRound(r: Round, err: unknown): void {
    SnapChain.stats.failedRounds++;
    this.roundErrors.set(r.id, err);
    for (const [u, id] of this.pending) if (id === r.id) this.pending.delete(u);
  }

  // ---- applying held writes ----

  /**
   * Starts applying ready held writes, in queue order, up to APPLY_CONCURRENCY at a time;
   * dispatch stops at the first one that touches a unit still being applied (W2).
   */
  private pumpApply(): void {
    while (this.applyingCount < APPLY_CONCURRENCY) {
      const e = this.queue[this.dispatched];
      if (e === undefined || e.round > this.committed) return;
      for (let u = e.u0; u < e.u1; u++) if (this.applyingUnits.has(u)) return;
      for (let u = e.u0; u < e.u1; u++) this.applyingUnits.add(u);
      this.dispatched++;
      this.applyingCount++;
      void this.applyOne(e);
    }
  }

  private async applyOne(e: Held): Promise<void> {
    let failure: unknown = this.roundErrors.size > 0 ? this.roundErrors.get(e.round) : undefined;
    if (failure === undefined) {
      try {
        const locking = this.lockUnits(e.u0, e.u1); // W3
        if (locking !== undefined) await locking;
        try {
          await e.next();
        } finally {
          this.unlockUnits(e.u0, e.u1);
        }
      } catch (err) {
        failure = err ?? new Error('held write failed');
      }
    }
    for (let u = e.u0; u < e.u1; u++) this.applyingUnits.delete(u);
    this.applyingCount--;
    e.applied = true;
    e.failure = failure;
    // Retired in queue order, so appliedSeq means "everything up to it" (settle).
    for (let h = this.queue[this.head]; h?.applied; h = this.queue[this.head]) this.retire(h, h.failure);
    this.pumpApply();
  }

  private retire(e: Held, failure: unknown): void {
    invariant(this.queue[this.head] === e, 'SnapOPC+ held writes are applied in order');
    invariant(this.head < this.dispatched, 'SnapOPC+ held write retired before it was applied');
    this.queue[this.head++] = undefined;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
      this.dispatched = 0;
      this.roundErrors.clear();
    } else if (this.head >= 1024 && this.head * 2 >= this.queue.length) {
      this.queue.splice(0, this.head);
      this.dispatched -= this.head;
      this.head = 0;
    }
    for (let u = e.u0; u < e.u1; u++) {
      const c = this.heldUnits.get(u)!;
      if (c <= 1) this.heldUnits.delete(u);
      else this.heldUnits.set(u, c - 1);
    }
    this.heldBytes -= e.bytes;
    this.appliedSeq = e.seq;
    if (e.pooled && this.reading === 0 && e.m.kind === 'write') {
      // Applied below (the store copied it) or dropped, and in no read's overlay: reuse the copy.
      const len = e.m.data.length;
      let free = heldBuffers.get(len);
      if (free === undefined) heldBuffers.set(len, (free = []));
      if (heldPoolBytes + len <= HELD_POOL_BYTES) {
        free.push(e.m.data);
        heldPoolBytes += len;
      }
    }
    if (e.done !== undefined) {
      this.waiting--;
      if (failure === undefined) e.done.resolve();
      else e.done.reject(failure);
    } else if (failure !== undefined) this.deferred ??= failure;
    const w = this.settleWaiters;
    if (w.length > 0 && w[0]!.seq <= this.appliedSeq) {
      let k = 0;
      while (k < w.length && w[k]!.seq <= this.appliedSeq) k++;
      const ready = w.splice(0, k);
      const d = this.deferred;
      this.deferred = undefined;
      for (const s of ready) d === undefined ? s.resolve() : s.reject(d);
    }
    SnapChain.stats.queued--;
    this.src.unpin(); // W4
  }

  /** Resolves when every write held before the call is applied; rejects once with a deferred error. */
  settle(): Promise<void> {
    if (this.appliedSeq >= this.seq) {
      const d = this.deferred;
      this.deferred = undefined;
      return d === undefined ? Promise.resolve() : Promise.reject(d);
    }
    const p = new Promise<void>((resolve, reject) => this.settleWaiters.push({ seq: this.seq, resolve, reject }));
    this.hurry();
    return p;
  }

  // ---- reads ----

  /** Block status of the source reports data where writes are held (W5). */
  holdsWrites(offset: number, length: number): boolean {
    if (this.head === this.queue.length) return false;
    const newest = this.gens[this.gens.length - 1];
    if (newest === undefined) return false;
    const [u0, u1] = newest.geo.unitsOf(offset, length);
    return this.heldIn(u0, u1);
  }

  /** Host reads of the source see held writes (W5). */
  sourceRead(offset: number, into: Buffer, next: Next): Promise<void> {
    if (this.head === this.queue.length) return next();
    const newest = this.gens[this.gens.length - 1];
    if (newest === undefined) return next();
    const [u0, u1] = newest.geo.unitsOf(offset, into.length);
    if (!this.heldIn(u0, u1)) return next();
    return this.readOver(offset, into, next);
  }

  private async readOver(offset: number, into: Buffer, next: Next): Promise<void> {
    const end = offset + into.length;
    // Taken before the read: one applied during it reads the same either way.
    const over: Held[] = [];
    for (let i = this.head; i < this.queue.length; i++) {
      const e = this.queue[i]!;
      if (e.m.offset < end && e.m.offset + e.m.length > offset) over.push(e);
    }
    this.reading++;
    try {
      await next();
    } finally {
      this.reading--;
    }
    for (const { m } of over) {
      const a = Math.max(offset, m.offset);
      const b = Math.min(end, m.offset + m.length);
      if (m.kind === 'write') m.data.copy(into, a - offset, a - m.offset, b - m.offset);
      else into.fill(0, a - offset, b - offset);
    }
  }

  /** Generation g's image at [offset, offset + into.length). */
  async readGeneration(g: SnapGeneration, offset: number, into: Buffer): Promise<void> {
    g.checkRead('read');
    const geo = g.geo;
    const [u0, u1] = geo.unitsOf(offset, into.length);
    const end = offset + into.length;
    if (end > geo.sizeBytes) {
      // Past the source's size the snap volume is plain (never saved into).
      const a = Math.max(offset, geo.sizeBytes);
      await g.dst.below.read(a, into.subarray(a - offset));
    }
    if (u0 === u1) return;
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      const i = this.gens.indexOf(g);
      for (let u = u0; u < u1; u++) {
        const a = Math.max(offset, geo.start(u));
        const b = Math.min(end, geo.start(u) + geo.length(u));
        let from: VolumeTap = this.src;
        for (let h = i; h < this.gens.length; h++) {
          if (this.gens[h]!.saved.test(u)) {
            from = this.gens[h]!.dst;
            break;
          }
        }
        await from.below.read(a, into.subarray(a - offset, b - offset));
      }
    } finally {
      unlock();
    }
  }
}
