/**
 * RECEIVE COPY RESULTS (opcode 84h, SPC-4 §6.18) for EXTENDED COPY LID1: COPY STATUS (00h),
 * OPERATING PARAMETERS (03h) and FAILED SEGMENT DETAILS (04h). RECEIVE DATA (01h) is not
 * supported: the copy manager never holds data (HELD DATA LIMIT 0).
 */
import {
  copyManager,
  CSCD_IDENTIFICATION,
  MAX_CONCURRENT_COPIES,
  MAX_CSCD_DESCRIPTORS,
  MAX_DESCRIPTOR_LIST_LENGTH,
  MAX_INLINE_DATA_LENGTH,
  MAX_SEGMENT_DESCRIPTORS,
  MAX_SEGMENT_LENGTH,
  resultKey,
  SEGMENT_BLOCK_TO_BLOCK,
} from './copyManager.js';
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { invalidFieldInCdb, truncate } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

const IMPLEMENTED_DESCRIPTORS = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];

/** The OPERATING PARAMETERS data never changes: built once. */
export const OPERATING_PARAMETERS: Buffer = (() => {
  const d = Buffer.alloc(44 + IMPLEMENTED_DESCRIPTORS.length);
  d.writeUInt32BE(d.length - 4, 0); // AVAILABLE DATA
  d[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
  d.writeUInt16BE(MAX_CSCD_DESCRIPTORS, 8);
  d.writeUInt16BE(MAX_SEGMENT_DESCRIPTORS, 10);
  d.writeUInt32BE(MAX_DESCRIPTOR_LIST_LENGTH, 12);
  d.writeUInt32BE(MAX_SEGMENT_LENGTH, 16);
  d.writeUInt32BE(MAX_INLINE_DATA_LENGTH, 20);
  // HELD DATA LIMIT (24) 0, MAXIMUM STREAM DEVICE TRANSFER SIZE (28) 0: no held data, no streams.
  d.writeUInt16BE(MAX_CONCURRENT_COPIES, 34); // TOTAL CONCURRENT COPIES
  d[36] = MAX_CONCURRENT_COPIES; // MAXIMUM CONCURRENT COPIES
  d[37] = 9; // DATA SEGMENT GRANULARITY: 2^9, one 512-byte block
  d[43] = IMPLEMENTED_DESCRIPTORS.length;
  IMPLEMENTED_DESCRIPTORS.forEach((code, i) => (d[44 + i] = code));
  return d;
})();

function allocationLength(cmd: ScsiCommand): number {
  return cmd.cdb.readUInt32BE(10);
}

function operatingParameters(cmd: ScsiCommand): ScsiResult {
  return { status: GOOD, dataIn: truncate(OPERATING_PARAMETERS, allocationLength(cmd)) };
}

/** COPY STATUS: the held status of the list identifier in CDB byte 2, else INVALID FIELD IN CDB. */
function copyStatus(cmd: ScsiCommand, _lu: LunDevice, t: DeviceServer): ScsiResult {
  const r = copyManager(t).results.get(resultKey(cmd.nexus, cmd.cdb[2]!));
  if (r === undefined) return invalidFieldInCdb(2);
  const d = Buffer.alloc(12);
  d.writeUInt32BE(8, 0); // AVAILABLE DATA
  d[4] = r.status; // HDD 0: no data was held, so none was discarded
  d.writeUInt16BE(Math.min(r.segmentsProcessed, 0xffff), 5);
  // TRANSFER COUNT in the smallest unit it fits: 00h bytes, 01h KiB, 02h MiB, ... (2^10 steps).
  let count = r.bytesCopied;
  let units = 0;
  while (count > 0xffffffff) {
    count = Math.floor(count / 1024);
    units++;
  }
  d[7] = units;
  d.writeUInt32BE(count, 8);
  return { status: GOOD, dataIn: truncate(d, allocationLength(cmd)) };
}

/**
 * FAILED SEGMENT DETAILS: the status and sense data of a copy that stopped on an error; the
 * details are discarded once transferred whole. A copy without a failure has none (0 bytes).
 */
function failedSegmentDetails(cmd: ScsiCommand, _lu: LunDevice, t: DeviceServer): ScsiResult {
  const r = copyManager(t).results.get(resultKey(cmd.nexus, cmd.cdb[2]!));
  if (r === undefined) return invalidFieldInCdb(2);
  const alloc = allocationLength(cmd);
  if (r.failure === undefined) return { status: GOOD, dataIn: truncate(Buffer.alloc(4), alloc) };
  const sense = r.failure.sense;
  const d = Buffer.alloc(60 + sense.length);
  d.writeUInt32BE(d.length - 4, 0); // AVAILABLE DATA
  d[56] = r.failure.status; // COPY COMMAND STATUS
  d.writeUInt16BE(sense.length, 58);
  sense.copy(d, 60);
  if (alloc >= d.length) r.failure = undefined;
  return { status: GOOD, dataIn: truncate(d, alloc) };
}

// SERVICE ACTION; LIST IDENTIFIER; ALLOCATION LENGTH (bytes 10-13).
const USAGE = [0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00];

export const receiveCopyResultsCommands: CommandDescriptor[] = [
  { name: 'RECEIVE COPY RESULTS(COPY STATUS)', opcode: 0x84, serviceAction: 0x00, usage: USAGE, access: 'none', handler: copyStatus },
  {
    name: 'RECEIVE COPY RESULTS(OPERATING PARAMETERS)',
    opcode: 0x84,
    serviceAction: 0x03,
    usage: USAGE,
    access: 'none',
    handler: operatingParameters,
  },
  {
    name: 'RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)',
    opcode: 0x84,
    serviceAction: 0x04,
    usage: USAGE,
    access: 'none',
    handler: failedSegmentDetails,
  },
];
