/**
 * The control API's views that are not part of the array's own model (array/types.ts):
 * exports with their connected clients, and the server's status. The CLI prints these and
 * `--json` emits them as they are.
 */
import type { HostInfo, HostLun, LogicalBlockSize } from '../array/types.js';

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
}

/** A copy session as the API and CLI show it (`copy show --json`). */
export interface CopySessionView {
  id: string;
  type: 'opc' | 'quickopc' | 'snapopcplus' | 'ec';
  state: 'copying' | 'equivalent' | 'suspended' | 'tracking' | 'snap' | 'split' | 'error-suspended';
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
