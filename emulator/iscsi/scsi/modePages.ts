/**
 * MODE SENSE (6/10) and MODE SELECT (6/10) (SPC-4 §6.11-6.14) with the caching page (08h) and
 * the control page (0Ah). Nothing is changeable: WCE mirrors LunDevice.writeCacheEnabled, which
 * the array owns, so MODE SELECT accepts the current values and refuses any change with
 * INVALID FIELD IN PARAMETER LIST pointing at the changed bit. Saved pages are not supported.
 */
import type { CommandDescriptor } from './dispatch.js';
import {
  ASC_SAVING_PARAMETERS_NOT_SUPPORTED,
  checkCondition,
  dataOutTooShort,
  ILLEGAL_REQUEST,
  invalidFieldInCdb,
  invalidFieldInParameterList,
  parameterListLengthError,
  truncate,
} from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

interface ModePage {
  readonly code: number;
  /** Current (= default) values, page header included. */
  current(lu: LunDevice): Buffer;
  /** Changeable bits mask, same length. */
  readonly changeable: Buffer;
}

const CACHING_LENGTH = 20;
const CONTROL_LENGTH = 12;

export const MODE_PAGES: readonly ModePage[] = [
  {
    code: 0x08,
    current(lu) {
      const p = Buffer.alloc(CACHING_LENGTH);
      p[0] = 0x08;
      p[1] = CACHING_LENGTH - 2;
      if (lu.writeCacheEnabled) p[2] = 0x04; // WCE; RCD 0: the read cache is enabled
      return p;
    },
    changeable: Buffer.alloc(CACHING_LENGTH),
  },
  {
    code: 0x0a,
    current() {
      const p = Buffer.alloc(CONTROL_LENGTH);
      p[0] = 0x0a;
      p[1] = CONTROL_LENGTH - 2;
      // TST 000b, D_SENSE 0 (fixed format sense), GLTSD 0.
      p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering; QERR 00b
      // UA_INTLCK_CTRL 00b, SWP 0, TAS 0; BUSY TIMEOUT PERIOD 0 (undefined).
      return p;
    },
    changeable: Buffer.alloc(CONTROL_LENGTH),
  },
];

function blockDescriptor(lu: LunDevice, long: boolean): Buffer {
  const dev = lu.device;
  const blocks = dev.size / dev.blockSize;
  if (long) {
    const d = Buffer.alloc(16);
    d.writeUInt32BE(Math.floor(blocks / 0x1_0000_0000), 0);
    d.writeUInt32BE(blocks % 0x1_0000_0000, 4);
    d.writeUInt32BE(dev.blockSize, 12);
    return d;
  }
  const d = Buffer.alloc(8);
  d.writeUInt32BE(Math.min(blocks, 0xffffffff), 0);
  d.writeUIntBE(dev.blockSize, 5, 3);
  return d;
}

function modeSense(cmd: ScsiCommand, lu: LunDevice): ScsiResult {
  const cdb = cmd.cdb;
  const six = cdb[0] === 0x1a;
  const dbd = (cdb[1]! & 0x08) !== 0;
  const llbaa = !six && (cdb[1]! & 0x10) !== 0;
  const pc = cdb[2]! >>> 6;
  const code = cdb[2]! & 0x3f;
  const subpage = cdb[3]!;
  const alloc = six ? cdb[4]! : cdb.readUInt16BE(7);
  if (pc === 3) return checkCondition(ILLEGAL_REQUEST, ASC_SAVING_PARAMETERS_NOT_SUPPORTED, { field: { cdb: true, byte: 2, bit: 7 } });
  let pages: readonly ModePage[];
  if (code === 0x3f) {
    if (subpage !== 0x00 && subpage !== 0xff) return invalidFieldInCdb(3);
    pages = MODE_PAGES;
  } else {
    const page = MODE_PAGES.find((p) => p.code === code);
    if (page === undefined) return invalidFieldInCdb(2, 5);
    if (subpage !== 0) return invalidFieldInCdb(3);
    pages = [page];
  }
  const body = pages.map((p) => (pc === 1 ? p.changeable : p.current(lu)));
  const bd = dbd ? Buffer.alloc(0) : blockDescriptor(lu, llbaa);
  const header = Buffer.alloc(six ? 4 : 8);
  const deviceSpecific = (lu.readOnly || lu.device.readOnly ? 0x80 : 0) | 0x10; // WP, DPOFUA
  const total = header.length + bd.length + body.reduce((n, b) => n + b.length, 0);
  if (six) {
    header[0] = total - 1;
    header[2] = deviceSpecific;
    header[3] = bd.length;
  } else {
    header.writeUInt16BE(total - 2, 0);
    header[3] = deviceSpecific;
    if (llbaa && !dbd) header[4] = 0x01; // LONGLBA
    header.writeUInt16BE(bd.length, 6);
  }
  return { status: GOOD, dataIn: truncate(Buffer.concat([header, bd, ...body]), alloc) };
}

function modeSelect(cmd: ScsiCommand, lu: LunDevice): ScsiResult {
  const cdb = cmd.cdb;
  const six = cdb[0] === 0x15;
  if ((cdb[1]! & 0x01) !== 0) return invalidFieldInCdb(1, 0); // SP: no saved pages
  const plen = six ? cdb[4]! : cdb.readUInt16BE(7);
  if (plen === 0) return { status: GOOD };
  if (cmd.dataOut.length < plen) return dataOutTooShort();
  const data = cmd.dataOut.subarray(0, plen);
  const hdr = six ? 4 : 8;
  if (plen < hdr) return parameterListLengthError();
  const mediumTypeAt = six ? 1 : 2;
  if (data[mediumTypeAt] !== 0) return invalidFieldInParameterList(mediumTypeAt);
  const longLba = !six && (data[4]! & 0x01) !== 0;
  const bdl = six ? data[3]! : data.readUInt16BE(6);
  const bdlAt = six ? 3 : 6;
  if (bdl !== 0 && bdl !== (longLba ? 16 : 8)) return invalidFieldInParameterList(bdlAt);
  if (hdr + bdl > plen) return parameterListLengthError();
  if (bdl !== 0) {
    const want = blockDescriptor(lu, longLba);
    const blocksLen = longLba ? 8 : 4;
    const given = data.subarray(hdr, hdr + bdl);
    // NUMBER OF LOGICAL BLOCKS may be 0 (no change) or the current value; the block length must match.
    const blocksZero = given.subarray(0, blocksLen).every((b) => b === 0);
    if (!blocksZero && !given.subarray(0, blocksLen).equals(want.subarray(0, blocksLen))) return invalidFieldInParameterList(hdr);
    for (let i = blocksLen; i < bdl; i++) {
      if (given[i] !== want[i]) return invalidFieldInParameterList(hdr + i);
    }
  }
  for (let p = hdr + bdl; p < plen; ) {
    if (p + 2 > plen) return parameterListLengthError();
    const code = data[p]! & 0x3f;
    const spf = (data[p]! & 0x40) !== 0;
    if (spf && p + 4 > plen) return parameterListLengthError();
    const hlen = spf ? 4 : 2;
    const len = spf ? data.readUInt16BE(p + 2) : data[p + 1]!;
    const page = MODE_PAGES.find((m) => m.code === code);
    if (page === undefined) return invalidFieldInParameterList(p, 5);
    if (spf && data[p + 1] !== 0) return invalidFieldInParameterList(p + 1);
    if (p + hlen + len > plen) return parameterListLengthError();
    const current = page.current(lu);
    if (spf || len !== current.length - 2) return invalidFieldInParameterList(p + 1);
    for (let i = 2; i < current.length; i++) {
      const changed = (data[p + i]! ^ current[i]!) & ~page.changeable[i]!;
      if (changed !== 0) return invalidFieldInParameterList(p + i, 31 - Math.clz32(changed));
    }
    p += hlen + len;
  }
  return { status: GOOD };
}

export const modeCommands: CommandDescriptor[] = [
  { name: 'MODE SENSE(6)', opcode: 0x1a, usage: [0x1a, 0x08, 0xff, 0xff, 0xff, 0x00], access: 'none', handler: modeSense },
  {
    name: 'MODE SENSE(10)',
    opcode: 0x5a,
    usage: [0x5a, 0x18, 0xff, 0xff, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00],
    access: 'none',
    handler: modeSense,
  },
  { name: 'MODE SELECT(6)', opcode: 0x15, usage: [0x15, 0x11, 0x00, 0x00, 0xff, 0x00], access: 'write', handler: modeSelect },
  {
    name: 'MODE SELECT(10)',
    opcode: 0x55,
    usage: [0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00],
    access: 'write',
    handler: modeSelect,
  },
];
