/**
 * The copy engine: owns the sessions, adopts volumes (one VolumeTap layer each), enforces
 * the refusal rules, takes cuts, runs the background copier, and recovers from the journal.
 *
 * Control operations (start, suspend, resume, reverse, split, rejoin, cancel, rate) and
 * background copy steps run one at a time through one queue, so a step never runs beside a
 * control operation on the same session. Block I/O never waits for that queue (it waits at
 * most for a cut's hold and for per-unit locks).
 *
 * Clock. 'timers' (default): each copying session with a non-zero rate has one timer; a tick
 * copies as many units as the rate allows for the tick's length (unthrottled: a batch per
 * setImmediate turn), then re-arms. No busy loop: a session with nothing to copy has no timer.
 * 'manual': no timers at all; the caller drives step() (tests, the simulator).
 *
 * All or nothing (J7 in SessionJournal.ts). Each control operation runs inside its cut as a
 * transaction (atomically()): the journal stages the appends of every session on the cut's
 * volumes and commits them in one commit at the end; until that commit succeeded nothing is
 * announced, and if the operation is refused half way or the commit fails (e.g. SQLITE_FULL:
 * the data directory's disk is full) the engine's memory is put back as it was (sessions,
 * SnapOPC+ chains, records, bitmaps, the taps' roles). The cut is what makes this safe: no
 * host write to those volumes runs meanwhile, so no hot-path append is staged.
 *
 * Background copy failures (e.g. a destination write fails ENOSPC) are one episode per
 * session: one 'error' event when it begins, retries with exponential back-off (1 s
 * doubling to 60 s), the error shown in the session's info, one 'state' event when a step
 * works again.
 *
 * Injected faults (CopyEngineOptions.faults, the array's fault engine) act on a session's own
 * I/O: background copy reads and writes, copy-on-writes, EC mirrored writes, SnapOPC+ saves.
 * One that fires error-suspends the session at once (journalled, an 'error' event, the reason
 * in its info), as an array's copy path does on a hardware error; no retry. Per type: EC —
 * source writes go on and are recorded, resume resyncs once the cause is gone, or cancel;
 * OPC/QuickOPC — copying stops, uncopied destination units fail EIO, cancel; SnapOPC+ — as a
 * full snap volume. See each type's file.
 *
 * Wiring (StorageArray): adopt each volume with addVolume() right after it is opened or
 * created and before any client can open it (the tap must see every write to drain it at a
 * cut), then call recover() once.
 */
import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../block/BlockDevice.js';
import { holdVolumes, type GroupAction } from './ConsistencyGroup.js';
import {
  COPY_TYPE_NAMES,
  CopyError,
  CopyFaultError,
  DEFAULT_UNIT_SIZE,
  invariant,
  MAX_SNAP_GENERATIONS,
  type CopyEvent,
  type CopyFaultHook,
  type CopyState,
  type CopyType,
  isRemoteVolume,
  type HaltReason,
  type RecMode,
  REC_MODES,
  RemoteLinkError,
  RemoteRefusalError,
  type SessionInfo,
  type SessionRecord,
} from './CopySession.js';
import { EcSession } from './equivalentCopy.js';
import { RecRemoteEnd } from './recRemoteEnd.js';
import { RecBuffer, type RecBufferSettings } from './recBuffer.js';
import { RecSession } from './remoteEquivalentCopy.js';
import { RopcSession } from './remoteOpc.js';
import { OpcSession } from './opc.js';
import type { RecLink, RecLinkEvents, RemoteEndState, SessionBase, SessionContext } from './SessionBase.js';
import type { JournalSession, SessionJournal } from './SessionJournal.js';
import { type SessionBitmap, sessionBitmap } from './sessionBitmap.js';
import { SnapChain, SnapGeneration } from './snapOpcPlus.js';
import { VolumeTap } from './VolumeTap.js';

/** What the engine needs of a volume; the array's Volume satisfies it. */
export interface CopyVolume {
  readonly name: string;
  pushLayer(make: (below: BlockDevice) => BlockDevice): BlockDevice;
  popLayer(layer: BlockDevice): void;
}

export interface CopyEngineOptions {
  journal: SessionJournal;
  clock?: 'timers' | 'manual';
  /** Milliseconds; default Date.now. */
  now?: () => number;
  defaultUnitSize?: number;
  /** Most units one step copies per session (default 64). */
  stepUnits?: number;
  newId?: () => string;
  /** Events kept for list/inspection (default 1000). */
  maxEvents?: number;
  /**
   * EC write intent granularity in bytes (default 64 MiB, md's write-intent chunk): only the
   * first write to a region after a flush pays a journal commit; a crash resyncs at most the
   * regions written since the last flush. Recorded per unit, nearly every random write paid one.
   */
  intentRegion?: number;
  /** Injected faults on the sessions' own I/O (the array's fault engine); none by default. */
  faults?: CopyFaultHook | undefined;
  /** REC: links to other arrays (emulator/remote); without it REC sessions cannot start or run. */
  remote?: RemoteCopyHook | undefined;
}

/** What the engine needs of the other arrays for REC (emulator/remote's RemoteArrays implements it). */
export interface RemoteCopyHook {
  /** Checks a REC destination REMOTE:VOLUME names a registered remote; throws a CopyError naming the fix. */
  checkRemote(remote: string): void;
  /** Registers the pair's remote end on the remote array (OpenRemoteEnd); throws RemoteLinkError or the remote's refusal. */
  openRemoteEnd(record: SessionRecord, blockSize: number, force: boolean): Promise<void>;
  /** Tells the remote array the pair ended (CloseRemoteEnd). */
  closeRemoteEnd(record: SessionRecord): Promise<void>;
  /** The data path and control calls of one pair. */
  link(record: SessionRecord, events: RecLinkEvents): RecLink;
  /** Consistency mode: how the REC buffer to a remote behaves. */
  bufferSettings(remote: string): RecBufferSettings;
  /** Consistency mode: the remote applies the staged cycle of these pairs as one (CommitCycle). */
  commitCycle(remote: string, cycle: number, pairIds: string[]): Promise<void>;
}

/** A remote end's volume, for the array's cycle stages. */
export interface RemoteEndRef {
  id: string;
  volume: string;
  tap: VolumeTap;
}

export interface RecStartOptions extends StartOptions {
  /** rec (default): a mirror; ropc: a point-in-time copy that ends once the remote has it all. */
  type?: 'rec' | 'ropc';
  mode?: RecMode;
  split?: 'auto' | 'manual';
  recovery?: 'auto' | 'manual';
  /** Start even if the remote volume is exported read-write to a connected client there. */
  force?: boolean;
}

/** What the source array asks of a remote end at OpenRemoteEnd. */
export interface RemoteEndRequest {
  pairId: string;
  /** The source as this array shows it: PEER:VOLUME. */
  source: string;
  peer: string;
  peerArrayId: string;
  sourceVolume: string;
  volume: string;
  sizeBytes: number;
  blockSize: number;
  unitSize: number;
  mode: RecMode;
  secret: string;
}

export interface StartOptions {
  /** Bytes per second: 0 = no background copy, Infinity (default) = unthrottled. */
  rate?: number;
  /** Copy granularity in bytes (default 64 KiB). */
  unitSize?: number;
  /** Consistency group label, kept in the record. */
  group?: string;
}

export interface SnapStartOptions {
  unitSize?: number;
  /** With 8 generations already: refuse instead of dropping the oldest. */
  refuseIfFull?: boolean;
  group?: string;
}

/**
 * The caller's last refusal of a control operation that overwrites a volume hosts may have
 * open (resume and rejoin: the destination; reverse and restore from clone: the source, which
 * becomes the destination). It gets that volume and the pair's other one, and throws to refuse
 * (StorageArray: clients writing to it). The engine calls it under the cut, after its own
 * refusals and synchronously before the change, so no client can open the volume in between.
 */
export type OverwriteCheck = (overwritten: string, other: string) => void;

export interface OverwriteOptions {
  check?: OverwriteCheck | undefined;
  /** REC: passed to the remote end, whose array makes the check there. */
  force?: boolean | undefined;
}

const TICK_MS = 50;
/** Background copy retry back-off after a failure: the first delay, doubled per failure up to the cap. */
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 60_000;
/**
 * Most bytes one timer-driven step copies (unthrottled, or a high rate): each step ends with a
 * destination flush and a journal commit, so at 4 MiB (64 units) those dominated an OPC.
 * Measured (bench:copy, 2 GiB OPC, one run each): 32 MiB 2.59 s, 64 MiB 2.32 s, 128 MiB 2.30 s.
 * A step keeps its units locked until its commit, so a host write to one of them waits for the
 * step (about 80 ms at 64 MiB here): 64 MiB takes nearly all the gain for half the wait.
 */
const TIMER_STEP_BYTES = 64 * 1024 * 1024;

/** How many ended sessions endedAs() remembers. */
const ENDED_KEPT = 10_000;

export class CopyEngine {
  private readonly taps = new Map<string, { volume: CopyVolume; tap: VolumeTap }>();
  private readonly sessions = new Map<string, SessionBase>();
  private readonly chains = new Map<string, SnapChain>();
  private readonly timers = new Map<string, NodeJS.Timeout | NodeJS.Immediate>();
  /** Sessions whose step is queued or running (schedule() waits for it). */
  private readonly stepping = new Set<string>();
  private readonly listeners = new Set<(e: CopyEvent) => void>();
  readonly events: CopyEvent[] = [];
  /**
   * How recently removed sessions ended, set when they are removed (their events wait for the
   * commit): a reader that finds a session gone can tell an OPC that finished from one that was
   * cancelled at once. Bounded: the oldest entries go first.
   */
  private readonly ended = new Map<string, 'completed' | 'cancelled' | 'dropped'>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** The control operation running now (atomically): its sessions, and their events held back until it commits. */
  private tx: { ids: Set<string>; events: CopyEvent[]; rollbacks: Array<() => void> } | undefined;
  private readonly ctx: SessionContext;
  private readonly journal: SessionJournal;
  private readonly clock: 'timers' | 'manual';
  private readonly now: () => number;
  private readonly unitSize: number;
  private readonly stepUnits: number;
  private readonly newId: () => string;
  private readonly maxEvents: number;

  constructor(opts: CopyEngineOptions) {
    this.journal = opts.journal;
    this.clock = opts.clock ?? 'timers';
    this.now = opts.now ?? Date.now;
    this.unitSize = opts.defaultUnitSize ?? DEFAULT_UNIT_SIZE;
    this.stepUnits = opts.stepUnits ?? 64;
    this.newId = opts.newId ?? (() => randomUUID());
    this.maxEvents = opts.maxEvents ?? 1000;
    this.ctx = {
      journal: this.journal,
      tap: (name) => this.tapOf(name),
      emit: (e) => this.emit(e),
      now: this.now,
      intentRegion: opts.intentRegion ?? 64 * 1024 * 1024,
      copyFault: (id, op, volume, offset, length, blockSize) => {
        const hook = opts.faults;
        if (hook === undefined) return;
        try {
          hook.copyFault(id, op, volume, offset, length, blockSize);
        } catch (err) {
          // The hook's message names the volume, the byte and the fault (FaultEngine.copyFault).
          throw new CopyFaultError((err as Error).message, volume, op);
        }
      },
      recLink: (record, events) => {
        if (opts.remote === undefined)
          throw new RemoteLinkError(`this array has no remote links; REC session ${record.id} cannot reach ${record.destination}`, 'link-down');
        return opts.remote.link(record, events);
      },
      linkEvent: (id, event, err) => this.linkEvent(id, event, err),
      onRollback: (fn) => {
        this.tx?.rollbacks.push(fn);
      },
      wake: (id) => {
        const s = this.sessions.get(id);
        if (s !== undefined) this.schedule(s);
      },
      recBuffer: (remote) => {
        let b = this.buffers.get(remote);
        if (b === undefined) {
          const hook = opts.remote;
          if (hook === undefined) throw new RemoteLinkError('this array has no remote links', 'link-down');
          b = new RecBuffer(remote, hook.bufferSettings(remote), (cycle, ids) => hook.commitCycle(remote, cycle, ids), this.now);
          this.buffers.set(remote, b);
        }
        return b;
      },
    };
    this.remote = opts.remote;
  }

  private readonly remote: RemoteCopyHook | undefined;
  /** Consistency mode: one REC buffer per remote array, made on first use. */
  private readonly buffers = new Map<string, RecBuffer>();

  /** The REC buffer to a remote, if a consistency-mode pair made one (its settings can change live). */
  recBufferOf(remote: string): RecBuffer | undefined {
    return this.buffers.get(remote);
  }

  // ---- volumes ----

  /** Puts the engine's layer on a volume (once); returns the tap. */
  addVolume(volume: CopyVolume): VolumeTap {
    const have = this.taps.get(volume.name);
    if (have !== undefined) return have.tap;
    let tap: VolumeTap | undefined;
    volume.pushLayer((below) => (tap = new VolumeTap(volume.name, below)));
    invariant(tap !== undefined, 'pushLayer did not call the factory');
    this.taps.set(volume.name, { volume, tap });
    return tap;
  }

  /**
   * Takes the layer off a volume (deleting it); refused while it is in a session. `persist` is
   * the caller's durable step (StorageArray: deleting the volume's row), run after the refusal
   * and before anything changes, synchronously: if it throws, nothing has changed.
   */
  removeVolume(name: string, persist: () => void = () => undefined): void {
    const t = this.taps.get(name);
    const s = this.sessionsOf(name)[0];
    if (s !== undefined)
      throw new CopyError('FAILED_PRECONDITION', `volume ${name} is in copy session ${s.id} (${s.type}, ${s.state}); cancel the session first`);
    persist();
    if (t === undefined) return;
    t.volume.popLayer(t.tap);
    this.taps.delete(name);
  }

  /**
   * Renames a volume the engine knows, in every session that names it (e.g. the split clone
   * of an EC pair, which stays in its session for a later rejoin).
   *
   * `persist` is the caller's durable step (StorageArray: one SQLite transaction that renames
   * the volume row and rewrites the source/destination of the journal's session records). It
   * must be synchronous; if it throws, nothing has changed.
   *
   * Why this order is crash-atomic and safe against concurrent journal commits:
   *  - It runs in the control queue (no control operation or copy step beside it) and under a
   *    cut of the volume (no write to it in flight).
   *  - persist() comes first: durable before in memory, as everywhere else. A crash before it
   *    leaves the old name everywhere; after it, the new name everywhere, because the journal's
   *    records are rewritten in the same transaction as the volume row.
   *  - From persist() to the re-puts below everything is synchronous: no journal commit (which
   *    runs on its own setImmediate turn), no I/O completion and no lookup by name can run in
   *    between, so nothing sees the maps half renamed.
   *  - A record appended before (still pending in the journal, old name) would overwrite the
   *    rewritten one at the next commit; re-putting every affected record replaces it, so that
   *    commit writes the new name again. Records appended later come from the renamed
   *    in-memory records. Sessions look volumes up by name on every use (ctx.tap), never by
   *    a name kept across an await, so in-flight work on other volumes follows at once.
   *  - The final sync() makes the rename durable where persist() does not (engines on other
   *    journals, e.g. the tests' MemoryJournal); for StorageArray it rewrites the same rows.
   */
  renameVolume(oldName: string, newName: string, persist: () => void = () => undefined): Promise<void> {
    return this.serially(async () => {
      const t = this.taps.get(oldName);
      if (t === undefined) throw new CopyError('NOT_FOUND', `no volume named ${oldName} is known to the copy engine`);
      if (newName !== oldName && this.taps.has(newName)) {
        throw new CopyError('ALREADY_EXISTS', `cannot rename volume ${oldName} to ${newName}: a volume named ${newName} exists; choose another name`);
      }
      await this.cut([oldName], async () => {
        persist();
        if (newName === oldName) return; // e.g. a new identity only
        this.taps.delete(oldName);
        this.taps.set(newName, t);
        t.tap.volumeName = newName;
        const chain = this.chains.get(oldName);
        if (chain !== undefined) {
          this.chains.delete(oldName);
          chain.source = newName;
          this.chains.set(newName, chain);
        }
        const renamed: SessionBase[] = [];
        for (const s of this.sessions.values()) {
          const r = s.record;
          if (r.source !== oldName && r.destination !== oldName) continue;
          s.record = { ...r, source: r.source === oldName ? newName : r.source, destination: r.destination === oldName ? newName : r.destination };
          this.journal.putSession(s.record);
          renamed.push(s);
        }
        for (const s of renamed) {
          this.emit({
            sessionId: s.id,
            kind: 'state',
            state: s.state,
            message: `volume ${oldName} renamed to ${newName}: ${s.type} ${s.record.source} -> ${s.record.destination}`,
          });
        }
        await this.journal.sync();
      });
    });
  }

  // ---- recovery ----

  /** Rebuilds the sessions the journal holds (call once, after every volume is added). */
  recover(): Promise<SessionInfo[]> {
    return this.serially(async () => {
      const saved = await this.journal.load();
      saved.sort((a, b) => (a.record.generation ?? 0) - (b.record.generation ?? 0));
      for (const j of saved) {
        const r = j.record;
        const missing = [r.source, r.destination].find((v) => !isRemoteVolume(v) && !this.taps.has(v));
        if (missing !== undefined) {
          this.journal.deleteSession(r.id);
          this.emit({
            sessionId: r.id,
            kind: 'cancelled',
            message: `session ${r.id} dropped at recovery: volume ${missing} no longer exists`,
          });
          continue;
        }
        const s = this.build(j);
        await this.cut([r.source, r.destination], async () => this.install(s));
        if (s instanceof EcSession || s instanceof RecSession || s instanceof RecRemoteEnd) s.recover();
      }
      await this.journal.sync();
      for (const s of this.sessions.values()) this.schedule(s);
      return this.list();
    });
  }

  // ---- starting sessions ----

  startOpc(source: string, destination: string, opts: StartOptions = {}): Promise<SessionInfo> {
    return this.control('opc', [source, destination], () => this.doStartCopy('opc', source, destination, opts));
  }

  /** Starts a QuickOPC session, or restarts the tracking one of this pair (differential). */
  startQuickOpc(source: string, destination: string, opts: StartOptions = {}): Promise<SessionInfo> {
    return this.control('quickopc', [source, destination], () => this.doStartCopy('quickopc', source, destination, opts));
  }

  startEc(source: string, destination: string, opts: StartOptions = {}): Promise<SessionInfo> {
    return this.control('ec', [source, destination], () => this.doStartCopy('ec', source, destination, opts));
  }

  /**
   * Starts a REC pair: source (a volume here) -> destination REMOTE:VOLUME. The remote end is
   * opened on the remote array first (its refusals come back as they are); then the pair is
   * committed here under a cut of the source. If that commit fails the remote end is closed.
   */
  startRec(source: string, destination: string, opts: RecStartOptions = {}): Promise<SessionInfo> {
    return this.serially(async () => {
      const remote = this.remote;
      if (remote === undefined) throw new CopyError('FAILED_PRECONDITION', `cannot start REC ${source} -> ${destination}: this array has no remote links`);
      const sep = destination.indexOf(':');
      const peer = destination.slice(0, sep);
      const peerVolume = destination.slice(sep + 1);
      if (sep <= 0 || peerVolume === '' || peerVolume.includes(':')) {
        throw new CopyError(
          'INVALID_ARGUMENT',
          `REC destination ${destination} is not REMOTE:VOLUME; name a registered remote array and a volume on it, e.g. site-b:vol1`,
        );
      }
      remote.checkRemote(peer);
      const type = opts.type ?? 'rec';
      const mode: RecMode = type === 'ropc' ? 'ropc' : (opts.mode ?? 'sync');
      if (type === 'rec' && !(REC_MODES as readonly string[]).includes(mode)) {
        throw new CopyError('INVALID_ARGUMENT', `REC mode ${String(mode)} is not one of ${REC_MODES.join(', ')}`);
      }
      const src = this.tapOf(source);
      this.checkSource(source);
      const rate = opts.rate ?? Number.POSITIVE_INFINITY;
      checkRate(rate);
      const record = this.newRecord(type, source, destination, src, opts.unitSize, rate);
      record.rec = {
        role: 'source',
        peer,
        peerVolume,
        mode,
        split: opts.split ?? 'auto',
        recovery: opts.recovery ?? 'auto',
        secret: randomUUID().replaceAll('-', ''),
      };
      if (opts.group) record.group = opts.group;
      try {
        await remote.openRemoteEnd(record, src.blockSize, opts.force ?? false);
      } catch (err) {
        if (err instanceof RemoteLinkError) {
          throw new CopyError(
            'FAILED_PRECONDITION',
            `cannot start REC ${source} -> ${destination}: ${err.message}; check that the remote array runs, or remove link faults`,
          );
        }
        throw err;
      }
      const units = Math.ceil(record.sizeBytes / record.unitSize);
      let info: SessionInfo;
      try {
        info = await this.cut([source], () =>
          this.atomically(`start ${COPY_TYPE_NAMES[type]} ${source} -> ${destination}`, [source], async () => {
            this.tx?.ids.add(record.id);
            this.journal.stage([record.id]);
            await src.below.flush(); // J4
            this.journal.putSession(record);
            this.journal.setBits(record.id, 'diff', 0, units);
            const s = this.build({ record, bitmaps: { diff: [[0, units]] } });
            this.install(s);
            this.emit({ sessionId: s.id, kind: 'started', state: s.state, message: `${COPY_TYPE_NAMES[type]} ${source} -> ${destination} (${mode}) started` });
            return s.info();
          }),
        );
      } catch (err) {
        await remote.closeRemoteEnd(record).catch(() => undefined);
        throw err;
      }
      const s = this.sessions.get(info.id);
      if (s) this.schedule(s);
      return s?.info() ?? info;
    });
  }

  /** REC: switches a pair's transfer mode (sync, stack, through). */
  setRecMode(id: string, mode: RecMode): Promise<SessionInfo> {
    if (!(REC_MODES as readonly string[]).includes(mode)) {
      throw new CopyError('INVALID_ARGUMENT', `REC mode ${String(mode)} is not one of ${REC_MODES.join(', ')}`);
    }
    return this.controlOn(id, `set mode ${mode} of`, async (s) => {
      if (!(s instanceof RecSession)) throw new CopyError('FAILED_PRECONDITION', `cannot set the mode of session ${s.id}: it is not the source of a REC pair`);
      await s.setMode(mode);
    });
  }

  // ---- REC remote ends (called by the source array through RemoteCopyService) ----

  /** Makes a volume of this array the remote end of a pair; `check` is the array's client check (under the cut). */
  openRemoteEnd(req: RemoteEndRequest, check?: (volume: string) => void): Promise<SessionInfo> {
    return this.serially(async () => {
      const have = this.sessions.get(req.pairId);
      if (have instanceof RecRemoteEnd && have.record.destination === req.volume) return have.info(); // a retried open
      if (have !== undefined) throw new CopyError('ALREADY_EXISTS', `copy session ${req.pairId} exists already on this array`);
      const dst = this.tapOf(req.volume);
      this.checkDestination(req.volume, dst, req.source, req.sizeBytes, req.blockSize);
      if (!Number.isSafeInteger(req.unitSize) || req.unitSize <= 0 || req.unitSize % dst.blockSize !== 0) {
        throw new CopyError('INVALID_ARGUMENT', `invalid copy granularity ${req.unitSize} for ${req.volume}`);
      }
      return this.cut([req.volume], () =>
        this.atomically(`open the remote end of REC ${req.source} -> ${req.volume}`, [req.volume], async () => {
          check?.(req.volume);
          this.tx?.ids.add(req.pairId);
          this.journal.stage([req.pairId]);
          const record: SessionRecord = {
            id: req.pairId,
            type: req.mode === 'ropc' ? 'ropc' : 'rec',
            state: 'copying',
            source: req.source,
            destination: req.volume,
            unitSize: req.unitSize,
            sizeBytes: req.sizeBytes,
            rate: 0,
            createdAt: new Date(this.now()).toISOString(),
            rec: {
              role: 'remote-end',
              peer: req.peer,
              peerArrayId: req.peerArrayId,
              peerVolume: req.sourceVolume,
              mode: req.mode,
              split: 'auto',
              recovery: 'auto',
              secret: req.secret,
            },
          };
          this.journal.putSession(record);
          const s = this.build({ record, bitmaps: {} });
          this.install(s);
          this.emit({ sessionId: s.id, kind: 'started', state: s.state, message: `remote end of REC ${req.source} -> ${req.volume} opened` });
          return s.info();
        }),
      );
    });
  }

  setRemoteEndState(
    id: string,
    state: RemoteEndState,
    extra: { imageAt?: string | undefined; haltReason?: HaltReason | undefined; mode?: RecMode | undefined; resynced?: boolean | undefined } = {},
  ): Promise<SessionInfo> {
    return this.controlOn(id, `set ${state}:`, async (s) => this.remoteEnd(s, `set the state of`).setRemoteState(state, extra));
  }

  /**
   * The pair resyncs; returns the units hosts changed here, and whether this array restarted
   * since the pair was live. `check` refuses while clients write here (under the cut); force
   * also overwrites a remote end split here for a failover.
   */
  resumeRemoteEnd(
    id: string,
    force: boolean,
    check?: (volume: string) => void,
  ): Promise<{ info: SessionInfo; runs: Array<[number, number]>; restarted: boolean }> {
    return this.serially(async () => {
      const s = this.remoteEnd(this.session(id), 'resume');
      let out: { runs: Array<[number, number]>; restarted: boolean } = { runs: [], restarted: false };
      await this.cut([s.record.destination], () =>
        this.atomically(`resume ${describe(s)}`, [s.record.destination], async () => {
          if (s.state === 'suspended' || s.state === 'split') check?.(s.record.destination);
          out = s.resumeEnd(force);
        }),
      );
      return { info: s.info(), ...out };
    });
  }

  /** The data connection of a remote end closed (the array's .rec export). */
  remoteEndLinkLost(id: string, reason: string): Promise<void> {
    return this.serially(async () => {
      const s = this.sessions.get(id);
      if (!(s instanceof RecRemoteEnd)) return;
      if (s.linkLost(reason)) await this.journal.sync();
    });
  }

  /**
   * Consistency mode, remote ends: the cycle each pair staged is committed, for all of them in
   * one journal commit; the caller then applies the stages and calls remoteCycleApplied.
   */
  /**
   * Consistency mode, remote ends: the cycle each pair staged is committed for all of them in
   * one journal commit, then applied (steps.apply), then recorded as applied, durably, and only
   * then are the stages dropped (steps.reset): a restart re-applies a stage only while it holds
   * the committed cycle, never the next one staged after it. All in the engine's queue, so no
   * resume, state change or reverse of these pairs runs in between.
   */
  commitRemoteCycle(ids: string[], cycle: number, steps: { apply(e: RemoteEndRef): Promise<void>; reset(e: RemoteEndRef): Promise<void> }): Promise<void> {
    return this.serially(async () => {
      const ends = ids.map((id) => this.remoteEnd(this.session(id), 'commit a cycle of'));
      for (const s of ends) {
        if (!s.staging)
          throw new CopyError('FAILED_PRECONDITION', `cannot commit cycle ${cycle} of ${describe(s)}: it is ${s.state} (${s.rec.mode}), not staging cycles`);
      }
      for (const s of ends) s.markCommitted(cycle);
      await this.journal.sync();
      const refs = ends.map((s) => ({ id: s.id, volume: s.record.destination, tap: this.tapOf(s.record.destination) }));
      for (const e of refs) await steps.apply(e);
      for (const s of ends) s.markApplied(cycle);
      await this.journal.sync();
      for (const e of refs) await steps.reset(e);
    });
  }

  /** A committed cycle applied at recovery: recorded durably (before its stage is dropped). */
  async remoteCycleApplied(ids: string[], cycle: number): Promise<void> {
    for (const id of ids) {
      const s = this.sessions.get(id);
      if (s instanceof RecRemoteEnd) s.markApplied(cycle);
    }
    await this.journal.sync();
  }

  /** Remote ends in consistency mode: whether each stages now, and a committed cycle it has not applied. */
  remoteEnds(): Array<{ id: string; volume: string; tap: VolumeTap; staging: boolean; consistency: boolean; state: string; unapplied: number | undefined }> {
    return [...this.sessions.values()]
      .filter((s): s is RecRemoteEnd => s instanceof RecRemoteEnd)
      .map((s) => ({
        id: s.id,
        volume: s.record.destination,
        tap: this.tapOf(s.record.destination),
        staging: s.staging,
        consistency: s.rec.mode === 'consistency',
        state: s.state,
        unapplied: s.unappliedCycle,
      }));
  }

  /** The remote end with this id and secret, for the array's .rec export. */
  remoteEndFor(id: string, secret: string): { volume: string; tap: VolumeTap; staging: () => boolean; accepting: () => string | undefined } | undefined {
    const s = this.sessions.get(id);
    if (!(s instanceof RecRemoteEnd) || s.rec.secret !== secret) return undefined;
    return {
      volume: s.record.destination,
      tap: this.tapOf(s.record.destination),
      staging: () => s.staging && !s.done,
      // Data is taken only while the pair runs: after a halt (or a restart of this array) the
      // source must resume first, which tells it what this side may have lost.
      accepting: () =>
        s.done || this.sessions.get(id) !== s
          ? `REC pair ${id} has no remote end here any more`
          : s.state === 'copying' || s.state === 'equivalent'
            ? undefined
            : `REC pair ${id}'s remote end is ${s.state} here: it takes data only after the source resumes the pair`,
    };
  }

  private remoteEnd(s: SessionBase, op: string): RecRemoteEnd {
    if (!(s instanceof RecRemoteEnd)) throw new CopyError('FAILED_PRECONDITION', `cannot ${op} session ${s.id}: it is not the remote end of a REC pair`);
    return s;
  }

  /** A link event of a REC source, in the queue: down halts it, up resumes it (recovery auto). */
  private linkEvent(id: string, event: 'up' | 'down', err?: RemoteLinkError): void {
    const s = this.sessions.get(id);
    if (!(s instanceof RecSession) || this.closed) return;
    if (event === 'down') {
      void this.serially(async () => {
        // The session may have ended (or been reversed) while this waited in the queue.
        if (s.done || this.sessions.get(id) !== s) return;
        await s.halt(err ?? new RemoteLinkError('the link was lost', 'link-down'));
      }).catch(() => undefined);
      return;
    }
    if (s.state !== 'halt' || s.rec.recovery !== 'auto') return;
    this.resume(id).catch((e: unknown) => {
      this.emit({ sessionId: id, kind: 'error', state: s.state, message: `automatic resume of ${describe(s)} failed: ${(e as Error).message}` });
      // Still unreachable: keep watching. Refused by the remote (a failover split there): an operator decides.
      if (s.state === 'halt' && !s.done && !(e instanceof RemoteRefusalError)) s.link.watch(true);
    });
  }

  /** The destination refusals shared by local pairs (checkPair) and remote ends (openRemoteEnd). */
  private checkDestination(destination: string, dst: VolumeTap, source: string, sizeBytes: number, blockSize: number): void {
    if (dst.blockSize !== blockSize) {
      throw new CopyError(
        'INVALID_ARGUMENT',
        `destination ${destination} has ${dst.blockSize}-byte blocks and source ${source} ${blockSize}-byte blocks; use volumes of one block size`,
      );
    }
    if (dst.size < sizeBytes) {
      throw new CopyError(
        'INVALID_ARGUMENT',
        `destination ${destination} (${dst.size} bytes) is smaller than source ${source} (${sizeBytes} bytes); use a destination at least as large`,
      );
    }
    if (dst.below.readOnly) throw new CopyError('FAILED_PRECONDITION', `destination ${destination} is read-only; choose a writable volume`);
    const busy = this.sessionsOf(destination)[0] ?? (this.chains.has(destination) ? this.chains.get(destination)!.gens[0] : undefined);
    if (busy !== undefined) {
      const role = busy.record.destination === destination ? 'destination' : 'source';
      throw new CopyError(
        'FAILED_PRECONDITION',
        `destination ${destination} is already the ${role} of ${busy.type} session ${busy.id} (${busy.state}); cancel that session or choose another destination`,
      );
    }
  }

  startSnapOpcPlus(source: string, snapVolume: string, opts: SnapStartOptions = {}): Promise<SessionInfo> {
    return this.control('snapopcplus', [source, snapVolume, ...this.snapVolumesOf(source)], () => this.doStartSnap(source, snapVolume, opts));
  }

  // ---- EC control ----

  suspend(id: string): Promise<SessionInfo> {
    return this.controlOn(id, 'suspend', (s) => (s instanceof RecSession ? s.freeze('suspended') : this.ec(s, 'suspend').freeze('suspended')));
  }
  split(id: string): Promise<SessionInfo> {
    return this.controlOn(id, 'split', async (s) => {
      if (s instanceof RecSession) return s.freeze('split');
      if (s instanceof RecRemoteEnd) return s.split(); // failover at the remote site
      return this.ec(s, 'split').freeze('split');
    });
  }
  /** The destination is overwritten (the changed units) and hosts lose it until equivalent. */
  resume(id: string, opts: OverwriteOptions = {}): Promise<SessionInfo> {
    return this.controlOn(id, 'resume', async (s) => {
      if (s instanceof RecSession) return s.resume(opts.force ?? false);
      const ec = this.ec(s, 'resume');
      this.doResume(ec, ec.state === 'error-suspended' ? 'error-suspended' : 'suspended', opts.check);
    });
  }
  rejoin(id: string, opts: OverwriteOptions = {}): Promise<SessionInfo> {
    return this.controlOn(id, 'rejoin', async (s) =>
      s instanceof RecSession ? s.resume(opts.force ?? false) : this.doResume(this.ec(s, 'rejoin'), 'split', opts.check),
    );
  }
  /**
   * EC (suspended or split): swaps the direction. QuickOPC (tracking): restore — swaps the
   * direction and restarts, so the changed units are copied back as of this instant. Either
   * way the source becomes the destination: `check` gets it (see OverwriteOptions).
   */
  reverse(id: string, opts: OverwriteOptions = {}): Promise<SessionInfo> {
    return this.controlOn(id, 'reverse', async (s) => {
      if (s instanceof OpcSession && s.type === 'quickopc') return this.doReverseQuickOpc(s, opts.check);
      if (s instanceof RecSession) return this.doReverseRec(s);
      if (s instanceof RecRemoteEnd) {
        throw new CopyError(
          'FAILED_PRECONDITION',
          `cannot reverse ${describe(s)} here: this array holds its remote end; reverse it on the source array (${s.rec.peer}), which must reach this one`,
        );
      }
      if (!(s instanceof EcSession))
        throw new CopyError('FAILED_PRECONDITION', `cannot reverse session ${s.id}: it is an ${s.type} session; only EC, QuickOPC and REC sessions reverse`);
      this.doReverse(s, opts.check);
    });
  }
  /**
   * Copies the clone (destination) back onto the original: reverse, then resync. `check`
   * gets the original (see OverwriteOptions).
   */
  restoreFromClone(id: string, opts: OverwriteOptions = {}): Promise<SessionInfo> {
    return this.controlOn(id, 'restore from clone', async (s) => {
      const ec = this.ec(s, 'restore from clone');
      const from = ec.state;
      if (from !== 'split' && from !== 'suspended') {
        throw new CopyError('FAILED_PRECONDITION', `cannot restore from clone in EC session ${id}: it is ${from}; split or suspend it first`);
      }
      this.doReverse(ec, opts.check);
      ec.resume(from);
    });
  }

  // ---- any session ----

  cancel(id: string, opts: { force?: boolean } = {}): Promise<void> {
    return this.serially(async () => {
      const s = this.session(id);
      if (s instanceof RecRemoteEnd && !opts.force && s.state !== 'split' && s.state !== 'suspended') {
        throw new CopyError(
          'FAILED_PRECONDITION',
          `cannot cancel ${describe(s)} here: it is the remote end of a pair the source array still runs (${s.state}); cancel it at the source, or pass --force if the source is lost`,
        );
      }
      const vols = s instanceof SnapGeneration ? [s.record.source, ...this.snapVolumesOf(s.record.source)] : [s.record.source, s.record.destination];
      await this.cut(vols, () => this.atomically(`cancel ${describe(s)}`, vols, async () => this.doCancel(s, opts.force ?? false, 'cancelled')));
      if (s instanceof RecSession) {
        s.closeLink();
        await this.remote?.closeRemoteEnd(s.record).catch((err: unknown) => {
          this.emit({
            sessionId: s.id,
            kind: 'error',
            message: `REC ${s.record.source} -> ${s.record.destination} cancelled here, but the remote array was not told (${(err as Error).message}); cancel its remote end there with 'arraylab copy cancel ${s.id} --force'`,
          });
        });
      }
    });
  }

  setRate(id: string, rate: number): Promise<SessionInfo> {
    checkRate(rate);
    return this.serially(async () => {
      const s = this.session(id);
      const vols = [s.record.source, s.record.destination];
      await this.cut(vols, () => this.atomically(`set the rate of ${describe(s)}`, vols, async () => s.setRate(rate)));
      this.unschedule(s.id);
      this.schedule(s);
      return s.info();
    });
  }

  /** Several starts, suspends and splits at one instant (see ConsistencyGroup.ts). */
  group(actions: GroupAction[]): Promise<SessionInfo[]> {
    return this.serially(async () => {
      const vols: string[] = [];
      for (const a of actions) {
        if ('id' in a) {
          const s = this.session(a.id);
          vols.push(s.record.source, s.record.destination);
        } else {
          vols.push(a.source, a.destination);
          if (a.op === 'snapopcplus') vols.push(...this.snapVolumesOf(a.source));
        }
      }
      this.preflight(actions);
      const what = actions
        .map((a) => ('id' in a ? `${a.op} ${describe(this.session(a.id))}` : `start ${COPY_TYPE_NAMES[a.op]} ${a.source} -> ${a.destination}`))
        .join(', ');
      const out = await this.cut(vols, () =>
        this.atomically(`${what} at one instant`, vols, async () => {
          const infos: SessionInfo[] = [];
          for (const a of actions) {
            if ('id' in a) {
              // EC and REC pairs alike (Concurrent Suspend): every source is held by this cut.
              const s = this.session(a.id);
              const pair = s instanceof RecSession && !(s instanceof RopcSession) ? s : this.ec(s, a.op);
              await pair.freeze(a.op === 'suspend' ? 'suspended' : 'split');
              infos.push(pair.info());
            } else if (a.op === 'snapopcplus') {
              infos.push(await this.doStartSnap(a.source, a.destination, a));
            } else {
              infos.push(await this.doStartCopy(a.op, a.source, a.destination, a));
            }
          }
          return infos; // one commit for the whole group
        }),
      );
      for (const s of this.sessions.values()) this.schedule(s);
      return out.map((i) => this.sessions.get(i.id)?.info() ?? i);
    });
  }

  /** Refuses a group before any of it happens: a group is all or nothing. */
  private preflight(actions: GroupAction[]): void {
    const dests = new Set<string>();
    const sources = new Set<string>();
    for (const a of actions) {
      if ('id' in a) {
        const s = this.session(a.id);
        if (s instanceof RecSession && !(s instanceof RopcSession)) continue; // its freeze refuses what it must, and a group is undone whole
        const ok = s.state === 'equivalent' || (a.op === 'split' && s.state === 'suspended');
        if (!(s instanceof EcSession) || !ok) {
          throw new CopyError(
            'FAILED_PRECONDITION',
            `cannot ${a.op} session ${a.id} in a group: backup cannot run before the pair is equivalent; it is a ${s.type} session, ${s.state}`,
          );
        }
        continue;
      }
      if (a.op === 'quickopc' && this.sessionsOf(a.destination).some((s) => s.type === 'quickopc' && s.record.source === a.source)) {
        throw new CopyError('FAILED_PRECONDITION', `QuickOPC restarts of ${a.source} -> ${a.destination} cannot be grouped; restart it on its own`);
      }
      this.checkPair(a.source, a.destination);
      if (dests.has(a.destination) || sources.has(a.destination) || dests.has(a.source)) {
        throw new CopyError(
          'INVALID_ARGUMENT',
          `volume ${dests.has(a.source) ? a.source : a.destination} appears twice in the group as a destination or as both source and destination`,
        );
      }
      dests.add(a.destination);
      sources.add(a.source);
    }
  }

  // ---- inspection ----

  /** How a session that is gone ended, if it ended recently (undefined: unknown or not gone). */
  endedAs(id: string): 'completed' | 'cancelled' | 'dropped' | undefined {
    return this.sessions.has(id) ? undefined : this.ended.get(id);
  }

  list(): SessionInfo[] {
    return [...this.sessions.values()].map((s) => s.info());
  }

  get(id: string): SessionInfo {
    return this.session(id).info();
  }

  /** The session's bitmap as cells (sessionBitmap.ts); read-only, bounded by maxCells. */
  bitmap(id: string, maxCells?: number): SessionBitmap {
    return sessionBitmap(this.session(id), maxCells);
  }

  /** Session ids a volume is in, as source or destination. */
  sessionsOfVolume(name: string): string[] {
    return this.sessionsOf(name).map((s) => s.id);
  }

  onEvent(listener: (e: CopyEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The tap (engine layer) of a volume, for tests and diagnostics. */
  tapOf(name: string): VolumeTap {
    const t = this.taps.get(name);
    if (t === undefined) throw new CopyError('NOT_FOUND', `no volume named ${name} is known to the copy engine`);
    return t.tap;
  }

  // ---- background copy ----

  /**
   * One copy step for every session with work to do and a non-zero rate: at most maxUnits
   * units each. Returns the units copied. The only way data moves in 'manual' clock mode.
   */
  step(maxUnits = this.stepUnits): Promise<number> {
    return this.serially(async () => {
      let total = 0;
      for (const s of [...this.sessions.values()]) {
        if (s.record.rate === 0) continue;
        total += await this.stepSession(s, maxUnits);
      }
      return total;
    });
  }

  /** Steps one session regardless of its rate (tests). */
  stepOne(id: string, maxUnits = this.stepUnits): Promise<number> {
    return this.serially(() => this.stepSession(this.session(id), maxUnits));
  }

  /** Stops the timers and waits for the running operation; sessions stay in the journal. */
  async close(): Promise<void> {
    this.closed = true;
    for (const id of [...this.timers.keys()]) this.unschedule(id);
    await this.queue.catch(() => undefined);
    for (const s of this.sessions.values()) if (s instanceof RecSession) s.closeLink();
    for (const b of this.buffers.values()) b.close();
    // Writes a SnapOPC+ chain acknowledged but has not applied yet (write-behind) must reach
    // the source before its store closes; their errors were already reported or are lost
    // with the process, like an unflushed write-back cache.
    await Promise.allSettled([...this.chains.values()].map((c) => c.settle()));
  }

  // ---- internals ----

  private async stepSession(s: SessionBase, maxUnits: number): Promise<number> {
    if (s.done || !this.sessions.has(s.id)) return 0;
    if (s.state !== 'copying') return 0;
    try {
      const n = await s.copyStep(maxUnits);
      // An injected fault error-suspended it: no retry episode, nothing "works again".
      if ((s.state as CopyState) === 'error-suspended') return n;
      this.copyWorks(s);
      if (s.done) await this.finish(s);
      return n;
    } catch (err) {
      this.copyFailed(s, err);
      throw err;
    }
  }

  /** An OPC that finished copying: detach and forget it. */
  private async finish(s: SessionBase): Promise<void> {
    const vols = [s.record.source, s.record.destination];
    try {
      await this.cut(vols, () => this.atomically(`end ${describe(s)}`, vols, async () => this.doCancel(s, false, 'completed')));
    } catch (err) {
      s.done = false; // still in the engine and the journal: the next step finishes it again
      throw err;
    }
    if (s instanceof RecSession) {
      // ROPC: the remote holds the image; its end goes, and the volume there is a plain volume.
      s.closeLink();
      await this.remote?.closeRemoteEnd(s.record).catch((err: unknown) => {
        this.emit({
          sessionId: s.id,
          kind: 'error',
          message: `${describe(s)} completed, but the remote array was not told (${(err as Error).message}); end its remote end there with 'arraylab copy cancel ${s.id} --force'`,
        });
      });
    }
  }

  /** A background copy step failed: the first failure of an episode is announced, later ones only back off. */
  private copyFailed(s: SessionBase, err: unknown): void {
    if (this.closed || !this.sessions.has(s.id)) return;
    const reason = err instanceof Error ? err.message : String(err);
    const now = this.now();
    const f = s.copyFailure;
    const attempts = (f?.attempts ?? 0) + 1;
    const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.min(attempts - 1, 16));
    s.copyFailure = {
      message: `background copy of ${s.record.source} -> ${s.record.destination} failed: ${reason}; retrying with back-off (1 s doubling to 60 s) until it works: fix the cause, or cancel the session`,
      since: f?.since ?? new Date(now).toISOString(),
      attempts,
      retryAt: now + delay,
    };
    if (f === undefined) this.emit({ sessionId: s.id, kind: 'error', state: s.state, message: s.copyFailure.message });
  }

  /** A background copy step worked: a failure episode ends. */
  private copyWorks(s: SessionBase): void {
    const f = s.copyFailure;
    if (f === undefined) return;
    s.copyFailure = undefined;
    this.emit({
      sessionId: s.id,
      kind: 'state',
      state: s.state,
      message: `background copy of ${s.record.source} -> ${s.record.destination} works again (it had failed ${f.attempts} time${f.attempts === 1 ? '' : 's'} since ${f.since})`,
    });
  }

  private build(j: JournalSession): SessionBase {
    const local = isRemoteVolume(j.record.source) ? j.record.destination : j.record.source;
    const blockSize = this.tapOf(local).blockSize;
    switch (j.record.type) {
      case 'opc':
      case 'quickopc':
        return new OpcSession(this.ctx, j, blockSize);
      case 'ec':
        return new EcSession(this.ctx, j, blockSize);
      case 'snapopcplus':
        return new SnapGeneration(this.ctx, j, blockSize);
      case 'rec':
      case 'ropc':
        if (j.record.rec?.role === 'remote-end') return new RecRemoteEnd(this.ctx, j, this.tapOf(j.record.destination).blockSize);
        return j.record.type === 'ropc' ? new RopcSession(this.ctx, j, blockSize) : new RecSession(this.ctx, j, blockSize);
    }
  }

  /** Registers a session and attaches its roles (under the cut's hold). */
  private install(s: SessionBase): void {
    this.sessions.set(s.id, s);
    if (s instanceof SnapGeneration) {
      let chain = this.chains.get(s.record.source);
      if (chain === undefined) {
        chain = new SnapChain(s.record.source, this.ctx);
        this.chains.set(s.record.source, chain);
        this.tapOf(s.record.source).addSource(chain);
      }
      chain.add(s);
    }
    s.attach();
  }

  private async doStartCopy(type: CopyType, source: string, destination: string, opts: StartOptions): Promise<SessionInfo> {
    if (type === 'quickopc') {
      // The pair's session, in either direction: after a restore (reverse) the next backup
      // turns it round again and still copies only the changes.
      const existing = this.sessionsOf(destination).find(
        (s) => s.type === 'quickopc' && [s.record.source, s.record.destination].sort().join('\0') === [source, destination].sort().join('\0'),
      );
      if (existing instanceof OpcSession) {
        if (existing.state === 'error-suspended') throw new CopyError('FAILED_PRECONDITION', `cannot restart: ${existing.record.error}`);
        if (existing.state !== 'tracking') {
          throw new CopyError(
            'FAILED_PRECONDITION',
            `QuickOPC session ${existing.id} (${existing.record.source} -> ${existing.record.destination}) is still ${existing.state}; restart it once it is tracking`,
          );
        }
        if (existing.record.source !== source) {
          await this.doReverseQuickOpc(existing); // a start: its caller checked the destination already
          return existing.info();
        }
        await this.tapOf(source).below.flush(); // J4
        existing.restart();
        return existing.info();
      }
    }
    const { src } = this.checkPair(source, destination);
    const rate = opts.rate ?? Number.POSITIVE_INFINITY;
    checkRate(rate);
    const record = this.newRecord(type, source, destination, src, opts.unitSize, rate);
    if (opts.group) record.group = opts.group;
    const units = Math.ceil(record.sizeBytes / record.unitSize);
    await src.below.flush(); // J4: the point-in-time data is durable on the source
    this.journal.putSession(record);
    if (type === 'ec') this.journal.setBits(record.id, 'diff', 0, units);
    const s = this.build({ record, bitmaps: type === 'ec' ? { diff: [[0, units]] } : {} });
    this.install(s);
    this.emit({ sessionId: s.id, kind: 'started', state: s.state, message: `${type} ${source} -> ${destination} started` });
    return s.info();
  }

  private async doStartSnap(source: string, snapVolume: string, opts: SnapStartOptions): Promise<SessionInfo> {
    const { src, dst } = this.checkPair(source, snapVolume);
    let drop: SnapGeneration | undefined;
    const chain = this.chains.get(source);
    if (chain !== undefined && chain.gens.length >= MAX_SNAP_GENERATIONS) {
      if (opts.refuseIfFull) {
        throw new CopyError(
          'RESOURCE_EXHAUSTED',
          `source ${source} already has ${MAX_SNAP_GENERATIONS} SnapOPC+ generations; cancel the oldest (${chain.gens[0]!.id}) or start without refuse-if-full to drop it`,
        );
      }
      drop = chain.gens[0]!;
    }
    const last = this.chains.get(source)?.gens.at(-1);
    const record = this.newRecord('snapopcplus', source, snapVolume, src, opts.unitSize ?? last?.record.unitSize, 0);
    record.generation = (last?.generation ?? 0) + 1;
    if (opts.group) record.group = opts.group;
    if (dst.below.thin) await dst.below.writeZeroes(0, record.sizeBytes); // give the old content's space back
    await src.below.flush(); // J4
    // The oldest goes in the same commit as the new one: a commit during the awaits above (or
    // a failed zero or flush) must not leave the oldest dropped and no new generation.
    if (drop !== undefined) this.doCancel(drop, false, 'dropped');
    this.journal.putSession(record);
    const g = this.build({ record, bitmaps: {} });
    this.install(g);
    this.emit({ sessionId: g.id, kind: 'started', state: g.state, message: `SnapOPC+ generation ${record.generation} of ${source} on ${snapVolume} started` });
    return g.info();
  }

  private newRecord(type: CopyType, source: string, destination: string, src: VolumeTap, unitSize: number | undefined, rate: number): SessionRecord {
    const unit = unitSize ?? this.unitSize;
    if (!Number.isSafeInteger(unit) || unit <= 0 || unit % src.blockSize !== 0) {
      throw new CopyError('INVALID_ARGUMENT', `invalid copy granularity ${unit}: use a positive multiple of ${source}'s ${src.blockSize}-byte block size`);
    }
    const createdAt = new Date(this.now()).toISOString();
    const id = this.newId();
    if (this.tx !== undefined) {
      this.tx.ids.add(id); // J7: the new session's appends belong to this operation
      this.journal.stage([id]);
    }
    return {
      id,
      type,
      state: type === 'snapopcplus' ? 'snap' : 'copying',
      source,
      destination,
      unitSize: unit,
      sizeBytes: src.size,
      rate,
      createdAt,
      // Point-in-time copies hold the start's image; an EC pair gets one at its suspend or split.
      ...(type === 'ec' ? {} : { imageAt: createdAt }),
    };
  }

  /** The refusal rules for a new pair. */
  private checkPair(source: string, destination: string): { src: VolumeTap; dst: VolumeTap } {
    const src = this.tapOf(source);
    const dst = this.tapOf(destination);
    if (source === destination) throw new CopyError('INVALID_ARGUMENT', `source and destination are both ${source}; copy to another volume`);
    this.checkDestination(destination, dst, source, src.size, src.blockSize);
    this.checkSource(source);
    return { src, dst };
  }

  /** A destination of a session cannot be copied from while it is in it. */
  private checkSource(source: string): void {
    const asDest = this.sessionsOf(source).find((s) => s.record.destination === source);
    if (asDest !== undefined) {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `source ${source} is the destination of ${asDest.type} session ${asDest.id} (${asDest.state}); a destination cannot be copied from while it is in a session`,
      );
    }
  }

  private doResume(ec: EcSession, from: 'suspended' | 'split' | 'error-suspended', check: OverwriteCheck | undefined): void {
    ec.checkResume(from);
    check?.(ec.record.destination, ec.record.source); // last: nothing can run between it and the change
    ec.resume(from);
  }

  private doReverse(ec: EcSession, check: OverwriteCheck | undefined): void {
    ec.checkSwap(); // every refusal before the roles come off
    this.checkAlone(ec);
    check?.(ec.record.source, ec.record.destination);
    ec.detach();
    ec.swap();
    ec.attach();
  }

  private async doReverseQuickOpc(s: OpcSession, check?: OverwriteCheck): Promise<void> {
    if (s.state === 'error-suspended') throw new CopyError('FAILED_PRECONDITION', `cannot reverse: ${s.record.error}`);
    if (s.state !== 'tracking') {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot reverse QuickOPC session ${s.id}: it is ${s.state}; wait until it is tracking (the physical copy has finished)`,
      );
    }
    this.checkAlone(s);
    // J4: the restore instant is durable on the new source (today's destination) before any
    // record changes. Nothing may await between swap() and restart(): a commit beside them (a
    // copy-on-write on another volume) would make the swap durable without the restart.
    await this.tapOf(s.record.destination).below.flush();
    check?.(s.record.source, s.record.destination); // after the await: nothing runs between it and the swap
    s.detach();
    s.swap();
    s.attach();
    s.restart();
  }

  /**
   * REC reverse (failback), on the source's array: the other array's remote end becomes the
   * source (ReverseRemoteEnd, with this side's changed units), then this side becomes the
   * remote end, in this control operation's commit. The pair stays suspended or split; a resume
   * there copies both sides' changes onto this volume. Only when the new source is consistent:
   * suspended, split, or halted (the remote holds the image of the halt).
   */
  private async doReverseRec(s: RecSession): Promise<void> {
    if (s instanceof RopcSession)
      throw new CopyError('FAILED_PRECONDITION', `cannot reverse ROPC session ${s.id}: a point-in-time copy has no direction to turn; cancel it`);
    if (s.state !== 'suspended' && s.state !== 'split' && s.state !== 'halt') {
      throw new CopyError(
        'FAILED_PRECONDITION',
        `cannot reverse ${describe(s)}: it is ${s.state}; the remote is not a consistent image while the pair runs; suspend or split it first`,
      );
    }
    this.checkAlone(s);
    const changed = s.changedRuns();
    try {
      await s.link.reverseRemote(changed, s.rec);
    } catch (err) {
      if (err instanceof RemoteLinkError) {
        throw new CopyError('FAILED_PRECONDITION', `cannot reverse ${describe(s)}: ${err.message}; restore the link (the other array must run) and retry`);
      }
      throw err;
    }
    const r = s.record;
    const rec = s.rec;
    s.closeLink();
    s.detach();
    s.done = true;
    this.unschedule(s.id);
    const record: SessionRecord = {
      id: r.id,
      type: 'rec',
      state: r.state === 'split' ? 'split' : 'suspended',
      source: r.destination,
      destination: r.source,
      unitSize: r.unitSize,
      sizeBytes: r.sizeBytes,
      rate: 0,
      createdAt: r.createdAt,
      reversed: !r.reversed,
      ...(r.group !== undefined ? { group: r.group } : {}),
      ...(r.imageAt !== undefined ? { imageAt: r.imageAt } : {}),
      rec: { role: 'remote-end', peer: rec.peer, peerVolume: rec.peerVolume, mode: rec.mode, split: rec.split, recovery: rec.recovery, secret: rec.secret },
    };
    const units = Math.ceil(r.sizeBytes / r.unitSize);
    this.journal.clearBits(r.id, 'diff', 0, units);
    this.journal.clearBits(r.id, 'intent', 0, units);
    this.journal.putSession(record);
    const end = this.build({ record, bitmaps: {} });
    this.sessions.set(end.id, end);
    end.attach();
    this.emit({
      sessionId: r.id,
      kind: 'state',
      state: end.state,
      message: `REC reversed: ${record.source} -> ${record.destination}; this array holds the remote end now`,
    });
  }

  /**
   * REC reverse, on the remote end's array (ReverseRemoteEnd): it becomes the pair's source,
   * towards `peer` (this array's name for the caller), with `changed` (the caller's changed
   * units) joining its own. Stays suspended or split.
   */
  reverseRemoteEnd(
    id: string,
    peer: string,
    changed: Array<[number, number]>,
    opts: { mode: RecMode; split: 'auto' | 'manual'; recovery: 'auto' | 'manual' },
  ): Promise<SessionInfo> {
    return this.serially(async () => {
      const s = this.remoteEnd(this.session(id), 'reverse');
      const vol = s.record.destination;
      await this.cut([vol], () =>
        this.atomically(`reverse ${describe(s)}`, [vol], async () => {
          if (s.state !== 'suspended' && s.state !== 'split' && s.state !== 'halt') {
            throw new CopyError('FAILED_PRECONDITION', `cannot reverse ${describe(s)}: it is ${s.state} here; suspend or split the pair first`);
          }
          const r = s.record;
          const own = s.diff.runs();
          s.detach();
          s.done = true;
          const record: SessionRecord = {
            id: r.id,
            type: 'rec',
            state: r.state === 'split' ? 'split' : 'suspended',
            source: r.destination,
            destination: `${peer}:${s.rec.peerVolume}`,
            unitSize: r.unitSize,
            sizeBytes: r.sizeBytes,
            rate: Number.POSITIVE_INFINITY,
            createdAt: r.createdAt,
            reversed: !r.reversed,
            ...(r.imageAt !== undefined ? { imageAt: r.imageAt } : {}),
            rec: { role: 'source', peer, peerVolume: s.rec.peerVolume, mode: opts.mode, split: opts.split, recovery: opts.recovery, secret: s.rec.secret },
          };
          const units = Math.ceil(r.sizeBytes / r.unitSize);
          const diff: Array<[number, number]> = [];
          for (const [a, n] of [...own, ...changed]) {
            const len = Math.max(0, Math.min(n, units - a));
            if (len > 0) diff.push([a, len]);
          }
          this.journal.clearBits(r.id, 'diff', 0, units);
          for (const [a, n] of diff) this.journal.setBits(r.id, 'diff', a, n);
          this.journal.putSession(record);
          const src = this.build({ record, bitmaps: { diff } });
          this.sessions.set(src.id, src);
          src.attach();
          this.emit({
            sessionId: r.id,
            kind: 'state',
            state: src.state,
            message: `REC reversed: ${record.source} -> ${record.destination}; this array sends now`,
          });
        }),
      );
      return this.session(id).info();
    });
  }

  /** Reversing makes a source a destination: neither volume may be in another session. */
  private checkAlone(s: SessionBase): void {
    for (const v of [s.record.source, s.record.destination]) {
      const other = this.sessionsOf(v).find((o) => o !== s) ?? (this.chains.has(v) ? this.chains.get(v)!.gens[0] : undefined);
      if (other !== undefined) {
        throw new CopyError(
          'FAILED_PRECONDITION',
          `cannot reverse ${s.type} session ${s.id}: volume ${v} is also in ${other.type} session ${other.id}; cancel that first`,
        );
      }
    }
  }

  /** Removes a session (and for SnapOPC+ with force, the older generations). Under a cut. */
  private doCancel(s: SessionBase, force: boolean, why: 'cancelled' | 'completed' | 'dropped'): void {
    let victims: SessionBase[] = [s];
    if (s instanceof SnapGeneration) {
      const chain = s.chain;
      const i = chain.gens.indexOf(s);
      if (i > 0 && !force) {
        throw new CopyError(
          'FAILED_PRECONDITION',
          `cannot cancel SnapOPC+ generation ${s.generation} (session ${s.id}) alone: ${i} older generation(s) of ${s.record.source} read through it; cancel with force to remove them too, or cancel the oldest first`,
        );
      }
      victims = chain.gens.slice(0, i + 1).reverse();
    }
    for (const v of victims) {
      v.detach();
      if (v instanceof SnapGeneration) {
        const chain = v.chain;
        chain.remove(v);
        if (chain.gens.length === 0) {
          this.tapOf(chain.source).removeSource(chain);
          this.chains.delete(chain.source);
        }
      }
      v.done = true;
      this.sessions.delete(v.id);
      this.ended.set(v.id, v === s ? why : 'cancelled');
      if (this.ended.size > ENDED_KEPT) this.ended.delete(this.ended.keys().next().value!);
      this.unschedule(v.id);
      this.journal.deleteSession(v.id);
      const msg =
        why === 'completed'
          ? `${v.type} ${v.record.source} -> ${v.record.destination} finished copying`
          : `${v.type} ${v.record.source} -> ${v.record.destination} ${v === s ? why : 'removed with a newer generation (force)'}`;
      this.emit({ sessionId: v.id, kind: v === s ? why : 'cancelled', message: msg });
    }
  }

  private ec(s: SessionBase, op: string): EcSession {
    if (!(s instanceof EcSession))
      throw new CopyError('FAILED_PRECONDITION', `cannot ${op} session ${s.id}: it is a ${s.type} session; only EC sessions ${op}`);
    return s;
  }

  private session(id: string): SessionBase {
    const s = this.sessions.get(id);
    if (s === undefined) {
      const how = this.ended.get(id);
      const ended = how === undefined ? '' : `: it has ${how === 'dropped' ? 'been dropped' : how} and ended sessions are not kept`;
      throw new CopyError('NOT_FOUND', `no copy session ${id}${ended}; list sessions to see their ids`);
    }
    return s;
  }

  private sessionsOf(volume: string): SessionBase[] {
    return [...this.sessions.values()].filter((s) => s.record.source === volume || s.record.destination === volume);
  }

  private snapVolumesOf(source: string): string[] {
    return this.chains.get(source)?.gens.map((g) => g.record.destination) ?? [];
  }

  /** A control operation on fixed volumes: one cut, one sync. */
  /** A start on fixed volumes: one cut, one commit (volumes[0] -> volumes[1] names it). */
  private control(type: CopyType, volumes: string[], op: () => Promise<SessionInfo>): Promise<SessionInfo> {
    return this.serially(async () => {
      const info = await this.cut(volumes, () => this.atomically(`start ${COPY_TYPE_NAMES[type]} ${volumes[0]} -> ${volumes[1]}`, volumes, op));
      const s = this.sessions.get(info.id);
      if (s) this.schedule(s);
      return s?.info() ?? info;
    });
  }

  private controlOn(id: string, verb: string, op: (s: SessionBase) => Promise<void>): Promise<SessionInfo> {
    return this.serially(async () => {
      const s = this.session(id);
      const vols = [s.record.source, s.record.destination];
      await this.cut(vols, () => this.atomically(`${verb} ${describe(s)}`, vols, () => op(s)));
      const now = this.sessions.get(id) ?? s; // a REC reverse replaces the session's object
      this.schedule(now);
      return now.info();
    });
  }

  /**
   * Runs a control operation under its cut of `volumes`, all or nothing (J7): the appends of
   * every session on those volumes (and of sessions it creates, see newRecord) are staged and
   * committed in one commit after it; their events wait for that commit. If the operation
   * throws, or the commit fails, the engine is put back as it was and nothing is announced; a
   * failed commit is reported as `cannot <what>: <why>`, with the journal's code (a full
   * disk: RESOURCE_EXHAUSTED).
   */
  private async atomically<T>(what: string, volumes: string[], op: () => Promise<T>): Promise<T> {
    invariant(this.tx === undefined, 'two control operations at once');
    // Only sessions with both volumes under the cut: no host write can append for them now.
    // (Another EC pair from a held source may still track writes to its own destination.)
    const held = new Set(volumes);
    const involved = [...this.sessions.values()].filter((s) => held.has(s.record.source) && held.has(s.record.destination));
    const undo = this.checkpoint(volumes, involved);
    const tx = { ids: new Set(involved.map((s) => s.id)), events: [] as CopyEvent[], rollbacks: [] as Array<() => void> };
    this.tx = tx;
    this.journal.stage(tx.ids);
    let out: T;
    try {
      try {
        out = await op();
      } catch (err) {
        this.journal.dropStaged();
        throw err;
      }
      try {
        await this.journal.commitStaged();
      } catch (err) {
        throw err instanceof CopyError
          ? new CopyError(err.code, `cannot ${what}: ${err.message}`)
          : new Error(`cannot ${what}: the copy journal could not be written (${(err as Error).message}); nothing changed`, { cause: err });
      }
    } catch (err) {
      this.tx = undefined;
      undo();
      for (const fn of tx.rollbacks) fn(); // e.g. a REC pair whose remote changed already halts, so a resume reconciles
      throw err;
    }
    this.tx = undefined;
    for (const e of tx.events) this.emit(e);
    return out;
  }

  /** The engine's memory around a control operation (under its cut), and how to put it back. */
  private checkpoint(volumes: string[], involved: SessionBase[]): () => void {
    const sessions = new Map(this.sessions);
    const chains = new Map(this.chains);
    const gens = new Map([...this.chains.values()].map((c) => [c, [...c.gens]]));
    const states = involved.map((s) => s.checkpoint());
    const roles = volumes.filter((v) => !isRemoteVolume(v)).map((v) => this.tapOf(v).checkpoint());
    return () => {
      for (const id of this.sessions.keys()) if (!sessions.has(id)) this.unschedule(id);
      this.sessions.clear();
      for (const [id, s] of sessions) this.sessions.set(id, s);
      this.chains.clear();
      for (const [v, c] of chains) this.chains.set(v, c);
      for (const [c, g] of gens) c.gens.splice(0, c.gens.length, ...g);
      for (const put of [...states, ...roles]) put();
      for (const s of involved) this.schedule(s); // a cancel unscheduled it
    };
  }

  private async cut<T>(volumes: string[], fn: () => Promise<T>): Promise<T> {
    const taps = volumes.filter((v) => !isRemoteVolume(v)).map((v) => this.tapOf(v));
    const release = await holdVolumes(taps);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  private serially<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new CopyError('FAILED_PRECONDITION', 'the copy engine is shutting down');
      return op();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private emit(e: Omit<CopyEvent, 'at'> & { at?: string }): void {
    const ev: CopyEvent = { at: new Date(this.now()).toISOString(), ...e };
    if (this.tx?.ids.has(ev.sessionId)) return void this.tx.events.push(ev); // announced once committed
    this.events.push(ev);
    if (this.events.length > this.maxEvents) this.events.splice(0, this.events.length - this.maxEvents);
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  // ---- timers ----

  /** spentMs: how long the previous step took; the next tick comes that much sooner, so the rate holds. */
  private schedule(s: SessionBase, spentMs = 0): void {
    // One step of a session in the queue at a time: a wake during a step would queue more, and
    // control operations would wait behind all of them.
    if (this.clock !== 'timers' || this.closed || this.timers.has(s.id) || this.stepping.has(s.id)) return;
    if (s.done || s.state !== 'copying' || s.record.rate === 0) return;
    if (s instanceof RecSession && s.idleWhenDrained && s.pendingUnits() === 0 && !s.wantsStep) return; // woken by the next recorded write
    const rate = s.record.rate;
    const maxUnits = Math.max(this.stepUnits, Math.floor(TIMER_STEP_BYTES / s.record.unitSize));
    const fire = (): void => {
      this.timers.delete(s.id);
      this.stepping.add(s.id);
      const began = this.now();
      const units = Number.isFinite(rate) ? Math.max(1, Math.floor((rate * TICK_MS) / 1000 / s.record.unitSize)) : maxUnits;
      this.serially(() => this.stepSession(s, Math.min(units, maxUnits))).then(
        () => {
          this.stepping.delete(s.id);
          this.schedule(s, this.now() - began);
        },
        () => {
          this.stepping.delete(s.id);
          // stepSession noted the failure (one event per episode) and when to retry.
          if (this.closed || s.copyFailure === undefined) return;
          this.timers.set(
            s.id,
            setTimeout(
              () => {
                this.timers.delete(s.id);
                this.schedule(s);
              },
              Math.max(0, s.copyFailure.retryAt - this.now()),
            ),
          );
        },
      );
    };
    if (!Number.isFinite(rate)) {
      this.timers.set(s.id, setImmediate(fire));
    } else {
      const unitsPerTick = (rate * TICK_MS) / 1000 / s.record.unitSize;
      const delay = unitsPerTick >= 1 ? TICK_MS : Math.ceil(s.record.unitSize / (rate / 1000));
      this.timers.set(s.id, setTimeout(fire, Math.max(0, delay - spentMs)));
    }
  }

  private unschedule(id: string): void {
    const t = this.timers.get(id);
    if (t === undefined) return;
    clearTimeout(t as NodeJS.Timeout);
    clearImmediate(t as NodeJS.Immediate);
    this.timers.delete(id);
  }
}

function checkRate(rate: number): void {
  if (typeof rate !== 'number' || Number.isNaN(rate) || rate < 0) {
    throw new CopyError('INVALID_ARGUMENT', `invalid copy rate ${String(rate)}: give bytes per second, 0 for none, or Infinity for unthrottled`);
  }
}

/** A session as error messages name it: `EC session ID (vol1 -> vol2)`. */
function describe(s: SessionBase): string {
  return `${COPY_TYPE_NAMES[s.type]} session ${s.id} (${s.record.source} -> ${s.record.destination})`;
}
