/**
 * OPC and QuickOPC: a point-in-time copy of a source onto a destination.
 *
 * Bitmaps (per unit)
 *   copied   the destination holds the unit's point-in-time data (J1: durable first)
 *   tracked  QuickOPC only: the unit changed on either side since the start instant (J3)
 *
 * Reads of the destination: units not yet copied come from the source (which still holds
 * their point-in-time data: any write to them first copies them over). Writes:
 *   source write to an uncopied unit: copy-on-write, then the write (J2).
 *   destination write to an uncopied unit: the unit is first brought over from the source
 *   (so a partial-unit write lands on point-in-time data), then the write.
 * The hot path, a write to a copied unit, is one bitmap test (two for QuickOPC).
 *
 * OPC ends when every unit is copied. QuickOPC then goes to 'tracking': it keeps recording
 * changed units, and a restart (start again on the same pair) takes a new instant, marks
 * only the tracked units uncopied, and copies those: changes on the destination roll back.
 *
 * Error-suspended (an injected fault on the session's own I/O: background copy or a
 * copy-on-write). The point-in-time image can no longer be completed, so the session stops
 * copying for good and only cancel ends it:
 *   E1 no unit is copied or tracked any more; source writes go straight through (the
 *      image's uncopied units are lost anyway), so a host never fails because of the copy,
 *      but only once the error-suspended state is durable (J6): a crash before it would
 *      recover a copying session whose uncopied units the write already overwrote;
 *   E2 destination reads and writes of copied units work; of uncopied units they fail EIO
 *      with the reason (their point-in-time data is gone);
 *   E3 the state and reason are journalled: a restart keeps it error-suspended.
 */
import { BlockDeviceError } from '../block/BlockDevice.js';
import { CopyBitmap } from './CopyBitmap.js';
import { CopyFaultError, type CopyState, type Mutation } from './CopySession.js';
import { overlayUnits, SessionBase, type SessionContext } from './SessionBase.js';
import type { JournalSession } from './SessionJournal.js';
import type { DestRole, Next, SourceRole } from './VolumeTap.js';

export class OpcSession extends SessionBase implements SourceRole, DestRole {
  readonly copied: CopyBitmap;
  readonly tracked: CopyBitmap | undefined;
  readonly hostReadOnly = false;
  private cursor = 0;

  constructor(ctx: SessionContext, j: JournalSession, blockSize: number) {
    super(ctx, j.record, blockSize);
    this.copied = CopyBitmap.fromRuns(this.geo.units, j.bitmaps.copied ?? []);
    this.tracked = j.record.type === 'quickopc' ? CopyBitmap.fromRuns(this.geo.units, j.bitmaps.tracked ?? []) : undefined;
    this.check(j.record.type === 'opc' || j.record.type === 'quickopc', `not an OPC record: ${j.record.type}`);
    this.check(
      j.record.state === 'copying' || j.record.state === 'error-suspended' || (j.record.state === 'tracking' && this.copied.full),
      `bad OPC state ${j.record.state}`,
    );
  }

  get sessionId(): string {
    return this.id;
  }

  attach(): void {
    this.src.addSource(this);
    this.dst.setDest(this);
  }

  detach(): void {
    this.src.removeSource(this);
    this.dst.setDest(undefined);
  }

  protected bitmaps(): CopyBitmap[] {
    return this.tracked ? [this.copied, this.tracked] : [this.copied];
  }

  copiedUnits(): number {
    return this.copied.count;
  }

  pendingUnits(): number {
    return this.state === 'copying' ? this.geo.units - this.copied.count : 0;
  }

  /**
   * QuickOPC restart, at a cut (the engine holds both volumes and has flushed the source):
   * every tracked unit is copied again, the rest are already equal.
   */
  restart(): void {
    this.check(this.tracked !== undefined && this.state === 'tracking', 'restart of a session that is not tracking');
    const j = this.ctx.journal;
    const redo = this.tracked.runs();
    for (const [s, n] of redo) {
      this.copied.clear(s, n);
      j.clearBits(this.id, 'copied', s, n);
    }
    this.tracked.reset();
    j.clearBits(this.id, 'tracked', 0, this.geo.units);
    this.cursor = 0;
    this.setState('copying', `restarted: ${redo.reduce((a, [, n]) => a + n, 0)} changed units to copy`, { imageAt: new Date(this.ctx.now()).toISOString() });
  }

  /**
   * QuickOPC reverse (restore): swaps the direction; the engine detaches the roles before,
   * attaches them after, flushes the new source and then restarts, so only the tracked units
   * are copied back, as a new instant.
   */
  swap(): void {
    this.check(this.tracked !== undefined && this.state === 'tracking', 'reverse of a session that is not tracking');
    const r = this.record;
    this.record = { ...r, source: r.destination, destination: r.source, reversed: !r.reversed };
    this.ctx.journal.putSession(this.record);
    this.ctx.emit({ sessionId: this.id, kind: 'state', state: this.state, message: `reversed: ${this.record.source} -> ${this.record.destination}` });
  }

  // ---- roles ----

  sourceWrite(m: Mutation, next: Next): Promise<void> {
    const [u0, u1] = this.geo.unitsOf(m.offset, m.length);
    if (u0 === u1) return next();
    if (this.copied.allSet(u0, u1) && (this.tracked === undefined || this.tracked.allSet(u0, u1))) return next();
    return this.prepareThen(u0, u1, next, 'source');
  }

  checkRead(): void {}

  protected override errorFix(): string {
    return 'its destination can no longer be completed (reads of uncopied parts fail); cancel the session and start the copy again';
  }

  /** E2: the reason, as hosts get it for uncopied units of an error-suspended session. */
  private lost(op: string): BlockDeviceError {
    return new BlockDeviceError('EIO', `${op} refused: ${this.record.error ?? `${this.type} session ${this.id} is ${this.state}`}`);
  }

  async destRead(offset: number, into: Buffer, next: Next): Promise<void> {
    const [u0, u1] = this.geo.unitsOf(offset, into.length);
    if (this.state === 'error-suspended' && !this.copied.allSet(u0, u1)) throw this.lost('read'); // E2
    if (this.state !== 'copying' || this.copied.allSet(u0, u1)) return next();
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      // Error-suspended while we waited: source writes no longer keep uncopied units (E1).
      if ((this.state as CopyState) === 'error-suspended' && !this.copied.allSet(u0, u1)) throw this.lost('read');
      await next();
      await overlayUnits(this.src.below, this.geo, this.clearIn(this.copied, u0, u1), offset, into);
    } finally {
      unlock();
    }
  }

  destWrite(m: Mutation, next: Next): Promise<void> {
    const [u0, u1] = this.geo.unitsOf(m.offset, m.length);
    if (u0 === u1) return next();
    if (this.copied.allSet(u0, u1) && (this.tracked === undefined || this.tracked.allSet(u0, u1))) return next();
    return this.prepareThen(u0, u1, next, 'destination');
  }

  /** Under the units' locks: copy what is uncopied, track what is untracked (durably), then write. */
  private async prepareThen(u0: number, u1: number, next: Next, side: 'source' | 'destination'): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      if (this.state === 'error-suspended') return await this.writeSuspended(u0, u1, next, side);
      const toCopy = this.state === 'copying' ? this.clearIn(this.copied, u0, u1) : [];
      if (toCopy.length > 0) {
        try {
          await this.copyUnits(this.src.below, this.dst.below, toCopy);
        } catch (err) {
          if (!(err instanceof CopyFaultError)) throw err;
          // Another write or the copier may have error-suspended it during the copy.
          if ((this.state as CopyState) !== 'error-suspended') {
            this.errorSuspend(err, `the copy-on-write of a ${side} write`);
            await this.ctx.journal.sync();
          }
          return await this.writeSuspended(u0, u1, next, side);
        }
        await this.dst.below.flush(); // J1
      }
      const toTrack = this.tracked ? this.clearIn(this.tracked, u0, u1) : [];
      await this.persistSet([
        ['copied', this.copied, toCopy],
        ['tracked', this.tracked!, toTrack],
      ]); // J2, J3
      this.check(this.state !== 'copying' || this.copied.allSet(u0, u1), 'writing over uncopied units');
      await next();
    } finally {
      unlock();
    }
  }

  /** A host write while error-suspended (units locked): E1 for the source, E2 for the destination. */
  private async writeSuspended(u0: number, u1: number, next: Next, side: 'source' | 'destination'): Promise<void> {
    if (side === 'destination') {
      if (!this.copied.allSet(u0, u1)) throw this.lost('write');
      return next();
    }
    // E1: the state is in memory at once, durable with the next sync; this write relies on it.
    if (!this.copied.allSet(u0, u1)) await this.ctx.journal.sync();
    return next();
  }

  // ---- background copy ----

  async copyStep(maxUnits: number): Promise<number> {
    if (this.state !== 'copying' || this.done) return 0;
    const units = await this.lockBatch(
      (from) => this.copied.nextClear(from),
      (u) => !this.copied.test(u),
      this.cursor,
      maxUnits,
    );
    try {
      if (units.length > 0) {
        // A copy-on-write beside this step may have error-suspended the session (E1).
        if (this.state !== 'copying') return 0;
        const progress = { end: 0 };
        try {
          await this.copyUnits(this.src.below, this.dst.below, units, progress);
        } catch (err) {
          if (!(err instanceof CopyFaultError)) throw err;
          // What the step copied before the failure is kept, as an array's copy bitmap keeps it.
          // If that fails they stay uncopied, which is always safe; the failure below is the news.
          await this.keepCopied(this.copiedBefore(units, progress.end)).catch(() => undefined);
          if (this.state === 'copying') {
            this.errorSuspend(err, 'the background copy');
            await this.ctx.journal.sync();
          }
          return 0; // error-suspended (by this failure or one beside it): nothing more to copy
        }
        await this.keepCopied(units);
        this.cursor = units[units.length - 1]! + 1;
      }
    } finally {
      this.unlockAll(units);
    }
    if (this.copied.full && this.state === 'copying') await this.copyDone();
    return units.length;
  }

  /** Copied units (locked) become copied: J1, the destination durable before their bits. */
  private async keepCopied(units: number[]): Promise<void> {
    if (units.length === 0) return;
    await this.dst.below.flush();
    await this.persistSet([['copied', this.copied, units]]);
    this.noteCopied(units.length);
  }

  private async copyDone(): Promise<void> {
    if (this.tracked === undefined) {
      this.done = true; // the engine detaches the roles and deletes the record
      return;
    }
    this.setState('tracking', 'physical copy finished; tracking changes for the next restart');
    await this.ctx.journal.sync();
  }
}
