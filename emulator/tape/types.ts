/**
 * What the tape library needs from the array, and how it fails. The views it returns are the
 * agent's contracts (agent/types.ts: CartridgeView, TapeRecordView, TapeRestoreView,
 * HostProgress), re-exported here so emulator code imports them from one place.
 */
import type { BlockDevice } from '../block/BlockDevice.js';

export type { CartridgeView, HostProgress, TapeRecordView, TapeRestoreView } from '../../agent/types.js';

/** A volume as a host sees it. */
export interface TapeVolume {
  readonly name: string;
  /** Forwards every call to the volume's top layer (copy sessions see restore writes; snap
   * volumes read as their point-in-time image). */
  readonly device: BlockDevice;
  /** Read-only to hosts (volume setting, or a copy session's role, e.g. a snap volume). */
  readonly readOnly: boolean;
  /** Clients that have it open read-write now (NBD connections, iSCSI sessions). */
  readWriteClients(): number;
}

export interface TapeVolumes {
  /** Throws TapeError NOT_FOUND (message naming the volume and the fix) when there is none. */
  open(name: string): TapeVolume;
}

export type TapeErrorCode =
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'DATA_LOSS'
  | 'CANCELLED'
  | 'UNAVAILABLE'
  | 'INTERNAL';

/** A refused or failed tape operation; the message names the cartridge/record/volume and the fix. */
export class TapeError extends Error {
  readonly code: TapeErrorCode;
  constructor(code: TapeErrorCode, message: string) {
    super(message);
    this.name = 'TapeError';
    this.code = code;
  }
}

export interface RecordCheck {
  record: number;
  ok: boolean;
  error: string;
}
