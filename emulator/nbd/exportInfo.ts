/** What the server tells a client about an export: transmission flags and block sizes. */
import {
  FLAG_CAN_MULTI_CONN,
  FLAG_HAS_FLAGS,
  FLAG_READ_ONLY,
  FLAG_SEND_CACHE,
  FLAG_SEND_DF,
  FLAG_SEND_FAST_ZERO,
  FLAG_SEND_FLUSH,
  FLAG_SEND_FUA,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  MAX_REQUEST,
} from './constants.js';

/**
 * Transmission flags. MULTI_CONN holds because every connection to an export shares one
 * BlockDevice whose flush() covers all completed writes. DF is offered with structured replies
 * because a READ is always answered with one data chunk. A read-only export offers no write
 * features (clients then never send them; if they do, they get EPERM).
 */
export function transmissionFlags(readOnly: boolean, structured: boolean): number {
  let f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN | FLAG_SEND_CACHE;
  if (readOnly) f |= FLAG_READ_ONLY;
  else f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
  if (structured) f |= FLAG_SEND_DF;
  return f;
}

export function preferredBlockSize(blockSize: number): number {
  return Math.max(4096, blockSize);
}

/** NBD_INFO_EXPORT payload (type included). */
export function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(INFO_EXPORT, 0);
  writeU64(b, 2, size);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_INFO_BLOCK_SIZE payload: minimum = the device's block, maximum = the largest request served. */
export function infoBlockSize(blockSize: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(blockSize, 2);
  b.writeUInt32BE(preferredBlockSize(blockSize), 6);
  b.writeUInt32BE(MAX_REQUEST, 10);
  return b;
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION payload. */
export function infoString(type: number, text: string): Buffer {
  const b = Buffer.allocUnsafe(2 + Buffer.byteLength(text));
  b.writeUInt16BE(type, 0);
  b.write(text, 2, 'utf8');
  return b;
}

export function writeU64(b: Buffer, at: number, value: number): void {
  b.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  b.writeUInt32BE(value >>> 0, at + 4);
}
