/**
 * error: the operation fails with an errno (NBD sends it as is) and, on iSCSI, CHECK CONDITION
 * with the given sense, or the errno's default (EIO: MEDIUM ERROR 03/11/00 on reads and
 * 03/0C/00 on writes, with the first LBA in INFORMATION).
 */
import { BlockDeviceError } from '../../block/BlockDevice.js';
import type { Injector, IoRequest } from '../io.js';
import type { ActionSpec } from '../spec.js';

export function errorInjector(faultId: string, a: Extract<ActionSpec, { kind: 'error' }>): Injector {
  return {
    before(req: IoRequest): void {
      throw new BlockDeviceError(a.errno, `injected ${a.errno} on ${req.op} of volume ${req.volume} at byte ${req.offset} (fault ${faultId})`, {
        sense: a.sense,
        lba: Math.floor(req.offset / req.blockSize),
      });
    },
  };
}
