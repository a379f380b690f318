/**
 * WRITE ATOMIC(16) (SBC-4 §5.48): the whole range is written as one unit. It runs under the
 * exclusive range lock of compareAndWrite.ts, which waits for the reads and writes through this
 * target already in flight on any overlapping range and holds off those that come after, so no
 * other command sees or leaves a mix of old and new blocks.
 *
 * Limits (Block Limits VPD, inquiry.ts): at most MAX_ATOMIC_TRANSFER_BYTES; LBA and length a
 * multiple of the array's 4 KiB page (8 blocks on a 512-byte LUN, 1 on a 4096-byte LUN). ATOMIC
 * BOUNDARY must be 0 (MAXIMUM ATOMIC BOUNDARY SIZE is 0: one atomic operation per command);
 * WRPROTECT is refused (no protection information). Both through the usage mask.
 */
import { cdbLba } from './cdb.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { logicalPerPhysical, MAX_ATOMIC_TRANSFER_BYTES } from './limits.js';
import { dataOutTooShort, invalidFieldInCdb, lbaOutOfRange, writeProtected } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

export function maxAtomicTransferBlocks(blockSize: number): number {
  return Math.floor(MAX_ATOMIC_TRANSFER_BYTES / blockSize);
}

async function writeAtomic(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  const n = cdb.readUInt16BE(12); // TRANSFER LENGTH is 2 bytes here, after ATOMIC BOUNDARY
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > maxAtomicTransferBlocks(bs)) return invalidFieldInCdb(12);
  const unit = logicalPerPhysical(bs);
  if (lba % unit !== 0) return invalidFieldInCdb(2); // ATOMIC ALIGNMENT
  if (n % unit !== 0) return invalidFieldInCdb(12); // ATOMIC TRANSFER LENGTH GRANULARITY
  if (lu.readOnly || dev.readOnly) return writeProtected();
  if (n === 0) return { status: GOOD };
  const len = n * bs;
  if (cmd.dataOut.length < len) return dataOutTooShort();
  const offset = lba * bs;
  const data = cmd.dataOut.length === len ? cmd.dataOut : cmd.dataOut.subarray(0, len);
  const lock = await t.locks.acquire(dev, offset, offset + len);
  try {
    await dev.write(offset, data, { fua: (cdb[1]! & 0x08) !== 0 });
    return { status: GOOD };
  } finally {
    lock.release();
  }
}

const F = 0xff;
export const writeAtomicCommands: CommandDescriptor[] = [
  {
    name: 'WRITE ATOMIC(16)',
    opcode: 0x9c,
    // WRPROTECT unsupported; DPO, FUA; LBA; ATOMIC BOUNDARY must be 0; TRANSFER LENGTH; GROUP NUMBER.
    usage: [0x9c, 0x18, F, F, F, F, F, F, F, F, 0x00, 0x00, F, F, 0x1f, 0x00],
    access: 'write',
    handler: writeAtomic,
  },
];
