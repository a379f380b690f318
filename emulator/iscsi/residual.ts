/**
 * Residuals (RFC 7143 §11.4.5): how the command's data length compares with the initiator's
 * Expected Data Transfer Length (EDTL). Positive = underflow (U bit), negative = overflow (O).
 *
 * For data-in the SCSI layer's answer says how much the command produced. For data-out the
 * transport must know how much the command consumes: that is the WRITE family's TRANSFER
 * LENGTH in blocks (what libiscsi's residual tests and FCP-4 check). For other data-out
 * commands (parameter lists) the initiator's EDTL is taken as right.
 */

/** WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16). */
const WRITE_OPCODES = new Set([0x0a, 0x2a, 0xaa, 0x8a, 0x2e, 0xae, 0x8e]);

/** Bytes of data-out a WRITE-family CDB consumes, or undefined for other commands. */
export function writeDataLength(cdb: Buffer, blockSize: number): number | undefined {
  const op = cdb[0]!;
  if (!WRITE_OPCODES.has(op)) return undefined;
  let blocks: number;
  switch (op >>> 5) {
    case 0:
      blocks = cdb[4]! === 0 ? 256 : cdb[4]!; // WRITE(6): 0 means 256
      break;
    case 4:
      blocks = cdb.readUInt32BE(10);
      break;
    case 5:
      blocks = cdb.readUInt32BE(6);
      break;
    default:
      blocks = cdb.readUInt16BE(7);
  }
  return blocks * blockSize;
}

/**
 * Lowers a WRITE-family CDB's TRANSFER LENGTH to `blocks` (in place). Used when the initiator's
 * EDTL holds fewer bytes than the CDB asks for: the target writes what it was given, in whole
 * blocks, and reports the rest as residual overflow (what libiscsi 1.19's residual tests
 * expect: GOOD status, EDTL's worth written). Returns false when the CDB cannot say `blocks`
 * (WRITE(6) cannot say 0: its 0 means 256).
 */
export function shortenWrite(cdb: Buffer, blocks: number): boolean {
  switch (cdb[0]! >>> 5) {
    case 0:
      if (blocks === 0) return false;
      cdb[4] = blocks;
      return true;
    case 4:
      cdb.writeUInt32BE(blocks, 10);
      return true;
    case 5:
      cdb.writeUInt32BE(blocks, 6);
      return true;
    default:
      cdb.writeUInt16BE(blocks, 7);
      return true;
  }
}
