/**
 * REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35), generated from the dispatch table: the CDB
 * sizes and usage data are the very masks dispatch enforces. Commands a LUN does not support
 * (UNMAP on a thick LUN) are left out for that LUN.
 */
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { invalidFieldInCdb, truncate } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

/** Command timeouts descriptor: length 0Ah, no timeouts specified. */
const TIMEOUTS = Buffer.from([0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

function supportedBy(d: CommandDescriptor, lu: LunDevice): boolean {
  return d.supported === undefined || d.supported(lu);
}

function allCommands(t: DeviceServer, lu: LunDevice, rctd: boolean): Buffer {
  const list = t.table.commands.filter((d) => supportedBy(d, lu));
  const size = rctd ? 20 : 8;
  const out = Buffer.alloc(4 + size * list.length);
  out.writeUInt32BE(size * list.length, 0);
  list.forEach((d, i) => {
    const p = 4 + size * i;
    out[p] = d.opcode;
    out.writeUInt16BE(d.serviceAction ?? 0, p + 2);
    out[p + 5] = (d.serviceAction !== undefined ? 0x01 : 0) | (rctd ? 0x02 : 0); // SERVACTV, CTDP
    out.writeUInt16BE(d.usage.length, p + 6);
    if (rctd) TIMEOUTS.copy(out, p + 8);
  });
  return out;
}

function oneCommand(d: CommandDescriptor | undefined, rctd: boolean): Buffer {
  const n = d?.usage.length ?? 0;
  const out = Buffer.alloc(4 + n + (rctd && d !== undefined ? TIMEOUTS.length : 0));
  if (d === undefined) {
    out[1] = 0x01; // SUPPORT 001b: not supported
    return out;
  }
  out[1] = 0x03 | (rctd ? 0x80 : 0); // SUPPORT 011b: supported as in the standard; CTDP
  out.writeUInt16BE(n, 2);
  for (let i = 0; i < n; i++) out[4 + i] = d.usage[i]!;
  if (rctd) TIMEOUTS.copy(out, 4 + n);
  return out;
}

function reportSupportedOperationCodes(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): ScsiResult {
  const cdb = cmd.cdb;
  const rctd = (cdb[2]! & 0x80) !== 0;
  const options = cdb[2]! & 0x07;
  const opcode = cdb[3]!;
  const sa = cdb.readUInt16BE(4);
  const alloc = cdb.readUInt32BE(6);
  let data: Buffer;
  if (options === 0) {
    data = allCommands(t, lu, rctd);
  } else if (options <= 3) {
    const { serviceActions, list } = t.table.forOpcode(opcode);
    const visible = list.filter((d) => supportedBy(d, lu));
    if (options === 1 && serviceActions) return invalidFieldInCdb(2, 2);
    if (options === 2 && !serviceActions && visible.length > 0) return invalidFieldInCdb(2, 2);
    // Options 01b and 03b without service actions ignore REQUESTED SERVICE ACTION.
    const d = serviceActions ? visible.find((x) => x.serviceAction === sa) : visible[0];
    data = oneCommand(d, rctd);
  } else {
    return invalidFieldInCdb(2, 2);
  }
  return { status: GOOD, dataIn: truncate(data, alloc) };
}

export const rsocCommands: CommandDescriptor[] = [
  {
    name: 'REPORT SUPPORTED OPERATION CODES',
    opcode: 0xa3,
    serviceAction: 0x0c,
    // RCTD, REPORTING OPTIONS; REQUESTED OPERATION CODE; REQUESTED SERVICE ACTION; ALLOCATION LENGTH
    usage: [0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00],
    access: 'none',
    handler: reportSupportedOperationCodes,
  },
];
