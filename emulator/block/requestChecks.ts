/**
 * Request validation shared by the block stores. Every check throws a BlockDeviceError the
 * front ends map to a wire error, so a malformed request never reaches the data.
 *
 * Range errors follow the NBD convention: a write or write-zeroes that runs past the end of
 * the device is ENOSPC (the client ran out of device), anything else out of range is EINVAL.
 */
import { BlockDeviceError, type BlockErrorCode } from './BlockDevice.js';

export interface Geometry {
  readonly size: number;
  readonly blockSize: number;
}

/** Checks an I/O request: offset and length block-aligned, range inside the device. */
export function checkIo(dev: Geometry, op: string, offset: number, length: number, pastEnd: BlockErrorCode): void {
  // One combined fast test for the common case; the slow path works out which rule broke.
  const bs = dev.blockSize;
  if (
    Number.isSafeInteger(offset) &&
    Number.isSafeInteger(length) &&
    offset >= 0 &&
    length >= 0 &&
    offset % bs === 0 &&
    length % bs === 0 &&
    offset + length <= dev.size
  ) {
    return;
  }
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new BlockDeviceError('EINVAL', `${op} at offset ${offset} length ${length}: offset and length must be non-negative integers`);
  }
  if (offset % bs !== 0 || length % bs !== 0) {
    throw new BlockDeviceError('EINVAL', `${op} at offset ${offset} length ${length}: offset and length must be multiples of the ${bs}-byte block size`);
  }
  throw new BlockDeviceError(pastEnd, `${op} at offset ${offset} length ${length} runs past the end of the ${dev.size}-byte device`);
}

/**
 * Checks a query (block status, cache): offset aligned and inside the device; length may be
 * unaligned (it is only a bound on the answer) but must stay inside the device.
 */
export function checkQuery(dev: Geometry, op: string, offset: number, length: number): void {
  const bs = dev.blockSize;
  if (Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length > 0 && offset % bs === 0 && offset + length <= dev.size) {
    return;
  }
  if (offset % bs !== 0) {
    throw new BlockDeviceError('EINVAL', `${op} at offset ${offset}: offset must be a multiple of the ${bs}-byte block size`);
  }
  if (!(length > 0)) {
    throw new BlockDeviceError('EINVAL', `${op} at offset ${offset} length ${length}: length must be positive`);
  }
  throw new BlockDeviceError('EINVAL', `${op} at offset ${offset} length ${length} runs past the end of the ${dev.size}-byte device`);
}

export function readOnlyError(op: string): BlockDeviceError {
  return new BlockDeviceError('EPERM', `${op} refused: the device is read-only`);
}

export function shutdownError(op: string): BlockDeviceError {
  return new BlockDeviceError('ESHUTDOWN', `${op} refused: the device is closed`);
}

/** Checks a new size for resize(): grow only, block-aligned. */
export function checkResize(dev: Geometry, newSize: number): void {
  if (!Number.isSafeInteger(newSize) || newSize <= 0 || newSize % dev.blockSize !== 0) {
    throw new BlockDeviceError('EINVAL', `cannot resize to ${newSize} bytes: the size must be a positive multiple of the ${dev.blockSize}-byte block size`);
  }
  if (newSize < dev.size) {
    throw new BlockDeviceError('EINVAL', `cannot shrink the device from ${dev.size} to ${newSize} bytes: devices only grow`);
  }
}

/** Checks constructor geometry. */
export function checkGeometry(size: number, blockSize: number): void {
  if (blockSize !== 512 && blockSize !== 4096) {
    throw new BlockDeviceError('EINVAL', `block size ${blockSize} is not supported: use 512 or 4096`);
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size % blockSize !== 0) {
    throw new BlockDeviceError('EINVAL', `device size ${size} must be a positive multiple of the ${blockSize}-byte block size`);
  }
}
