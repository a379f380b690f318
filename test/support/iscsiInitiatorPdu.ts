/**
 * Building what initiators send: the BHS of any initiator PDU from its parsed form (the inverse
 * of emulator/iscsi/pdu.ts's parseBhs), for the PDU tests and the raw-socket test initiator.
 * The target never sends these, so this lives with the tests.
 */
import {
  BHS_LENGTH,
  CMD_ATTR_MASK,
  CMD_FINAL,
  CMD_READ,
  CMD_WRITE,
  FINAL_BIT,
  IMMEDIATE_BIT,
  LOGIN_CONTINUE,
  LOGIN_TRANSIT,
  LOGOUT_REASON_MASK,
  OP_LOGIN_REQ,
  OP_LOGOUT_REQ,
  OP_NOP_OUT,
  OP_SCSI_CMD,
  OP_SCSI_DATA_OUT,
  OP_SNACK_REQ,
  OP_TASK_MGMT_REQ,
  OP_TEXT_REQ,
  SNACK_TYPE_MASK,
  TEXT_CONTINUE,
  TMF_FUNCTION_MASK,
} from '../../emulator/iscsi/opcodes.js';
import { writeLun, type InitiatorPdu } from '../../emulator/iscsi/pdu.js';

/** Opcode byte, flags byte and the 24-bit DataSegmentLength; every other byte zero. */
function writeCommon(buf: Buffer, off: number, byte0: number, byte1: number, dataSegmentLength: number): void {
  buf.fill(0, off, off + BHS_LENGTH);
  buf[off] = byte0;
  buf[off + 1] = byte1;
  buf.writeUIntBE(dataSegmentLength, off + 5, 3);
}

function u32(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32BE(v >>> 0, off);
}

/** -1 (what readLun returns for unsupported addressing) is written as all-ones. */
function writeLunOrInvalid(buf: Buffer, off: number, lun: number): void {
  if (lun >= 0) writeLun(buf, off, lun);
  else buf.fill(0xff, off, off + 8);
}

/** Writes an initiator PDU's BHS at buf[off] from a parsed-form object; returns 48. */
export function buildInitiatorBhs(buf: Buffer, off: number, p: InitiatorPdu): number {
  const i = p.immediate ? IMMEDIATE_BIT : 0;
  const ahsWords = p.ahsLength / 4;
  if (!Number.isInteger(ahsWords) || ahsWords > 255) throw new RangeError(`ahsLength ${p.ahsLength} is not a multiple of 4 up to 1020`);
  switch (p.kind) {
    case 'nop-out':
      writeCommon(buf, off, OP_NOP_OUT | i, FINAL_BIT, p.dataSegmentLength);
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.ttt);
      u32(buf, off + 24, p.cmdSN);
      break;
    case 'scsi-cmd':
      writeCommon(
        buf,
        off,
        OP_SCSI_CMD | i,
        (p.final ? CMD_FINAL : 0) | (p.read ? CMD_READ : 0) | (p.write ? CMD_WRITE : 0) | (p.attr & CMD_ATTR_MASK),
        p.dataSegmentLength,
      );
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.expectedDataTransferLength);
      u32(buf, off + 24, p.cmdSN);
      buf.fill(0, off + 32, off + 48);
      buf.set(p.cdb.subarray(0, 16), off + 32);
      break;
    case 'tmf-req':
      writeCommon(buf, off, OP_TASK_MGMT_REQ | i, FINAL_BIT | (p.function & TMF_FUNCTION_MASK), p.dataSegmentLength);
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.referencedTaskTag);
      u32(buf, off + 24, p.cmdSN);
      u32(buf, off + 32, p.refCmdSN);
      u32(buf, off + 36, p.expDataSN);
      break;
    case 'login-req':
      writeCommon(
        buf,
        off,
        OP_LOGIN_REQ | i,
        (p.transit ? LOGIN_TRANSIT : 0) | (p.continue ? LOGIN_CONTINUE : 0) | ((p.csg & 3) << 2) | (p.nsg & 3),
        p.dataSegmentLength,
      );
      buf[off + 2] = p.versionMax;
      buf[off + 3] = p.versionMin;
      buf.writeUIntBE(p.isid, off + 8, 6);
      buf.writeUInt16BE(p.tsih, off + 14);
      buf.writeUInt16BE(p.cid, off + 20);
      u32(buf, off + 24, p.cmdSN);
      break;
    case 'text-req':
      writeCommon(buf, off, OP_TEXT_REQ | i, (p.final ? FINAL_BIT : 0) | (p.continue ? TEXT_CONTINUE : 0), p.dataSegmentLength);
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.ttt);
      u32(buf, off + 24, p.cmdSN);
      break;
    case 'data-out':
      writeCommon(buf, off, OP_SCSI_DATA_OUT, p.final ? FINAL_BIT : 0, p.dataSegmentLength);
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.ttt);
      u32(buf, off + 36, p.dataSN);
      u32(buf, off + 40, p.bufferOffset);
      break;
    case 'logout-req':
      writeCommon(buf, off, OP_LOGOUT_REQ | i, FINAL_BIT | (p.reasonCode & LOGOUT_REASON_MASK), p.dataSegmentLength);
      buf.writeUInt16BE(p.cid, off + 20);
      u32(buf, off + 24, p.cmdSN);
      break;
    case 'snack':
      writeCommon(buf, off, OP_SNACK_REQ, FINAL_BIT | (p.type & SNACK_TYPE_MASK), p.dataSegmentLength);
      writeLunOrInvalid(buf, off + 8, p.lun);
      u32(buf, off + 20, p.ttt);
      u32(buf, off + 40, p.begRun);
      u32(buf, off + 44, p.runLength);
      break;
  }
  // Fields every initiator PDU has at the same place.
  buf[off + 4] = ahsWords;
  u32(buf, off + 16, p.itt);
  u32(buf, off + 28, p.expStatSN);
  return BHS_LENGTH;
}
