/**
 * COMPARE AND WRITE (SBC-3 §5.2), atomic per device: the read, compare and write of one
 * command run under a range lock (rangeLocks.ts) that excludes overlapping COMPARE AND WRITEs,
 * ORWRITEs and WRITE ATOMICs and the reads and writes that start meanwhile.
 */
import { MAX_COMPARE_AND_WRITE_BLOCKS } from './limits.js';
import {
  ASC_MISCOMPARE_DURING_VERIFY,
  checkCondition,
  dataOutTooLong,
  dataOutTooShort,
  invalidFieldInCdb,
  lbaOutOfRange,
  MISCOMPARE,
  writeProtected,
} from './sense.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

/** Offset of the first differing byte, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

export function miscompare(offset: number): ScsiResult {
  return checkCondition(MISCOMPARE, ASC_MISCOMPARE_DURING_VERIFY, { information: offset });
}

async function compareAndWrite(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdb.readUInt32BE(2) * 0x1_0000_0000 + cdb.readUInt32BE(6);
  const n = cdb[13]!;
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n > MAX_COMPARE_AND_WRITE_BLOCKS) return invalidFieldInCdb(13);
  // 0 blocks is a no-op (SBC-3), but not with data attached: an initiator that sends data for
  // "0" meant 256 (a one-byte field cannot say it), which is past our maximum.
  if (n === 0) return cmd.dataOut.length === 0 ? { status: GOOD } : invalidFieldInCdb(13);
  if (lu.readOnly || dev.readOnly) return writeProtected();
  const len = n * bs;
  if (cmd.dataOut.length < 2 * len) return dataOutTooShort();
  // More data than the verify and write instances of NUMBER OF LOGICAL BLOCKS: the CDB and the
  // expected transfer length disagree, so which blocks were meant is unknown; write nothing.
  if (cmd.dataOut.length > 2 * len) return dataOutTooLong();
  const offset = lba * bs;
  const lock = await t.locks.acquire(dev, offset, offset + len);
  try {
    const current = Buffer.allocUnsafe(len);
    await dev.read(offset, current);
    const diff = firstDifference(current, cmd.dataOut.subarray(0, len));
    if (diff >= 0) return miscompare(diff);
    await dev.write(offset, cmd.dataOut.subarray(len, 2 * len), { fua: (cdb[1]! & 0x08) !== 0 });
    return { status: GOOD };
  } finally {
    lock.release();
  }
}

export const compareAndWriteCommands: CommandDescriptor[] = [
  {
    name: 'COMPARE AND WRITE',
    opcode: 0x89,
    // WRPROTECT unsupported; DPO, FUA, FUA_NV; LBA; NUMBER OF LOGICAL BLOCKS; GROUP NUMBER.
    usage: [0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0x1f, 0x00],
    access: 'write',
    handler: compareAndWrite,
  },
];
