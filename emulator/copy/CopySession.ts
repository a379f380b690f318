/**
 * What every copy session shares: its types, its states, the record the journal keeps, the
 * error the engine raises, and the one interface the engine drives each session type through.
 *
 * Vocabulary
 *   unit        the copy granularity (default 64 KiB): bitmaps, locks and copies work on whole
 *               units; the last unit of a volume may be shorter.
 *   cut         the instant a session starts, suspends or splits: I/O to the volumes involved
 *               is held and drained, the sources are flushed, the journal records the change.
 *   below       the device under the engine's layer on a volume (its store, normally): the
 *               engine reads and writes data there, where hosts' layers cannot see it.
 */
import { StatusError } from '../../proto/errors.js';
import type { BlockDevice, WriteOptions, ZeroOptions } from '../block/BlockDevice.js';

export type CopyType = 'opc' | 'quickopc' | 'snapopcplus' | 'ec' | 'rec' | 'ropc';

/** The types as the array's messages name them. */
export const COPY_TYPE_NAMES: Record<CopyType, string> = { opc: 'OPC', quickopc: 'QuickOPC', snapopcplus: 'SnapOPC+', ec: 'EC', rec: 'REC', ropc: 'ROPC' };

export type CopyState = 'copying' | 'equivalent' | 'suspended' | 'tracking' | 'snap' | 'split' | 'error-suspended' | 'halt';

/** REC transfer modes. */
export const REC_MODES = ['sync', 'stack', 'consistency', 'through'] as const;
/** A REC pair's mode; 'ropc' marks a remote point-in-time copy (a ROPC session), not a REC mode. */
export type RecMode = (typeof REC_MODES)[number] | 'ropc';
/** Why a REC pair halted. */
export type HaltReason = 'link-down' | 'remote-failed' | 'buffer-overload';

/**
 * A volume name with a colon is a volume of another array: REMOTE:VOLUME (volume names have no
 * colon). The engine holds and journals only its own volumes; a REC pair's other end is
 * reached through CopyEngineOptions.remote.
 */
export function isRemoteVolume(name: string): boolean {
  return name.includes(':');
}

/** What a REC session keeps beyond a local one (SessionRecord.rec). */
export interface RecRecord {
  /** source: this array sends; remote-end: this array holds the destination. */
  role: 'source' | 'remote-end';
  /** Source: the remote array's registered name. Remote end: the source array's id. */
  peer: string;
  /** The volume on the other array. */
  peerVolume: string;
  mode: RecMode;
  split: 'auto' | 'manual';
  recovery: 'auto' | 'manual';
  /** Opens the pair's data export on the remote end (.rec/ID/SECRET). */
  secret: string;
  /** Remote end: the source array's id (a reverse looks up the name this array knows it by). */
  peerArrayId?: string | undefined;
  /**
   * Remote end: this array restarted while the pair was live: writes acknowledged to the
   * source but not yet flushed here may be gone, so the next resume resyncs the source's write
   * intent too. Cleared by that resume.
   */
  restarted?: boolean | undefined;
  /** Remote end: split here (a failover): the source's automatic resume is refused, it would overwrite. */
  splitHere?: boolean | undefined;
  haltReason?: HaltReason | undefined;
  /** halt: what failed, in words. */
  haltDetail?: string | undefined;
  /** Asynchronous modes: the last instant the remote held every write (ISO 8601). */
  drainedAt?: string | undefined;
  /** Remote end, consistency mode: the newest cycle committed (durable) and applied here. */
  committedCycle?: number | undefined;
  appliedCycle?: number | undefined;
}

/**
 * A REC pair's link to its remote end failed: the connection is lost or refused, a link fault
 * fired (link-down), or the remote array answered a transfer with an error (remote-failed).
 * The pair halts; it never error-suspends for these.
 */
export class RemoteLinkError extends Error {
  constructor(
    message: string,
    readonly reason: HaltReason,
  ) {
    super(message);
    this.name = 'RemoteLinkError';
  }
}

/** Default copy granularity. */
export const DEFAULT_UNIT_SIZE = 64 * 1024;

/** Maximum SnapOPC+ generations per source volume. */
export const MAX_SNAP_GENERATIONS = 8;

/** Why a control operation was refused; the wiring step maps these to gRPC codes. */
export type CopyErrorCode = 'INVALID_ARGUMENT' | 'NOT_FOUND' | 'ALREADY_EXISTS' | 'FAILED_PRECONDITION' | 'RESOURCE_EXHAUSTED';

export class CopyError extends StatusError {
  declare readonly code: CopyErrorCode;
  constructor(code: CopyErrorCode, message: string) {
    super(code, message);
    this.name = 'CopyError';
  }
}

/**
 * The remote array answered a REC control call with a refusal (its own reason, e.g. the remote
 * end was split there for a failover): not a link failure, so an automatic resume does not
 * retry it.
 */
export class RemoteRefusalError extends CopyError {
  constructor(code: CopyErrorCode, message: string) {
    super(code, message);
    this.name = 'RemoteRefusalError';
  }
}

/**
 * An injected fault on a session's own I/O (CopyEngineOptions.faults) fired. Told apart from
 * real I/O errors because it error-suspends the session at once (a real one is retried or
 * resynced, see CopyEngine.ts), as an array does when its copy path reports a hardware error.
 */
export class CopyFaultError extends Error {
  constructor(
    message: string,
    /** The volume whose I/O failed. */
    readonly volume: string,
    readonly op: 'read' | 'write',
  ) {
    super(message);
    this.name = 'CopyFaultError';
  }
}

/**
 * The hook the engine consults on its own I/O for a session (the array's fault engine
 * implements it): throws when an injected copy-error fault fires. Kept this small so the copy
 * engine does not depend on emulator/fault.
 */
export interface CopyFaultHook {
  /** blockSize: the volume's logical block size (bad blocks are numbered in it). */
  copyFault(sessionId: string, op: 'read' | 'write', volume: string, offset: number, length: number, blockSize: number): void;
}

/** Invariant check: a failure is a bug in the engine, never a user error (proto's one assert). */
export { assert as invariant } from '../../proto/util/assert.js';

/** What the journal keeps of a session (bitmaps are kept beside it, by name). */
export interface SessionRecord {
  id: string;
  type: CopyType;
  state: CopyState;
  /** Volume names. For EC after reverse, source is the volume data now flows from. */
  source: string;
  destination: string;
  unitSize: number;
  /** Bytes covered by the session: the source's size at the start. */
  sizeBytes: number;
  /** Background copy rate in bytes per second: 0 = none, Infinity = unthrottled (encodeRate for JSON). */
  rate: number;
  createdAt: string;
  /**
   * The point-in-time instant (ISO 8601) of the image the destination holds or will hold:
   * OPC, SnapOPC+: the start; QuickOPC: the start or last restart (a reverse restarts it);
   * EC: the last suspend or split (a split of a suspended pair keeps the suspend instant),
   * absent while mirroring and after a reverse. Records written before it existed load with
   * createdAt (EC: absent; see SessionBase).
   */
  imageAt?: string | undefined;
  /** SnapOPC+: generation sequence number, counting up per source (newer = larger). */
  generation?: number;
  /** EC: true after reverse (data flows from the original destination). */
  reversed?: boolean;
  /** error-suspended: why. */
  error?: string | undefined;
  /** Consistency group label given at the start (informational). */
  group?: string;
  /** REC only. */
  rec?: RecRecord | undefined;
}

/** Bitmap names used in the journal. */
export type BitmapName = 'copied' | 'tracked' | 'diff' | 'intent' | 'saved';

export interface SessionInfo {
  id: string;
  type: CopyType;
  state: CopyState;
  source: string;
  destination: string;
  unitSize: number;
  /** Copy units already copied (or equal) and all units of the session. */
  copiedBlocks: number;
  totalBlocks: number;
  /** Bytes per second; 0 = no background copy, Infinity = unthrottled. */
  rate: number;
  /** Seconds to finish at the current rate, or undefined when unknown or not copying. */
  etaSeconds: number | undefined;
  generation?: number;
  /** SnapOPC+: place among the source's current generations, 1 = newest (the agent's numbering). */
  generationIndex?: number;
  /** SnapOPC+: how many generations the source has now. */
  generationCount?: number;
  reversed?: boolean;
  /** Why the session is error-suspended, or why its background copy keeps failing (retried). */
  error?: string;
  /** A failing background copy: when the failures began (ISO 8601). */
  errorSince?: string;
  /** A failing background copy: when it is retried next (ISO 8601); absent when no retry is due. */
  retryAt?: string;
  group?: string;
  createdAt: string;
  /** See SessionRecord.imageAt. */
  imageAt?: string | undefined;
  /** REC only. */
  remote?: RecInfo;
}

/** What copy show/list say of a REC pair beyond a local session. */
export interface RecInfo {
  role: 'source' | 'remote-end';
  peer: string;
  mode: RecMode;
  split: 'auto' | 'manual';
  recovery: 'auto' | 'manual';
  haltReason?: HaltReason;
  haltDetail?: string;
  /** Source: the data path is connected now. */
  linkUp: boolean;
  /** Bytes to send before the remote holds every write (units pending times the unit size). */
  pendingBytes: number;
  /**
   * Asynchronous modes: the newest instant the remote holds every write of (stack, through:
   * when nothing was pending; consistency: the close of the last cycle applied there).
   */
  drainedAt?: string;
  /** Consistency mode: the REC buffer to this remote (shared by its consistency pairs). */
  buffer?: { usedBytes: number; sizeBytes: number };
}

export type CopyEventKind = 'started' | 'state' | 'completed' | 'cancelled' | 'dropped' | 'error';

export interface CopyEvent {
  at: string;
  sessionId: string;
  kind: CopyEventKind;
  state?: CopyState;
  message: string;
}

/** The engine's view of one session. */
export interface CopySession {
  readonly id: string;
  readonly type: CopyType;
  readonly state: CopyState;
  readonly record: SessionRecord;
  info(): SessionInfo;
  /** Units the background copier still has to copy now (0 when nothing to do). */
  pendingUnits(): number;
  /**
   * Copies at most maxUnits units in the background; returns how many it copied. Runs under
   * the engine's control queue, never beside another step or control operation.
   */
  copyStep(maxUnits: number): Promise<number>;
}

/** A host's modifying request, normalised: trim is zeroing (one of the results trim allows). */
export type Mutation =
  | { kind: 'write'; offset: number; length: number; data: Buffer; opts?: WriteOptions | undefined }
  | { kind: 'zero'; offset: number; length: number; opts?: ZeroOptions | undefined };

export function applyMutation(dev: BlockDevice, m: Mutation, shift = 0): Promise<void> {
  return m.kind === 'write' ? dev.write(m.offset + shift, m.data, m.opts) : dev.writeZeroes(m.offset + shift, m.length, m.opts);
}

/** Rate as stored in JSON (Infinity does not survive JSON). */
export function encodeRate(rate: number): number {
  return rate === Number.POSITIVE_INFINITY ? -1 : rate;
}
export function decodeRate(rate: number): number {
  return rate < 0 ? Number.POSITIVE_INFINITY : rate;
}
