/**
 * The array's public model, shared by the control API, the CLI and the array itself.
 * StorageArray (StorageArray.ts) implements these operations.
 */
import type { ClientInfo } from '../block/BlockDevice.js';

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
}

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
}

/** A volume's settable properties, validated, with every default applied (limit: absent or null for none). */
export type VolumeSpec = Required<Omit<CreateVolumeRequest, 'allocLimitBytes'>> & { allocLimitBytes?: number | null };

/** Options of StorageArray.renameVolume. */
export interface RenameVolumeOptions {
  /** Give the volume a fresh serial number and WWN (the UUID stays: it is the internal key). */
  newIdentity?: boolean;
}

/** One client connected to one volume. */
export interface ConnectionInfo {
  volume: string;
  client: ClientInfo;
  /** ISO 8601. */
  openedAt: string;
}

export type ArrayErrorCode =
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'INTERNAL';

/**
 * An error of the array's own operations. The message names the thing and the fix, e.g.
 * "cannot delete volume vol1: it is open by 1 connected client (nbd 127.0.0.1:5000); disconnect it first".
 */
export class ArrayError extends Error {
  readonly code: ArrayErrorCode;
  constructor(code: ArrayErrorCode, message: string) {
    super(message);
    this.name = 'ArrayError';
    this.code = code;
  }
}

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
}

/** What an initiator may see: a LUN and the export (volume name) behind it. */
export interface InitiatorLun {
  readonly lun: number;
  readonly exportName: string;
}

