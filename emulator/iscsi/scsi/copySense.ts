/**
 * Sense data of the copy manager (SPC-4 §5.17.7): parameter list errors are ILLEGAL REQUEST
 * with a field pointer into the parameter list; errors met while processing a segment are
 * COPY ABORTED with a segment pointer, and carry the status and sense data the source or
 * destination CSCD returned, so the initiator learns both that the copy stopped and why.
 */
import { buildSense, checkCondition, ILLEGAL_REQUEST, SENSE_LENGTH } from './sense.js';
import { CHECK_CONDITION, type ScsiResult } from './types.js';

export const COPY_ABORTED = 0x0a;

export const ASC_OPERATION_IN_PROGRESS = 0x0016;
export const ASC_COPY_TARGET_DEVICE_NOT_REACHABLE = 0x0d02;
export const ASC_TOO_MANY_TARGET_DESCRIPTORS = 0x2606;
export const ASC_UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = 0x2607;
export const ASC_TOO_MANY_SEGMENT_DESCRIPTORS = 0x2608;
export const ASC_UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = 0x2609;
export const ASC_UNEXPECTED_INEXACT_SEGMENT = 0x260a;
export const ASC_INSUFFICIENT_RESOURCES = 0x5503;

/** ILLEGAL REQUEST with a field pointer to a byte of the parameter list. */
export function parameterError(ascq16: number, byte: number, bit?: number): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ascq16, { field: { cdb: false, byte, bit } });
}

export interface CopyAbort {
  ascq16: number;
  /** Byte of the parameter list the error is about (segment pointer, SD=0). */
  field: number;
  /** Sense data a CSCD returned (fixed format), and whether it was the source or the destination. */
  cscdSense?: Buffer | undefined;
  cscd?: 'source' | 'destination';
}

/**
 * COPY ABORTED, fixed format: COMMAND-SPECIFIC INFORMATION byte 8 (source) or 9 (destination)
 * holds the offset of the CSCD's status byte, which its sense data follows (at byte 18 here).
 */
export function copyAborted(a: CopyAbort): ScsiResult {
  const head = buildSense(COPY_ABORTED, a.ascq16);
  head[15] = 0x80; // SKSV; SD 0: the field pointer counts from the start of the parameter list
  head.writeUInt16BE(a.field & 0xffff, 16);
  if (a.cscdSense === undefined) return { status: CHECK_CONDITION, sense: head };
  const inner = a.cscdSense.subarray(0, 252 - SENSE_LENGTH - 1); // sense data is at most 252 bytes
  const sense = Buffer.alloc(SENSE_LENGTH + 1 + inner.length);
  head.copy(sense);
  sense[7] = sense.length - 8; // ADDITIONAL SENSE LENGTH
  sense[a.cscd === 'source' ? 8 : 9] = SENSE_LENGTH;
  sense[SENSE_LENGTH] = CHECK_CONDITION;
  inner.copy(sense, SENSE_LENGTH + 1);
  return { status: CHECK_CONDITION, sense };
}
