/**
 * REC (remote equivalent copy), the source side: a volume of this array mirrored to a volume of
 * another array over a RecLink (emulator/remote: NBD for data, the remote's API for control).
 * The destination's side is RecRemoteEnd (recRemoteEnd.ts), a session on the other array.
 *
 * Bitmaps (per unit), as EC's
 *   diff     the unit may differ between here and the remote: copied by the background copier
 *            while 'copying'; recorded for host writes while not mirroring.
 *   intent   sync mode: set durably before the first mirrored write to a region (J3), cleared
 *            after a flush of both sides (J5); merged into diff by a halt or a restart.
 *
 * Modes
 *   sync     a host write is acknowledged once both this array and the remote have it.
 *   stack    host writes are recorded in diff only; the copier sends them in the background
 *            (the remote is not consistent while units are pending). The copier idles while
 *            nothing is pending and is woken by the next recorded write.
 *   consistency
 *            once the initial copy is done (equivalent), host writes go to the REC buffer to
 *            the remote (recBuffer.ts) and are sent in cycles that the remote applies whole:
 *            the remote is always a crash-consistent image of some past instant. During the
 *            initial copy or a resync (copying) writes are recorded in diff, as in stack.
 *   through  as stack; the mode an operator switches to so the backlog drains while hosts
 *            run, before a suspend (which in any asynchronous mode drains what is left under
 *            its cut: the remote then holds the suspend instant).
 *
 * States (record.state)
 *   copying      initial copy or resync (sync: writes are mirrored meanwhile); async modes
 *                stay here while the pair runs.
 *   equivalent   sync only: every host write is mirrored before it is acknowledged.
 *   suspended,   the remote is frozen as of the cut and usable by its hosts; changes on this
 *   split        side go to diff, changes there are fetched at resume (ResumeRemoteEnd).
 *   halt         the link failed (haltReason: link-down, remote-failed). split auto: host
 *                writes go on and are recorded; split manual: they fail EIO until the link
 *                returns or the pair is suspended. recovery auto: the link reconnects with
 *                back-off and the pair resumes by itself; manual: it waits for resume.
 *   error-suspended
 *                an injected copy fault fired on the pair's own I/O (as EC).
 *
 * A restart of this array is a link loss: a pair that was copying or equivalent comes back
 * halted (intent merged into diff), and recovery auto resumes it once the link is up.
 */
import { BlockDeviceError } from '../block/BlockDevice.js';
import { EXTENT_ZERO } from '../block/BlockDevice.js';
import { CopyBitmap } from './CopyBitmap.js';
import type { BufferMember, RecBuffer } from './recBuffer.js';
import {
  CopyError,
  CopyFaultError,
  RemoteLinkError,
  RemoteRefusalError,
  type Mutation,
  type RecMode,
  type RecRecord,
  type SessionInfo,
} from './CopySession.js';
import { type RecLink, SessionBase, type SessionContext, toRuns } from './SessionBase.js';

/** Bytes one asynchronous copy step reads into memory and sends (it holds them until sent). */
const ASYNC_STEP_BYTES = 8 * 1024 * 1024;
/** Largest piece one read or remote write moves. */
const COPY_PIECE = 1024 * 1024;
import type { JournalSession } from './SessionJournal.js';
import type { Next, SourceRole } from './VolumeTap.js';

export class RecSession extends SessionBase implements SourceRole, BufferMember {
  readonly diff: CopyBitmap;
  readonly intent: CopyBitmap;
  private cursor = 0;
  private readonly flushWatchers = new Set<Set<number>>();
  private linkObj: RecLink | undefined;
  /** Asynchronous modes: the last instant nothing was pending (not journalled: it describes now). */
  private drainedAt: string | undefined;
  /** Consistency mode, equivalent: the REC buffer the pair's writes go to. */
  private buffer: RecBuffer | undefined;

  constructor(ctx: SessionContext, j: JournalSession, blockSize: number) {
    super(ctx, j.record, blockSize);
    this.check((j.record.type === 'rec' || j.record.type === 'ropc') && j.record.rec?.role === 'source', `not a REC source record: ${j.record.type}`);
    this.diff = CopyBitmap.fromRuns(this.geo.units, j.bitmaps.diff ?? []);
    this.intent = CopyBitmap.fromRuns(this.geo.units, j.bitmaps.intent ?? []);
  }

  get sessionId(): string {
    return this.id;
  }

  get rec(): RecRecord {
    return this.record.rec!;
  }

  /** The pair's link, made on first use and kept until the session ends. */
  get link(): RecLink {
    this.linkObj ??= this.ctx.recLink(this.record, {
      up: () => this.ctx.linkEvent(this.id, 'up'),
      down: (err) => this.ctx.linkEvent(this.id, 'down', err),
    });
    return this.linkObj;
  }

  /** Sync mode and copying or equivalent: every host write goes to the remote too. */
  get mirroring(): boolean {
    return this.rec.mode === 'sync' && (this.state === 'copying' || this.state === 'equivalent');
  }

  /** The copier idles while nothing is pending (stack, through): the engine need not tick. */
  get idleWhenDrained(): boolean {
    return this.rec.mode !== 'sync';
  }

  attach(): void {
    this.src.addSource(this);
  }

  detach(): void {
    this.src.removeSource(this);
  }

  /** The session ended: the link stops (its connection closes). */
  closeLink(): void {
    this.leaveBuffer();
    this.linkObj?.close();
    this.linkObj = undefined;
  }

  /** Consistency mode and equivalent: writes go to the REC buffer in cycles. */
  get cycling(): boolean {
    return this.rec.mode === 'consistency' && this.state === 'equivalent';
  }

  private joinBuffer(): void {
    this.buffer ??= this.ctx.recBuffer(this.rec.peer);
    this.buffer.add(this);
  }

  /** Leaves the REC buffer; units its dropped entries covered go to diff (journalled with the caller's sync). */
  private leaveBuffer(): void {
    const dropped = this.buffer?.remove(this.id) ?? [];
    this.buffer = undefined;
    for (const [offset, length] of dropped) {
      const [u0, u1] = this.geo.unitsOf(offset, length);
      if (u1 > u0) this.diff.set(u0, u1 - u0);
    }
  }

  /** Every unit in diff is journalled (units the light tracking set in memory only). Caller syncs. */
  private persistDiff(): void {
    for (const [s, n] of this.diff.runs()) this.ctx.journal.setBits(this.id, 'diff', s, n);
  }

  // ---- BufferMember ----

  bufferFailed(err: RemoteLinkError): void {
    this.ctx.linkEvent(this.id, 'down', err);
  }

  cycleCommitted(closedAt: number, drained: boolean): void {
    this.drainedAt = new Date(closedAt).toISOString();
    if (drained && this.intent.count > 0) void this.clearIntentDrained().catch(() => undefined);
  }

  /**
   * J5 in consistency mode: once nothing of the pair is pending in the buffer, the source is
   * flushed and then the write intent of units no write holds now is cleared: both sides hold
   * every write that completed before the flush.
   */
  private async clearIntentDrained(): Promise<void> {
    const touched = new Set<number>(this.locks.lockedUnits());
    this.flushWatchers.add(touched);
    try {
      await this.src.below.flush();
    } finally {
      this.flushWatchers.delete(touched);
    }
    if (!this.cycling || this.buffer === undefined || this.buffer.pendingOf(this.id) > 0) return;
    this.clearIntentExcept(this.intent, touched);
  }

  protected bitmaps(): CopyBitmap[] {
    return [this.diff, this.intent];
  }

  copiedUnits(): number {
    return this.geo.units - this.diff.count;
  }

  pendingUnits(): number {
    return this.state === 'copying' ? this.diff.count : 0;
  }

  /** Consistency mode, copying: a step must run even with nothing pending, to start the cycles. */
  get wantsStep(): boolean {
    return this.rec.mode === 'consistency' && this.state === 'copying';
  }

  override info(): SessionInfo {
    const r = this.rec;
    return {
      ...super.info(),
      remote: {
        role: 'source',
        peer: r.peer,
        mode: r.mode,
        split: r.split,
        recovery: r.recovery,
        ...(r.haltReason !== undefined ? { haltReason: r.haltReason } : {}),
        ...(r.haltDetail !== undefined ? { haltDetail: r.haltDetail } : {}),
        linkUp: this.linkObj?.up ?? false,
        pendingBytes: Math.min(this.diff.count * this.record.unitSize, this.geo.sizeBytes) + (this.buffer?.pendingOf(this.id) ?? 0),
        ...(this.drainedAt !== undefined && this.diff.count === 0 ? { drainedAt: this.drainedAt } : {}),
        ...(this.buffer !== undefined ? { buffer: { usedBytes: this.buffer.bytesUsed, sizeBytes: this.buffer.settings.bytes } } : {}),
      },
    };
  }

  /** After a restart: a restart is a link loss (the remote end saw its connection close). */
  recover(): void {
    this.mergeIntent();
    if (this.state === 'copying' || this.state === 'equivalent') {
      this.setHalt(new RemoteLinkError(`array restarted while the pair was ${this.state}`, 'link-down'));
    }
    if (this.state === 'halt' && this.rec.recovery === 'auto') this.link.watch(true);
  }

  // ---- control (the engine holds the source around each) ----

  /**
   * Switches the transfer mode (under the caller's cut). Leaving consistency drains the buffer
   * first; an equivalent pair that leaves sync or consistency for stack or through records its
   * writes from now on (copying); sync <-> consistency while equivalent switches at once (the
   * remote end stages cycles in consistency); any other switch to sync or consistency takes
   * effect once the copier has sent what is pending.
   */
  async setMode(mode: RecMode): Promise<void> {
    const from = this.rec.mode;
    if (mode === from) return;
    if (this.cycling) {
      try {
        await this.buffer!.drain();
      } catch (err) {
        throw this.refusal(`switch to ${mode}`, err);
      }
      this.leaveBuffer();
      // Undone (a failed commit, a refusal there): it cycles again here, and halts (below), so
      // a resume brings the two sides' modes together.
      this.ctx.onRollback(() => {
        if (this.cycling && !this.done) this.joinBuffer();
      });
    }
    const rec = { ...this.rec, mode };
    if (this.state === 'equivalent' && (mode === 'stack' || mode === 'through')) {
      // The remote is no longer a usable image while units arrive out of order: its end goes copying.
      this.haltOnRollback(`the remote end may be copying while this side is not (a switch to ${mode} did not complete)`);
      let changed: { runs: Array<[number, number]>; restarted: boolean };
      try {
        changed = await this.link.resumeRemote(false);
      } catch (err) {
        throw this.refusal(`switch to ${mode}`, err);
      }
      this.takeRemoteChanges(changed);
      this.setState('copying', `mode ${mode}: host writes are recorded and sent in the background`, { rec });
      return;
    }
    if (this.state === 'equivalent') {
      // sync <-> consistency while equivalent: the remote end starts or stops staging now.
      this.haltOnRollback(`the remote end may be in mode ${mode} while this side is not (a switch to ${mode} did not complete)`);
      try {
        // Into consistency: every mirrored write is durable there before staging begins, so the
        // first cycle's base is this instant's image (a crash there cannot mix it).
        if (mode === 'consistency') await this.link.flush();
        await this.link.setRemoteState('equivalent', { mode });
      } catch (err) {
        throw this.refusal(`switch to ${mode}`, err);
      }
    }
    // Sync mode clears write intent at each flush (J5), trusting diff to be durable: the bits the
    // light tracking of an asynchronous mode set in memory only are journalled first.
    if (mode === 'sync') this.persistDiff();
    this.record = { ...this.record, rec };
    this.ctx.journal.putSession(this.record);
    if (this.cycling) this.joinBuffer();
    this.ctx.emit({ sessionId: this.id, kind: 'state', state: this.state, message: `REC ${this.describe()}: mode ${mode}` });
  }

  /**
   * suspend or split. Sync: from equivalent (split also from suspended). Async: from copying,
   * after draining every pending unit under the caller's cut. From halt: here only (the remote
   * cannot be told); its image is of the halt. Caller commits.
   */
  async freeze(to: 'suspended' | 'split'): Promise<void> {
    const verb = to === 'split' ? 'split' : 'suspend';
    // Halted, or suspended while halted (no image instant: the remote was never told): here only.
    if (this.state === 'halt' || (this.state === 'suspended' && to === 'split' && this.record.imageAt === undefined)) {
      this.link.watch(false);
      this.setState(to, `${verb} while halted: host writes to ${this.record.source} go on and are recorded; the remote keeps the image of the halt`, {
        imageAt: undefined,
      });
      return;
    }
    if (this.state === 'error-suspended') {
      throw new CopyError('FAILED_PRECONDITION', `cannot ${verb} REC session ${this.id} (${this.describe()}): backup cannot run: ${this.record.error}`);
    }
    const sync = this.rec.mode === 'sync';
    const consistency = this.rec.mode === 'consistency';
    const ok =
      (sync ? this.state === 'equivalent' : consistency ? this.state === 'equivalent' || this.state === 'copying' : this.state === 'copying') ||
      (to === 'split' && this.state === 'suspended');
    if (!ok) {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot ${verb} REC session ${this.id} (${this.describe()}): ` +
          (sync
            ? `backup cannot run before the pair is equivalent; it is ${this.state} (${this.copiedUnits()}/${this.geo.units} units copied); wait for state equivalent`
            : `it is ${this.state}; resume it first`),
      );
    }
    if (this.state !== 'suspended') {
      try {
        if (this.cycling) await this.buffer!.drain(); // the last cycles, applied whole on the remote
        if (!sync) await this.drainAll();
        await Promise.all([this.src.below.flush(), this.link.flush()]); // J4: the frozen image is durable on both sides
      } catch (err) {
        throw this.refusal(verb, err);
      }
      this.intent.reset();
      this.ctx.journal.clearBits(this.id, 'intent', 0, this.geo.units);
      this.check(this.diff.count === 0, 'frozen REC pair with units to copy');
    }
    const imageAt = this.state === 'suspended' ? this.record.imageAt : new Date(this.ctx.now()).toISOString();
    // From here the remote may be frozen (even if its answer is lost): if this operation is
    // undone, the pair halts, and its resume brings both sides together again.
    this.haltOnRollback(`the remote end may be ${to} while this side is not (a ${verb} did not complete)`);
    try {
      // From copying or equivalent this freeze drained everything (the resume that began the run
      // merged the remote's changes); from suspended (a split) it copied nothing.
      await this.link.setRemoteState(to, { imageAt, resynced: this.state !== 'suspended', mode: this.rec.mode });
    } catch (err) {
      throw this.refusal(verb, err);
    }
    this.leaveBuffer();
    this.setState(
      to,
      `${verb === 'split' ? 'split' : 'suspended'}: the remote ${this.record.destination} holds the image of ${imageAt}; changes are recorded`,
      {
        imageAt,
      },
    );
  }

  /**
   * resume (suspended, halt, error-suspended) or rejoin (split): the remote end goes copying and
   * says what its hosts changed; those units and this side's join diff; the copier resyncs them.
   */
  async resume(force: boolean): Promise<void> {
    const from = this.state;
    if (from !== 'suspended' && from !== 'split' && from !== 'halt' && from !== 'error-suspended') {
      throw new CopyError('FAILED_PRECONDITION', `cannot resume REC session ${this.id} (${this.describe()}): it is ${from}, not suspended, split or halt`);
    }
    let changed: { runs: Array<[number, number]>; restarted: boolean };
    try {
      changed = await this.link.resumeRemote(force);
    } catch (err) {
      throw this.refusal('resume', err);
    }
    const runs = changed.runs;
    this.takeRemoteChanges(changed);
    if (from === 'error-suspended') this.mergeIntent(); // as EC (E4)
    this.link.watch(false);
    this.cursor = 0;
    this.setState('copying', `resync of ${this.diff.count} changed units (${runs.length} run(s) changed on the remote)`, {
      imageAt: undefined,
      error: undefined,
      rec: { ...this.rec, haltReason: undefined, haltDetail: undefined },
    });
  }

  /** Units that may differ, for a reverse: diff and write intent (a halt keeps intent for a crash). */
  changedRuns(): Array<[number, number]> {
    const all = this.diff.snapshot();
    for (const [s, n] of this.intent.runs()) all.set(s, n);
    return all.runs();
  }

  /**
   * What ResumeRemoteEnd said joins diff (journalled with the caller's commit): the units the
   * remote's hosts changed, and, if the remote restarted while the pair was live, this side's
   * write intent (writes it acknowledged but had not flushed may be gone there).
   */
  private takeRemoteChanges(changed: { runs: Array<[number, number]>; restarted: boolean }): void {
    for (const [s, n] of changed.runs) {
      const len = Math.max(0, Math.min(n, this.geo.units - s));
      if (len === 0) continue;
      this.diff.set(s, len);
      this.ctx.journal.setBits(this.id, 'diff', s, len);
    }
    if (changed.restarted) this.mergeIntent();
  }

  /** If the control operation running now is undone, the pair halts afterwards (see SessionContext.onRollback). */
  private haltOnRollback(why: string): void {
    this.ctx.onRollback(() => this.ctx.linkEvent(this.id, 'down', new RemoteLinkError(why, 'link-down')));
  }

  /** A control operation's failure on the link, as its refusal. */
  private refusal(verb: string, err: unknown): Error {
    // The link failed under this operation: once it is undone, the pair halts as it would have
    // at its next transfer (a copying or equivalent pair only).
    if (err instanceof RemoteLinkError) this.ctx.onRollback(() => this.ctx.linkEvent(this.id, 'down', err));
    if (err instanceof RemoteLinkError || err instanceof CopyFaultError) {
      return new CopyError(
        'FAILED_PRECONDITION',
        `cannot ${verb} REC session ${this.id} (${this.describe()}): ${err.message}; restore the link and retry` +
          (this.rec.recovery === 'auto' && verb === 'resume' ? ' (a halted pair also resumes by itself once the link is back)' : ''),
      );
    }
    return err as Error;
  }

  /**
   * The link failed: copying or equivalent -> halt. diff says exactly what may differ: a
   * mirrored write whose remote half failed put its units there, the light tracking's bits
   * and the units of dropped buffer entries are journalled now; the resync copies only those.
   * Write intent stays for a crash (recovery merges it). The caller syncs. Idempotent.
   */
  setHalt(err: RemoteLinkError): boolean {
    if (this.state !== 'copying' && this.state !== 'equivalent') return false;
    this.leaveBuffer();
    this.persistDiff();
    const writes =
      this.rec.split === 'auto'
        ? `host writes to ${this.record.source} go on and are recorded`
        : `host writes to ${this.record.source} fail until the link returns or the pair is suspended (split manual)`;
    const after =
      this.rec.recovery === 'auto' ? 'it resumes by itself when the link returns' : `resume it with 'arraylab copy resume ${this.id}' once the link is back`;
    this.setState('halt', `REC session ${this.id} (${this.describe()}) halted: ${err.message}; ${writes}; ${after}`, {
      rec: { ...this.rec, haltReason: err.reason, haltDetail: err.message },
    });
    // The link itself works (the remote failed a write, or the buffer overflowed): the remote
    // end hears of it, so it does not go on showing itself equivalent. Best effort.
    if (err.reason !== 'link-down') void this.link.setRemoteState('halt', { haltReason: err.reason }).catch(() => undefined);
    if (this.rec.recovery === 'auto') this.link.watch(true);
    return true;
  }

  async halt(err: RemoteLinkError): Promise<void> {
    if (this.setHalt(err)) await this.ctx.journal.sync();
  }

  private mergeIntent(): void {
    const j = this.ctx.journal;
    for (const [s, n] of this.intent.runs()) {
      this.diff.set(s, n);
      j.setBits(this.id, 'diff', s, n);
    }
    this.intent.reset();
    j.clearBits(this.id, 'intent', 0, this.geo.units);
  }

  protected override errorFix(): string {
    return 'host writes to the source go on and are recorded; fix the cause, then resume the session (it resyncs the changed units), or cancel it';
  }

  // ---- the source role ----

  sourceWrite(m: Mutation, next: Next): Promise<void> {
    const [u0, u1] = this.geo.unitsOf(m.offset, m.length);
    if (u0 === u1) return next();
    if (this.state === 'halt' && this.rec.split === 'manual') return Promise.reject(this.manualSplitRefusal());
    if (this.mirroring) return this.mirror(u0, u1, m, next);
    if (this.cycling) return this.cycleWrite(u0, u1, m, next);
    // Asynchronous: always under the unit lock, so a copy step of the unit cannot clear its
    // bit between this write's recording and its landing.
    if (this.state === 'copying') return this.trackLight(u0, u1, next);
    return this.trackThen(u0, u1, next);
  }

  /**
   * Asynchronous modes while copying: the write's region is made durable in intent (once per
   * region: J3, as sync mode's), its units are set in diff in memory only. A crash merges
   * intent into diff; a halt journals diff. Per-unit commits here made a stack-mode host write
   * wait for a journal commit nearly every time (the copier keeps clearing the bits).
   */
  private async trackLight(u0: number, u1: number, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      await this.persistIntent(this.intent, u0, u1); // J3
      if (this.state !== 'copying' || this.mirroring || this.cycling) return await this.trackLocked(u0, u1, next); // changed while we waited
      const wasIdle = this.diff.count === 0;
      this.diff.set(u0, u1 - u0);
      await next();
      if (wasIdle) this.ctx.wake(this.id);
    } finally {
      unlock();
    }
  }

  private manualSplitRefusal(): BlockDeviceError {
    return new BlockDeviceError(
      'EIO',
      `write refused: volume ${this.record.source} is the source of REC session ${this.id} (${this.describe()}), halted (${this.rec.haltReason ?? 'link-down'}) with split manual; ` +
        `restore the link, or suspend the session ('arraylab copy suspend ${this.id}') to write without the remote`,
    );
  }

  private async mirror(u0: number, u1: number, m: Mutation, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      for (const w of this.flushWatchers) for (let u = u0; u < u1; u++) w.add(u);
      await this.persistIntent(this.intent, u0, u1); // J3
      if (!this.mirroring) {
        if (this.state === 'halt' && this.rec.split === 'manual') throw this.manualSplitRefusal();
        return await this.trackLocked(u0, u1, next);
      }
      const toRemote = this.remoteWrite(m); // first: its request is queued before the local write blocks
      const [own, remote] = await Promise.allSettled([next(), toRemote]);
      if (remote.status === 'rejected') {
        // One side may have the write and the other not: resync those units.
        await this.persistSet([['diff', this.diff, this.clearIn(this.diff, u0, u1)]]);
        const err = remote.reason as unknown;
        if (err instanceof CopyFaultError) {
          if (this.mirroring) {
            this.mergeIntent();
            this.errorSuspend(err, 'a mirrored write');
            await this.ctx.journal.sync();
          }
        } else if (err instanceof RemoteLinkError) {
          await this.halt(err);
          if (own.status === 'fulfilled' && this.rec.split === 'manual') throw this.manualSplitRefusal();
        } else if (own.status === 'fulfilled') {
          throw err;
        }
      }
      if (own.status === 'rejected') {
        if (remote.status === 'fulfilled') await this.persistSet([['diff', this.diff, this.clearIn(this.diff, u0, u1)]]);
        throw own.reason;
      }
    } finally {
      unlock();
    }
  }

  /**
   * Consistency mode: the write lands on the source, then joins the open cycle, under its unit
   * lock (so overlapping writes join in the order they landed), before it is acknowledged.
   * Write intent covers it until the buffer has drained (J3, as sync mode's).
   */
  private async cycleWrite(u0: number, u1: number, m: Mutation, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      for (const w of this.flushWatchers) for (let u = u0; u < u1; u++) w.add(u);
      await this.persistIntent(this.intent, u0, u1); // J3
      const end = Math.min(m.offset + m.length, this.geo.sizeBytes);
      if (this.cycling && this.buffer === undefined) this.joinBuffer(); // an undone mode switch left it out
      const space = this.cycling ? this.buffer!.reserve(end - m.offset) : undefined;
      if (space !== undefined) {
        try {
          await space;
        } catch (err) {
          if (!(err instanceof RemoteLinkError)) throw err;
          // Overloaded: every pair on the buffer halts (through the engine); this one now.
          await this.halt(err);
        }
      }
      if (!this.cycling) {
        if (this.state === 'halt' && this.rec.split === 'manual') throw this.manualSplitRefusal();
        return await this.trackLocked(u0, u1, next);
      }
      await next();
      if (this.cycling && this.buffer !== undefined && end > m.offset) {
        this.buffer.append(this, m.offset, end - m.offset, m.kind === 'write' ? m.data.subarray(0, end - m.offset) : undefined);
      } else if (end > m.offset) {
        // The pair halted (or left cycles) while the write landed: it is in no cycle, so it is
        // recorded for the resync, as a mirrored write whose remote half failed is.
        await this.persistSet([['diff', this.diff, this.clearIn(this.diff, u0, u1)]]);
      }
    } finally {
      unlock();
    }
  }

  private remoteWrite(m: Mutation): Promise<void> {
    return this.mirrorInside(m, this.link);
  }

  private async trackThen(u0: number, u1: number, next: Next): Promise<void> {
    const unlock = await this.locks.lockRange(u0, u1);
    try {
      await this.trackLocked(u0, u1, next);
    } finally {
      unlock();
    }
  }

  private async trackLocked(u0: number, u1: number, next: Next): Promise<void> {
    const wasIdle = this.diff.count === 0;
    await this.persistSet([['diff', this.diff, this.clearIn(this.diff, u0, u1)]]); // J3
    await next();
    if (wasIdle && this.state === 'copying') this.ctx.wake(this.id);
  }

  async sourceFlush(next: Next): Promise<void> {
    if (!this.mirroring || this.intent.count === 0) return next();
    const touched = new Set<number>(this.locks.lockedUnits());
    this.flushWatchers.add(touched);
    let own: PromiseSettledResult<void>;
    let remote: PromiseSettledResult<void>;
    try {
      [own, remote] = await Promise.allSettled([next(), this.link.flush()]);
    } finally {
      this.flushWatchers.delete(touched);
    }
    if (own.status === 'rejected') throw own.reason;
    if (remote.status === 'rejected') {
      const err = remote.reason as unknown;
      if (!(err instanceof RemoteLinkError)) throw err;
      await this.halt(err); // intent went to diff: nothing is lost
      if (this.rec.split === 'manual') throw this.manualSplitRefusal();
      return;
    }
    // J5: both sides durable for every write that completed before the flush.
    this.clearIntentExcept(this.intent, touched);
  }

  // ---- background copy ----

  async copyStep(maxUnits: number): Promise<number> {
    if (this.state !== 'copying' || this.done) return 0;
    if (!this.mirroring) return this.copyStepAsync(Math.min(maxUnits, ASYNC_STEP_BYTES / this.record.unitSize));
    const units = await this.lockBatch(
      (from) => this.diff.nextSet(from),
      (u) => this.diff.test(u),
      this.cursor,
      maxUnits,
    );
    try {
      if (units.length > 0) {
        if (this.state !== 'copying') return 0;
        try {
          await this.sendUnits(units);
        } catch (err) {
          if (err instanceof RemoteLinkError) {
            await this.halt(err);
            return 0;
          }
          if (err instanceof CopyFaultError) {
            if (this.state === 'copying') {
              this.mergeIntent();
              this.errorSuspend(err, 'the background copy');
              await this.ctx.journal.sync();
            }
            return 0;
          }
          throw err;
        }
        for (const u of units) {
          this.diff.clear(u);
          this.ctx.journal.clearBits(this.id, 'diff', u, 1);
        }
        if (!this.mirroring) this.clearDrainedIntent(units);
        await this.ctx.journal.sync();
        this.cursor = units[units.length - 1]! + 1;
        this.noteCopied(units.length);
      }
    } finally {
      this.unlockAll(units);
    }
    if (this.state === 'copying' && this.diff.count === 0) {
      if (this.rec.mode === 'consistency') {
        await this.startCycles();
      } else if (this.rec.mode !== 'sync') {
        this.drainedAt = new Date(this.ctx.now()).toISOString();
      } else {
        await this.becomeEquivalent();
      }
    }
    return units.length;
  }

  /**
   * Sync mode, copy done: under a hold of the source (no mirrored write in flight, so none can
   * fail and put units back in diff unseen), the remote end is told and the pair goes
   * equivalent, if it is still copying with nothing left after the call.
   */
  private async becomeEquivalent(): Promise<void> {
    await this.src.hold();
    try {
      if (this.state !== 'copying' || this.diff.count !== 0 || this.rec.mode !== 'sync') return;
      try {
        await this.link.setRemoteState('equivalent', { mode: this.rec.mode }); // the remote end may hold an older mode
      } catch (err) {
        await this.halt(asLinkError(err));
        return;
      }
      if (this.state !== 'copying' || this.diff.count !== 0) return;
      this.setState('equivalent', 'equivalent: every source write is now mirrored to the remote');
      await this.ctx.journal.sync();
    } finally {
      this.src.release();
    }
  }

  /**
   * Consistency mode, initial copy or resync done: under a hold of the source (no write in
   * flight, so none is half recorded in diff and half in the buffer), the remote end starts
   * staging cycles and the pair goes equivalent.
   */
  private async startCycles(): Promise<void> {
    await this.src.hold();
    try {
      if (this.state !== 'copying' || this.diff.count !== 0 || this.rec.mode !== 'consistency') return;
      try {
        await this.link.flush(); // what the copier and mirrored writes sent is durable before staging begins
        await this.link.setRemoteState('equivalent', { mode: 'consistency' });
      } catch (err) {
        await this.halt(asLinkError(err));
        return;
      }
      this.drainedAt = new Date(this.ctx.now()).toISOString();
      this.setState('equivalent', 'equivalent: host writes go to the REC buffer and reach the remote in cycles, each applied whole');
      this.joinBuffer();
      await this.ctx.journal.sync();
    } finally {
      this.src.release();
    }
  }

  /** Units (locked) to the remote, then both sides durable (J5) before their bits may go. */
  private async sendUnits(units: number[]): Promise<void> {
    await this.copyUnits(this.src.below, this.link, units);
    await Promise.all([this.src.below.flush(), this.link.flush()]);
  }

  /**
   * Asynchronous modes: the units are read and their bits cleared under their locks, then sent
   * without them, so a host write to a unit being sent does not wait for the link (it sets the
   * bit again, and the unit goes again later). A bit is journalled clear only if no write set it
   * again, after both sides were flushed (J5). Sync mode cannot do this: a mirrored write
   * beside the send could be overtaken by the older data.
   */
  private async copyStepAsync(maxUnits: number): Promise<number> {
    const units = await this.lockBatch(
      (from) => this.diff.nextSet(from),
      (u) => this.diff.test(u),
      this.cursor,
      Math.max(1, Math.floor(maxUnits)),
    );
    if (units.length === 0) return this.afterStep(0);
    let pieces: Array<{ pos: number; len: number; data: Buffer | undefined }>;
    try {
      if (this.state !== 'copying' || this.mirroring) return 0;
      pieces = await this.readUnits(units);
      for (const u of units) this.diff.clear(u);
    } catch (err) {
      if (!(err instanceof CopyFaultError)) throw err;
      if (this.state === 'copying') {
        this.mergeIntent();
        this.errorSuspend(err, 'the background copy');
        await this.ctx.journal.sync();
      }
      return 0;
    } finally {
      this.unlockAll(units);
    }
    try {
      for (const p of pieces) this.faultCheck('write', this.record.destination, p.pos, p.len);
      await Promise.all(pieces.map((p) => (p.data === undefined ? this.link.writeZeroes(p.pos, p.len) : this.link.write(p.pos, p.data))));
      await Promise.all([this.src.below.flush(), this.link.flush()]);
    } catch (err) {
      for (const u of units) this.diff.set(u); // still to send
      if (err instanceof RemoteLinkError) {
        await this.halt(err);
        return 0;
      }
      if (err instanceof CopyFaultError) {
        if (this.state === 'copying') {
          this.mergeIntent();
          this.persistDiff();
          this.errorSuspend(err, 'the background copy');
          await this.ctx.journal.sync();
        }
        return 0;
      }
      throw err;
    }
    const sent = units.filter((u) => !this.diff.test(u));
    for (const u of sent) this.ctx.journal.clearBits(this.id, 'diff', u, 1);
    this.clearDrainedIntent(sent);
    await this.ctx.journal.sync();
    this.cursor = units[units.length - 1]! + 1;
    this.noteCopied(units.length);
    return this.afterStep(units.length);
  }

  /** Reads units (locked) of the source: data pieces, and zero extents as zeroes (a thin remote stays thin). */
  private async readUnits(units: number[]): Promise<Array<{ pos: number; len: number; data: Buffer | undefined }>> {
    const out: Array<{ pos: number; len: number; data: Buffer | undefined }> = [];
    const from = this.src.below;
    for (const [s, n] of toRuns(units)) {
      const end = this.geo.start(s + n - 1) + this.geo.length(s + n - 1);
      for (let pos = this.geo.start(s); pos < end; ) {
        const [ext] = await from.blockStatus(pos, Math.min(COPY_PIECE, end - pos), 1);
        const len = Math.min(ext!.length, COPY_PIECE, end - pos);
        this.faultCheck('read', this.record.source, pos, len);
        if ((ext!.flags & EXTENT_ZERO) !== 0) {
          out.push({ pos, len, data: undefined });
        } else {
          const data = Buffer.allocUnsafe(len);
          await from.read(pos, data);
          out.push({ pos, len, data });
        }
        pos += len;
      }
    }
    return out;
  }

  /** What a step does once nothing is pending: the mode's next state. */
  private async afterStep(copied: number): Promise<number> {
    if (this.state !== 'copying' || this.diff.count !== 0) return copied;
    if (this.rec.mode === 'consistency') await this.startCycles();
    else if (this.rec.mode !== 'sync') this.drainedAt = new Date(this.ctx.now()).toISOString();
    return copied;
  }

  /**
   * Asynchronous modes, J5: a region whose units are all copied (and flushed on both sides by
   * the step) and none held by a write loses its intent. Lazy: appended with the step's sync.
   */
  private clearDrainedIntent(copied: number[]): void {
    const region = this.intentRegionUnits;
    const mine = new Set(copied);
    const seen = new Set<number>();
    for (const u of copied) {
      const r0 = u - (u % region);
      if (seen.has(r0)) continue;
      seen.add(r0);
      const r1 = Math.min(this.geo.units, r0 + region);
      if (!this.intent.anySet(r0, r1) || this.diff.anySet(r0, r1)) continue;
      let held = false;
      for (const l of this.locks.lockedUnits()) if (l >= r0 && l < r1 && !mine.has(l)) held = true;
      if (held) continue;
      this.intent.clear(r0, r1 - r0);
      this.ctx.journal.clearBits(this.id, 'intent', r0, r1 - r0);
    }
  }

  /** Under a cut (no host writes): every pending unit to the remote. */
  private async drainAll(): Promise<void> {
    while (this.diff.count > 0) {
      const units: number[] = [];
      for (let u = this.diff.nextSet(0); u < this.geo.units && units.length < 512; u = this.diff.nextSet(u + 1)) units.push(u);
      await this.sendUnits(units);
      for (const u of units) {
        this.diff.clear(u);
        this.ctx.journal.clearBits(this.id, 'diff', u, 1);
      }
    }
    this.drainedAt = new Date(this.ctx.now()).toISOString();
  }

  private describe(): string {
    return `${this.record.source} -> ${this.record.destination}`;
  }
}

/**
 * A failure of a call the pair cannot go on without, as the halt it causes: a link failure as it
 * is; the remote's refusal (its end halted on its own: that array restarted) as link-down with
 * its reason, so the pair resumes (and resyncs) when it can.
 */
function asLinkError(err: unknown): RemoteLinkError {
  if (err instanceof RemoteLinkError) return err;
  if (err instanceof RemoteRefusalError) return new RemoteLinkError(err.message, 'link-down');
  throw err;
}
