/**
 * Conversions between the contract's views (views.ts) and the messages of array.proto and
 * copy.proto, whose types are generated (proto/gen/: `X` is what may be sent, `X__Output` what
 * arrives, with the loader's options: camelCase fields, enums as names, uint64 as decimal
 * strings).
 */
import { ApiError } from '../errors.js';
import type * as pb from '../gen/index.js';
import type {
  ArrayStatus,
  CopyEventView,
  CopySessionView,
  ExportConnection,
  ExportInfo,
  ListenerStatus,
  LogicalBlockSize,
  Provisioning,
  RemoteCopyView,
  RemoteView,
  VolumeInfo,
} from '../views.js';

/** A uint64 as it may arrive (a decimal string) or be sent (a number). */
export type WireUint64 = string | number | { toString(): string };

/** A uint64 from the wire as an exact number, or INVALID_ARGUMENT naming the field. */
export function toByteCount(value: WireUint64 | undefined | null, field: string): number {
  const n = typeof value === 'number' ? value : Number(value ?? 0);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ApiError('INVALID_ARGUMENT', `${field} ${String(value)} is out of range; sizes must be below 2^53 bytes`);
  }
  return n;
}

export function provisioningToWire(p: Provisioning): pb.Provisioning__Output {
  return p === 'thick' ? 'PROVISIONING_THICK' : 'PROVISIONING_THIN';
}

export function provisioningFromWire(p: pb.Provisioning | undefined): Provisioning | undefined {
  if (p === 'PROVISIONING_THICK') return 'thick';
  if (p === 'PROVISIONING_THIN') return 'thin';
  return undefined;
}

export function volumeToWire(v: VolumeInfo): pb.Volume {
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
    writeCache: v.writeCache ?? 'write-through',
    writeCacheDirtyBytes: v.writeCacheDirtyBytes ?? 0,
  };
}

export function volumeFromWire(w: pb.Volume__Output): VolumeInfo {
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
    writeCache: w.writeCache === 'volatile' ? 'volatile' : 'write-through',
    writeCacheDirtyBytes: toByteCount(w.writeCacheDirtyBytes, 'writeCacheDirtyBytes'),
  };
}

export function exportToWire(e: ExportInfo): pb.Export {
  return {
    ...e,
    connections: e.connections.map((c) => ({ ...c, protocol: c.protocol === 'iscsi' ? 'PROTOCOL_ISCSI' : 'PROTOCOL_NBD' })),
  };
}

export function exportFromWire(w: pb.Export__Output): ExportInfo {
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

export function statusToWire(s: ArrayStatus): pb.ArrayStatus {
  return { ...s };
}

export function statusFromWire(w: pb.ArrayStatus__Output): ArrayStatus {
  const listener = (l: pb.Listener__Output | null | undefined): ListenerStatus => ({
    available: l?.available ?? false,
    host: l?.host ?? '',
    port: l?.port ?? 0,
    note: l?.note ?? '',
    ...(l?.security && l.security.length > 0 ? { security: [...l.security] } : {}),
  });
  return {
    version: w.version,
    uptimeSeconds: Number(w.uptimeSeconds),
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
    arrayId: w.arrayId ?? '',
  };
}

// ---- copy.proto ----

export const MiB = 1024 * 1024;

const COPY_TYPES: Record<CopySessionView['type'], pb.CopyType__Output> = {
  opc: 'COPY_TYPE_OPC',
  quickopc: 'COPY_TYPE_QUICKOPC',
  snapopcplus: 'COPY_TYPE_SNAPOPCPLUS',
  ec: 'COPY_TYPE_EC',
  rec: 'COPY_TYPE_REC',
  ropc: 'COPY_TYPE_ROPC',
};

const COPY_STATES: Record<CopySessionView['state'], pb.CopyState__Output> = {
  copying: 'COPY_STATE_COPYING',
  equivalent: 'COPY_STATE_EQUIVALENT',
  suspended: 'COPY_STATE_SUSPENDED',
  tracking: 'COPY_STATE_TRACKING',
  snap: 'COPY_STATE_SNAP',
  split: 'COPY_STATE_SPLIT',
  'error-suspended': 'COPY_STATE_ERROR_SUSPENDED',
  halt: 'COPY_STATE_HALT',
};

/** A copy type as the CLI shows it, on the wire (COPY_TYPE_UNSPECIFIED for anything else). */
export function copyTypeToWire(t: string): pb.CopyType__Output {
  return COPY_TYPES[t as CopySessionView['type']] ?? 'COPY_TYPE_UNSPECIFIED';
}

/** A copy type from the wire as the CLI shows it; '' for UNSPECIFIED (or a newer server's). */
export function copyTypeFromWire(t: pb.CopyType | undefined): CopySessionView['type'] | '' {
  return (Object.entries(COPY_TYPES).find(([, w]) => w === t)?.[0] as CopySessionView['type'] | undefined) ?? '';
}

/** A copy state as the CLI shows it ('' = none: the session has ended), on the wire. */
export function copyStateToWire(s: string): pb.CopyState__Output {
  return COPY_STATES[s as CopySessionView['state']] ?? 'COPY_STATE_UNSPECIFIED';
}

export function copyStateFromWire(s: pb.CopyState | undefined): CopySessionView['state'] | '' {
  return (Object.entries(COPY_STATES).find(([, w]) => w === s)?.[0] as CopySessionView['state'] | undefined) ?? '';
}

export function copySessionFromWire(w: pb.CopySession__Output): CopySessionView {
  return {
    id: w.id,
    type: copyTypeFromWire(w.type) as CopySessionView['type'],
    state: copyStateFromWire(w.state) as CopySessionView['state'],
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
    remote: w.remote ? remoteCopyFromWire(w.remote) : null,
  };
}

function remoteCopyFromWire(w: pb.RemoteCopyInfo__Output): RemoteCopyView {
  return {
    role: w.role === 'remote-end' ? 'remote-end' : 'source',
    peer: w.peer,
    mode: w.mode as RemoteCopyView['mode'],
    split: w.split === 'manual' ? 'manual' : 'auto',
    recovery: w.recovery === 'manual' ? 'manual' : 'auto',
    haltReason: w.haltReason,
    haltDetail: w.haltDetail,
    linkUp: w.linkUp,
    pendingBytes: toByteCount(w.pendingBytes, 'pendingBytes'),
    drainedAt: w.drainedAt,
    bufferUsedBytes: toByteCount(w.bufferUsedBytes, 'bufferUsedBytes'),
    bufferSizeBytes: toByteCount(w.bufferSizeBytes, 'bufferSizeBytes'),
  };
}

export function remoteFromWire(w: pb.Remote__Output): RemoteView {
  return {
    name: w.name,
    api: w.api,
    arrayId: w.arrayId,
    nbd: w.nbd,
    reachable: w.reachable,
    error: w.error,
    addedAt: w.addedAt,
    sessionCount: w.sessionCount,
    version: w.version,
    buffer: {
      bytes: toByteCount(w.buffer?.bytes ?? 0, 'buffer.bytes'),
      haltWaitMs: w.buffer?.haltWaitMs ?? 0,
      monitorMs: w.buffer?.monitorMs ?? 0,
      cycleMs: w.buffer?.cycleMs ?? 0,
    },
  };
}

export function copyEventFromWire(w: pb.CopyEvent__Output): CopyEventView {
  return {
    at: w.at,
    sessionId: w.sessionId,
    kind: w.kind,
    state: copyStateFromWire(w.state),
    message: w.message,
    session: w.session ? copySessionFromWire(w.session) : null,
  };
}
