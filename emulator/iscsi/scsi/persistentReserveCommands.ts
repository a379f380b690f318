/**
 * PERSISTENT RESERVE IN (5Eh) and PERSISTENT RESERVE OUT (5Fh), SPC-4 §6.15-6.16: CDB and
 * parameter list decoding, the PR IN data formats, and the order of checks. The rules
 * themselves are in persistentReservations.ts.
 *
 * Supported: every reservation type; ALL_TG_PT; APTPL when the target has a ReservationStore.
 * Refused cleanly (and reported so by REPORT CAPABILITIES): SPEC_I_PT (INVALID FIELD IN
 * PARAMETER LIST) and REGISTER AND MOVE (no descriptor, so INVALID FIELD IN CDB and absent from
 * REPORT SUPPORTED OPERATION CODES). Only LU_SCOPE exists.
 */
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { encodeReservations } from './reservationCodec.js';
import type { LuReservations, Notice, PrOutRequest } from './persistentReservations.js';
import { isValidPrType, type Registration } from './reservationTypes.js';
import { reserveReleaseCommands } from './reserveRelease.js';
import { dataOutTooShort, invalidFieldInCdb, invalidFieldInParameterList, parameterListLengthError, truncate } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

export const PERSISTENT_RESERVE_IN = 0x5e;
export const PERSISTENT_RESERVE_OUT = 0x5f;

/** PR OUT parameter list without SPEC_I_PT: the only length accepted (SPC-4 §6.16.3). */
const BASIC_PARAMETER_LIST = 24;
const SPEC_I_PT = 0x08;
const ALL_TG_PT = 0x04;
const APTPL = 0x01;
const ISCSI_PROTOCOL = 0x5;

// ------------------------------------------------------------------ PERSISTENT RESERVE IN

function header(generation: number, additional: number): Buffer {
  const b = Buffer.alloc(8 + additional);
  b.writeUInt32BE(generation, 0);
  b.writeUInt32BE(additional, 4); // ADDITIONAL LENGTH: what there is, whatever the allocation length
  return b;
}

function readKeys(st: LuReservations): Buffer {
  const regs = st.registrations();
  const b = header(st.generation, 8 * regs.length);
  regs.forEach((r, i) => b.writeBigUInt64BE(r.key, 8 + 8 * i));
  return b;
}

function readReservation(st: LuReservations): Buffer {
  const res = st.reservation;
  if (res === undefined) return header(st.generation, 0);
  const b = header(st.generation, 16);
  // The all-registrants types have no one key: RESERVATION KEY is zero (SPC-4 §6.15.3).
  b.writeBigUInt64BE(res.holder?.key ?? 0n, 8);
  b[21] = res.type; // SCOPE 0h (LU_SCOPE), TYPE
  return b;
}

function reportCapabilities(st: LuReservations, t: DeviceServer): Buffer {
  const persist = t.reservations.store !== undefined;
  const b = Buffer.alloc(8);
  b.writeUInt16BE(8, 0); // LENGTH
  // CRH (RESERVE/RELEASE follow SPC-4 §5.13.3), ATP_C; SIP_C 0; PTPL_C when there is a store.
  b[2] = 0x10 | 0x04 | (persist ? 0x01 : 0);
  // TMV; ALLOW COMMANDS 011b: TEST UNIT READY through WE and EA, MODE SENSE, RSOC and the like
  // through WE; PTPL_A: the state persists now.
  b[3] = 0x80 | (0x3 << 4) | (persist && st.aptpl ? 0x01 : 0);
  b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
  b[5] = 0x01; // EX_AC_AR
  return b;
}

/** iSCSI TransportID, format 01b: "<iqn>,i,0x<isid>", NUL-terminated, padded to 4 (at least 24 bytes). */
function transportId(initiatorPort: string): Buffer {
  const name = Buffer.from(initiatorPort, 'utf8');
  const padded = Math.max(20, (name.length + 1 + 3) & ~3);
  const b = Buffer.alloc(4 + padded);
  b[0] = 0x40 | ISCSI_PROTOCOL;
  b.writeUInt16BE(padded, 2);
  name.copy(b, 4);
  return b;
}

function readFullStatus(st: LuReservations): Buffer {
  const res = st.reservation;
  const parts = st.registrations().map((r) => {
    const id = transportId(r.initiatorPort);
    const d = Buffer.alloc(24 + id.length);
    d.writeBigUInt64BE(r.key, 0);
    const holder = res !== undefined && (res.holder === undefined || res.holder === r);
    d[12] = (r.allTgPt ? 0x02 : 0) | (holder ? 0x01 : 0);
    if (holder) d[13] = res.type;
    if (!r.allTgPt) d.writeUInt16BE(r.relativePort & 0xffff, 18);
    d.writeUInt32BE(id.length, 20);
    id.copy(d, 24);
    return d;
  });
  const body = Buffer.concat(parts);
  const b = header(st.generation, body.length);
  body.copy(b, 8);
  return b;
}

const PR_IN_FORMATS: readonly ((st: LuReservations, t: DeviceServer) => Buffer)[] = [readKeys, readReservation, reportCapabilities, readFullStatus];

function persistentReserveIn(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): ScsiResult {
  const format = PR_IN_FORMATS[cmd.cdb[1]! & 0x1f]!; // dispatch only lets service actions 0-3 in
  const data = format(t.reservations.of(lu.identity.wwn), t);
  return { status: GOOD, dataIn: truncate(data, cmd.cdb.readUInt16BE(7)) };
}

// ------------------------------------------------------------------ PERSISTENT RESERVE OUT

const REGISTER = 0x0;
const RESERVE = 0x1;
const RELEASE = 0x2;
const CLEAR = 0x3;
const PREEMPT = 0x4;
const PREEMPT_AND_ABORT = 0x5;
const REGISTER_AND_IGNORE_EXISTING_KEY = 0x6;

/** Decodes and checks CDB and parameter list; nothing about the LU's state yet. */
function decode(cmd: ScsiCommand, t: DeviceServer): PrOutRequest | ScsiResult {
  const cdb = cmd.cdb;
  const sa = cdb[1]! & 0x1f;
  const length = cdb.readUInt32BE(5);
  if (length < BASIC_PARAMETER_LIST) return parameterListLengthError();
  if (cmd.dataOut.length < BASIC_PARAMETER_LIST) return dataOutTooShort();
  const p = cmd.dataOut;
  const flags = p[20]!;
  if ((flags & SPEC_I_PT) !== 0) return invalidFieldInParameterList(20, 3); // SIP_C 0: no TransportID lists
  if (length !== BASIC_PARAMETER_LIST) return parameterListLengthError();
  const reserved = flags & ~(SPEC_I_PT | ALL_TG_PT | APTPL);
  if (reserved !== 0) return invalidFieldInParameterList(20, 31 - Math.clz32(reserved));
  if (p[21] !== 0) return invalidFieldInParameterList(21);
  const registering = sa === REGISTER || sa === REGISTER_AND_IGNORE_EXISTING_KEY;
  // APTPL and ALL_TG_PT only mean something to the REGISTER service actions; others ignore them.
  const aptpl = registering && (flags & APTPL) !== 0;
  if (aptpl && t.reservations.store === undefined) return invalidFieldInParameterList(20, 0); // PTPL_C 0
  const type = cdb[2]! & 0x0f;
  if (sa === RESERVE || sa === RELEASE || sa === PREEMPT || sa === PREEMPT_AND_ABORT) {
    if (cdb[2]! >>> 4 !== 0) return invalidFieldInCdb(2, 7); // SCOPE: only LU_SCOPE
    if (!isValidPrType(type)) return invalidFieldInCdb(2, 3);
  }
  return {
    nexus: cmd.nexus,
    key: p.readBigUInt64BE(0),
    saKey: p.readBigUInt64BE(8),
    type,
    aptpl,
    allTgPt: registering && (flags & ALL_TG_PT) !== 0,
  };
}

function persistentReserveOut(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): ScsiResult {
  const req = decode(cmd, t);
  if ('status' in req) return req;
  const wwn = lu.identity.wwn;
  const book = t.reservations;
  const st = book.of(wwn);
  // Snapshot for undoing the change should the store fail to keep it.
  const before = book.store === undefined ? undefined : encodeReservations(st);
  const notices: Notice[] = [];
  let removed: Registration[] = [];
  let refused: ScsiResult | undefined;
  const sa = cmd.cdb[1]! & 0x1f;
  switch (sa) {
    case REGISTER:
    case REGISTER_AND_IGNORE_EXISTING_KEY:
      refused = st.register(req, sa === REGISTER_AND_IGNORE_EXISTING_KEY, notices);
      break;
    case RESERVE:
      refused = st.reserve(req);
      break;
    case RELEASE:
      refused = st.release(req, notices);
      break;
    case CLEAR:
      refused = st.clear(req, notices);
      break;
    default: {
      const r = st.preempt(req, notices);
      if (Array.isArray(r)) removed = r;
      else refused = r;
    }
  }
  if (refused !== undefined) return refused;
  if (before !== undefined) book.commit(wwn, st, before);
  for (const n of notices) if (n.to.length > 0) t.unitAttentionForRegistrants(wwn, n.code, n.to);
  if (sa === PREEMPT_AND_ABORT && removed.length > 0) t.abortTasksOfRegistrants(wwn, removed);
  return { status: GOOD };
}

// ------------------------------------------------------------------ descriptors

const PR_IN_USAGE = [PERSISTENT_RESERVE_IN, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x00];
/** SERVICE ACTION; SCOPE, TYPE; PARAMETER LIST LENGTH (4 bytes). */
const PR_OUT_USAGE = [PERSISTENT_RESERVE_OUT, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x00];

const IN_NAMES = ['READ KEYS', 'READ RESERVATION', 'REPORT CAPABILITIES', 'READ FULL STATUS'];
const OUT_NAMES: [number, string][] = [
  [REGISTER, 'REGISTER'],
  [RESERVE, 'RESERVE'],
  [RELEASE, 'RELEASE'],
  [CLEAR, 'CLEAR'],
  [PREEMPT, 'PREEMPT'],
  [PREEMPT_AND_ABORT, 'PREEMPT AND ABORT'],
  [REGISTER_AND_IGNORE_EXISTING_KEY, 'REGISTER AND IGNORE EXISTING KEY'],
];

export const persistentReserveCommands: CommandDescriptor[] = [
  ...IN_NAMES.map(
    (name, sa): CommandDescriptor => ({
      name: `PERSISTENT RESERVE IN(${name})`,
      opcode: PERSISTENT_RESERVE_IN,
      serviceAction: sa,
      usage: PR_IN_USAGE,
      access: 'none',
      handler: persistentReserveIn,
    }),
  ),
  ...OUT_NAMES.map(
    ([sa, name]): CommandDescriptor => ({
      name: `PERSISTENT RESERVE OUT(${name})`,
      opcode: PERSISTENT_RESERVE_OUT,
      serviceAction: sa,
      usage: PR_OUT_USAGE,
      access: 'none',
      handler: persistentReserveOut,
    }),
  ),
];

/** Every reservation command, persistent and SPC-2, for the dispatch table. */
export const reservationCommands: readonly CommandDescriptor[] = [...persistentReserveCommands, ...reserveReleaseCommands];
