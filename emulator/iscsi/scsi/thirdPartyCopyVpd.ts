/**
 * VPD page 8Fh, THIRD-PARTY COPY (SPC-4 §7.8.17), for a copy manager that implements EXTENDED
 * COPY LID1 only: a Supported Commands descriptor generated from the dispatch table (so it
 * lists exactly the service actions that run) and a Supported Descriptors descriptor.
 */
import { CSCD_IDENTIFICATION, SEGMENT_BLOCK_TO_BLOCK } from './copyManager.js';
import type { DeviceServer } from './dispatch.js';

export const THIRD_PARTY_COPY_PAGE = 0x8f;
const SUPPORTED_COMMANDS = 0x0001;
const SUPPORTED_DESCRIPTORS = 0x0008;
const COPY_OPCODES = [0x83, 0x84]; // EXTENDED COPY, RECEIVE COPY RESULTS

/** A third-party copy descriptor: type, length, a list-length byte and the list, padded to 4 bytes. */
function descriptor(type: number, list: number[]): Buffer {
  const d = Buffer.alloc((5 + list.length + 3) & ~3);
  d.writeUInt16BE(type, 0);
  d.writeUInt16BE(d.length - 4, 2); // DESCRIPTOR LENGTH
  d[4] = list.length;
  list.forEach((b, i) => (d[5 + i] = b));
  return d;
}

export function thirdPartyCopyVpd(t: DeviceServer): Buffer {
  const commands: number[] = [];
  for (const op of COPY_OPCODES) {
    const sas = t.table.forOpcode(op).list.map((d) => d.serviceAction ?? 0);
    if (sas.length !== 0) commands.push(op, sas.length, ...sas);
  }
  const body = Buffer.concat([descriptor(SUPPORTED_COMMANDS, commands), descriptor(SUPPORTED_DESCRIPTORS, [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION])]);
  const head = Buffer.alloc(4);
  head[1] = THIRD_PARTY_COPY_PAGE;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([head, body]);
}
