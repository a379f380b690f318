/**
 * The EXTENDED COPY (LID1) parameter list (SPC-4 §6.4): a 16-byte header, CSCD descriptors,
 * segment descriptors. Supported: identification CSCD descriptors (E4h) naming a LUN of this
 * target by its NAA designator, and block→block segment descriptors (02h).
 *
 * Everything is checked before any data moves, so a refused list changes nothing: the
 * header and descriptor syntax (ILLEGAL REQUEST, field pointer into the list), then what each
 * segment refers to (COPY ABORTED: unreachable CSCD, LBA out of range; DATA PROTECT for a
 * read-only destination). A plan holds at most MAX_SEGMENT_DESCRIPTORS segments.
 */
import {
  CSCD_IDENTIFICATION,
  MAX_CSCD_DESCRIPTORS,
  MAX_DESCRIPTOR_LIST_LENGTH,
  MAX_INLINE_DATA_LENGTH,
  MAX_SEGMENT_DESCRIPTORS,
  MAX_SEGMENT_LENGTH,
  SEGMENT_BLOCK_TO_BLOCK,
} from './copyManager.js';
import {
  ASC_COPY_TARGET_DEVICE_NOT_REACHABLE,
  ASC_TOO_MANY_SEGMENT_DESCRIPTORS,
  ASC_TOO_MANY_TARGET_DESCRIPTORS,
  ASC_UNEXPECTED_INEXACT_SEGMENT,
  ASC_UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
  ASC_UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
  copyAborted,
  parameterError,
} from './copySense.js';
import { ASC_INVALID_FIELD_IN_PARAMETER_LIST, ASC_NO_ADDITIONAL_SENSE, lbaOutOfRange, parameterListLengthError, writeProtected } from './sense.js';
import type { LunDevice, ScsiResult } from './types.js';

export const HEADER_LENGTH = 16;
const CSCD_LENGTH = 32;
const B2B_SEGMENT_LENGTH = 28;

/** LIST ID USAGE 11b: no list identifier, nothing held. */
export const LIST_ID_UNUSED = 3;

export interface CopySegment {
  readonly src: LunDevice;
  readonly dst: LunDevice;
  readonly srcOffset: number;
  readonly dstOffset: number;
  readonly length: number;
  /** Offset of the segment descriptor in the parameter list, for segment pointers in sense data. */
  readonly at: number;
}

export interface CopyPlan {
  readonly listId: number;
  readonly listIdUsage: number;
  readonly segments: readonly CopySegment[];
}

function invalidField(byte: number, bit?: number): ScsiResult {
  return parameterError(ASC_INVALID_FIELD_IN_PARAMETER_LIST, byte, bit);
}

function highBit(bits: number): number {
  return 31 - Math.clz32(bits);
}

function u64(b: Buffer, p: number): number {
  return b.readUInt32BE(p) * 0x1_0000_0000 + b.readUInt32BE(p + 4); // above 2^53 inexact but out of range
}

/** The designator VPD page 83h reports for a LUN (same normalisation as inquiry.ts), as hex. */
function naaHex(lu: LunDevice): string {
  return lu.identity.wwn
    .replace(/[^0-9a-fA-F]/g, '')
    .padEnd(32, '0')
    .slice(0, 32)
    .toLowerCase();
}

/** Checks the header; returns the end offsets of the CSCD and segment descriptor lists. */
function parseHeader(list: Buffer): { cscdEnd: number; segEnd: number } | ScsiResult {
  if (list.length < HEADER_LENGTH) return parameterListLengthError();
  const b1 = list[1]!;
  if ((b1 & 0xc0) !== 0) return invalidField(1, highBit(b1 & 0xc0));
  if (((b1 >>> 3) & 3) === 1) return invalidField(1, 4); // LIST ID USAGE 01b is reserved
  for (let i = 4; i < 8; i++) if (list[i] !== 0) return invalidField(i, highBit(list[i]!));
  const cscdLen = list.readUInt16BE(2);
  const segLen = list.readUInt32BE(8);
  const inlineLen = list.readUInt32BE(12);
  // Longer than advertised, or longer than what was sent: PARAMETER LIST LENGTH ERROR (SPC-4 §6.4.1).
  if (cscdLen + segLen > MAX_DESCRIPTOR_LIST_LENGTH || inlineLen > MAX_INLINE_DATA_LENGTH) return parameterListLengthError();
  if (HEADER_LENGTH + cscdLen + segLen + inlineLen > list.length) return parameterListLengthError();
  return { cscdEnd: HEADER_LENGTH + cscdLen, segEnd: HEADER_LENGTH + cscdLen + segLen };
}

/** Offsets of the CSCD descriptors, all identification descriptors of direct-access devices. */
function parseCscds(list: Buffer, end: number): number[] | ScsiResult {
  const out: number[] = [];
  for (let p = HEADER_LENGTH; p < end; p += CSCD_LENGTH) {
    if (out.length === MAX_CSCD_DESCRIPTORS) return parameterError(ASC_TOO_MANY_TARGET_DESCRIPTORS, p);
    if (list[p] !== CSCD_IDENTIFICATION) return parameterError(ASC_UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE, p);
    if (p + CSCD_LENGTH > end) return invalidField(2); // CSCD DESCRIPTOR LIST LENGTH cuts a descriptor
    // Byte 1: LU ID TYPE and NUL are obsolete in SPC-4 and ignored; the device type must be block (00h).
    if ((list[p + 1]! & 0x1f) !== 0) return invalidField(p + 1, 4);
    if (list[p + 7]! > 16) return invalidField(p + 7); // DESIGNATOR LENGTH: 20-byte designation descriptor
    if ((list[p + 28]! & ~0x04) !== 0) return invalidField(p + 28, highBit(list[p + 28]! & ~0x04)); // only PAD
    out.push(p);
  }
  return out;
}

interface RawSegment {
  at: number;
  dc: boolean;
  srcIndex: number;
  dstIndex: number;
  blocks: number;
  srcLba: number;
  dstLba: number;
}

function parseSegments(list: Buffer, start: number, end: number): RawSegment[] | ScsiResult {
  const out: RawSegment[] = [];
  for (let p = start; p < end; ) {
    if (out.length === MAX_SEGMENT_DESCRIPTORS) return parameterError(ASC_TOO_MANY_SEGMENT_DESCRIPTORS, p);
    if (p + 4 > end) return invalidField(8); // SEGMENT DESCRIPTOR LIST LENGTH cuts a descriptor
    const len = list.readUInt16BE(p + 2) + 4;
    if (list[p] !== SEGMENT_BLOCK_TO_BLOCK) return parameterError(ASC_UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE, p);
    if (len !== B2B_SEGMENT_LENGTH || p + len > end) return invalidField(p + 2);
    const b1 = list[p + 1]!;
    if ((b1 & 0xfc) !== 0) return invalidField(p + 1, highBit(b1 & 0xfc));
    if (list[p + 8] !== 0 || list[p + 9] !== 0) return invalidField(list[p + 8] !== 0 ? p + 8 : p + 9);
    out.push({
      at: p,
      dc: (b1 & 0x02) !== 0, // NUMBER OF BLOCKS counts destination blocks; CAT only matters for inexact segments
      srcIndex: list.readUInt16BE(p + 4),
      dstIndex: list.readUInt16BE(p + 6),
      blocks: list.readUInt16BE(p + 10),
      srcLba: u64(list, p + 12),
      dstLba: u64(list, p + 20),
    });
    p += len;
  }
  return out;
}

/**
 * Finds the LUN a CSCD descriptor names among the LUNs this nexus sees: by the NAA designator
 * of VPD page 83h (binary, LU association). Any other designator cannot be located.
 */
function resolveCscd(list: Buffer, p: number, luns: ReadonlyMap<number, LunDevice>): LunDevice | ScsiResult {
  const codeSet = list[p + 4]! & 0x0f;
  const assocType = list[p + 5]!;
  const len = list[p + 7]!;
  let found: LunDevice | undefined;
  if (codeSet === 1 && (assocType & 0x3f) === 0x03 && len === 16) {
    const want = list.toString('hex', p + 8, p + 8 + len);
    for (const lu of luns.values()) {
      if (naaHex(lu) === want) {
        found = lu;
        break;
      }
    }
  }
  if (found === undefined) return copyAborted({ ascq16: ASC_COPY_TARGET_DEVICE_NOT_REACHABLE, field: p });
  const diskBlockLength = (list[p + 29]! << 16) | list.readUInt16BE(p + 30);
  if (diskBlockLength !== found.device.blockSize) return invalidField(p + 29);
  return found;
}

function isResult<T extends object>(x: T | ScsiResult): x is ScsiResult {
  return 'status' in x;
}

/** Parses and checks a whole parameter list against the LUNs the issuing nexus sees. */
export function parseExtendedCopy(list: Buffer, luns: ReadonlyMap<number, LunDevice>): CopyPlan | ScsiResult {
  const head = parseHeader(list);
  if (isResult(head)) return head;
  const cscds = parseCscds(list, head.cscdEnd);
  if (isResult(cscds)) return cscds;
  const raw = parseSegments(list, head.cscdEnd, head.segEnd);
  if (isResult(raw)) return raw;

  const resolved = new Map<number, LunDevice | ScsiResult>();
  const cscd = (index: number, field: number): LunDevice | ScsiResult => {
    if (index >= cscds.length) return copyAborted({ ascq16: ASC_COPY_TARGET_DEVICE_NOT_REACHABLE, field });
    let r = resolved.get(index);
    if (r === undefined) resolved.set(index, (r = resolveCscd(list, cscds[index]!, luns)));
    return r;
  };

  const segments: CopySegment[] = [];
  for (const s of raw) {
    const src = cscd(s.srcIndex, s.at + 4);
    if (isResult(src)) return src;
    const dst = cscd(s.dstIndex, s.at + 6);
    if (isResult(dst)) return dst;
    const sbs = src.device.blockSize;
    const dbs = dst.device.blockSize;
    const length = s.blocks * (s.dc ? dbs : sbs);
    if (length % sbs !== 0 || length % dbs !== 0) return copyAborted({ ascq16: ASC_UNEXPECTED_INEXACT_SEGMENT, field: s.at + 10 });
    if (length > MAX_SEGMENT_LENGTH) return invalidField(s.at + 10);
    const srcBlocks = src.device.size / sbs;
    if (s.srcLba > srcBlocks || length / sbs > srcBlocks - s.srcLba) {
      return copyAborted({ ascq16: ASC_NO_ADDITIONAL_SENSE, field: s.at + 12, cscd: 'source', cscdSense: lbaOutOfRange().sense });
    }
    const dstBlocks = dst.device.size / dbs;
    if (s.dstLba > dstBlocks || length / dbs > dstBlocks - s.dstLba) {
      return copyAborted({ ascq16: ASC_NO_ADDITIONAL_SENSE, field: s.at + 20, cscd: 'destination', cscdSense: lbaOutOfRange().sense });
    }
    if (dst.readOnly || dst.device.readOnly) return writeProtected();
    segments.push({ src, dst, srcOffset: s.srcLba * sbs, dstOffset: s.dstLba * dbs, length, at: s.at });
  }
  return { listId: list[0]!, listIdUsage: (list[1]! >>> 3) & 3, segments };
}
