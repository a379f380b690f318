/** READ CAPACITY (10) and (16) (SBC-3 §5.15, §5.16). */
import type { CommandDescriptor } from './dispatch.js';
import { invalidFieldInCdb, truncate } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

/** Thin LUNs advertise logical block provisioning; unmapped blocks read zeroes (UNMAP zeroes, see unmap.ts). */
export function lbpme(lu: LunDevice): boolean {
  return lu.device.thin;
}

function readCapacity10(cmd: ScsiCommand, lu: LunDevice): ScsiResult {
  const cdb = cmd.cdb;
  // PMI is obsolete; with PMI 0 the LOGICAL BLOCK ADDRESS must be 0.
  if ((cdb[8]! & 0x01) === 0 && cdb.readUInt32BE(2) !== 0) return invalidFieldInCdb(2);
  const dev = lu.device;
  const last = dev.size / dev.blockSize - 1;
  const data = Buffer.alloc(8);
  data.writeUInt32BE(Math.min(last, 0xffffffff), 0);
  data.writeUInt32BE(dev.blockSize, 4);
  return { status: GOOD, dataIn: data };
}

function readCapacity16(cmd: ScsiCommand, lu: LunDevice): ScsiResult {
  const cdb = cmd.cdb;
  if ((cdb[14]! & 0x01) === 0 && (cdb.readUInt32BE(2) !== 0 || cdb.readUInt32BE(6) !== 0)) return invalidFieldInCdb(2);
  const dev = lu.device;
  const data = Buffer.alloc(32);
  const last = dev.size / dev.blockSize - 1;
  data.writeUInt32BE(Math.floor(last / 0x1_0000_0000), 0);
  data.writeUInt32BE(last % 0x1_0000_0000, 4);
  data.writeUInt32BE(dev.blockSize, 8);
  // byte 12: no protection. Byte 13, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, stays 0 although
  // a 512-byte LUN sits on 4 KiB pages (3 would be true): libiscsi 1.19's GetLBAStatus.UnmapSingle
  // then asks for LBA i+1 and wants the first descriptor at i+8, which contradicts SBC-3 (the first
  // descriptor holds the starting LBA; qemu insists on it too). The 4 KiB page is still advertised
  // where it does no harm: Block Limits VPD granularities (inquiry.ts).
  if (lbpme(lu)) data[14] = 0xc0; // LBPME, LBPRZ; LOWEST ALIGNED LBA 0
  return { status: GOOD, dataIn: truncate(data, cdb.readUInt32BE(10)) };
}

export const capacityCommands: CommandDescriptor[] = [
  {
    name: 'READ CAPACITY(10)',
    opcode: 0x25,
    usage: [0x25, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00],
    access: 'none',
    handler: readCapacity10,
  },
  {
    name: 'READ CAPACITY(16)',
    opcode: 0x9e,
    serviceAction: 0x10,
    usage: [0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00],
    access: 'none',
    handler: readCapacity16,
  },
];
