/**
 * ORWRITE(16) (SBC-3 §5.9): every byte of the range becomes (stored byte OR data-out byte).
 * A read-modify-write under the exclusive range lock COMPARE AND WRITE uses (compareAndWrite.ts),
 * so no other command through this target writes, or reads, between our read and our write.
 * ORPROTECT is refused by the usage mask (no protection information), as WRPROTECT is for WRITE.
 */
import { cdbLba, cdbTransferLength, transferLengthByte } from './cdb.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { maxTransferBlocks } from './limits.js';
import { dataOutTooShort, invalidFieldInCdb, lbaOutOfRange, writeProtected } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import { usage16 } from './usage.js';

/** into[i] |= from[i] for `len` bytes; a word at a time when both views are 4-byte aligned. */
export function orInto(into: Buffer, from: Buffer, len: number): void {
  let i = 0;
  if (((into.byteOffset | from.byteOffset) & 3) === 0) {
    const words = len >>> 2;
    const a = new Uint32Array(into.buffer, into.byteOffset, words);
    const b = new Uint32Array(from.buffer, from.byteOffset, words);
    for (let w = 0; w < words; w++) a[w]! |= b[w]!;
    i = words << 2;
  }
  for (; i < len; i++) into[i]! |= from[i]!;
}

async function orWrite(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  const n = cdbTransferLength(cdb);
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > maxTransferBlocks(bs)) return invalidFieldInCdb(transferLengthByte(cdb[0]!));
  if (lu.readOnly || dev.readOnly) return writeProtected();
  if (n === 0) return { status: GOOD };
  const len = n * bs;
  if (cmd.dataOut.length < len) return dataOutTooShort();
  const offset = lba * bs;
  const lock = await t.locks.acquire(dev, offset, offset + len);
  try {
    const merged = Buffer.allocUnsafe(len);
    await dev.read(offset, merged);
    orInto(merged, cmd.dataOut, len);
    await dev.write(offset, merged, { fua: (cdb[1]! & 0x08) !== 0 });
    return { status: GOOD };
  } finally {
    lock.release();
  }
}

export const orWriteCommands: CommandDescriptor[] = [
  // ORPROTECT unsupported; DPO, FUA, FUA_NV (as WRITE(16)).
  { name: 'ORWRITE(16)', opcode: 0x8b, usage: usage16(0x8b, 0x1a), access: 'write', handler: orWrite },
];
