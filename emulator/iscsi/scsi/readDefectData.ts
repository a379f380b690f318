/**
 * READ DEFECT DATA (10) and (12) (SBC-3 §5.18, §5.19). An emulated volume has no medium defects:
 * both lists are empty. The header still answers what was asked: PLISTV / GLISTV set for each
 * list requested (it is returned, with no entries) and the requested DEFECT LIST FORMAT echoed,
 * since an empty list is valid in every address format. Vendor-specific (110b) and reserved
 * (111b) formats are refused: we define no vendor format.
 */
import type { CommandDescriptor } from './dispatch.js';
import { invalidFieldInCdb, truncate } from './sense.js';
import { GOOD, type ScsiCommand, type ScsiResult } from './types.js';

const REQ_PLIST = 0x10;
const REQ_GLIST = 0x08;
const FORMAT_VENDOR_SPECIFIC = 6;

/** Byte 1 of the parameter data: PLISTV, GLISTV (same bits as REQ_PLIST, REQ_GLIST) and the format. */
function listFlags(request: number): number {
  return request & (REQ_PLIST | REQ_GLIST | 0x07);
}

function readDefectData10(cmd: ScsiCommand): ScsiResult {
  const request = cmd.cdb[2]!;
  if ((request & 0x07) >= FORMAT_VENDOR_SPECIFIC) return invalidFieldInCdb(2, 2);
  const data = Buffer.alloc(4); // DEFECT LIST LENGTH (bytes 2-3) 0
  data[1] = listFlags(request);
  return { status: GOOD, dataIn: truncate(data, cmd.cdb.readUInt16BE(7)) };
}

function readDefectData12(cmd: ScsiCommand): ScsiResult {
  const request = cmd.cdb[1]!;
  if ((request & 0x07) >= FORMAT_VENDOR_SPECIFIC) return invalidFieldInCdb(1, 2);
  // GENERATION CODE (bytes 2-3) 0: not reported; DEFECT LIST LENGTH (bytes 4-7) 0. Any
  // ADDRESS DESCRIPTOR INDEX is past the end of an empty list: no descriptors either way.
  const data = Buffer.alloc(8);
  data[1] = listFlags(request);
  return { status: GOOD, dataIn: truncate(data, cmd.cdb.readUInt32BE(6)) };
}

export const readDefectDataCommands: CommandDescriptor[] = [
  {
    name: 'READ DEFECT DATA(10)',
    opcode: 0x37,
    // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT; ALLOCATION LENGTH
    usage: [0x37, 0x00, 0x1f, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00],
    access: 'read', // SBC-3 table 13: conflicts with Exclusive Access like a read of the medium
    handler: readDefectData10,
  },
  {
    name: 'READ DEFECT DATA(12)',
    opcode: 0xb7,
    // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT; ADDRESS DESCRIPTOR INDEX; ALLOCATION LENGTH
    usage: [0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00],
    access: 'read',
    handler: readDefectData12,
  },
];
