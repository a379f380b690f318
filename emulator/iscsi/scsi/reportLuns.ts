/** REPORT LUNS (SPC-4 §6.33): SELECT REPORT 00h and 02h list every LUN of the nexus, 01h none. */
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { ASC_REPORTED_LUNS_DATA_CHANGED, invalidFieldInCdb, truncate } from './sense.js';
import { GOOD, type ScsiCommand, type ScsiResult } from './types.js';

/** SAM-5 single-level LUN: peripheral device addressing below 256, flat space up to 16383. */
export function encodeLun(lun: number, into: Buffer, offset: number): void {
  if (lun < 256) {
    into[offset] = 0;
    into[offset + 1] = lun;
  } else {
    into[offset] = 0x40 | ((lun >>> 8) & 0x3f);
    into[offset + 1] = lun & 0xff;
  }
}

function reportLuns(cmd: ScsiCommand, t: DeviceServer): ScsiResult {
  const cdb = cmd.cdb;
  const select = cdb[2]!;
  if (select !== 0x00 && select !== 0x01 && select !== 0x02) return invalidFieldInCdb(2);
  // Reporting the LUN inventory clears this nexus's REPORTED LUNS DATA HAS CHANGED (SPC-4 §5.14).
  t.takeUnitAttention(cmd.nexus, cmd.lun, ASC_REPORTED_LUNS_DATA_CHANGED);
  const luns = select === 0x01 ? [] : [...t.lunsFor(cmd.nexus).keys()].filter((l) => l >= 0 && l < 16384).sort((a, b) => a - b);
  const data = Buffer.alloc(8 + 8 * luns.length);
  data.writeUInt32BE(8 * luns.length, 0);
  luns.forEach((l, i) => encodeLun(l, data, 8 + 8 * i));
  return { status: GOOD, dataIn: truncate(data, cdb.readUInt32BE(6)) };
}

export const reportLunsCommands: CommandDescriptor[] = [
  {
    name: 'REPORT LUNS',
    opcode: 0xa0,
    usage: [0xa0, 0x00, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00],
    access: 'none',
    ua: 'report',
    handler: (cmd, _lu, t) => reportLuns(cmd, t),
    unmapped: reportLuns,
  },
];
