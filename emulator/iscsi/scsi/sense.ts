/**
 * Fixed-format sense data (SPC-4 §4.5.3) and the mapping of BlockDeviceError codes to sense.
 *
 * Only the error paths allocate here; GOOD results are plain object literals in the handlers.
 */
import { BlockDeviceError } from '../../block/BlockDevice.js';
import { CHECK_CONDITION, type ScsiResult } from './types.js';

/** Sense keys (SPC-4 table 27). */
export const NO_SENSE = 0x0;
export const NOT_READY = 0x2;
export const MEDIUM_ERROR = 0x3;
export const HARDWARE_ERROR = 0x4;
export const ILLEGAL_REQUEST = 0x5;
export const UNIT_ATTENTION = 0x6;
export const DATA_PROTECT = 0x7;
export const ABORTED_COMMAND = 0xb;
export const MISCOMPARE = 0xe;

/** Additional sense codes as (ASC << 8) | ASCQ. */
export const ASC_NO_ADDITIONAL_SENSE = 0x0000;
export const ASC_LUN_NOT_READY = 0x0400; // LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE
export const ASC_LUN_NOT_READY_MANUAL_INTERVENTION = 0x0403;
export const ASC_WRITE_ERROR = 0x0c00;
export const ASC_INVALID_FIELD_IN_COMMAND_IU = 0x0e03;
export const ASC_UNRECOVERED_READ_ERROR = 0x1100;
export const ASC_INSUFFICIENT_RESOURCES = 0x5503;
export const ASC_PARAMETER_LIST_LENGTH_ERROR = 0x1a00;
export const ASC_MISCOMPARE_DURING_VERIFY = 0x1d00;
export const ASC_INVALID_COMMAND_OPERATION_CODE = 0x2000;
export const ASC_LBA_OUT_OF_RANGE = 0x2100;
export const ASC_INVALID_FIELD_IN_CDB = 0x2400;
export const ASC_LUN_NOT_SUPPORTED = 0x2500;
export const ASC_INVALID_FIELD_IN_PARAMETER_LIST = 0x2600;
export const ASC_WRITE_PROTECTED = 0x2700;
export const ASC_SPACE_ALLOCATION_FAILED_WRITE_PROTECT = 0x2707;
export const ASC_POWER_ON_RESET = 0x2900;
export const ASC_MODE_PARAMETERS_CHANGED = 0x2a01;
export const ASC_CAPACITY_DATA_CHANGED = 0x2a09;
export const ASC_SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900;
export const ASC_REPORTED_LUNS_DATA_CHANGED = 0x3f0e;
export const ASC_INTERNAL_TARGET_FAILURE = 0x4400;
export const ASC_DATA_PHASE_ERROR = 0x4b00;
export const ASC_DATA_OFFSET_ERROR = 0x4b05;

export const SENSE_LENGTH = 18;

export interface SenseOptions {
  /** INFORMATION field (VALID bit set); up to 2^32-1. */
  information?: number;
  /** Sense-key-specific field pointer (SKSV): byte of the CDB (cdb true) or of the parameter list. */
  field?: { cdb: boolean; byte: number; bit?: number | undefined };
}

/** Builds 18 bytes of fixed-format sense data, response code 70h (current error). */
export function buildSense(key: number, ascq16: number, opts?: SenseOptions): Buffer {
  const s = Buffer.alloc(SENSE_LENGTH);
  s[0] = 0x70;
  s[2] = key & 0x0f;
  s[7] = SENSE_LENGTH - 8; // ADDITIONAL SENSE LENGTH
  s[12] = ascq16 >>> 8;
  s[13] = ascq16 & 0xff;
  if (opts?.information !== undefined) {
    s[0] |= 0x80; // VALID
    s.writeUInt32BE(opts.information >>> 0, 3);
  }
  if (opts?.field !== undefined) {
    const f = opts.field;
    s[15] = 0x80 | (f.cdb ? 0x40 : 0) | (f.bit !== undefined ? 0x08 | (f.bit & 7) : 0);
    s.writeUInt16BE(f.byte & 0xffff, 16);
  }
  return s;
}

export function checkCondition(key: number, ascq16: number, opts?: SenseOptions): ScsiResult {
  return { status: CHECK_CONDITION, sense: buildSense(key, ascq16, opts) };
}

export function invalidFieldInCdb(byte: number, bit?: number): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, { field: { cdb: true, byte, bit } });
}

export function invalidFieldInParameterList(byte: number, bit?: number): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_PARAMETER_LIST, { field: { cdb: false, byte, bit } });
}

/**
 * The initiator's expected data transfer length (EDTL) holds less data-out than the CDB asks for.
 * FCP-4 / libiscsi's residual tests: either write the EDTL's worth or write nothing and answer
 * ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT; we never write part of a command.
 */
export function dataOutTooShort(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_COMMAND_IU);
}

/**
 * The expected data transfer length holds more data-out than a command of fixed data size
 * (WRITE SAME's one block, COMPARE AND WRITE's two instances) takes: refused, nothing written.
 */
export function dataOutTooLong(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_COMMAND_IU);
}

export function parameterListLengthError(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERROR);
}

export function lbaOutOfRange(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
}

export function writeProtected(): ScsiResult {
  return checkCondition(DATA_PROTECT, ASC_WRITE_PROTECTED);
}

export function invalidOpcode(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, { field: { cdb: true, byte: 0, bit: 7 } });
}

export function lunNotSupported(): ScsiResult {
  return checkCondition(ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED);
}

/**
 * Maps an error thrown by a BlockDevice (or anything else) to CHECK CONDITION.
 * `writing` picks the medium error's ASC (WRITE ERROR vs UNRECOVERED READ ERROR).
 */
export function senseForError(err: unknown, writing: boolean): ScsiResult {
  if (err instanceof BlockDeviceError) {
    // A device may name its own sense (an injected fault); the failing LBA goes in INFORMATION.
    const info = err.lba !== undefined && err.lba <= 0xffffffff ? { information: err.lba } : undefined;
    if (err.sense !== undefined) return checkCondition(err.sense.key, (err.sense.asc << 8) | err.sense.ascq, info);
    switch (err.code) {
      case 'EPERM':
        return writeProtected();
      case 'EACCES':
        // The array refuses this volume for now (e.g. a copy destination hosts may not use
        // yet). It is not write protection (reads are refused too) and not a transient
        // transition the initiator should spin on: NOT READY / MANUAL INTERVENTION REQUIRED
        // makes Linux fail the I/O at once instead of retrying, and says an operator must act.
        return checkCondition(NOT_READY, ASC_LUN_NOT_READY_MANUAL_INTERVENTION);
      case 'ENOSPC':
        return checkCondition(DATA_PROTECT, ASC_SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
      case 'EIO':
        return checkCondition(MEDIUM_ERROR, writing ? ASC_WRITE_ERROR : ASC_UNRECOVERED_READ_ERROR, info);
      case 'ENOMEM':
        // SPC: 55/03 INSUFFICIENT RESOURCES; Linux retries it as a transient condition.
        return checkCondition(HARDWARE_ERROR, ASC_INSUFFICIENT_RESOURCES);
      case 'EINVAL':
      case 'EOVERFLOW':
        // Ranges are checked before the device is called: this is a race with a shrink.
        return lbaOutOfRange();
      case 'ESHUTDOWN':
        return checkCondition(NOT_READY, ASC_LUN_NOT_READY);
      case 'ENOTSUP':
        return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB);
    }
  }
  return checkCondition(HARDWARE_ERROR, ASC_INTERNAL_TARGET_FAILURE);
}

/** Truncates data-in to the CDB's ALLOCATION LENGTH. */
export function truncate(buf: Buffer, allocationLength: number): Buffer {
  return buf.length > allocationLength ? buf.subarray(0, allocationLength) : buf;
}
