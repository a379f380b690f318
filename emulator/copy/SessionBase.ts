/**
 * What the session types share: identity, state changes through the journal, progress and
 * rate, unit locks, and the small data moves (copy a unit, persist bits) every type uses.
 */
import { EXTENT_ZERO, type BlockDevice } from '../block/BlockDevice.js';
import { type CopyBitmap, UnitGeometry } from './CopyBitmap.js';
import type { WriteOptions, ZeroOptions } from '../block/BlockDevice.js';
import type { RecBuffer } from './recBuffer.js';
import {
  COPY_TYPE_NAMES,
  type Mutation,
  type HaltReason,
  type RecMode,
  type RecRecord,
  type RemoteLinkError,
  type CopyFaultError,
  invariant,
  type BitmapName,
  type CopyEvent,
  type CopySession,
  type CopyState,
  type CopyType,
  type SessionInfo,
  type SessionRecord,
} from './CopySession.js';
import type { SessionJournal } from './SessionJournal.js';
import { UnitLocks } from './UnitLocks.js';
import type { VolumeTap } from './VolumeTap.js';

/** What the engine gives each session. */
export interface SessionContext {
  readonly journal: SessionJournal;
  tap(volume: string): VolumeTap;
  emit(ev: Omit<CopyEvent, 'at'>): void;
  now(): number;
  /** EC write intent is recorded this many bytes at a time (CopyEngineOptions.intentRegion). */
  readonly intentRegion: number;
  /**
   * Consulted before each of a session's own reads and writes (background copy, copy-on-write,
   * EC mirroring, SnapOPC+ saves): throws CopyFaultError when an injected fault fires.
   */
  copyFault(sessionId: string, op: 'read' | 'write', volume: string, offset: number, length: number, blockSize: number): void;
  /** REC: the pair's link to its remote end (CopyEngineOptions.remote); throws when there is none. */
  recLink(record: SessionRecord, events: RecLinkEvents): RecLink;
  /** REC: the link of a session went down or came back (the engine halts or auto-resumes it, in its queue). */
  linkEvent(sessionId: string, event: 'up' | 'down', err?: RemoteLinkError): void;
  /**
   * Runs fn if the control operation running now is undone (refused half way, or its commit
   * failed), after the engine's memory is put back: a REC pair whose remote end changed already
   * halts then, so that a resume reconciles the two. Nothing when no control operation runs.
   */
  onRollback(fn: () => void): void;
  /** A session that idles when drained (REC stack) has work again: the engine schedules its copier. */
  wake(sessionId: string): void;
  /** REC consistency mode: the REC buffer to a remote (one per remote, shared by its pairs). */
  recBuffer(remote: string): RecBuffer;
}

/** What a REC link tells its session (through the engine). */
export interface RecLinkEvents {
  up(): void;
  down(err: RemoteLinkError): void;
}

/**
 * A REC pair's link to its remote end: the data path (writes, flush) and the pair's control
 * calls to the remote array. emulator/remote implements it; every failure is a RemoteLinkError.
 */
export interface RecLink {
  /** The data path is connected now. */
  readonly up: boolean;
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  flush(): Promise<void>;
  /** Tells the remote end the pair's state (and mode, when it changes). */
  setRemoteState(
    state: RemoteEndState,
    extra?: {
      imageAt?: string | undefined;
      haltReason?: HaltReason | undefined;
      mode?: RecMode | undefined;
      /** The source copied every unit that may differ since the last resume (see remote.proto). */
      resynced?: boolean | undefined;
    },
  ): Promise<void>;
  /**
   * The remote end goes copying; returns the runs of units its hosts changed ([start, count]),
   * and whether its array restarted while the pair was live (writes it had not flushed may be lost).
   */
  resumeRemote(force: boolean): Promise<{ runs: Array<[number, number]>; restarted: boolean }>;
  /** Reverse: the remote end becomes the source, taking `changed` (units changed here) with it. */
  reverseRemote(changed: Array<[number, number]>, rec: RecRecord): Promise<void>;
  /** While on, a link that is down reconnects with back-off and calls events.up() once it is. */
  watch(on: boolean): void;
  /** Stops the link for good (the session ended or the engine closes). */
  close(): void;
}

/** The states a remote end takes. */
export type RemoteEndState = 'copying' | 'equivalent' | 'suspended' | 'split' | 'halt';

/**
 * Largest read/write one copy issues: a run of adjacent units moves in pieces of this size
 * (one pread on the threadpool, one pwrite) rather than a 64 KiB read and write per unit.
 */
const COPY_PIECE = 1024 * 1024;
/**
 * Pieces one copy reads at once: a single read in flight left the source disk idle while
 * each piece was written (a cold source is read at queue depth 1 otherwise).
 */
const COPY_DEPTH = 4;
/** Copy buffers, reused: a fresh 64 KiB Buffer per unit cost 23% of an OPC in GC (profile). */
const copyBuffers: Buffer[] = [];
/** Free copy buffers kept for the next copy (enough for two copies at once). */
const COPY_BUFFERS_KEPT = 2 * COPY_DEPTH;

export abstract class SessionBase implements CopySession {
  readonly geo: UnitGeometry;
  readonly locks = new UnitLocks();
  /** Set once the session has ended; the engine then forgets it. */
  done = false;
  /**
   * The background copy's current failure episode (CopyEngine: back-off and one event per
   * episode); not journalled: it describes now, not the session.
   */
  copyFailure: { message: string; since: string; attempts: number; retryAt: number } | undefined;
  private copiedWindow: Array<[at: number, units: number]> = [];

  constructor(
    protected readonly ctx: SessionContext,
    public record: SessionRecord,
    blockSize: number,
  ) {
    this.geo = new UnitGeometry(record.sizeBytes, record.unitSize, blockSize);
    // Records journalled before imageAt existed: a point-in-time copy's image is of its
    // start; an EC pair's suspend instant was never kept, so it stays unknown.
    if (record.imageAt === undefined && record.type !== 'ec') this.record = { ...record, imageAt: record.createdAt };
  }

  get id(): string {
    return this.record.id;
  }
  get type(): CopyType {
    return this.record.type;
  }
  get state(): CopyState {
    return this.record.state;
  }
  get src(): VolumeTap {
    return this.ctx.tap(this.record.source);
  }
  get dst(): VolumeTap {
    return this.ctx.tap(this.record.destination);
  }

  /** Units copied (or known equal) so far. */
  abstract copiedUnits(): number;
  abstract pendingUnits(): number;
  abstract copyStep(maxUnits: number): Promise<number>;
  /** Attaches the session's roles to its volumes' taps (under their holds). */
  abstract attach(): void;
  abstract detach(): void;
  /** Every bitmap of the session (what checkpoint() keeps). */
  protected abstract bitmaps(): CopyBitmap[];

  /**
   * The session's state now, and how to put it back: CopyEngine's undo of a control
   * operation whose commit failed (J7). Records are replaced, never changed in place.
   */
  checkpoint(): () => void {
    const { record, done } = this;
    const maps = this.bitmaps().map((b) => [b, b.snapshot()] as const);
    return () => {
      this.record = record;
      this.done = done;
      for (const [b, copy] of maps) b.restore(copy);
    };
  }

  /** Records a new state: appended to the journal (the caller syncs) and announced. */
  protected setState(state: CopyState, message: string, extra: Partial<SessionRecord> = {}): void {
    this.record = withoutUndefined({ ...this.record, ...extra, state });
    // Every error-suspended session says why (copy list/show, the agent's refusals); no other keeps a reason.
    this.check((state === 'error-suspended') === (this.record.error !== undefined), `state ${state} with error ${String(this.record.error)}`);
    this.ctx.journal.putSession(this.record);
    this.ctx.emit({ sessionId: this.id, kind: state === 'error-suspended' ? 'error' : 'state', state, message });
  }

  /**
   * An injected fault fired on the session's own I/O (`during` says which): the session goes
   * error-suspended with the reason, journalled (the caller syncs) and announced ('error'
   * event). What it means per type is the type's errorFix() and its roles' behaviour.
   */
  protected errorSuspend(err: CopyFaultError, during: string): void {
    this.check(this.state !== 'error-suspended', 'error-suspended twice');
    const r = this.record;
    const msg = `${COPY_TYPE_NAMES[r.type]} session ${r.id} (${r.source} -> ${r.destination}) is error-suspended: ${during} failed: ${err.message}; ${this.errorFix()}`;
    this.copyFailure = undefined; // not a retried episode any more
    this.setState('error-suspended', msg, { error: msg, ...(r.type === 'ec' ? { imageAt: undefined } : {}) });
  }

  /** What an operator does about an error-suspended session of this type (the end of its reason). */
  protected errorFix(): string {
    return 'cancel the session';
  }

  /** The engine's check of the session's own I/O (see SessionContext.copyFault). */
  protected faultCheck(op: 'read' | 'write', volume: string, offset: number, length: number): void {
    this.ctx.copyFault(this.id, op, volume, offset, length, this.geo.blockSize);
  }

  setRate(rate: number): void {
    this.record = { ...this.record, rate };
    this.ctx.journal.putSession(this.record);
  }

  info(): SessionInfo {
    const r = this.record;
    const copied = this.copiedUnits();
    const pending = this.pendingUnits();
    return {
      id: r.id,
      type: r.type,
      state: r.state,
      source: r.source,
      destination: r.destination,
      unitSize: r.unitSize,
      copiedBlocks: copied,
      totalBlocks: this.geo.units,
      rate: r.rate,
      etaSeconds: pending === 0 ? undefined : this.eta(pending),
      createdAt: r.createdAt,
      ...(r.imageAt !== undefined ? { imageAt: r.imageAt } : {}),
      ...(r.generation !== undefined ? { generation: r.generation } : {}),
      ...(r.reversed ? { reversed: true } : {}),
      ...(r.error !== undefined ? { error: r.error } : this.failureInfo()),
      ...(r.group !== undefined ? { group: r.group } : {}),
    };
  }

  private failureInfo(): Pick<SessionInfo, 'error' | 'errorSince' | 'retryAt'> {
    const f = this.copyFailure;
    if (f === undefined) return {};
    const retrying = this.state === 'copying' && this.record.rate !== 0;
    return { error: f.message, errorSince: f.since, ...(retrying ? { retryAt: new Date(f.retryAt).toISOString() } : {}) };
  }

  /** Notes units copied by the background copier, for the measured rate. */
  protected noteCopied(units: number): void {
    const now = this.ctx.now();
    this.copiedWindow.push([now, units]);
    while (this.copiedWindow.length > 0 && now - this.copiedWindow[0]![0] > 10_000) this.copiedWindow.shift();
  }

  private eta(pendingUnits: number): number | undefined {
    const bytes = pendingUnits * this.record.unitSize;
    const w = this.copiedWindow;
    if (w.length >= 2) {
      const span = (w[w.length - 1]![0] - w[0]![0]) / 1000;
      const units = w.slice(1).reduce((a, [, n]) => a + n, 0);
      if (span > 0 && units > 0) return bytes / ((units * this.record.unitSize) / span);
    }
    if (this.record.rate > 0 && Number.isFinite(this.record.rate)) return bytes / this.record.rate;
    return undefined;
  }

  // ---- data moves ----

  /**
   * Copies units (ascending) from one device to the other, at the same offsets: adjacent units
   * as one run, in COPY_PIECE pieces through a pooled buffer. Parts of the source that read as
   * zeroes (block status) become write-zeroes, so a thin destination stays thin.
   * progress.end: where the written prefix ends (pieces complete in ascending order), so a
   * caller whose copy failed part-way can keep the units before it (copiedBefore).
   */
  protected async copyUnits(from: BlockDevice, to: Pick<BlockDevice, 'write' | 'writeZeroes'>, units: number[], progress?: { end: number }): Promise<void> {
    if (units.length === 0) return;
    // COPY_DEPTH buffers: that many pieces are read at once (on the threadpool) while the
    // oldest is written; pieces are written in order, each once its read is done.
    const bufs: Buffer[] = [];
    for (let i = 0; i < COPY_DEPTH; i++) bufs.push(copyBuffers.pop() ?? Buffer.allocUnsafeSlow(COPY_PIECE));
    const reading: Array<{ pos: number; piece: Buffer; read: Promise<void> }> = [];
    // Injected faults act on the pair's names (a copy always runs source -> destination).
    const { source, destination } = this.record;
    const writeOldest = async (): Promise<void> => {
      const p = reading.shift()!;
      await p.read;
      this.faultCheck('write', destination, p.pos, p.piece.length);
      await to.write(p.pos, p.piece);
      if (progress !== undefined) progress.end = p.pos + p.piece.length;
    };
    let k = 0;
    try {
      for (const [s, n] of toRuns(units)) {
        const end = this.geo.start(s + n - 1) + this.geo.length(s + n - 1);
        for (let pos = this.geo.start(s); pos < end; ) {
          const [ext] = await from.blockStatus(pos, Math.min(COPY_PIECE, end - pos), 1);
          const len = Math.min(ext!.length, COPY_PIECE, end - pos);
          this.faultCheck('read', source, pos, len);
          if ((ext!.flags & EXTENT_ZERO) !== 0) {
            while (reading.length > 0) await writeOldest();
            this.faultCheck('write', destination, pos, len);
            await to.writeZeroes(pos, len);
            if (progress !== undefined) progress.end = pos + len;
          } else {
            // The buffer of piece k - COPY_DEPTH is free once fewer than COPY_DEPTH are queued.
            if (reading.length === COPY_DEPTH) await writeOldest();
            const piece = bufs[k++ % COPY_DEPTH]!.subarray(0, len);
            const read = from.read(pos, piece);
            read.catch(() => undefined); // awaited in writeOldest; not unhandled if a write fails first
            reading.push({ pos, piece, read });
          }
          pos += len;
        }
      }
      while (reading.length > 0) await writeOldest();
    } finally {
      // The buffers are ours again only once no read is filling them.
      for (const p of reading) await p.read.catch(() => undefined);
      for (const b of bufs) if (copyBuffers.length < COPY_BUFFERS_KEPT) copyBuffers.push(b);
    }
  }

  /** The units (a prefix of the ascending list) whose whole range a copy wrote before it stopped at byte end. */
  protected copiedBefore(units: number[], end: number): number[] {
    let n = 0;
    while (n < units.length && this.geo.start(units[n]!) + this.geo.length(units[n]!) <= end) n++;
    return units.slice(0, n);
  }

  /**
   * Makes bits durable (J1..J3: the caller has already made the data they describe durable),
   * then sets them in memory (J6). Each entry: bitmap name, the bitmap, units to set.
   */
  protected async persistSet(entries: Array<[BitmapName, CopyBitmap, number[]]>): Promise<void> {
    let any = false;
    for (const [name, , units] of entries) {
      for (const [s, n] of toRuns(units)) {
        this.ctx.journal.setBits(this.id, name, s, n);
        any = true;
      }
    }
    if (!any) return;
    await this.ctx.journal.sync();
    for (const [, bitmap, units] of entries) for (const u of units) bitmap.set(u);
  }

  /**
   * A host's mutation mirrored to the pair's destination (EC: below the destination's tap; REC:
   * the link): only the part inside the pair (after a reverse the source may be the larger
   * volume), after the fault check of the session's own I/O.
   */
  protected mirrorInside(m: Mutation, to: Pick<BlockDevice, 'write' | 'writeZeroes'>): Promise<void> {
    const end = Math.min(m.offset + m.length, this.geo.sizeBytes);
    if (end <= m.offset) return Promise.resolve();
    try {
      this.faultCheck('write', this.record.destination, m.offset, end - m.offset);
    } catch (err) {
      return Promise.reject(err);
    }
    const len = end - m.offset;
    if (m.kind === 'write') return to.write(m.offset, len === m.length ? m.data : m.data.subarray(0, len), m.opts);
    return to.writeZeroes(m.offset, len, m.opts);
  }

  /**
   * J5 after both sides were flushed: write intent goes (lazily journalled) for every unit no
   * write held while the flush ran (`touched`) or holds now.
   */
  protected clearIntentExcept(intent: CopyBitmap, touched: Set<number>): void {
    for (const [s, n] of intent.runs()) {
      for (let u = s; u < s + n; u++) {
        if (touched.has(u) || this.locks.isLocked(u)) continue;
        intent.clear(u);
        this.ctx.journal.clearBits(this.id, 'intent', u, 1);
      }
    }
  }

  /** Units in one write-intent region (CopyEngineOptions.intentRegion). */
  protected get intentRegionUnits(): number {
    return Math.max(1, Math.floor(this.ctx.intentRegion / this.record.unitSize));
  }

  /**
   * J3 for a write to units [u0, u1): write intent is made durable a whole region at a time, so
   * only the first write to a region after intent was cleared pays a journal commit; a crash
   * resyncs at most the regions written since. Call under the units' locks.
   */
  protected async persistIntent(intent: CopyBitmap, u0: number, u1: number): Promise<void> {
    if (intent.allSet(u0, u1)) return;
    const region = this.intentRegionUnits;
    const r0 = u0 - (u0 % region);
    const r1 = Math.min(this.geo.units, Math.ceil(u1 / region) * region);
    await this.persistSet([['intent', intent, this.clearIn(intent, r0, r1)]]);
  }

  /** Units of [u0, u1) whose bit is clear. */
  protected clearIn(bitmap: CopyBitmap, u0: number, u1: number): number[] {
    const out: number[] = [];
    for (let u = bitmap.nextClear(u0, u1); u < u1; u = bitmap.nextClear(u + 1, u1)) out.push(u);
    return out;
  }

  /** Locks up to max units in ascending order starting at the first bit in `want` at or after the cursor. */
  protected async lockBatch(want: (from: number) => number, stillWanted: (u: number) => boolean, from: number, max: number): Promise<number[]> {
    const got: number[] = [];
    const n = this.geo.units;
    let u = want(from);
    if (u >= n && from > 0) u = want(0);
    while (u < n && got.length < max) {
      const p = this.locks.lock(u);
      if (p !== undefined) await p;
      if (stillWanted(u)) got.push(u);
      else this.locks.unlock(u);
      u = want(u + 1);
    }
    return got;
  }

  protected unlockAll(units: number[]): void {
    for (const u of units) this.locks.unlock(u);
  }

  protected check(cond: unknown, msg: string): asserts cond {
    invariant(cond, `session ${this.id}: ${msg}`);
  }
}

/** The record without keys set to undefined (setState's way to drop a field, e.g. imageAt). */
function withoutUndefined(r: SessionRecord): SessionRecord {
  for (const k of Object.keys(r) as Array<keyof SessionRecord>) if (r[k] === undefined) delete r[k];
  return r;
}

/** Ascending unit list -> runs. */
export function toRuns(units: number[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const u of units) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === u) last[1]++;
    else out.push([u, 1]);
  }
  return out;
}

/** Reads the parts of units `units` that overlap [offset, offset + into.length) from dev. */
export async function overlayUnits(dev: BlockDevice, geo: UnitGeometry, units: number[], offset: number, into: Buffer): Promise<void> {
  const end = offset + into.length;
  for (const [s, n] of toRuns(units)) {
    const a = Math.max(offset, geo.start(s));
    const b = Math.min(end, geo.start(s + n - 1) + geo.length(s + n - 1));
    if (b > a) await dev.read(a, into.subarray(a - offset, b - offset));
  }
}
