/**
 * The control API's views that are not part of the array's own model (array/types.ts):
 * exports with their connected clients, and the server's status. The CLI prints these and
 * `--json` emits them as they are.
 */
import type { LogicalBlockSize } from '../array/types.js';

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
}
