/**
 * The contracts between the agent's parts, so that each part can be read (and tested) alone:
 *
 *   host/     the host side: which block device is which volume, locking, freezing, flushing,
 *             dismounting, hook scripts, cache invalidation, host-side copies (HostSide)
 *   store/    the agent's own records in SQLite: registrations, generations, sync pairs,
 *             operations in progress, locks not yet undone (AgentStore)
 *   backup/   backup management, ACM's storage-server role: policies, generations,
 *             backup, start-sync, restore, history, resource match (BackupManager)
 *   api/      AgentService over gRPC, cli/  `arraylab-agent`
 *
 * The array is reached through proto/'s ArrayClient (backup/ArrayPort.ts is the part used); the
 * agent imports nothing of the array's own code.
 */
import type { AgentErrorCode } from '../proto/errors.js';
import type { CartridgeView, HostProgress, TapeRecordView, TapeRestoreView, VolumeInfo } from '../proto/views.js';

export type { CartridgeView, HostProgress, TapeRecordView, TapeRestoreView } from '../proto/views.js';

/**
 * How a transaction volume is locked for a backup (ACM's "locked"): unmount, freeze, or none:
 * no host-side processing at all (an explicit choice; hooks still run).
 */
export type LockMode = 'unmount' | 'freeze' | 'none';

/**
 * What pre-processing is asked to do to a transaction volume: lock it (unmount or freeze), or
 * with --flush-only (ACM's Xflush / BufferFlushOnly) only flush its filesystem buffers.
 */
export type TransactionPrep = 'unmount' | 'freeze' | 'flush';

/**
 * What pre-processing really did to a transaction volume (history's PREP): unmount, freeze,
 * flush; not-mounted: its device was found with no filesystem mounted (its buffers were
 * flushed, nothing to lock); none: --lock none, nothing was done on the host.
 */
export type PrepDone = 'unmount' | 'freeze' | 'flush' | 'not-mounted' | 'none';

/** Snapshot types, and 'ec' for a synchronized (start-sync) backup. */
export type BackupType = 'opc' | 'quickopc' | 'snapopcplus' | 'ec';

export type BackupTarget = 'disk' | 'tape' | 'both';

/** Hook script phases; a script is named after its phase in the hooks directory. */
export const HOOK_PHASES = ['backup-pre', 'backup-post', 'restore-pre', 'restore-post', 'sync-start-pre', 'sync-start-post'] as const;
export type HookPhase = (typeof HOOK_PHASES)[number];

// ---------------------------------------------------------------------------------------------
// host/

/** A local block device that is an array volume, and how the agent knows. */
export interface DeviceMapping {
  volume: string;
  /** e.g. /dev/sdb, /dev/nbd0, /dev/loop3 */
  device: string;
  /**
   * 'wwn': VPD 0x83; 'serial': VPD 0x80; 'nbd': NBD export name; 'virtio': a virtio-blk disk's
   * serial (a guest's NBD volume: qemu sets it to the export name, truncated to 20 bytes);
   * 'map': the --device-map file
   */
  how: 'wwn' | 'serial' | 'nbd' | 'virtio' | 'map';
  /**
   * The WWN the device itself reports (VPD 0x83, from sysfs), lower-case hex, when it has one
   * (SCSI disks; not NBD or loop devices): checked against the volume's pinned WWN.
   */
  wwn?: string;
}

/** One line of /proc/self/mountinfo that concerns a device. */
export interface MountEntry {
  mountPoint: string;
  fsType: string;
  /** The source field (usually the device path). */
  source: string;
  /** Per-mount options (field 6), e.g. "rw,relatime". */
  mountOptions: string;
  /** Per-superblock options (after the separator), e.g. "rw,errors=remount-ro". */
  superOptions: string;
  /** The mount's root within its filesystem (field 4): "/" unless a bind mount of a subdirectory. */
  root?: string;
}

/**
 * What pre-processing did to one volume, with all that post-processing needs to undo it. It is
 * JSON (the store keeps it until undone), so that resource-match can undo it after a crash.
 */
export interface LockRecord {
  volume: string;
  role: 'transaction' | 'backup';
  /** Empty when the volume has no device on this host (then action is 'none'). */
  device: string;
  /**
   * unmounted: its mounts were unmounted (remounted on undo for a transaction volume; a backup
   * volume is left dismounted). frozen: fsfreeze on mounts[0], thawed on undo. flushed: syncfs
   * only. held: a backup volume held open O_EXCL so that nothing can mount it. none: nothing.
   */
  action: 'unmounted' | 'frozen' | 'flushed' | 'held' | 'none';
  /** The mounts as they were before pre-processing (for unmounted: all of them, in order). */
  mounts: MountEntry[];
  /** frozen: the freeze guard's pid (it thaws by itself at the deadline or when we die). */
  freezeGuardPid?: number;
  /** frozen: when the guard thaws by itself (ISO 8601). */
  thawDeadline?: string;
  /** ISO 8601 */
  at: string;
}

export interface HookContext {
  phase: HookPhase;
  volume: string;
  /** Empty when the volume has no device on this host. */
  device: string;
  /** Empty when not mounted. */
  mountPoint: string;
  /** The backup volume involved, if any. */
  backupVolume?: string;
  /** Absolute generation number, if any. */
  generation?: number;
}

export interface HookResult {
  phase: HookPhase;
  /** The script's path; empty when there is no script for the phase (verdict 'none'). */
  script: string;
  /**
   * none: no script; ok: exit 0; user-error: exit 100-255, the user's own code; reserved-code:
   * exit 1-99, which the agent reserves; timeout: killed after the timeout; signal: died of a
   * signal; spawn-error: could not run (not executable, ...).
   */
  verdict: 'none' | 'ok' | 'user-error' | 'reserved-code' | 'timeout' | 'signal' | 'spawn-error';
  exitCode: number | null;
  signal: string | null;
  durationMs: number;
  /** Last few KiB of its output, for the error message. */
  output: string;
  /** One line fit for an error message, naming the script, the code and the fix. */
  message: string;
}

/**
 * Everything the agent does on the host. Every method either does all of its work or throws
 * an Error whose message names the volume/device/mount point and the fix, having undone what it
 * did itself.
 */
export interface HostSide {
  /**
   * Set when the host side is the agent in a guest (--guest): which guest (its agent socket).
   * Lock records taken through it are tagged with it, and never replayed on another host side.
   */
  readonly guestId?: string;
  /** Maps each volume that has a local block device; volumes come from the array. */
  devices(volumes: VolumeInfo[]): Promise<DeviceMapping[]>;
  /** Current mounts of a device (by device number, so /dev/disk/by-id links match too). */
  mountsOf(device: string): Promise<MountEntry[]>;
  /** Transaction volume pre-processing. device '' → action 'none'. */
  lockTransaction(volume: string, device: string, prep: TransactionPrep, opts?: { freezeDeadlineMs?: number }): Promise<LockRecord>;
  /** Backup volume pre-processing: unmount its mounts (if any), then hold it O_EXCL. */
  lockBackup(volume: string, device: string): Promise<LockRecord>;
  /**
   * Undo a LockRecord (post-processing). Transaction: thaw / remount with the same options.
   * Backup: release the hold; it stays dismounted. Idempotent: undoing something already undone
   * (e.g. after a crash, from resource-match) succeeds.
   */
  unlock(rec: LockRecord): Promise<void>;
  /**
   * The array changed the device's content underneath the host (restore, copy into a backup
   * volume): drop every cached block of it (buffer cache, and for a loop device its backing
   * file's page cache) so the next read sees the array.
   */
  invalidate(device: string): Promise<void>;
  /** Runs the phase's hook script (if any) with a timeout. Never throws for the script's failure. */
  runHook(ctx: HookContext, opts?: { timeoutMs?: number }): Promise<HookResult>;
  /** Copies a whole device onto another (host-side restore), with progress. */
  copyDevice(from: string, to: string, onProgress?: (p: HostProgress) => void): Promise<void>;
  /** Best effort: is the filesystem at mountPoint frozen? (A write probe that blocks for 1 s.) */
  isFrozen(mountPoint: string): Promise<boolean>;
}

// ---------------------------------------------------------------------------------------------
// store/ and backup/

export interface TransactionVolumeRecord {
  volume: string;
  lock: LockMode;
  /** Synchronized backups: resume the EC pair right after each backup (DISCARD-COPY=*YES). */
  resyncAfterBackup: boolean;
  /** --flush-only by default for this volume (ACM's BufferFlushOnly=on). */
  flushOnly: boolean;
  /** Preservation generations N. */
  generations: number;
  /** Type used when backup has no --type and no sync pair exists. */
  defaultType: Exclude<BackupType, 'ec'>;
  registeredAt: string;
  /** Why a resource match is needed; empty when consistent. */
  needsResourceMatch: string;
}

export interface BackupVolumeRecord {
  volume: string;
  sizeBytes: number;
  registeredAt: string;
  /** The transaction volume it serves now (a held generation or sync pair); empty = unused. */
  inUseBy: string;
  needsResourceMatch: string;
}

/**
 * held: on its backup volume; released: that volume was reused (a tape copy may remain:
 * tape-only); failed: the backup did not complete; error: the array reports the image broken
 * (e.g. a SnapOPC+ generation error-suspended by a full pool); lost: the image is gone (its
 * session was cancelled, its backup volume deleted or overwritten). error and lost are also
 * shown for held generations before a resource match records them.
 */
export type GenerationStatus = 'held' | 'released' | 'tape-only' | 'failed' | 'error' | 'lost';

export interface TapeCopyRecord {
  cartridge: string;
  /** Record (file) number on the cartridge. */
  record: number;
  sha256: string;
  /** ISO 8601: when the tape copy was written (pending: when it was queued). */
  at: string;
  /** ISO 8601: the point in time of the image it holds (the generation's copy instant). */
  pointInTime: string;
  /** pending: queued or running in the background (backup --complete-after disk). */
  status: 'ok' | 'failed' | 'pending';
  error: string;
  /** pending: the process writing it (a pending copy of a process that is gone failed). */
  pid?: number;
}

/** One backup (history line). */
export interface GenerationRecord {
  /** Absolute number per transaction volume, 1, 2, 3, ... never reused. */
  number: number;
  transactionVolume: string;
  backupVolume: string;
  type: BackupType;
  /** The array's copy session id behind it ('' once released or for ec after the cut). */
  sessionId: string;
  /** ISO 8601: the instant of the copy (the lock). */
  at: string;
  status: GenerationStatus;
  /** What pre-processing really did to the transaction volume. */
  prep: PrepDone;
  tape: TapeCopyRecord | null;
  error: string;
}

/** History as shown: relative generation 1 = newest restorable. */
export interface HistoryEntry extends GenerationRecord {
  /**
   * 1 = the newest restorable generation (held on disk, or with a good tape copy), 2 the next
   * older...; 0 for generations that cannot be restored. restore --generation takes this number,
   * from disk and from tape alike.
   */
  generation: number;
}

export interface BackupOptions {
  type?: BackupType;
  flushOnly?: boolean;
  to?: BackupTarget;
  /** Tape cartridge label; default: the library picks one with room. */
  cartridge?: string;
  /**
   * --to both: return when the disk history is set ('disk'; the tape copy goes on in the
   * background and history shows it pending) or only once the tape copy is in the tape history
   * ('tape', the default).
   */
  completeAfter?: 'disk' | 'tape';
  /** Synchronized: resume the EC pair after the backup (default: the volume's registration). */
  resync?: boolean;
  /** Synchronized: wait up to this many seconds for the pair to be equivalent (default 0). */
  waitEquivalentSeconds?: number;
  onProgress?: ((msg: ProgressEvent) => void) | undefined;
}

export interface ProgressEvent {
  volume: string;
  /** e.g. "lock", "copy", "unlock", "tape" */
  step: string;
  message: string;
  doneBytes?: number;
  totalBytes?: number;
}

export interface VolumeOutcome {
  volume: string;
  ok: boolean;
  /** Set when ok. */
  generation?: HistoryEntry;
  error?: string;
  hooks: HookResult[];
  /** Set when post-processing failed and the volume now needs a resource match. */
  needsResourceMatch?: string;
  /** Set when not ok: the error's code (e.g. RESOURCE_EXHAUSTED, ABORTED), for the API. */
  code?: AgentErrorCode;
  /** Synchronized with resync: the pair resumed after the backup. */
  resync?: SyncView;
  /** Synchronized with resync: why the resume failed (the backup itself is good). */
  resyncError?: string;
}

/** One backup command over a set of volumes (one consistency group). */
export interface BackupReport {
  ok: boolean;
  volumes: VolumeOutcome[];
}

export interface RestoreOptions {
  /** Relative generation as history shows it (1 = newest; default 1). */
  generation?: number;
  /** Restore onto this volume instead of the transaction volume. */
  to?: string;
  fromTape?: boolean;
  /**
   * Restore even onto a target that is a registered transaction volume, or is exported
   * read-write to connected clients, or is mounted on this host (never implied).
   */
  force?: boolean;
  onProgress?: ((msg: ProgressEvent) => void) | undefined;
}

export interface ResourceMatchReport {
  repaired: string[];
  /** Problems it could not repair, each with the fix. */
  remaining: string[];
}

export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when not ok. */
  fix: string;
}

export interface SyncView {
  transactionVolume: string;
  backupVolume: string;
  sessionId: string;
  /** The EC session's state: copying | equivalent | suspended | ... */
  state: string;
  /** 0-100 */
  copiedPercent: number;
  /**
   * How start-sync began: 'resume' (a suspended pair resumed: only the differences are copied),
   * 'full' (a new pair: initial copy of everything); '' when not known (status).
   */
  start: 'resume' | 'full' | '';
  /** Copy units the start had to copy (resume: the changed ones), and all units of the pair. */
  unitsToCopy: number;
  totalUnits: number;
}

export interface StartSyncOptions {
  /** Start a new pair (full copy) even where a suspended pair could be resumed. */
  full?: boolean;
  /** Wait until the pair is equivalent (progress meanwhile). */
  wait?: boolean;
  /** Background copy rate in MiB/s (0 = none, default unthrottled). */
  rateMiBs?: number;
  onProgress?: ((p: ProgressEvent) => void) | undefined;
}

export interface RestoreReport {
  /** The transaction volume whose backup was restored. */
  volume: string;
  /** Where it went: the transaction volume itself or --to. */
  target: string;
  generation: HistoryEntry;
  from: 'disk' | 'tape';
  /** array-opc: an OPC from the backup volume; array-reverse: a QuickOPC reversed (differential);
   * array-clone: the generation's suspended EC pair restored from clone (differential) and
   * suspended again; host-copy: the agent copied the device (SnapOPC+ snap volumes cannot be copy
   * sources); tape: the array restored the tape record, checked against its checksums. */
  method: 'array-opc' | 'array-reverse' | 'array-clone' | 'host-copy' | 'tape';
  hooks: HookResult[];
  /** What the restore changed besides the target (sessions it cancelled, the pair's state). */
  notes: string[];
}

export interface TransactionVolumeStatus extends TransactionVolumeRecord {
  /** Local device and mount point; '' when not on this host / not mounted. */
  device: string;
  mountPoint: string;
  sync: SyncView | null;
  heldGenerations: number;
  /** Held generations the array reports broken or gone: "generation G (#N): error|lost: why". */
  unhealthy: string[];
  /** The operation running on it now (another process), or ''. */
  busy: string;
}

export interface AgentStatus {
  transactionVolumes: TransactionVolumeStatus[];
  backupVolumes: BackupVolumeRecord[];
  /** Pre-processing not yet undone (a crash mid-backup): resource-match undoes them. */
  outstandingLocks: LockRecord[];
}

/**
 * Backup management: what the CLI and AgentService call. Each method refuses with an Error
 * whose message names the volume and the fix (AgentError carries a code for the API).
 */
export interface RegisterTransactionOptions {
  lock?: LockMode;
  generations?: number;
  flushOnly?: boolean;
  defaultType?: Exclude<BackupType, 'ec'>;
  resyncAfterBackup?: boolean;
}

/** A registration and what the user should know about it. */
export interface RegisteredTransaction extends TransactionVolumeRecord {
  /** e.g. no block device found on this host for a volume that is to be locked. */
  warnings: string[];
  /** e.g. which generations a lower --generations releases, and when. */
  notes: string[];
}

export interface AgentCore {
  registerTransaction(volume: string, opts?: RegisterTransactionOptions): Promise<RegisteredTransaction>;
  registerBackup(volume: string): Promise<BackupVolumeRecord>;
  /** Refused while the volume holds generations or a sync pair, unless force. */
  unregister(volume: string, opts?: { force?: boolean }): Promise<void>;
  /** One volume, or a set as one consistency group; failures are per volume in the report. */
  backup(volumes: string[], opts?: BackupOptions): Promise<BackupReport>;
  startSync(volume: string, opts?: StartSyncOptions): Promise<SyncView>;
  cancelSync(volume: string): Promise<void>;
  restore(volume: string, opts?: RestoreOptions): Promise<RestoreReport>;
  /** Newest first; every transaction volume when volume is undefined. */
  history(volume?: string): Promise<HistoryEntry[]>;
  status(): Promise<AgentStatus>;
  devices(): Promise<DeviceMapping[]>;
  resourceMatch(): Promise<ResourceMatchReport>;
  close(): Promise<void>;
}

// The agent's refusals: a StatusError of the contract (proto/errors.ts), which the guest
// protocol and AgentService carry with their code.
export { AgentError, type AgentErrorCode } from '../proto/errors.js';

// ---------------------------------------------------------------------------------------------
// The array's tape library, as the agent uses it (implemented by ArrayClient, proto/).

export interface TapePort {
  listCartridges(): Promise<CartridgeView[]>;
  /** Writes the volume's current image to a cartridge (given, or one with room). */
  writeTape(req: { volume: string; cartridge?: string; tag?: string; pointInTime?: string }, onProgress?: (p: HostProgress) => void): Promise<TapeRecordView>;
  /** Writes a record back onto a volume, verifying every extent's CRC and the image's SHA-256. */
  restoreTape(req: { cartridge: string; record: number; volume: string; force?: boolean }, onProgress?: (p: HostProgress) => void): Promise<TapeRestoreView>;
}
