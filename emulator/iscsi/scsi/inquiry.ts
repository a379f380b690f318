/**
 * INQUIRY (SPC-4 §6.6): standard data and the VPD pages 00h, 80h, 83h, 8Fh (third-party copy,
 * thirdPartyCopyVpd.ts), B0h, B1h, B2h (SBC-3). An unmapped LUN answers standard INQUIRY with
 * peripheral qualifier 011b, device type 1Fh.
 */
import { lbpme } from './capacity.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import {
  MAX_COMPARE_AND_WRITE_BLOCKS,
  MAX_UNMAP_BLOCKS,
  MAX_UNMAP_DESCRIPTORS,
  MAX_WRITE_SAME_BYTES,
  logicalPerPhysical,
  maxTransferBlocks,
  OPTIMAL_TRANSFER_BYTES,
} from './limits.js';
import { invalidFieldInCdb, truncate } from './sense.js';
import { THIRD_PARTY_COPY_PAGE, thirdPartyCopyVpd } from './thirdPartyCopyVpd.js';
import { maxAtomicTransferBlocks } from './writeAtomic.js';
import { GOOD, type LunDevice, type LunIdentity, type Nexus, type ScsiCommand, type ScsiResult } from './types.js';

export const STANDARD_INQUIRY_LENGTH = 74;
export const SUPPORTED_VPD_PAGES = [0x00, 0x80, 0x83, THIRD_PARTY_COPY_PAGE, 0xb0, 0xb1, 0xb2] as const;

/** Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI (no version claimed). */
const VERSION_DESCRIPTORS = [0x00a0, 0x0460, 0x04c0, 0x0960];

function ascii(buf: Buffer, offset: number, width: number, text: string): void {
  buf.fill(0x20, offset, offset + width);
  buf.write(text.replace(/[^\x20-\x7e]/g, ' ').slice(0, width), offset, width, 'latin1');
}

export function standardInquiry(identity: LunIdentity | undefined): Buffer {
  const d = Buffer.alloc(STANDARD_INQUIRY_LENGTH);
  d[0] = identity === undefined ? 0x7f : 0x00; // PQ 011b + type 1Fh, or a connected direct-access device
  d[2] = 0x06; // VERSION: SPC-4
  d[3] = 0x12; // HISUP, RESPONSE DATA FORMAT 2
  d[4] = STANDARD_INQUIRY_LENGTH - 5; // ADDITIONAL LENGTH
  // 3PC: EXTENDED COPY and RECEIVE COPY RESULTS run (extendedCopy.ts), described in VPD 8Fh.
  if (identity !== undefined) d[5] = 0x08;
  d[7] = 0x02; // CMDQUE
  ascii(d, 8, 8, identity?.vendor ?? '');
  ascii(d, 16, 16, identity?.product ?? '');
  ascii(d, 32, 4, identity?.revision ?? '');
  VERSION_DESCRIPTORS.forEach((v, i) => d.writeUInt16BE(v, 58 + 2 * i));
  return d;
}

function vpdPage(page: number, body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head[1] = page;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([head, body]);
}

function designator(codeSetAndProtocol: number, piv_assoc_type: number, value: Buffer): Buffer {
  const h = Buffer.from([codeSetAndProtocol, piv_assoc_type, 0, value.length]);
  return Buffer.concat([h, value]);
}

/** SCSI name string: UTF-8, null-terminated, padded with nulls to a multiple of 4 bytes. */
function scsiName(name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const len = (bytes.length + 4) & ~3;
  const v = Buffer.alloc(Math.min(len, 252));
  bytes.copy(v, 0, 0, v.length - 1);
  return v;
}

const ISCSI_PROTOCOL = 0x5;

export function deviceIdentification(lu: LunDevice, nexus: Nexus): Buffer {
  const id = lu.identity;
  const parts: Buffer[] = [];
  // NAA (type 3), LU association, binary.
  const wwn = Buffer.from(
    id.wwn
      .replace(/[^0-9a-fA-F]/g, '')
      .padEnd(32, '0')
      .slice(0, 32),
    'hex',
  );
  parts.push(designator(0x01, 0x03, wwn));
  // T10 vendor ID (type 1), LU association, ASCII: vendor (8) + serial.
  const t10 = Buffer.alloc(8 + Buffer.byteLength(id.serial, 'latin1'));
  ascii(t10, 0, 8, id.vendor);
  t10.write(id.serial, 8, 'latin1');
  parts.push(designator(0x02, 0x01, t10));
  // Relative target port (type 4), target port association, PIV with iSCSI protocol.
  const rel = Buffer.alloc(4);
  rel.writeUInt16BE(nexus.relativePort & 0xffff, 2);
  parts.push(designator((ISCSI_PROTOCOL << 4) | 0x01, 0x80 | 0x10 | 0x04, rel));
  // SCSI name string (type 8) of the target port ("<iqn>,t,0x<tpgt>") and of the target device.
  parts.push(designator((ISCSI_PROTOCOL << 4) | 0x03, 0x80 | 0x10 | 0x08, scsiName(nexus.targetPort)));
  const targetName = nexus.targetPort.split(',t,')[0]!;
  parts.push(designator((ISCSI_PROTOCOL << 4) | 0x03, 0x80 | 0x20 | 0x08, scsiName(targetName)));
  return vpdPage(0x83, Buffer.concat(parts));
}

export function blockLimits(lu: LunDevice): Buffer {
  const bs = lu.device.blockSize;
  const b = Buffer.alloc(0x3c);
  // Offsets below are page offsets minus 4.
  // b[0] WSNZ 0: WRITE SAME with 0 blocks writes to the end of the medium (unmap.ts).
  b[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
  b.writeUInt16BE(logicalPerPhysical(bs), 2); // OPTIMAL TRANSFER LENGTH GRANULARITY: the 4 KiB page
  b.writeUInt32BE(maxTransferBlocks(bs), 4); // MAXIMUM TRANSFER LENGTH
  b.writeUInt32BE(OPTIMAL_TRANSFER_BYTES / bs, 8); // OPTIMAL TRANSFER LENGTH
  // MAXIMUM PREFETCH LENGTH (12) 0: not reported (see PRE-FETCH: CONDITION MET vs GOOD).
  if (lbpme(lu)) {
    b.writeUInt32BE(MAX_UNMAP_BLOCKS, 16); // MAXIMUM UNMAP LBA COUNT
    b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, 20); // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
    b.writeUInt32BE(logicalPerPhysical(bs), 24); // OPTIMAL UNMAP GRANULARITY
  }
  b.writeUInt32BE(Math.floor(MAX_WRITE_SAME_BYTES / bs), 36); // MAXIMUM WRITE SAME LENGTH (low half)
  // WRITE ATOMIC (writeAtomic.ts): whole 4 KiB pages, so no page holds part of two atomic writes.
  b.writeUInt32BE(maxAtomicTransferBlocks(bs), 40); // MAXIMUM ATOMIC TRANSFER LENGTH
  b.writeUInt32BE(logicalPerPhysical(bs), 44); // ATOMIC ALIGNMENT
  b.writeUInt32BE(logicalPerPhysical(bs), 48); // ATOMIC TRANSFER LENGTH GRANULARITY
  // 52, 56: MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY, MAXIMUM ATOMIC BOUNDARY SIZE 0:
  // no atomic boundaries (WRITE ATOMIC's ATOMIC BOUNDARY must be 0).
  return vpdPage(0xb0, b);
}

function blockCharacteristics(): Buffer {
  const b = Buffer.alloc(0x3c);
  b.writeUInt16BE(0x0001, 0); // MEDIUM ROTATION RATE: non-rotating
  return vpdPage(0xb1, b);
}

function logicalBlockProvisioning(lu: LunDevice): Buffer {
  const b = Buffer.alloc(4);
  if (lbpme(lu)) {
    b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
    b[2] = 0x02; // PROVISIONING TYPE: thin
  }
  return vpdPage(0xb2, b);
}

function vpd(page: number, lu: LunDevice, nexus: Nexus, t: DeviceServer): Buffer | undefined {
  switch (page) {
    case 0x00:
      return vpdPage(0x00, Buffer.from(SUPPORTED_VPD_PAGES));
    case 0x80:
      return vpdPage(0x80, Buffer.from(lu.identity.serial, 'latin1'));
    case 0x83:
      return deviceIdentification(lu, nexus);
    case THIRD_PARTY_COPY_PAGE:
      return thirdPartyCopyVpd(t);
    case 0xb0:
      return blockLimits(lu);
    case 0xb1:
      return blockCharacteristics();
    case 0xb2:
      return logicalBlockProvisioning(lu);
    default:
      return undefined;
  }
}

function inquiry(cmd: ScsiCommand, lu: LunDevice | undefined, t: DeviceServer): ScsiResult {
  const cdb = cmd.cdb;
  const evpd = (cdb[1]! & 0x01) !== 0;
  const page = cdb[2]!;
  const alloc = cdb.readUInt16BE(3);
  if (!evpd) {
    if (page !== 0) return invalidFieldInCdb(2);
    return { status: GOOD, dataIn: truncate(standardInquiry(lu?.identity), alloc) };
  }
  if (lu === undefined) {
    const head = Buffer.from([0x7f, page, 0, 0]);
    return { status: GOOD, dataIn: truncate(head, alloc) };
  }
  const data = vpd(page, lu, cmd.nexus, t);
  if (data === undefined) return invalidFieldInCdb(2);
  return { status: GOOD, dataIn: truncate(data, alloc) };
}

export const inquiryCommands: CommandDescriptor[] = [
  {
    name: 'INQUIRY',
    opcode: 0x12,
    usage: [0x12, 0x01, 0xff, 0xff, 0xff, 0x00],
    access: 'none',
    ua: 'report',
    handler: inquiry,
    unmapped: (cmd: ScsiCommand, t: DeviceServer) => inquiry(cmd, undefined, t),
  },
];
