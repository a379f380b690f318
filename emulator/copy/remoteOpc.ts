/**
 * ROPC (remote OPC): a point-in-time copy of a volume onto a volume of another array. The
 * remote gets the image of the start instant; the session ends by itself once every unit is
 * there (the remote end closes, and the remote volume is a plain volume again).
 *
 * It is a REC pair in everything but its data flow (RecSession: the link, halt on link loss,
 * automatic resume, cancel, both arrays listing it), so it extends it:
 *   diff     units not yet on the remote (all of them at the start).
 *   copy-on-write
 *            a host write to a unit not yet copied first sends the unit's old data to the
 *            remote (and flushes it there) under the unit's lock, then lands.
 *   halt     the link failed: the copier waits; resume continues where it stopped. A host
 *            write to a unit not yet copied while halted would destroy the image: the write
 *            goes on, and the session goes error-suspended (the image is incomplete; cancel
 *            it and start again).
 * There is no suspend, split, reverse or mode: a point-in-time copy has nothing to freeze.
 */
import { CopyError, CopyFaultError, RemoteLinkError, type Mutation, type RecMode } from './CopySession.js';
import { RecSession } from './remoteEquivalentCopy.js';
import type { SessionContext } from './SessionBase.js';
import type { JournalSession } from './SessionJournal.js';
import type { Next } from './VolumeTap.js';

export class RopcSession extends RecSession {
  constructor(ctx: SessionContext, j: JournalSession, blockSize: number) {
    super(ctx, j, blockSize);
  }

  override get mirroring(): boolean {
    return false;
  }

  override get idleWhenDrained(): boolean {
    return false;
  }

  override recover(): void {
    super.recover(); // a restart is a link loss: halt, resumed by itself
  }

  override sourceWrite(m: Mutation, next: Next): Promise<void> {
    const [u0, u1] = this.geo.unitsOf(m.offset, m.length);
    if (u0 === u1 || this.state === 'error-suspended' || !this.diff.anySet(u0, u1)) return next();
    return this.copyBeforeWrite(u0, u1, next);
  }

  /** Copy-on-write: the old data of uncopied units goes to the remote before the write lands. */
  private async copyBeforeWrite(u0: number, u1: number, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      const units: number[] = [];
      for (let u = this.diff.nextSet(u0, u1); u < u1; u = this.diff.nextSet(u + 1, u1)) units.push(u);
      if (units.length > 0 && this.state === 'copying') {
        try {
          await this.sendLocked(units);
        } catch (err) {
          if (err instanceof RemoteLinkError) await this.halt(err);
          else if (err instanceof CopyFaultError) await this.lose(err.message);
          else throw err;
        }
      }
      if (this.state === 'halt' && this.diff.anySet(u0, u1)) {
        await this.lose(`a host write to ${this.record.source} at unit ${u0} came while the link was down and the unit was not on the remote yet`);
      }
      await next();
    } finally {
      unlock();
    }
  }

  /** Units (locked by the caller) to the remote, durable there and here, then journalled as copied (J1). */
  private async sendLocked(units: number[]): Promise<void> {
    await this.copyUnits(this.src.below, this.link, units);
    await Promise.all([this.src.below.flush(), this.link.flush()]);
    for (const u of units) {
      this.diff.clear(u);
      this.ctx.journal.clearBits(this.id, 'diff', u, 1);
    }
    await this.ctx.journal.sync();
  }

  /** The point-in-time image can no longer be made: error-suspended with why. Caller holds the unit locks. */
  private async lose(why: string): Promise<void> {
    if (this.state === 'error-suspended') return;
    this.errorSuspend(new CopyFaultError(why, this.record.source, 'write'), 'the copy-on-write');
    await this.ctx.journal.sync();
  }

  protected override errorFix(): string {
    return 'the remote does not hold the point-in-time image; cancel the session and start it again';
  }

  override async copyStep(maxUnits: number): Promise<number> {
    if (this.state !== 'copying' || this.done) return 0;
    const units = await this.lockBatch(
      (from) => this.diff.nextSet(from),
      (u) => this.diff.test(u),
      0,
      maxUnits,
    );
    try {
      if (units.length > 0) {
        if (this.state !== 'copying') return 0;
        try {
          await this.sendLocked(units);
        } catch (err) {
          if (err instanceof RemoteLinkError) {
            await this.halt(err);
            return 0;
          }
          if (err instanceof CopyFaultError) {
            await this.lose(err.message);
            return 0;
          }
          throw err;
        }
        this.noteCopied(units.length);
      }
    } finally {
      this.unlockAll(units);
    }
    if (this.state === 'copying' && this.diff.count === 0) this.done = true; // the engine ends it: completed
    return units.length;
  }

  // ---- what a point-in-time copy does not do ----

  override freeze(to: 'suspended' | 'split'): Promise<void> {
    return Promise.reject(
      new CopyError(
        'FAILED_PRECONDITION',
        `cannot ${to === 'split' ? 'split' : 'suspend'} ROPC session ${this.id}: a point-in-time copy has nothing to freeze; cancel it`,
      ),
    );
  }

  /** From halt only: a session whose image was lost (error-suspended) cannot be resumed. */
  override resume(force: boolean): Promise<void> {
    if (this.state === 'error-suspended') {
      return Promise.reject(new CopyError('FAILED_PRECONDITION', `cannot resume ROPC session ${this.id}: ${this.record.error}`));
    }
    return super.resume(force);
  }

  override setMode(mode: RecMode): Promise<void> {
    return Promise.reject(new CopyError('FAILED_PRECONDITION', `cannot set mode ${mode} of ROPC session ${this.id}: it has no transfer mode`));
  }
}
