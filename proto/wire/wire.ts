/**
 * Conversions between the array's model and the messages of arraylab/v1/array.proto as
 * proto-loader presents them (camelCase fields, enums as names, uint64 as decimal strings).
 */
import { ApiError } from '../errors.js';
import type { ArrayStatus, CopyEventView, CopySessionView, ExportConnection, ExportInfo, ListenerStatus, LogicalBlockSize, Provisioning, VolumeInfo } from '../views.js';

/** A uint64 as it may arrive (string from proto-loader) or be sent (number). */
export type WireUint64 = string | number;

export interface WireVolume {
  name: string;
  uuid: string;
  wwn: string;
  serial: string;
  sizeBytes: WireUint64;
  blockSize: number;
  provisioning: string;
  readOnly: boolean;
  description: string;
  createdAt: string;
  allocatedBytes: WireUint64;
  /** Optional: absent (undefined or null) when there is no limit. */
  allocLimitBytes?: WireUint64 | null;
}

export interface WireConnection {
  connectionId: string;
  protocol: string;
  remoteAddress: string;
  initiator: string;
  readOnly: boolean;
  openedAt: string;
}

export interface WireExport {
  name: string;
  description: string;
  sizeBytes: WireUint64;
  blockSize: number;
  readOnly: boolean;
  connections: WireConnection[];
}

export interface WireListener {
  available: boolean;
  host: string;
  port: number;
  note: string;
}

export interface WireStatus {
  version: string;
  uptimeSeconds: number;
  startedAt: string;
  dataDir: string;
  backend: string;
  listeners: { nbd: WireListener | null; iscsi: WireListener | null; api: WireListener | null } | null;
  volumeCount: number;
  totalBytes: WireUint64;
  allocatedBytes: WireUint64;
  connectionCount: number;
  pid: number;
  iscsiTargetName?: string;
  iscsiSessionCount?: number;
}

export interface WireCreateVolumeRequest {
  name: string;
  sizeBytes: WireUint64;
  blockSize: number;
  provisioning: string;
  readOnly: boolean;
  description: string;
  allocLimitBytes?: WireUint64 | null;
}

export interface WireUpdateVolumeRequest {
  name: string;
  allocLimitBytes?: WireUint64;
  noAllocLimit?: boolean;
  /** Which of the oneof is set (oneofs: true); absent when neither. */
  allocLimit?: 'allocLimitBytes' | 'noAllocLimit';
}

export interface WireRenameVolumeRequest {
  name: string;
  newName: string;
  newIdentity: boolean;
}

export interface WireResizeVolumeRequest {
  name: string;
  sizeBytes?: WireUint64;
  growByBytes?: WireUint64;
  /** Which of the oneof is set (oneofs: true). */
  size?: 'sizeBytes' | 'growByBytes';
}

/** A uint64 from the wire as an exact number, or INVALID_ARGUMENT naming the field. */
export function toByteCount(value: WireUint64 | undefined | null, field: string): number {
  const n = typeof value === 'number' ? value : Number(value ?? 0);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ApiError('INVALID_ARGUMENT', `${field} ${String(value)} is out of range; sizes must be below 2^53 bytes`);
  }
  return n;
}

export function provisioningToWire(p: Provisioning): string {
  return p === 'thick' ? 'PROVISIONING_THICK' : 'PROVISIONING_THIN';
}

export function provisioningFromWire(p: string | undefined): Provisioning | undefined {
  if (p === 'PROVISIONING_THICK') return 'thick';
  if (p === 'PROVISIONING_THIN') return 'thin';
  return undefined;
}

export function volumeToWire(v: VolumeInfo): WireVolume {
  return {
    name: v.name,
    uuid: v.uuid,
    wwn: v.wwn,
    serial: v.serial,
    sizeBytes: v.sizeBytes,
    blockSize: v.blockSize,
    provisioning: provisioningToWire(v.provisioning),
    readOnly: v.readOnly,
    description: v.description,
    createdAt: v.createdAt,
    allocatedBytes: v.allocatedBytes,
    ...(v.allocLimitBytes !== null ? { allocLimitBytes: v.allocLimitBytes } : {}),
  };
}

export function volumeFromWire(w: WireVolume): VolumeInfo {
  return {
    name: w.name,
    uuid: w.uuid,
    wwn: w.wwn,
    serial: w.serial,
    sizeBytes: toByteCount(w.sizeBytes, 'sizeBytes'),
    blockSize: w.blockSize as LogicalBlockSize,
    provisioning: provisioningFromWire(w.provisioning) ?? 'thin',
    readOnly: w.readOnly,
    description: w.description,
    createdAt: w.createdAt,
    allocatedBytes: toByteCount(w.allocatedBytes, 'allocatedBytes'),
    allocLimitBytes: w.allocLimitBytes === undefined || w.allocLimitBytes === null ? null : toByteCount(w.allocLimitBytes, 'allocLimitBytes'),
  };
}

export function exportToWire(e: ExportInfo): WireExport {
  return {
    ...e,
    connections: e.connections.map((c) => ({ ...c, protocol: c.protocol === 'iscsi' ? 'PROTOCOL_ISCSI' : 'PROTOCOL_NBD' })),
  };
}

export function exportFromWire(w: WireExport): ExportInfo {
  return {
    name: w.name,
    description: w.description,
    sizeBytes: toByteCount(w.sizeBytes, 'sizeBytes'),
    blockSize: w.blockSize as LogicalBlockSize,
    readOnly: w.readOnly,
    connections: w.connections.map(
      (c): ExportConnection => ({
        connectionId: c.connectionId,
        protocol: c.protocol === 'PROTOCOL_ISCSI' ? 'iscsi' : 'nbd',
        remoteAddress: c.remoteAddress,
        initiator: c.initiator,
        readOnly: c.readOnly,
        openedAt: c.openedAt,
      }),
    ),
  };
}

export function statusToWire(s: ArrayStatus): WireStatus {
  return { ...s };
}

export function statusFromWire(w: WireStatus): ArrayStatus {
  const listener = (l: WireListener | null | undefined): ListenerStatus => ({
    available: l?.available ?? false,
    host: l?.host ?? '',
    port: l?.port ?? 0,
    note: l?.note ?? '',
  });
  return {
    version: w.version,
    uptimeSeconds: w.uptimeSeconds,
    startedAt: w.startedAt,
    dataDir: w.dataDir,
    backend: w.backend === 'memory' ? 'memory' : 'file',
    listeners: { nbd: listener(w.listeners?.nbd), iscsi: listener(w.listeners?.iscsi), api: listener(w.listeners?.api) },
    volumeCount: w.volumeCount,
    totalBytes: toByteCount(w.totalBytes, 'totalBytes'),
    allocatedBytes: toByteCount(w.allocatedBytes, 'allocatedBytes'),
    connectionCount: w.connectionCount,
    pid: w.pid,
    iscsiTargetName: w.iscsiTargetName ?? '',
    iscsiSessionCount: w.iscsiSessionCount ?? 0,
  };
}

// ---- copy.proto ----

export interface WireCopySession {
  id: string;
  type: string;
  state: string;
  source: string;
  destination: string;
  copiedBlocks: WireUint64;
  totalBlocks: WireUint64;
  unitSize: number;
  rateMibS: number;
  unthrottled: boolean;
  etaSeconds?: number | null;
  group: string;
  createdAt: string;
  generation: number;
  generationIndex?: number;
  generationCount?: number;
  reversed: boolean;
  error: string;
  imageAt?: string;
  errorSince?: string;
  retryAt?: string;
}

export interface WireStartCopyRequest {
  type: string;
  source: string;
  destination: string;
  rateMibS?: number | null;
  group: string;
  force: boolean;
  refuseIfFull?: boolean;
}

export interface WireCopyEvent {
  at: string;
  sessionId: string;
  kind: string;
  state: string;
  message: string;
  session?: WireCopySession | null;
}

export const MiB = 1024 * 1024;

export function copySessionFromWire(w: WireCopySession): CopySessionView {
  return {
    id: w.id,
    type: w.type as CopySessionView['type'],
    state: w.state as CopySessionView['state'],
    source: w.source,
    destination: w.destination,
    copiedBlocks: toByteCount(w.copiedBlocks, 'copiedBlocks'),
    totalBlocks: toByteCount(w.totalBlocks, 'totalBlocks'),
    unitSize: w.unitSize,
    rateMiBs: w.unthrottled ? null : w.rateMibS,
    etaSeconds: w.etaSeconds === undefined || w.etaSeconds === null ? null : w.etaSeconds,
    group: w.group,
    createdAt: w.createdAt,
    generation: w.generation,
    generationIndex: w.generationIndex ?? 0,
    generationCount: w.generationCount ?? 0,
    reversed: w.reversed,
    error: w.error,
    imageAt: w.imageAt ?? '',
    errorSince: w.errorSince ?? '',
    retryAt: w.retryAt ?? '',
  };
}

export function copyEventFromWire(w: WireCopyEvent): CopyEventView {
  return {
    at: w.at,
    sessionId: w.sessionId,
    kind: w.kind,
    state: w.state,
    message: w.message,
    session: w.session ? copySessionFromWire(w.session) : null,
  };
}
