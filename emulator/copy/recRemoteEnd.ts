/**
 * REC, the destination's side: the "remote end" of a pair whose source is on another array.
 * It is a session of this array's engine so that `copy list` shows the pair here too, the
 * destination is guarded as a local EC destination is, and its state survives a restart.
 *
 * The source array drives it (RemoteCopyService: SetRemoteEndState, ResumeRemoteEnd,
 * CloseRemoteEnd) and writes the pair's data through its own NBD export (.rec/ID/SECRET),
 * which goes under this volume's engine layer; the role below sees only hosts' I/O.
 *
 * What hosts of this array see on the volume
 *   copying      no attach, no reads or writes (EACCES): the image is incomplete.
 *   equivalent   read-only (EPERM on writes).
 *   halt         read-only: the image of the instant the link was lost (sync mode), kept for
 *                a failover; `copy split` here makes it writable.
 *   suspended,   read-write; host writes are recorded in diff. ResumeRemoteEnd hands them to
 *   split        the source, which copies those units back over them.
 *
 * diff is kept until the pair next leaves 'copying' for equivalent, suspended or split (the
 * source then resynced every unit in it): a source that crashes after ResumeRemoteEnd but
 * before its own commit asks again and gets the same units.
 *
 * The data connection closing while copying or equivalent halts the remote end (link-down),
 * as the source halts on its side.
 */
import { BlockDeviceError } from '../block/BlockDevice.js';
import { CopyBitmap } from './CopyBitmap.js';
import { CopyError, type HaltReason, type Mutation, type RecMode, type RecRecord, type SessionInfo } from './CopySession.js';
import { type RemoteEndState, SessionBase, type SessionContext } from './SessionBase.js';
import type { JournalSession } from './SessionJournal.js';
import type { DestRole, Next } from './VolumeTap.js';

export class RecRemoteEnd extends SessionBase implements DestRole {
  readonly diff: CopyBitmap;

  constructor(ctx: SessionContext, j: JournalSession, blockSize: number) {
    super(ctx, j.record, blockSize);
    this.check((j.record.type === 'rec' || j.record.type === 'ropc') && j.record.rec?.role === 'remote-end', `not a REC remote-end record: ${j.record.type}`);
    this.diff = CopyBitmap.fromRuns(this.geo.units, j.bitmaps.diff ?? []);
  }

  get sessionId(): string {
    return this.id;
  }

  get rec(): RecRecord {
    return this.record.rec!;
  }

  /** Consistency mode and equivalent: the source's writes are staged and applied a cycle at a time. */
  get staging(): boolean {
    return this.rec.mode === 'consistency' && this.state === 'equivalent';
  }

  /** A committed cycle not applied yet (a crash between the two), or undefined. */
  get unappliedCycle(): number | undefined {
    const c = this.rec.committedCycle;
    return c !== undefined && c > (this.rec.appliedCycle ?? 0) ? c : undefined;
  }

  /** The cycle is committed: durable with the caller's sync, before it is applied. */
  markCommitted(cycle: number): void {
    this.check(this.staging, 'a cycle committed while not staging');
    this.record = { ...this.record, rec: { ...this.rec, committedCycle: cycle } };
    this.ctx.journal.putSession(this.record);
  }

  /** The cycle is applied (lazily journalled: losing it only applies the stage again). */
  markApplied(cycle: number): void {
    this.record = { ...this.record, rec: { ...this.rec, appliedCycle: cycle } };
    this.ctx.journal.putSession(this.record);
  }

  get hostReadOnly(): boolean {
    return this.state !== 'suspended' && this.state !== 'split';
  }

  attach(): void {
    this.dst.setDest(this);
  }

  detach(): void {
    this.dst.setDest(undefined);
  }

  protected bitmaps(): CopyBitmap[] {
    return [this.diff];
  }

  /** The source knows the progress; here a pair is whole unless it is copying. */
  copiedUnits(): number {
    return this.state === 'copying' ? 0 : this.geo.units;
  }

  pendingUnits(): number {
    return 0;
  }

  copyStep(): Promise<number> {
    return Promise.resolve(0);
  }

  override info(): SessionInfo {
    const r = this.rec;
    return {
      ...super.info(),
      remote: {
        role: 'remote-end',
        peer: r.peer,
        mode: r.mode,
        split: r.split,
        recovery: r.recovery,
        ...(r.haltReason !== undefined ? { haltReason: r.haltReason } : {}),
        ...(r.haltDetail !== undefined ? { haltDetail: r.haltDetail } : {}),
        linkUp: false,
        pendingBytes: 0,
      },
    };
  }

  // ---- driven by the source (the engine holds the volume around each) ----

  setRemoteState(
    state: RemoteEndState,
    extra: { imageAt?: string | undefined; haltReason?: HaltReason | undefined; mode?: RecMode | undefined; resynced?: boolean | undefined },
  ): void {
    if (state === 'copying') throw new CopyError('INVALID_ARGUMENT', `remote end ${this.id}: copying is entered by ResumeRemoteEnd, not set`);
    // Equivalent, suspended and split say the volume holds the source's image: only a pair that
    // ran here (copying, equivalent; a suspended one may split) can say so. A halted remote end
    // (the link was lost, or this array restarted and may have lost unflushed writes) cannot:
    // the source must resume the pair, which resyncs what may differ.
    const from = this.state;
    const ok = state === 'halt' || state === from || from === 'copying' || from === 'equivalent' || (state === 'split' && from === 'suspended');
    if (!ok) {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `remote end of REC ${this.describe()} (${this.id}) is ${from} here${this.rec.haltDetail ? ` (${this.rec.haltDetail})` : ''}; it cannot be ${state} without a resync: resume the pair at the source`,
      );
    }
    // Only the source knows whether it copied what this side's hosts changed (its resume may not
    // have committed): it says so. Equivalent always means it did.
    const resynced = state === 'equivalent' || (extra.resynced === true && state !== 'halt');
    if (resynced) this.forgetChanges();
    const rec: RecRecord = {
      ...this.rec,
      ...(resynced ? { restarted: undefined } : {}),
      ...(extra.mode !== undefined ? { mode: extra.mode } : {}),
      haltReason: state === 'halt' ? (extra.haltReason ?? 'link-down') : undefined,
      haltDetail: state === 'halt' ? 'the source array reported the link lost' : undefined,
    };
    const imageAt = state === 'suspended' || state === 'split' ? extra.imageAt : undefined;
    this.setState(state, `remote end of REC ${this.describe()}: ${state}`, { rec, imageAt });
  }

  /**
   * The pair resyncs: hosts here lose the volume; returns the units they changed, and whether
   * this array restarted while the pair was live. A remote end split here (a failover) is not
   * overwritten unless force: its hosts' changes would be lost.
   */
  resumeEnd(force: boolean): { runs: Array<[number, number]>; restarted: boolean } {
    if (this.rec.splitHere && !force) {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot resume REC session ${this.id}: its remote end ${this.record.destination} was split on that array for a failover and its hosts may have written to it; ` +
          'reverse the pair at the source to copy those changes back, or resume with --force to overwrite them',
      );
    }
    const runs = [...this.diff.runs()];
    const restarted = this.rec.restarted === true;
    this.setState('copying', `remote end of REC ${this.describe()}: resync (${this.diff.count} unit(s) changed here go back to the source's image)`, {
      imageAt: undefined,
      // restarted stays, as diff does, until the resync is done: a source whose commit of this
      // resume fails (or whose answer is lost) asks again and must hear it again.
      rec: { ...this.rec, haltReason: undefined, haltDetail: undefined, splitHere: undefined },
    });
    return { runs, restarted };
  }

  /**
   * After a restart of this array: a pair that was live halts (the source's connection went),
   * and the next resume is told (in any state), so the source resyncs what this array may not
   * have flushed.
   */
  recover(): void {
    // In any state: a pair halted (or failed over from a halt) was never flushed here after the
    // source's last mirrored writes. Costs at most a coarser resync (the source's write intent).
    const rec: RecRecord = { ...this.rec, restarted: true };
    if (this.state !== 'copying' && this.state !== 'equivalent') {
      this.record = { ...this.record, rec };
      this.ctx.journal.putSession(this.record);
      return;
    }
    this.setState('halt', `remote end of REC ${this.describe()} halted: the array restarted; the source resumes the pair when it reaches it`, {
      rec: { ...rec, haltReason: 'link-down', haltDetail: 'the array restarted' },
    });
  }

  /** The data connection closed while the pair was live: halt here too. Caller syncs. */
  linkLost(reason: string): boolean {
    if (this.state !== 'copying' && this.state !== 'equivalent') return false;
    this.setState(
      'halt',
      `remote end of REC ${this.describe()} halted: ${reason}; the volume keeps the image it has (read-only); the source resumes the pair when the link returns`,
      {
        rec: { ...this.rec, haltReason: 'link-down', haltDetail: reason },
      },
    );
    return true;
  }

  /**
   * Failover: the operator here makes the volume writable while the source is gone (halted)
   * or the pair suspended. Refused while the source still mirrors into it, or while copying.
   */
  split(): void {
    if (this.state === 'split') return;
    if (this.state === 'copying') {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot split the remote end of REC ${this.describe()} (${this.id}): it is copying, so ${this.record.destination} holds no complete image; cancel it with --force to keep what it has`,
      );
    }
    if (this.state === 'equivalent') {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot split the remote end of REC ${this.describe()} (${this.id}) here: the source still sends to it (equivalent); split or suspend it at the source, or, if the source is lost, wait until the pair halts here`,
      );
    }
    this.setState(
      'split',
      `remote end of REC ${this.describe()} split here: ${this.record.destination} is writable; changes are recorded; reverse the pair at the source to copy them back`,
      {
        imageAt: this.record.imageAt ?? new Date(this.ctx.now()).toISOString(),
        rec: { ...this.rec, splitHere: true },
      },
    );
  }

  private forgetChanges(): void {
    if (this.diff.count === 0) return;
    this.diff.reset();
    this.ctx.journal.clearBits(this.id, 'diff', 0, this.geo.units);
  }

  // ---- the destination role (hosts of this array) ----

  checkRead(op: string): void {
    if (this.state === 'copying') {
      throw new BlockDeviceError(
        'EACCES',
        `${op} refused: volume ${this.record.destination} is the destination of REC session ${this.id} from ${this.record.source}, still copying; ` +
          'wait until the pair is equivalent, or suspend or split it at the source',
      );
    }
  }

  destRead(_offset: number, _into: Buffer, next: Next): Promise<void> {
    return next();
  }

  destWrite(m: Mutation, next: Next): Promise<void> {
    if (this.hostReadOnly) {
      this.checkRead('write');
      return Promise.reject(
        new BlockDeviceError(
          'EPERM',
          `write refused: volume ${this.record.destination} is the read-only destination of REC session ${this.id} from ${this.record.source} (${this.state}); ` +
            (this.state === 'halt'
              ? `split it here ('arraylab copy split ${this.id}') to fail over`
              : 'suspend or split the pair at the source to write to it'),
        ),
      );
    }
    const [u0, u1] = this.geo.unitsOf(m.offset, m.length);
    if (u0 === u1 || this.diff.allSet(u0, u1)) return next();
    return this.trackThen(u0, u1, next);
  }

  private async trackThen(u0: number, u1: number, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      await this.persistSet([['diff', this.diff, this.clearIn(this.diff, u0, u1)]]); // J3
      await next();
    } finally {
      unlock();
    }
  }

  private describe(): string {
    return `${this.record.source} -> ${this.record.destination}`;
  }
}
