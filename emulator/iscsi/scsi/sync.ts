/** SYNCHRONIZE CACHE (10/16): range-checked, then device.flush() (a device flush covers every range). */
import { cdbLba, cdbTransferLength } from './cdb.js';
import type { CommandDescriptor } from './dispatch.js';
import { lbaOutOfRange } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import { usage10, usage16 } from './usage.js';

async function synchronizeCache(cmd: ScsiCommand, lu: LunDevice): Promise<ScsiResult> {
  const dev = lu.device;
  const lba = cdbLba(cmd.cdb);
  const n = cdbTransferLength(cmd.cdb); // 0: to the end of the medium
  const nb = dev.size / dev.blockSize;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  await dev.flush(); // IMMED is accepted; we answer once the flush is done either way
  return { status: GOOD };
}

export const syncCommands: CommandDescriptor[] = [
  { name: 'SYNCHRONIZE CACHE(10)', opcode: 0x35, usage: usage10(0x35, 0x02), access: 'write', handler: synchronizeCache },
  { name: 'SYNCHRONIZE CACHE(16)', opcode: 0x91, usage: usage16(0x91, 0x02), access: 'write', handler: synchronizeCache },
];
