/** Device errors to NBD wire errors. */
import { BlockDeviceError, type BlockErrorCode } from '../block/BlockDevice.js';
import { EINVAL, EIO, ENOMEM, ENOSPC, ENOTSUP, EOVERFLOW, EPERM, ESHUTDOWN } from './constants.js';

const WIRE: Record<BlockErrorCode, number> = {
  EIO,
  EPERM,
  // NBD has no EACCES; EPERM is what a client shows as "not permitted".
  EACCES: EPERM,
  EINVAL,
  ENOSPC,
  EOVERFLOW,
  ENOTSUP,
  ENOMEM,
  ESHUTDOWN,
};

/** The NBD error for a thrown value, and whether it was expected (a BlockDeviceError) or a bug/fault. */
export function wireError(err: unknown): { errno: number; expected: boolean; message: string } {
  if (err instanceof BlockDeviceError) {
    return { errno: WIRE[err.code] ?? EIO, expected: true, message: err.message };
  }
  return { errno: EIO, expected: false, message: 'input/output error' };
}
