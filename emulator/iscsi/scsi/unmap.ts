/**
 * Logical block provisioning (SBC-3 §4.7): UNMAP, WRITE SAME (10/16) with and without the
 * UNMAP and NDOB bits, and GET LBA STATUS.
 *
 * Thin LUNs advertise LBPME and LBPRZ (unmapped blocks read zeroes). BlockDevice.trim() may
 * leave old data behind, so UNMAP is done with writeZeroes() without noHole, which deallocates
 * on a thin device and guarantees zeroes: that keeps LBPRZ true on every device.
 */
import { EXTENT_HOLE } from '../../block/BlockDevice.js';
import { cdbLba, cdbTransferLength, transferLengthByte } from './cdb.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { lbpme } from './capacity.js';
import { MAX_LBA_STATUS_DESCRIPTORS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BYTES } from './limits.js';
import {
  dataOutTooLong,
  dataOutTooShort,
  invalidFieldInCdb,
  invalidFieldInParameterList,
  lbaOutOfRange,
  parameterListLengthError,
  truncate,
  writeProtected,
} from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';
import { usage10, usage16 } from './usage.js';

/** Largest buffer WRITE SAME builds for a non-zero pattern; longer ranges are written in pieces. */
const WRITE_SAME_CHUNK = 1024 * 1024;

async function unmap(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const dev = lu.device;
  const bs = dev.blockSize;
  const plen = cmd.cdb.readUInt16BE(7);
  if (plen === 0) return { status: GOOD };
  if (lu.readOnly || dev.readOnly) return writeProtected();
  if (cmd.dataOut.length < plen) return dataOutTooShort();
  const data = cmd.dataOut.subarray(0, plen);
  if (data.length < 8) return parameterListLengthError();
  const bdLen = data.readUInt16BE(2);
  // Only complete descriptors inside both the parameter list and the descriptor data length count.
  const count = Math.floor(Math.min(bdLen, data.length - 8) / 16);
  if (count > MAX_UNMAP_DESCRIPTORS) return invalidFieldInParameterList(2);
  const nb = dev.size / bs;
  // Validate every descriptor before unmapping anything.
  for (let i = 0, p = 8; i < count; i++, p += 16) {
    const lba = data.readUInt32BE(p) * 0x1_0000_0000 + data.readUInt32BE(p + 4);
    const n = data.readUInt32BE(p + 8);
    if (lba > nb || n > nb - lba) return lbaOutOfRange();
    if (n > MAX_UNMAP_BLOCKS) return invalidFieldInParameterList(p + 8);
  }
  for (let i = 0, p = 8; i < count; i++, p += 16) {
    const n = data.readUInt32BE(p + 8);
    if (n === 0) continue;
    const offset = (data.readUInt32BE(p) * 0x1_0000_0000 + data.readUInt32BE(p + 4)) * bs;
    const ticket = t.locks.active === 0 ? t.locks.beginWrite() : await t.locks.enterWrite(dev, offset, offset + n * bs);
    try {
      await dev.writeZeroes(offset, n * bs);
    } finally {
      t.locks.endWrite(ticket);
    }
  }
  return { status: GOOD };
}

function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * WRITE SAME: NUMBER OF LOGICAL BLOCKS 0 means from the LBA to the end of the medium (WSNZ is 0
 * in VPD B0h); like any count it is bounded by MAXIMUM WRITE SAME LENGTH, so one command does a
 * bounded amount of work. UNMAP on a thin LUN deallocates the range whatever the data block holds
 * (the initiator asked for an unmap; LBPRZ says it then reads zeroes: libiscsi's UnmapUntilEnd
 * sends 0xFF blocks and checks for zeroes). Otherwise a zero block (or NDOB) is writeZeroes kept
 * allocated (noHole), and any other block is repeated into a bounded buffer written in pieces.
 * The data-out must be exactly one block (none with NDOB).
 */
async function writeSame(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const op = cdb[0]!;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdbLba(cdb);
  let n = cdbTransferLength(cdb);
  const nb = dev.size / bs;
  if (lba > nb || n > nb - lba) return lbaOutOfRange();
  if (n === 0) n = nb - lba;
  if (n > Math.floor(MAX_WRITE_SAME_BYTES / bs)) return invalidFieldInCdb(transferLengthByte(op));
  if (lu.readOnly || dev.readOnly) return writeProtected();
  const ndob = op === 0x93 && (cdb[1]! & 0x01) !== 0;
  const unmapBit = (cdb[1]! & 0x08) !== 0;
  const expected = ndob ? 0 : bs;
  if (cmd.dataOut.length < expected) return dataOutTooShort();
  if (cmd.dataOut.length > expected) return dataOutTooLong();
  if (n === 0) return { status: GOOD }; // LBA is the end of the medium: nothing left to write
  const offset = lba * bs;
  const len = n * bs;
  const ticket = t.locks.active === 0 ? t.locks.beginWrite() : await t.locks.enterWrite(dev, offset, offset + len);
  try {
    const block = ndob ? undefined : cmd.dataOut.subarray(0, bs);
    const deallocate = unmapBit && lbpme(lu);
    if (deallocate || block === undefined || isZero(block)) {
      await dev.writeZeroes(offset, len, deallocate ? undefined : { noHole: true });
      return { status: GOOD };
    }
    const chunk = Buffer.allocUnsafe(Math.min(len, Math.floor(WRITE_SAME_CHUNK / bs) * bs));
    chunk.fill(block);
    for (let done = 0; done < len; ) {
      const piece = Math.min(chunk.length, len - done);
      await dev.write(offset + done, piece === chunk.length ? chunk : chunk.subarray(0, piece));
      done += piece;
    }
    return { status: GOOD };
  } finally {
    t.locks.endWrite(ticket);
  }
}

/** Largest range one GET LBA STATUS looks at; the initiator asks again from where we stop. */
const LBA_STATUS_SPAN_BYTES = 1024 * 1024 * 1024;

/** GET LBA STATUS: descriptors from device.blockStatus; holes are deallocated (1), the rest mapped (0). */
async function getLbaStatus(cmd: ScsiCommand, lu: LunDevice): Promise<ScsiResult> {
  const cdb = cmd.cdb;
  const dev = lu.device;
  const bs = dev.blockSize;
  const lba = cdb.readUInt32BE(2) * 0x1_0000_0000 + cdb.readUInt32BE(6);
  const alloc = cdb.readUInt32BE(10);
  const nb = dev.size / bs;
  if (lba >= nb) return lbaOutOfRange();
  const maxDesc = Math.max(1, Math.min(MAX_LBA_STATUS_DESCRIPTORS, Math.floor((alloc - 8) / 16)));
  const span = Math.min((nb - lba) * bs, Math.floor(LBA_STATUS_SPAN_BYTES / bs) * bs);
  const extents = await dev.blockStatus(lba * bs, span, maxDesc);
  const out = Buffer.alloc(8 + 16 * Math.min(extents.length, maxDesc));
  let k = 0;
  let next = lba;
  const end = lba + span / bs;
  for (const e of extents) {
    if (next >= end) break;
    const status = (e.flags & EXTENT_HOLE) !== 0 ? 1 : 0;
    const blocks = Math.min(Math.ceil(e.length / bs), end - next);
    if (k > 0 && out[8 + 16 * (k - 1) + 12] === status) {
      const p = 8 + 16 * (k - 1) + 8;
      out.writeUInt32BE(out.readUInt32BE(p) + blocks, p);
    } else {
      const p = 8 + 16 * k;
      out.writeUInt32BE(Math.floor(next / 0x1_0000_0000), p);
      out.writeUInt32BE(next % 0x1_0000_0000, p + 4);
      out.writeUInt32BE(blocks, p + 8);
      out[p + 12] = status;
      k++;
    }
    next += blocks;
  }
  const data = out.subarray(0, 8 + 16 * k);
  data.writeUInt32BE(4 + 16 * k, 0); // PARAMETER DATA LENGTH: bytes after this field
  return { status: GOOD, dataIn: truncate(data, alloc) };
}

export const unmapCommands: CommandDescriptor[] = [
  {
    name: 'UNMAP',
    opcode: 0x42,
    // ANCHOR unsupported; GROUP NUMBER; PARAMETER LIST LENGTH
    usage: [0x42, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f, 0xff, 0xff, 0x00],
    access: 'write',
    supported: lbpme,
    handler: unmap,
  },
  // WRPROTECT and ANCHOR unsupported, PBDATA/LBDATA obsolete: only UNMAP (and NDOB in 16).
  { name: 'WRITE SAME(10)', opcode: 0x41, usage: usage10(0x41, 0x08), access: 'write', handler: writeSame },
  { name: 'WRITE SAME(16)', opcode: 0x93, usage: usage16(0x93, 0x09), access: 'write', handler: writeSame },
  {
    name: 'GET LBA STATUS',
    opcode: 0x9e,
    serviceAction: 0x12,
    usage: [0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00],
    access: 'read',
    handler: getLbaStatus,
  },
];
