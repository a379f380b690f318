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
 * into generation n before the write (J2). Older generations then read it through n.
 *
 * Snap space: a save that fails with ENOSPC puts that generation in 'error-suspended' (an
 * 'error' event says which volume is full and what to do); the write goes on, and the save
 * moves to the next older healthy generation. The failed generation's reads fail EIO. Its
 * saved units stay where they are, because older generations may read through them.
 *
 * Snap volumes are read-only for hosts: a write would change data older generations read.
 */
import { BlockDeviceError } from '../block/BlockDevice.js';
import { CopyBitmap } from './CopyBitmap.js';
import { CopyError, type Mutation } from './CopySession.js';
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

  attach(): void {
    this.dst.setDest(this);
  }
  detach(): void {
    this.dst.setDest(undefined);
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

  /** Records the failure (caller syncs). */
  fail(err: Error): void {
    const msg =
      `snap volume ${this.record.destination} of SnapOPC+ generation ${this.generation} (session ${this.id}) is full: ${err.message}; ` +
      `the generation is error-suspended and can no longer be read; cancel it and use a larger snap volume`;
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

export class SnapChain implements SourceRole {
  /** Oldest first. */
  readonly gens: SnapGeneration[] = [];
  readonly locks = new UnitLocks();

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
    g.chain = this;
    this.gens.push(g);
  }

  remove(g: SnapGeneration): void {
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

  sourceWrite(m: Mutation, next: Next): Promise<void> {
    const newest = this.gens[this.gens.length - 1];
    if (newest === undefined) return next();
    const geo = newest.geo;
    const [u0, u1] = geo.unitsOf(m.offset, m.length);
    if (u0 === u1) return next();
    if (newest.healthy && newest.saved.allSet(u0, u1)) return next(); // hot path: one test
    return this.saveThen(u0, u1, next);
  }

  private async saveThen(u0: number, u1: number, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      for (let u = u0; u < u1; u++) await this.save(u);
      await next();
    } finally {
      unlock();
    }
  }

  /** Saves unit u's before-image where the chain needs it (u locked). */
  private async save(u: number): Promise<void> {
    for (;;) {
      const n = this.newestHealthy();
      if (n < 0 || this.coveredFrom(n, u)) return;
      const g = this.gens[n]!;
      try {
        const buf = Buffer.allocUnsafe(g.geo.length(u));
        await this.src.below.read(g.geo.start(u), buf);
        await g.dst.below.write(g.geo.start(u), buf);
        await g.dst.below.flush(); // J1
      } catch (err) {
        if (!(err instanceof BlockDeviceError && err.code === 'ENOSPC')) throw err;
        g.fail(err);
        await this.ctx.journal.sync();
        continue; // the next older healthy generation takes the before-image
      }
      this.ctx.journal.setBits(g.id, 'saved', u, 1);
      await this.ctx.journal.sync(); // J2
      g.saved.set(u); // J6
      return;
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
