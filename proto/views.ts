/**
 * What clients see of the array (the contract's views): volumes, exports with their connected
 * clients, the server's status, copy sessions, hosts, tape cartridges and records. The CLIs print
 * these and `--json` emits them as they are; the array (emulator/) and the agent (agent/) both
 * use these types, and this file imports nothing of either.
 */

export interface ExportConnection {
  connectionId: string;
  protocol: 'nbd' | 'iscsi';
  remoteAddress: string;
  /** iSCSI initiator IQN; empty for NBD. */
  initiator: string;
  readOnly: boolean;
  /** ISO 8601. */
  openedAt: string;
}

export interface ExportInfo {
  /** The volume name, which is also the export name. */
  name: string;
  description: string;
  sizeBytes: number;
  blockSize: LogicalBlockSize;
  readOnly: boolean;
  connections: ExportConnection[];
}

export interface ListenerStatus {
  available: boolean;
  host: string;
  port: number;
  /** Why it is not available. */
  note: string;
  /** How it is protected (array.proto's Listener.security); absent: plaintext and open. */
  security?: string[];
}

export interface ArrayStatus {
  version: string;
  uptimeSeconds: number;
  /** ISO 8601. */
  startedAt: string;
  /** Empty for the memory backend. */
  dataDir: string;
  backend: 'file' | 'memory';
  listeners: { nbd: ListenerStatus; iscsi: ListenerStatus; api: ListenerStatus };
  volumeCount: number;
  totalBytes: number;
  allocatedBytes: number;
  connectionCount: number;
  pid: number;
  /** The iSCSI target's IQN; empty when iSCSI is not served. */
  iscsiTargetName: string;
  iscsiSessionCount: number;
  /** The array's id (12 hex digits). */
  arrayId: string;
}

/** A copy session as the API and CLI show it (`copy show --json`). */
export interface CopySessionView {
  id: string;
  type: 'opc' | 'quickopc' | 'snapopcplus' | 'ec' | 'rec' | 'ropc';
  state: 'copying' | 'equivalent' | 'suspended' | 'tracking' | 'snap' | 'split' | 'error-suspended' | 'halt';
  source: string;
  destination: string;
  /** Copy units copied and in all (unitSize bytes each). */
  copiedBlocks: number;
  totalBlocks: number;
  unitSize: number;
  /** MiB/s; 0 = no background copy; null = unthrottled. */
  rateMiBs: number | null;
  /** Seconds to finish; null when unknown or nothing to copy. */
  etaSeconds: number | null;
  /** Consistency group label; empty if none. */
  group: string;
  /** ISO 8601. */
  createdAt: string;
  /** SnapOPC+: the generation's sequence number per source, counting up (newer = larger); 0 otherwise. */
  generation: number;
  /** SnapOPC+: place among the source's current generations, 1 = newest (as the agent counts); 0 otherwise. */
  generationIndex: number;
  /** SnapOPC+: how many generations the source has now; 0 otherwise. */
  generationCount: number;
  /**
   * ISO 8601: the point-in-time instant of the image the destination holds or will hold
   * (OPC, SnapOPC+: the start; QuickOPC: the last start or restart; EC: the last suspend or
   * split); empty while an EC pair mirrors (the destination follows the source).
   */
  imageAt: string;
  reversed: boolean;
  /** error-suspended: why; or why the background copy keeps failing (retried with back-off); empty otherwise. */
  error: string;
  /** A failing background copy: since when (ISO 8601); empty otherwise. */
  errorSince: string;
  /** A failing background copy: the next retry (ISO 8601); empty when none is due. */
  retryAt: string;
  /** REC only: the pair beyond a local session; null otherwise. */
  remote: RemoteCopyView | null;
}

/** A REC pair as one of its two arrays sees it. */
export interface RemoteCopyView {
  /** source: this array sends; remote-end: this array holds the destination. */
  role: 'source' | 'remote-end';
  /** The other array: its registered name, or array-ID. */
  peer: string;
  mode: 'sync' | 'stack' | 'consistency' | 'through' | 'ropc';
  split: 'auto' | 'manual';
  recovery: 'auto' | 'manual';
  /** halt: link-down | remote-failed; empty otherwise. */
  haltReason: string;
  haltDetail: string;
  /** Source: whether the data path is connected now. */
  linkUp: boolean;
  /** Bytes written here and not yet on the remote. */
  pendingBytes: number;
  /**
   * Asynchronous modes: the newest instant the remote holds every write of (consistency: the
   * close of the last cycle applied there; RPO = now minus this); empty when unknown.
   */
  drainedAt: string;
  /** Consistency mode: the REC buffer to this remote (used and size); 0 otherwise. */
  bufferUsedBytes: number;
  bufferSizeBytes: number;
}

/** Another array this one knows (arraylab remote). */
export interface RemoteView {
  name: string;
  /** HOST:PORT of its control API. */
  api: string;
  arrayId: string;
  /** HOST:PORT of its NBD server (learnt from it). */
  nbd: string;
  reachable: boolean;
  error: string;
  addedAt: string;
  sessionCount: number;
  version: string;
  /** The REC buffer of consistency-mode pairs to it. */
  buffer: { bytes: number; haltWaitMs: number; monitorMs: number; cycleMs: number };
}

/**
 * A copy session's bitmap as a picture (`copy bitmap --json`, GetCopyBitmap): one letter per
 * cell of unitsPerCell units: 'C' copied (the destination holds the point-in-time data),
 * 'P' pending (still to copy), 'T' tracked (changed since the copy point: QuickOPC/EC re-copy
 * candidates), 'B' before-image saved (SnapOPC+), '.' nothing. A cell of several units shows
 * the first of P, T, B, C, '.' that any of them is. counts are in units, not cells.
 */
export interface CopyBitmapView {
  id: string;
  type: string;
  state: string;
  units: number;
  unitBytes: number;
  unitsPerCell: number;
  cells: string;
  counts: { copied: number; pending: number; tracked: number; beforeImage: number };
}

/** What a host agent reports of a backup (ArrayClient.reportAgentEvent, EventService.ReportAgentEvent). */
export interface AgentEventReport {
  kind: 'agent.backup.completed' | 'agent.backup.failed';
  /** The transaction volume. */
  volume: string;
  backupVolume?: string;
  type?: string;
  /** The agent's absolute generation number. */
  generation?: number;
  sessionId?: string;
  error?: string;
  /** The agent's host name. */
  host?: string;
}

/** One event of WatchCopies. */
export interface CopyEventView {
  at: string;
  sessionId: string;
  /** snapshot | progress | started | state | completed | cancelled | dropped | error */
  kind: string;
  /** Empty once the session has ended. */
  state: string;
  message: string;
  /** The session after the event; null once it has ended. */
  session: CopySessionView | null;
}

export interface StartCopyParams {
  type: CopySessionView['type'];
  source: string;
  destination: string;
  /** MiB/s: 0 = no background copy; undefined = unthrottled. */
  rateMiBs?: number;
  group?: string;
  force?: boolean;
  /** SnapOPC+: with 8 generations, refuse instead of dropping the oldest. */
  refuseIfFull?: boolean;
  /** REC: sync | stack | through; split auto | manual; recovery auto | manual. */
  mode?: string;
  split?: string;
  recovery?: string;
}

/** A logged-in iSCSI session as the API shows it. */
export interface IscsiSessionView {
  initiatorName: string;
  isid: string;
  tsih: number;
  connections: number;
  remoteAddresses: string[];
  luns: Array<{ lun: number; volume: string }>;
}

/** A host with the sessions its initiators have logged in (`host show --json`). */
export interface HostView extends HostInfo {
  sessions: IscsiSessionView[];
}

/** `host list --json`: the hosts and what initiators see while host affinity is off. */
export interface HostListView {
  /** True: initiators see only their host's LUN map; false: everyone sees defaultLuns. */
  hostAffinity: boolean;
  requireHostAffinity: boolean;
  hosts: HostView[];
  defaultLuns: HostLun[];
  /** Sessions whose initiator is in no host. */
  otherSessions: IscsiSessionView[];
}

// ---- volumes and hosts (the array's model as clients see it) ----

export type Provisioning = 'thin' | 'thick';
export type LogicalBlockSize = 512 | 4096;

/** A volume as the API and CLI show it. */
export interface VolumeInfo {
  name: string;
  /** RFC 4122 UUID, fixed at creation. */
  uuid: string;
  /** NAA IEEE Registered Extended identifier (type 6), 32 hex digits, lower case; fixed at creation. */
  wwn: string;
  /** Product serial number, fixed at creation (VPD page 0x80). */
  serial: string;
  sizeBytes: number;
  blockSize: LogicalBlockSize;
  provisioning: Provisioning;
  /** Exported read-only to every client. */
  readOnly: boolean;
  description: string;
  /** ISO 8601. */
  createdAt: string;
  /** Bytes that hold data (allocated in the allocation map). */
  allocatedBytes: number;
  /**
   * Thin volumes: the most bytes that may be allocated (a write past it fails ENOSPC), like a
   * snap pool's physical capacity behind a larger logical size; null when there is no limit.
   */
  allocLimitBytes: number | null;
  /**
   * 'volatile': writes are acknowledged from a volatile write-back cache that a power cut
   * loses unless flushed; 'write-through' (the default): acknowledged once in the store.
   * Absent from arrays that predate it: write-through.
   */
  writeCache?: WriteCacheMode;
  /** Volatile cache: bytes of acknowledged, unflushed data a power cut now would lose. */
  writeCacheDirtyBytes?: number;
}

/** How a volume acknowledges writes (see VolumeInfo.writeCache). */
export type WriteCacheMode = 'write-through' | 'volatile';

export interface CreateVolumeRequest {
  name: string;
  sizeBytes: number;
  /** Default 512. */
  blockSize?: LogicalBlockSize;
  /** Default 'thin'. */
  provisioning?: Provisioning;
  readOnly?: boolean;
  description?: string;
  /** Thin only: allocation limit in bytes, a block multiple, at most sizeBytes. Default: none. */
  allocLimitBytes?: number | null;
  /** Default 'write-through'. */
  writeCache?: WriteCacheMode;
}

/** Options of StorageArray.renameVolume. */
export interface RenameVolumeOptions {
  /** Give the volume a fresh serial number and WWN (the UUID stays: it is the internal key). */
  newIdentity?: boolean;
}

export type ArrayErrorCode = 'NOT_FOUND' | 'ALREADY_EXISTS' | 'INVALID_ARGUMENT' | 'FAILED_PRECONDITION' | 'RESOURCE_EXHAUSTED' | 'INTERNAL';

/** Volume names double as NBD export names and appear in paths: keep them plain. */
export const VOLUME_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** Host names appear in commands and tables like volume names: the same plain form. */
export const HOST_NAME_PATTERN = VOLUME_NAME_PATTERN;

/** The highest LUN a host's map may use: SAM's flat space addressing holds 14 bits. */
export const MAX_LUN = 16383;

/** One entry of a LUN map: the LUN number and the volume behind it (by UUID, so renames follow). */
export interface HostLun {
  lun: number;
  /** The volume's current name. */
  volume: string;
  volumeUuid: string;
}

/** A host: the initiators it logs in with and the volumes it may see, at which LUNs. */
export interface HostInfo {
  name: string;
  /** Canonical (lower-case) iSCSI names, each in exactly one host. */
  initiators: string[];
  /** Ascending by LUN. */
  luns: HostLun[];
  /** ISO 8601. */
  createdAt: string;
  /** How the host proves who it is beyond its initiator names (`host set`). */
  credentials: HostCredentials;
}

/** A host's NBD identities and CHAP user names; keys and secrets are never shown. */
export interface HostCredentials {
  /** TLS-PSK identity its NBD clients use (the key was shown once, when it was made). */
  nbdPskIdentity?: string;
  /** SHA-256 fingerprint of its NBD client certificate: upper-case hex, colon-separated. */
  nbdCertFingerprint?: string;
  /** Subject CN of its NBD client certificate. */
  nbdCertSubject?: string;
  /** CHAP user its initiators log in with. */
  chapUser?: string;
  /** Mutual CHAP: the user the target answers with. */
  chapMutualUser?: string;
}

// ---- tape (the array's virtual tape library) ----

/** Progress of a long operation in bytes. */
export interface HostProgress {
  doneBytes: number;
  totalBytes: number;
}

export interface TapeRecordView {
  cartridge: string;
  /** Record (file) number on the cartridge, from 1. */
  record: number;
  /** The volume it was written from. */
  volume: string;
  /** Free text given at write time (the agent puts "TV generation N"). */
  tag: string;
  /** ISO 8601: the point in time of the image (given, or the array's session instant; see tape.proto). */
  imageAt: string;
  sizeBytes: number;
  blockSize: number;
  /** Bytes of data stored (holes are not stored). */
  dataBytes: number;
  /** SHA-256 of the whole volume image (holes read as zeroes), hex. */
  sha256: string;
  createdAt: string;
}

export interface CartridgeView {
  label: string;
  capacityBytes: number;
  usedBytes: number;
  recordCount: number;
  createdAt: string;
}

export interface TapeRestoreView {
  cartridge: string;
  record: number;
  volume: string;
  bytes: number;
  /** Recomputed over what was written and equal to the record's; otherwise the call fails. */
  sha256: string;
}

/** One record's verification. */
export interface RecordCheck {
  record: number;
  ok: boolean;
  error: string;
}

/** A fault set on the array (FaultService). */
export interface FaultView {
  id: string;
  kind: string;
  target: string;
  ops: string[];
  /** One line: what it does, to which operations and blocks, when. */
  description: string;
  seed: number;
  transient: boolean;
  label: string;
  createdAt: string;
  seen: number;
  fired: number;
  flag: string;
}

/** One injection (FaultService.WatchFaultEvents). */
export interface FaultEventView {
  seq: number;
  at: string;
  faultId: string;
  kind: string;
  target: string;
  op: string;
  offset?: number;
  length?: number;
  connection: string;
  detail: string;
}

/** What a power cut did, per volume with a volatile write cache. */
export interface PowerCutView {
  policy: string;
  seed: number;
  connectionsDropped: number;
  volumes: Array<{ name: string; writesLost: number; writesKept: number; writesTorn: number; bytesLost: number }>;
}

/** A user of the array's control API (arraylab user). */
export interface UserView {
  name: string;
  role: string;
  /** '': array-wide. */
  tenant: string;
  createdAt: string;
  /** '': never. */
  expiresAt: string;
  certSubject: string;
  certFingerprint: string;
  hasToken: boolean;
  tokenRotatedAt: string;
  permissions: string[];
}

/** A tenant, its quotas (0: none) and what it uses (arraylab tenant). */
export interface TenantView {
  name: string;
  maxCapacityBytes: number;
  maxVolumes: number;
  maxSessions: number;
  capacityBytes: number;
  volumes: number;
  sessions: number;
  hosts: number;
  cartridges: number;
  users: number;
  createdAt: string;
}

/** One audited call (arraylab audit). */
export interface AuditEntryView {
  seq: number;
  at: string;
  user: string;
  tenant: string;
  peer: string;
  rpc: string;
  target: string;
  result: string;
}

/** An array event (EventService; emulator/events/EventLog.ts keeps them). */
export interface ArrayEventView {
  seq: number;
  at: string;
  /** e.g. volume.created, client.connected, copy.state, host.mapped, tape.write, fault.added. */
  kind: string;
  subject: { kind: string; name: string };
  message: string;
  fields: Record<string, string>;
}

/**
 * One volume's host I/O since the array started (monotonic): emulator/metrics/VolumeIo.ts counts
 * it, the dashboard's /api/volumes carries it.
 */
export interface VolumeIoCounts {
  readOps: number;
  readBytes: number;
  /** Writes and write-zeroes (as Linux's disk statistics count them; SCSI WRITE SAME of zeroes too). */
  writeOps: number;
  writeBytes: number;
  flushOps: number;
  /** Trims: NBD TRIM, SCSI UNMAP and WRITE SAME with UNMAP. */
  trimOps: number;
  trimBytes: number;
  /** Operations that failed (a fault, a reservation, a read-only refusal, an I/O error). */
  errors: number;
}
