/**
 * The array's public model, shared by the control API, the CLI and the array itself.
 * StorageArray (StorageArray.ts) implements these operations.
 */
import type { ClientInfo } from '../block/BlockDevice.js';
import { StatusError } from '../../proto/errors.js';
import type { ArrayErrorCode, CreateVolumeRequest } from '../../proto/views.js';

// The model's views (what the API and CLI show) are the contract's: proto/views.ts.
export type {
  ArrayErrorCode,
  CreateVolumeRequest,
  HostInfo,
  HostLun,
  LogicalBlockSize,
  Provisioning,
  RenameVolumeOptions,
  VolumeInfo,
} from '../../proto/views.js';
export { HOST_NAME_PATTERN, MAX_LUN, VOLUME_NAME_PATTERN } from '../../proto/views.js';

/** A volume's settable properties, validated, with every default applied (limit: absent or null for none). */
export type VolumeSpec = Required<Omit<CreateVolumeRequest, 'allocLimitBytes' | 'writeCache'>> & {
  allocLimitBytes?: number | null;
  writeCache?: NonNullable<CreateVolumeRequest['writeCache']>;
};

/** One client connected to one volume. */
export interface ConnectionInfo {
  volume: string;
  client: ClientInfo;
  /** ISO 8601. */
  openedAt: string;
}

/**
 * An error of the array's own operations. The message names the thing and the fix, e.g.
 * "cannot delete volume vol1: it is open by 1 connected client (nbd 127.0.0.1:5000); disconnect it first".
 */
export class ArrayError extends StatusError {
  declare readonly code: ArrayErrorCode;
  constructor(code: ArrayErrorCode, message: string) {
    super(code, message);
    this.name = 'ArrayError';
  }
}

/** What an initiator may see: a LUN and the export (volume name) behind it. */
export interface InitiatorLun {
  readonly lun: number;
  readonly exportName: string;
}
