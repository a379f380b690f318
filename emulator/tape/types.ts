/**
 * What the tape library needs from the array, and how it fails. The views it returns are the
 * contract's (proto/views.ts: CartridgeView, TapeRecordView, TapeRestoreView, HostProgress),
 * re-exported here so emulator code imports them from one place.
 */
import { StatusError } from '../../proto/errors.js';
import type { BlockDevice } from '../block/BlockDevice.js';

export type { CartridgeView, HostProgress, RecordCheck, TapeRecordView, TapeRestoreView } from '../../proto/views.js';

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
  /** What the volume holds now: the instant its image is of, as the array knows it. */
  image(): VolumeImage;
  /** Copy session `id` ended by finishing its copy (an OPC): its destination holds the image as it is. */
  copyFinished(id: string): boolean;
}

/**
 * The point in time of a volume's image. `why` says what the volume is and the fix.
 *   live           no copy session holds it: the image is of the instant it is read
 *   point-in-time  a copy session's destination (snap volume, OPC/QuickOPC destination,
 *                  suspended or split EC destination): the image is of `at` (ms)
 *   moving         an EC destination that is copying or equivalent: it follows the source
 *   unknown        an EC destination whose instant the array did not record
 *   broken         the destination of an error-suspended session: it holds no complete image
 *                  (an OPC's uncopied units, a SnapOPC+ generation, an EC pair's destination
 *                  fail reads); refused even with a given point in time
 */
export type VolumeImage = { kind: 'live' } | { kind: 'point-in-time'; at: number; session: string } | { kind: 'moving' | 'unknown' | 'broken'; why: string };

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
export class TapeError extends StatusError {
  declare readonly code: TapeErrorCode;
  constructor(code: TapeErrorCode, message: string) {
    super(code, message);
    this.name = 'TapeError';
  }
}
