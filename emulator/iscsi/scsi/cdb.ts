/**
 * Decoding of the LBA and length fields shared by the block commands. The CDB layout follows
 * from the operation code's group (SPC-4 §4.2.5.1): 6-, 10-, 16- and 12-byte CDBs.
 */

/** LOGICAL BLOCK ADDRESS. 64-bit values above 2^53 lose precision but stay out of range. */
export function cdbLba(cdb: Buffer): number {
  switch (cdb[0]! >>> 5) {
    case 0:
      return ((cdb[1]! & 0x1f) << 16) | cdb.readUInt16BE(2);
    case 4:
      return cdb.readUInt32BE(2) * 0x1_0000_0000 + cdb.readUInt32BE(6);
    default: // groups 1, 2 (10-byte) and 5 (12-byte)
      return cdb.readUInt32BE(2);
  }
}

/** TRANSFER LENGTH (or VERIFICATION / PREFETCH / NUMBER OF LOGICAL BLOCKS). */
export function cdbTransferLength(cdb: Buffer): number {
  switch (cdb[0]! >>> 5) {
    case 0:
      return cdb[4]!;
    case 4:
      return cdb.readUInt32BE(10);
    case 5:
      return cdb.readUInt32BE(6);
    default:
      return cdb.readUInt16BE(7);
  }
}

/** Byte offset of the transfer length field, for sense-key-specific field pointers. */
export function transferLengthByte(opcode: number): number {
  switch (opcode >>> 5) {
    case 0:
      return 4;
    case 4:
      return 10;
    case 5:
      return 6;
    default:
      return 7;
  }
}

/** Byte offset of the LBA field. */
export function lbaByte(opcode: number): number {
  return opcode >>> 5 === 0 ? 1 : 2;
}
