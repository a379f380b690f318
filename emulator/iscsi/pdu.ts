/**
 * iSCSI PDU headers (RFC 7143 §11): parse the 48-byte Basic Header Segment (BHS) of every PDU an
 * initiator sends, build the BHS of every PDU a target sends, and frame PDUs on a byte stream.
 *
 * Layout of every PDU (§11.2): BHS (48) | AHS (TotalAHSLength * 4) | HeaderDigest (0/4) |
 * DataSegment (DataSegmentLength, padded to 4) | DataDigest (0/4, only if DataSegmentLength > 0).
 *
 * Why builders write into caller buffers: the transmit path sends header and payload with one
 * writev; a 1 MiB READ is several Data-In PDUs whose headers come from one small buffer and whose
 * payloads are subarrays of the device buffer, so the payload is never copied. Builders take a
 * plain field object and allocate nothing else.
 *
 * Builders for the initiator's PDUs are the tests' (test/support/iscsiInitiatorPdu.ts).
 */
import { crc32c, crc32cFinal, crc32cUpdate, CRC32C_INIT } from '../net/crc32c.js';
import {
  BHS_LENGTH,
  CMD_ATTR_MASK,
  CMD_FINAL,
  CMD_READ,
  CMD_WRITE,
  DATAIN_FINAL,
  DATAIN_OVERFLOW,
  DATAIN_STATUS,
  DATAIN_UNDERFLOW,
  DIGEST_LENGTH,
  FINAL_BIT,
  IMMEDIATE_BIT,
  LOGIN_CONTINUE,
  LOGIN_TRANSIT,
  LOGOUT_REASON_MASK,
  OP_ASYNC_MSG,
  OP_LOGIN_REQ,
  OP_LOGIN_RESP,
  OP_LOGOUT_REQ,
  OP_LOGOUT_RESP,
  OP_NOP_IN,
  OP_NOP_OUT,
  OP_R2T,
  OP_REJECT,
  OP_SCSI_CMD,
  OP_SCSI_DATA_IN,
  OP_SCSI_DATA_OUT,
  OP_SCSI_RESP,
  OP_SNACK_REQ,
  OP_TASK_MGMT_REQ,
  OP_TASK_MGMT_RESP,
  OP_TEXT_REQ,
  OP_TEXT_RESP,
  OPCODE_MASK,
  REJECT_COMMAND_NOT_SUPPORTED,
  REJECT_PROTOCOL_ERROR,
  RESERVED_TAG,
  RESP_BIDI_OVERFLOW,
  RESP_BIDI_UNDERFLOW,
  RESP_OVERFLOW,
  RESP_UNDERFLOW,
  SNACK_TYPE_MASK,
  TEXT_CONTINUE,
  TMF_FUNCTION_MASK,
  opcodeName,
} from './opcodes.js';

// ======================================================================================
// Errors
// ======================================================================================

export type PduErrorCode =
  | 'truncated' // fewer bytes than a BHS
  | 'ahs-too-long' // TotalAHSLength beyond our limit
  | 'bad-ahs' // an AHS entry that overruns its segment or has an unknown/invalid type
  | 'data-too-large' // DataSegmentLength beyond the negotiated MaxRecvDataSegmentLength
  | 'unknown-opcode' // not an opcode an initiator may send
  | 'header-digest'; // header digest mismatch

/**
 * A PDU the target cannot accept. `rejectReason` is the Reject reason (§11.17.1) to send when the
 * connection can continue; `fatal` says the byte stream can no longer be framed (the caller must
 * close the connection: after a bad length or header digest, nothing after it can be trusted).
 */
export class IscsiPduError extends Error {
  constructor(
    readonly code: PduErrorCode,
    message: string,
    readonly rejectReason: number,
    readonly fatal: boolean,
  ) {
    super(message);
    this.name = 'IscsiPduError';
  }
}

// ======================================================================================
// Field helpers
// ======================================================================================

/** Rounds a data segment length up to the 4-byte boundary (§11.2.3 padding). */
export function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Zero bytes for padding, shared: never written. */
export const PADDING = Buffer.alloc(4);

/**
 * The LUN number from the 8-byte LUN field: single-level peripheral (00b) or flat (01b)
 * addressing (SAM-5 §4.7), which is what Linux and libiscsi send. Returns -1 for other address
 * methods or multi-level LUNs: the SCSI layer answers LOGICAL UNIT NOT SUPPORTED.
 */
export function readLun(buf: Buffer, off: number): number {
  const b0 = buf[off]!;
  const method = b0 >> 6;
  // Second and further levels must be zero for a single-level LUN.
  if (buf.readUInt32BE(off + 4) !== 0 || buf.readUInt16BE(off + 2) !== 0) return -1;
  if (method === 0) return b0 === 0 ? buf[off + 1]! : -1; // bus id must be 0
  if (method === 1) return ((b0 & 0x3f) << 8) | buf[off + 1]!;
  return -1;
}

/** Writes a LUN number: peripheral addressing below 256, flat addressing up to 16383. */
export function writeLun(buf: Buffer, off: number, lun: number): void {
  if (!Number.isInteger(lun) || lun < 0 || lun > 0x3fff) {
    throw new RangeError(`LUN ${lun} is outside 0..16383 (flat addressing); use a smaller LUN number`);
  }
  buf.fill(0, off, off + 8);
  if (lun < 256) buf[off + 1] = lun;
  else {
    buf[off] = 0x40 | (lun >> 8);
    buf[off + 1] = lun & 0xff;
  }
}

function readDsl(buf: Buffer, off: number): number {
  return (buf[off + 5]! << 16) | (buf[off + 6]! << 8) | buf[off + 7]!;
}

function writeCommon(buf: Buffer, off: number, byte0: number, byte1: number, dataSegmentLength: number): void {
  if (dataSegmentLength < 0 || dataSegmentLength > 0xffffff || !Number.isInteger(dataSegmentLength)) {
    throw new RangeError(`DataSegmentLength ${dataSegmentLength} does not fit the 24-bit field`);
  }
  buf.fill(0, off, off + BHS_LENGTH);
  buf[off] = byte0;
  buf[off + 1] = byte1;
  buf[off + 5] = (dataSegmentLength >>> 16) & 0xff;
  buf[off + 6] = (dataSegmentLength >>> 8) & 0xff;
  buf[off + 7] = dataSegmentLength & 0xff;
}

function u32(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32BE(v >>> 0, off);
}

// ======================================================================================
// Parsing what initiators send
// ======================================================================================

interface Common {
  /** The I bit: deliver immediately, CmdSN not advanced (§11.2.1.2). */
  immediate: boolean;
  /** AHS bytes (TotalAHSLength * 4). */
  ahsLength: number;
  dataSegmentLength: number;
  /** Initiator Task Tag. */
  itt: number;
}

export interface NopOutPdu extends Common {
  kind: 'nop-out';
  lun: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
}

export interface ScsiCommandPdu extends Common {
  kind: 'scsi-cmd';
  final: boolean;
  read: boolean;
  write: boolean;
  attr: number;
  lun: number;
  expectedDataTransferLength: number;
  cmdSN: number;
  expStatSN: number;
  /** The 16 CDB bytes of the BHS (a copy); an Extended CDB AHS continues it (see parseAhs). */
  cdb: Buffer;
}

export interface TaskMgmtRequestPdu extends Common {
  kind: 'tmf-req';
  function: number;
  lun: number;
  referencedTaskTag: number;
  cmdSN: number;
  expStatSN: number;
  refCmdSN: number;
  expDataSN: number;
}

export interface LoginRequestPdu extends Common {
  kind: 'login-req';
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  /** 48-bit ISID as a number (exact: below 2^53). */
  isid: number;
  tsih: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export interface TextRequestPdu extends Common {
  kind: 'text-req';
  final: boolean;
  continue: boolean;
  lun: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
}

export interface DataOutPdu extends Common {
  kind: 'data-out';
  final: boolean;
  lun: number;
  ttt: number;
  expStatSN: number;
  dataSN: number;
  bufferOffset: number;
}

export interface LogoutRequestPdu extends Common {
  kind: 'logout-req';
  reasonCode: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

/** Parsed so the caller can answer it: at ErrorRecoveryLevel 0 a SNACK gets a Reject. */
export interface SnackRequestPdu extends Common {
  kind: 'snack';
  type: number;
  lun: number;
  ttt: number;
  expStatSN: number;
  begRun: number;
  runLength: number;
}

export type InitiatorPdu = NopOutPdu | ScsiCommandPdu | TaskMgmtRequestPdu | LoginRequestPdu | TextRequestPdu | DataOutPdu | LogoutRequestPdu | SnackRequestPdu;

/**
 * Parses the BHS at buf[off, off+48). Length limits are the framer's job (frameSize); this only
 * decodes. Throws IscsiPduError for a short buffer or an opcode an initiator cannot send.
 */
export function parseBhs(buf: Buffer, off = 0): InitiatorPdu {
  if (buf.length - off < BHS_LENGTH) {
    throw new IscsiPduError(
      'truncated',
      `iSCSI header truncated: ${Math.max(0, buf.length - off)} of ${BHS_LENGTH} bytes; read the whole BHS before parsing`,
      REJECT_PROTOCOL_ERROR,
      true,
    );
  }
  const b0 = buf[off]!;
  const b1 = buf[off + 1]!;
  const opcode = b0 & OPCODE_MASK;
  const immediate = (b0 & IMMEDIATE_BIT) !== 0;
  const ahsLength = buf[off + 4]! * 4;
  const dataSegmentLength = readDsl(buf, off);
  const itt = buf.readUInt32BE(off + 16);
  switch (opcode) {
    case OP_NOP_OUT:
      return {
        kind: 'nop-out',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        lun: readLun(buf, off + 8),
        ttt: buf.readUInt32BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
      };
    case OP_SCSI_CMD: {
      const cdb = Buffer.allocUnsafe(16);
      buf.copy(cdb, 0, off + 32, off + 48);
      return {
        kind: 'scsi-cmd',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        final: (b1 & CMD_FINAL) !== 0,
        read: (b1 & CMD_READ) !== 0,
        write: (b1 & CMD_WRITE) !== 0,
        attr: b1 & CMD_ATTR_MASK,
        lun: readLun(buf, off + 8),
        expectedDataTransferLength: buf.readUInt32BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
        cdb,
      };
    }
    case OP_TASK_MGMT_REQ:
      return {
        kind: 'tmf-req',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        function: b1 & TMF_FUNCTION_MASK,
        lun: readLun(buf, off + 8),
        referencedTaskTag: buf.readUInt32BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
        refCmdSN: buf.readUInt32BE(off + 32),
        expDataSN: buf.readUInt32BE(off + 36),
      };
    case OP_LOGIN_REQ:
      return {
        kind: 'login-req',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        transit: (b1 & LOGIN_TRANSIT) !== 0,
        continue: (b1 & LOGIN_CONTINUE) !== 0,
        csg: (b1 >> 2) & 3,
        nsg: b1 & 3,
        versionMax: buf[off + 2]!,
        versionMin: buf[off + 3]!,
        isid: buf.readUIntBE(off + 8, 6),
        tsih: buf.readUInt16BE(off + 14),
        cid: buf.readUInt16BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
      };
    case OP_TEXT_REQ:
      return {
        kind: 'text-req',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        final: (b1 & FINAL_BIT) !== 0,
        continue: (b1 & TEXT_CONTINUE) !== 0,
        lun: readLun(buf, off + 8),
        ttt: buf.readUInt32BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
      };
    case OP_SCSI_DATA_OUT:
      return {
        kind: 'data-out',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        final: (b1 & FINAL_BIT) !== 0,
        lun: readLun(buf, off + 8),
        ttt: buf.readUInt32BE(off + 20),
        expStatSN: buf.readUInt32BE(off + 28),
        dataSN: buf.readUInt32BE(off + 36),
        bufferOffset: buf.readUInt32BE(off + 40),
      };
    case OP_LOGOUT_REQ:
      return {
        kind: 'logout-req',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        reasonCode: b1 & LOGOUT_REASON_MASK,
        cid: buf.readUInt16BE(off + 20),
        cmdSN: buf.readUInt32BE(off + 24),
        expStatSN: buf.readUInt32BE(off + 28),
      };
    case OP_SNACK_REQ:
      return {
        kind: 'snack',
        immediate,
        ahsLength,
        dataSegmentLength,
        itt,
        type: b1 & SNACK_TYPE_MASK,
        lun: readLun(buf, off + 8),
        ttt: buf.readUInt32BE(off + 20),
        expStatSN: buf.readUInt32BE(off + 28),
        begRun: buf.readUInt32BE(off + 40),
        runLength: buf.readUInt32BE(off + 44),
      };
    default:
      throw new IscsiPduError(
        'unknown-opcode',
        `${opcodeName(opcode)} is not a PDU an initiator may send; the target rejects it (Command not supported)`,
        REJECT_COMMAND_NOT_SUPPORTED,
        false,
      );
  }
}

// ======================================================================================
// AHS (§11.2.2)
// ======================================================================================

export const AHS_EXTENDED_CDB = 1;
export const AHS_BIDI_READ_LENGTH = 2;

export interface AhsContents {
  /** CDB bytes beyond the first 16 (from an Extended CDB AHS). */
  extendedCdb?: Buffer;
  /** Expected Bidirectional Read Data Length. */
  bidiReadLength?: number;
}

/**
 * Decodes the AHS segment buf[off, off+len). Each entry is AHSLength(2) AHSType(1) then
 * AHSLength bytes of which the first is reserved for the two types defined; entries are padded
 * to 4 bytes. Throws IscsiPduError ('bad-ahs', Reject: protocol error) on overruns or unknown types.
 */
export function parseAhs(buf: Buffer, off: number, len: number): AhsContents {
  const out: AhsContents = {};
  const end = off + len;
  if (end > buf.length) {
    throw new IscsiPduError('bad-ahs', `AHS of ${len} bytes overruns the ${buf.length - off} bytes given`, REJECT_PROTOCOL_ERROR, true);
  }
  let p = off;
  while (p < end) {
    if (end - p < 4) {
      throw new IscsiPduError('bad-ahs', `AHS entry at byte ${p - off} has ${end - p} bytes, fewer than its 4-byte header`, REJECT_PROTOCOL_ERROR, false);
    }
    const ahsLen = buf.readUInt16BE(p);
    const type = buf[p + 2]!;
    // AHSLength counts the bytes after the 3-byte length+type header (RFC 7143 §11.2.2.2).
    const entryEnd = p + 3 + ahsLen;
    if (ahsLen < 1 || entryEnd > end) {
      throw new IscsiPduError(
        'bad-ahs',
        `AHS entry type ${type} at byte ${p - off} declares AHSLength ${ahsLen}, which overruns the ${len}-byte AHS`,
        REJECT_PROTOCOL_ERROR,
        false,
      );
    }
    if (type === AHS_EXTENDED_CDB) {
      if (out.extendedCdb) throw new IscsiPduError('bad-ahs', 'two Extended CDB AHS entries in one PDU', REJECT_PROTOCOL_ERROR, false);
      out.extendedCdb = Buffer.from(buf.subarray(p + 4, entryEnd));
    } else if (type === AHS_BIDI_READ_LENGTH) {
      if (ahsLen !== 5) throw new IscsiPduError('bad-ahs', `Bidirectional Read Length AHS has AHSLength ${ahsLen}, expected 5`, REJECT_PROTOCOL_ERROR, false);
      out.bidiReadLength = buf.readUInt32BE(p + 4);
    } else {
      throw new IscsiPduError(
        'bad-ahs',
        `AHS type ${type} is not supported (only 1 Extended CDB and 2 Bidirectional Read Length)`,
        REJECT_PROTOCOL_ERROR,
        false,
      );
    }
    p += pad4(3 + ahsLen);
  }
  return out;
}

// ======================================================================================
// Framing
// ======================================================================================

export interface FrameLimits {
  /** The target's declared MaxRecvDataSegmentLength (8192 until login completes, §13.12). */
  maxRecvDataSegmentLength: number;
  headerDigest: boolean;
  dataDigest: boolean;
  /** Largest AHS accepted, bytes. Default: enough for a 260-byte CDB plus a bidi AHS. */
  maxAhsLength?: number;
}

/** AHS room for the largest CDB (260 bytes: 16 in the BHS + 244 in an Extended CDB AHS) + bidi. */
export const DEFAULT_MAX_AHS_LENGTH = 256 + 8;

export interface FrameSize {
  ahsLength: number;
  headerDigestLength: number;
  dataSegmentLength: number;
  /** Data segment bytes on the wire (padded to 4). */
  paddedDataLength: number;
  dataDigestLength: number;
  /** Bytes after the 48-byte BHS up to the end of the PDU. */
  restLength: number;
}

/**
 * The layout of the PDU whose BHS is at buf[off, off+48), checked against the limits. Throws
 * IscsiPduError with fatal=true when the PDU cannot be accepted: the caller closes the connection
 * (or, for data-too-large, may read and discard the segment and send a Reject first).
 */
export function frameSize(buf: Buffer, off: number, limits: FrameLimits): FrameSize {
  if (buf.length - off < BHS_LENGTH) {
    throw new IscsiPduError('truncated', `iSCSI header truncated: ${Math.max(0, buf.length - off)} of ${BHS_LENGTH} bytes`, REJECT_PROTOCOL_ERROR, true);
  }
  const ahsWords = buf[off + 4]!;
  const ahsLength = ahsWords * 4;
  const maxAhs = limits.maxAhsLength ?? DEFAULT_MAX_AHS_LENGTH;
  if (ahsLength > maxAhs) {
    throw new IscsiPduError(
      'ahs-too-long',
      `AHS length ${ahsWords} (${ahsLength} bytes) exceeds the ${maxAhs}-byte limit of this target; the initiator sent a malformed header`,
      REJECT_PROTOCOL_ERROR,
      true,
    );
  }
  const dataSegmentLength = readDsl(buf, off);
  if (dataSegmentLength > limits.maxRecvDataSegmentLength) {
    throw new IscsiPduError(
      'data-too-large',
      `${opcodeName(buf[off]! & OPCODE_MASK)} DataSegmentLength ${dataSegmentLength} exceeds the negotiated MaxRecvDataSegmentLength ${limits.maxRecvDataSegmentLength}`,
      REJECT_PROTOCOL_ERROR,
      true,
    );
  }
  const headerDigestLength = limits.headerDigest ? DIGEST_LENGTH : 0;
  const paddedDataLength = pad4(dataSegmentLength);
  const dataDigestLength = limits.dataDigest && dataSegmentLength > 0 ? DIGEST_LENGTH : 0;
  return {
    ahsLength,
    headerDigestLength,
    dataSegmentLength,
    paddedDataLength,
    dataDigestLength,
    restLength: ahsLength + headerDigestLength + paddedDataLength + dataDigestLength,
  };
}

/**
 * Tells a reader how many bytes to read next: first a BHS, then the rest of that PDU. Limits can
 * change between PDUs (digests switch on after the final Login Response).
 */
export class PduFramer {
  private pending: FrameSize | null = null;

  constructor(public limits: FrameLimits) {}

  /** Bytes the reader must collect next. */
  get need(): number {
    return this.pending === null ? BHS_LENGTH : this.pending.restLength;
  }

  /** Called with a complete BHS; returns the rest's layout (restLength may be 0). Throws IscsiPduError. */
  header(bhs: Buffer, off = 0): FrameSize {
    if (this.pending !== null) throw new Error('PduFramer.header called twice without rest(): the reader lost its place');
    const size = frameSize(bhs, off, this.limits);
    this.pending = size.restLength > 0 ? size : null;
    return size;
  }

  /** Called once the rest of the PDU was read. */
  rest(): void {
    this.pending = null;
  }
}

/**
 * Wire order: iSCSI sends the 32-bit digest least-significant byte first (RFC 3720 appendix
 * B.4 lists the CRC of 32 zero bytes as the bytes "aa 36 91 8a"; libiscsi and the Linux target
 * write and read it the same way). writeDigest/readDigest do that; don't use writeUInt32BE for
 * digests even though every other iSCSI field is big-endian.
 */
export function writeDigest(buf: Buffer, offset: number, digest: number): void {
  buf.writeUInt32LE(digest >>> 0, offset);
}

/** Reads a digest stored in iSCSI wire order. */
export function readDigest(buf: Buffer, offset: number): number {
  return buf.readUInt32LE(offset);
}

/** CRC32C over a BHS and its AHS, as the header digest (§11.2.3 HeaderDigest covers both). */
export function headerDigest(buf: Buffer, off: number, ahsLength: number): number {
  return crc32c(buf, off, off + BHS_LENGTH + ahsLength);
}

/** Checks the header digest stored after the BHS+AHS at buf[off]. Throws a fatal IscsiPduError. */
export function verifyHeaderDigest(buf: Buffer, off: number, ahsLength: number): void {
  const want = headerDigest(buf, off, ahsLength);
  const got = readDigest(buf, off + BHS_LENGTH + ahsLength);
  if (want !== got) {
    throw new IscsiPduError(
      'header-digest',
      `header digest mismatch on ${opcodeName(buf[off]! & OPCODE_MASK)}: computed 0x${want.toString(16)}, received 0x${got.toString(16)}; the connection must be dropped`,
      REJECT_PROTOCOL_ERROR,
      true,
    );
  }
}

/** Writes the header digest after a 48-byte BHS (no AHS) that starts at buf[off]. */
export function sealHeader(buf: Buffer, off: number): void {
  writeDigest(buf, off + BHS_LENGTH, crc32c(buf, off, off + BHS_LENGTH));
}

/** The data digest of a segment: CRC32C over the data and its zero padding (§11.2.3). */
export function dataDigest(data: Uint8Array, start = 0, end = data.length): number {
  const st = crc32cUpdate(CRC32C_INIT, data, start, end);
  const padLen = pad4(end - start) - (end - start);
  return crc32cFinal(padLen > 0 ? crc32cUpdate(st, PADDING, 0, padLen) : st);
}

// ======================================================================================
// Building what targets send. Each builder writes exactly 48 bytes at buf[off] (zeroing reserved
// fields) and returns 48. The caller sends the data segment, padding and digests itself (see
// dataSegmentTrailer) or uses buildDataInPdus.
// ======================================================================================

/** Sequence numbers every target response carries. */
export interface TargetSeq {
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface NopInFields extends TargetSeq {
  lun: number;
  itt: number;
  ttt: number;
  dataSegmentLength: number;
}

export function buildNopIn(buf: Buffer, off: number, f: NopInFields): number {
  writeCommon(buf, off, OP_NOP_IN, FINAL_BIT, f.dataSegmentLength);
  writeLun(buf, off + 8, f.lun);
  u32(buf, off + 16, f.itt);
  u32(buf, off + 20, f.ttt);
  writeSeq(buf, off, f);
  return BHS_LENGTH;
}

function writeSeq(buf: Buffer, off: number, s: TargetSeq): void {
  u32(buf, off + 24, s.statSN);
  u32(buf, off + 28, s.expCmdSN);
  u32(buf, off + 32, s.maxCmdSN);
}

export interface ScsiResponseFields extends TargetSeq {
  itt: number;
  /** Response byte: RESPONSE_COMPLETED or RESPONSE_TARGET_FAILURE. */
  response: number;
  /** SCSI status (only meaningful when response is RESPONSE_COMPLETED). */
  status: number;
  /** Length of the data segment: 0, or 2 + sense length (see writeSenseSegment). */
  dataSegmentLength: number;
  expDataSN: number;
  /** Residual: positive = underflow (U), negative = overflow (O). */
  residual?: number;
  bidiReadResidual?: number;
}

export function buildScsiResponse(buf: Buffer, off: number, f: ScsiResponseFields): number {
  const residual = f.residual ?? 0;
  const bidi = f.bidiReadResidual ?? 0;
  let flags = FINAL_BIT;
  if (residual > 0) flags |= RESP_UNDERFLOW;
  else if (residual < 0) flags |= RESP_OVERFLOW;
  if (bidi > 0) flags |= RESP_BIDI_UNDERFLOW;
  else if (bidi < 0) flags |= RESP_BIDI_OVERFLOW;
  writeCommon(buf, off, OP_SCSI_RESP, flags, f.dataSegmentLength);
  buf[off + 2] = f.response;
  buf[off + 3] = f.status;
  u32(buf, off + 16, f.itt);
  // SNACK Tag (20) stays 0: no SNACK at ErrorRecoveryLevel 0.
  writeSeq(buf, off, f);
  u32(buf, off + 36, f.expDataSN);
  u32(buf, off + 40, Math.abs(bidi));
  u32(buf, off + 44, Math.abs(residual));
  return BHS_LENGTH;
}

/** Writes the SCSI Response data segment for sense data: SenseLength (2) + sense (§11.4.7). Returns bytes written. */
export function writeSenseSegment(buf: Buffer, off: number, sense: Uint8Array): number {
  buf.writeUInt16BE(sense.length, off);
  buf.set(sense, off + 2);
  return 2 + sense.length;
}

export interface TaskMgmtResponseFields extends TargetSeq {
  itt: number;
  response: number;
}

export function buildTaskMgmtResponse(buf: Buffer, off: number, f: TaskMgmtResponseFields): number {
  writeCommon(buf, off, OP_TASK_MGMT_RESP, FINAL_BIT, 0);
  buf[off + 2] = f.response;
  u32(buf, off + 16, f.itt);
  writeSeq(buf, off, f);
  return BHS_LENGTH;
}

export interface LoginResponseFields extends TargetSeq {
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionActive: number;
  isid: number;
  tsih: number;
  itt: number;
  statusClass: number;
  statusDetail: number;
  dataSegmentLength: number;
}

export function buildLoginResponse(buf: Buffer, off: number, f: LoginResponseFields): number {
  if (f.transit && f.continue) throw new RangeError('Login Response cannot set both T and C (RFC 7143 §11.13.1)');
  const b1 = (f.transit ? LOGIN_TRANSIT : 0) | (f.continue ? LOGIN_CONTINUE : 0) | ((f.csg & 3) << 2) | (f.transit ? f.nsg & 3 : 0);
  writeCommon(buf, off, OP_LOGIN_RESP, b1, f.dataSegmentLength);
  buf[off + 2] = f.versionMax;
  buf[off + 3] = f.versionActive;
  buf.writeUIntBE(f.isid, off + 8, 6);
  buf.writeUInt16BE(f.tsih, off + 14);
  u32(buf, off + 16, f.itt);
  writeSeq(buf, off, f);
  buf[off + 36] = f.statusClass;
  buf[off + 37] = f.statusDetail;
  return BHS_LENGTH;
}

export interface TextResponseFields extends TargetSeq {
  final: boolean;
  continue: boolean;
  lun: number;
  itt: number;
  ttt: number;
  dataSegmentLength: number;
}

export function buildTextResponse(buf: Buffer, off: number, f: TextResponseFields): number {
  if (f.final && f.continue) throw new RangeError('Text Response cannot set both F and C (RFC 7143 §11.11.1)');
  writeCommon(buf, off, OP_TEXT_RESP, (f.final ? FINAL_BIT : 0) | (f.continue ? TEXT_CONTINUE : 0), f.dataSegmentLength);
  writeLun(buf, off + 8, f.lun);
  u32(buf, off + 16, f.itt);
  u32(buf, off + 20, f.ttt);
  writeSeq(buf, off, f);
  return BHS_LENGTH;
}

/** Statuses a Data-In may carry (GOOD, CONDITION MET, INTERMEDIATE, INTERMEDIATE-CONDITION MET). */
const GOOD_STATUSES = new Set([0x00, 0x04, 0x10, 0x14]);

export interface DataInFields extends TargetSeq {
  final: boolean;
  /** SCSI status in this PDU (S bit); only on the final PDU, and only if there is no sense data. */
  status?: number | undefined;
  lun: number;
  itt: number;
  ttt: number;
  dataSN: number;
  bufferOffset: number;
  dataSegmentLength: number;
  /** With status: positive = underflow (U), negative = overflow (O). */
  residual?: number;
}

export function buildDataIn(buf: Buffer, off: number, f: DataInFields): number {
  let flags = f.final ? DATAIN_FINAL : 0;
  const withStatus = f.status !== undefined;
  if (withStatus && !f.final) throw new RangeError('Data-In with status (S bit) must also be final (RFC 7143 §11.7.1)');
  if (withStatus && !GOOD_STATUSES.has(f.status!)) {
    // Sense data cannot ride in a Data-In: exceptions need a SCSI Response (§11.7.4).
    throw new RangeError(`Data-In cannot carry SCSI status 0x${f.status!.toString(16)}; send a SCSI Response for anything but GOOD/CONDITION MET`);
  }
  const residual = withStatus ? (f.residual ?? 0) : 0;
  if (withStatus) {
    flags |= DATAIN_STATUS;
    if (residual > 0) flags |= DATAIN_UNDERFLOW;
    else if (residual < 0) flags |= DATAIN_OVERFLOW;
  }
  writeCommon(buf, off, OP_SCSI_DATA_IN, flags, f.dataSegmentLength);
  if (withStatus) buf[off + 3] = f.status!;
  writeLun(buf, off + 8, f.lun);
  u32(buf, off + 16, f.itt);
  u32(buf, off + 20, f.ttt);
  // StatSN is reserved unless S is set (§11.7.4); ExpCmdSN/MaxCmdSN are always valid.
  if (withStatus) u32(buf, off + 24, f.statSN);
  u32(buf, off + 28, f.expCmdSN);
  u32(buf, off + 32, f.maxCmdSN);
  u32(buf, off + 36, f.dataSN);
  u32(buf, off + 40, f.bufferOffset);
  u32(buf, off + 44, Math.abs(residual));
  return BHS_LENGTH;
}

export interface LogoutResponseFields extends TargetSeq {
  itt: number;
  response: number;
  time2Wait: number;
  time2Retain: number;
}

export function buildLogoutResponse(buf: Buffer, off: number, f: LogoutResponseFields): number {
  writeCommon(buf, off, OP_LOGOUT_RESP, FINAL_BIT, 0);
  buf[off + 2] = f.response;
  u32(buf, off + 16, f.itt);
  writeSeq(buf, off, f);
  buf.writeUInt16BE(f.time2Wait, off + 40);
  buf.writeUInt16BE(f.time2Retain, off + 42);
  return BHS_LENGTH;
}

export interface R2TFields extends TargetSeq {
  lun: number;
  itt: number;
  ttt: number;
  r2tSN: number;
  bufferOffset: number;
  desiredDataTransferLength: number;
}

/** R2T (§11.8). StatSN here is the next StatSN, not advanced by this PDU. */
export function buildR2T(buf: Buffer, off: number, f: R2TFields): number {
  if (f.desiredDataTransferLength === 0) throw new RangeError('R2T Desired Data Transfer Length must not be 0 (RFC 7143 §11.8.5)');
  writeCommon(buf, off, OP_R2T, FINAL_BIT, 0);
  writeLun(buf, off + 8, f.lun);
  u32(buf, off + 16, f.itt);
  u32(buf, off + 20, f.ttt);
  writeSeq(buf, off, f);
  u32(buf, off + 36, f.r2tSN);
  u32(buf, off + 40, f.bufferOffset);
  u32(buf, off + 44, f.desiredDataTransferLength);
  return BHS_LENGTH;
}

export interface AsyncMessageFields extends TargetSeq {
  lun: number;
  asyncEvent: number;
  asyncVCode?: number;
  parameter1?: number;
  parameter2?: number;
  parameter3?: number;
  dataSegmentLength: number;
}

export function buildAsyncMessage(buf: Buffer, off: number, f: AsyncMessageFields): number {
  writeCommon(buf, off, OP_ASYNC_MSG, FINAL_BIT, f.dataSegmentLength);
  writeLun(buf, off + 8, f.lun);
  u32(buf, off + 16, RESERVED_TAG);
  writeSeq(buf, off, f);
  buf[off + 36] = f.asyncEvent;
  buf[off + 37] = f.asyncVCode ?? 0;
  buf.writeUInt16BE(f.parameter1 ?? 0, off + 38);
  buf.writeUInt16BE(f.parameter2 ?? 0, off + 40);
  buf.writeUInt16BE(f.parameter3 ?? 0, off + 42);
  return BHS_LENGTH;
}

export interface RejectFields extends TargetSeq {
  reason: number;
  /** DataSN/R2TSN for a rejected SNACK; otherwise 0. */
  dataSN?: number;
}

/** Reject (§11.17). The data segment is the rejected PDU's 48-byte header: DataSegmentLength is 48. */
export function buildReject(buf: Buffer, off: number, f: RejectFields): number {
  writeCommon(buf, off, OP_REJECT, FINAL_BIT, BHS_LENGTH);
  buf[off + 2] = f.reason;
  u32(buf, off + 16, RESERVED_TAG);
  writeSeq(buf, off, f);
  u32(buf, off + 36, f.dataSN ?? 0);
  return BHS_LENGTH;
}

// ======================================================================================
// Data-In sequences without copying the payload
// ======================================================================================

export interface DataInSequence extends TargetSeq {
  lun: number;
  itt: number;
  /** The initiator's MaxRecvDataSegmentLength: no Data-In carries more. */
  maxRecvDataSegmentLength: number;
  /** Sets F every MaxBurstLength bytes (end of a Data-In sequence, §13.13); default: only at the end. */
  maxBurstLength?: number;
  /** Buffer offset of the first byte of payload (default 0). */
  bufferOffset?: number;
  /** DataSN of the first PDU (default 0). */
  dataSN?: number;
  /** Status for phase collapse on the last PDU (omit to send a separate SCSI Response). */
  status?: number | undefined;
  residual?: number;
  headerDigest: boolean;
  dataDigest: boolean;
}

/** Bytes of per-PDU space buildDataInPdus needs in its header buffer: BHS + digest + pad + data digest. */
const DATAIN_SLOT = BHS_LENGTH + DIGEST_LENGTH + 8;

/** Size of the header buffer for a payload of `length` bytes split at `maxRecvDataSegmentLength`. */
export function dataInHeaderSpace(length: number, maxRecvDataSegmentLength: number): number {
  return Math.max(1, Math.ceil(length / maxRecvDataSegmentLength)) * DATAIN_SLOT;
}

/**
 * Splits `payload` into Data-In PDUs and appends the buffers to send, in order, to `out`:
 * for each PDU its header (+ header digest), a subarray of `payload`, and a small trailer with
 * padding and data digest when needed. Headers and trailers live in `headers` (at least
 * dataInHeaderSpace bytes; pooled by the caller). Returns the next DataSN.
 * An empty payload yields no PDUs: the caller sends a SCSI Response instead.
 */
export function buildDataInPdus(out: Buffer[], headers: Buffer, payload: Buffer, s: DataInSequence): number {
  const mrdsl = s.maxRecvDataSegmentLength;
  if (!(mrdsl >= 512)) throw new RangeError(`MaxRecvDataSegmentLength ${mrdsl} is below the RFC minimum 512`);
  if (headers.length < dataInHeaderSpace(payload.length, mrdsl)) {
    throw new RangeError(`Data-In header buffer of ${headers.length} bytes is short; need dataInHeaderSpace() = ${dataInHeaderSpace(payload.length, mrdsl)}`);
  }
  const base = s.bufferOffset ?? 0;
  const burst = s.maxBurstLength ?? Infinity;
  let dataSN = s.dataSN ?? 0;
  let pos = 0;
  let h = 0;
  let burstLeft = burst;
  const fields: DataInFields = {
    final: false,
    lun: s.lun,
    itt: s.itt,
    ttt: RESERVED_TAG,
    dataSN: 0,
    bufferOffset: 0,
    dataSegmentLength: 0,
    statSN: s.statSN,
    expCmdSN: s.expCmdSN,
    maxCmdSN: s.maxCmdSN,
  };
  while (pos < payload.length) {
    const len = Math.min(mrdsl, payload.length - pos, burstLeft);
    const last = pos + len === payload.length;
    burstLeft -= len;
    fields.final = last || burstLeft === 0;
    if (burstLeft === 0) burstLeft = burst;
    fields.dataSN = dataSN++;
    fields.bufferOffset = base + pos;
    fields.dataSegmentLength = len;
    if (last && s.status !== undefined) {
      fields.status = s.status;
      fields.residual = s.residual ?? 0;
    }
    buildDataIn(headers, h, fields);
    let hl = BHS_LENGTH;
    if (s.headerDigest) {
      sealHeader(headers, h);
      hl += DIGEST_LENGTH;
    }
    out.push(headers.subarray(h, h + hl));
    const data = payload.subarray(pos, pos + len);
    out.push(data);
    const padLen = pad4(len) - len;
    let t = h + hl;
    if (padLen > 0) {
      headers.fill(0, t, t + padLen);
      t += padLen;
    }
    if (s.dataDigest) {
      writeDigest(headers, t, dataDigest(data));
      t += DIGEST_LENGTH;
    }
    if (t > h + hl) out.push(headers.subarray(h + hl, t));
    h += DATAIN_SLOT;
    pos += len;
  }
  return dataSN;
}

/**
 * The padding and data digest that follow a data segment, written at buf[off]. Returns the
 * number of bytes written (0 to 7). For the non-Data-In PDUs with a data segment.
 */
export function dataSegmentTrailer(buf: Buffer, off: number, data: Uint8Array, withDigest: boolean): number {
  const padLen = pad4(data.length) - data.length;
  buf.fill(0, off, off + padLen);
  if (!withDigest || data.length === 0) return padLen;
  writeDigest(buf, off + padLen, dataDigest(data));
  return padLen + DIGEST_LENGTH;
}
