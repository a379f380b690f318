/**
 * Persistent reservations (SPC-4 §5.13) and SPC-2 RESERVE/RELEASE reservations: the state of
 * each logical unit and the rules that decide which commands conflict with it.
 *
 * State is keyed by the LU's WWN, never by LUN number (host affinity gives one LU a different
 * LUN on each nexus); registrations are keyed by I_T nexus (initiator port + target port) and
 * outlive the session that made them. SPC-2 reservations do not: they end with the nexus, a
 * LOGICAL UNIT RESET or a target reset. Persistent state survives resets and, with APTPL=1 and
 * a ReservationStore, restarts (see reservationCodec.ts).
 *
 * The PERSISTENT RESERVE OUT service actions live here as methods that either refuse (a
 * ScsiResult) or change the state and return undefined; they queue the unit attentions SPC-4
 * asks for in `notices`, delivered by the caller once the change is durable.
 */
import type { ReservationStore } from '../types.js';
import { checkCondition, ILLEGAL_REQUEST, invalidFieldInParameterList } from './sense.js';
import { decodeReservations, encodeReservations } from './reservationCodec.js';
import {
  ASC_INSUFFICIENT_REGISTRATION_RESOURCES,
  ASC_INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
  ASC_REGISTRATIONS_PREEMPTED,
  ASC_RESERVATIONS_PREEMPTED,
  ASC_RESERVATIONS_RELEASED,
  isAllRegistrants,
  MAX_REGISTRATIONS,
  PR_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
  PR_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
  registrantsShare,
  writeExclusive,
  type Registration,
  type Reservation,
  type ReservedCommand,
} from './reservationTypes.js';
import { RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiCommand, type ScsiResult } from './types.js';

/** A unit attention to queue on every live nexus that one of `to` registered. */
export interface Notice {
  readonly code: number;
  readonly to: readonly Registration[];
}

/** One PERSISTENT RESERVE OUT request, decoded from CDB and parameter list. */
export interface PrOutRequest {
  readonly nexus: Nexus;
  readonly key: bigint;
  readonly saKey: bigint;
  readonly type: number;
  readonly aptpl: boolean;
  readonly allTgPt: boolean;
}

export function sameNexus(a: Nexus, b: Nexus): boolean {
  return a.initiatorPort === b.initiatorPort && a.targetPort === b.targetPort;
}

export function registrationMatches(r: Registration, n: Nexus): boolean {
  return r.initiatorPort === n.initiatorPort && (r.allTgPt || r.targetPort === n.targetPort);
}

function conflict(): ScsiResult {
  return { status: RESERVATION_CONFLICT };
}

/** The reservation state of one logical unit. */
export class LuReservations {
  /** PRGENERATION: 32-bit wrapping counter of registration changes. */
  generation = 0;
  /** APTPL of the last REGISTER: the state is kept across restarts. */
  aptpl = false;
  reservation: Reservation | undefined = undefined;
  /** SPC-2 RESERVE(6/10) holder; never persisted. */
  spc2: Nexus | undefined = undefined;
  /** Registrations by initiator port: the hot-path lookup allocates nothing. */
  private readonly byPort = new Map<string, Registration[]>();
  private count = 0;

  get registrationCount(): number {
    return this.count;
  }

  registrationOf(n: Nexus): Registration | undefined {
    if (this.count === 0) return undefined;
    const list = this.byPort.get(n.initiatorPort);
    if (list === undefined) return undefined;
    for (const r of list) if (r.allTgPt || r.targetPort === n.targetPort) return r;
    return undefined;
  }

  /** Every registration, by initiator port in the order ports first registered (READ KEYS, READ FULL STATUS). */
  registrations(): Registration[] {
    const out: Registration[] = [];
    for (const list of this.byPort.values()) out.push(...list);
    return out;
  }

  /** Holder of the persistent reservation: the reserving nexus, or any registrant for AR types. */
  isHolder(n: Nexus): boolean {
    const r = this.reservation;
    if (r === undefined) return false;
    const reg = this.registrationOf(n);
    return reg !== undefined && (r.holder === undefined || r.holder === reg);
  }

  /** Replaces the whole persistent state (APTPL load, rollback). */
  restore(registrations: readonly Registration[], reservation: Reservation | undefined, generation: number, aptpl: boolean): void {
    this.byPort.clear();
    this.count = 0;
    for (const r of registrations) this.add(r);
    this.reservation = reservation;
    this.generation = generation >>> 0;
    this.aptpl = aptpl;
  }

  private add(r: Registration): void {
    const list = this.byPort.get(r.initiatorPort);
    if (list === undefined) this.byPort.set(r.initiatorPort, [r]);
    else list.push(r);
    this.count++;
  }

  private remove(r: Registration): void {
    const list = this.byPort.get(r.initiatorPort);
    const i = list?.indexOf(r) ?? -1;
    if (list === undefined || i < 0) return;
    list.splice(i, 1);
    if (list.length === 0) this.byPort.delete(r.initiatorPort);
    this.count--;
  }

  private bump(): void {
    this.generation = (this.generation + 1) >>> 0;
  }

  /** Every registration but `keep`. */
  private others(keep: Registration): Registration[] {
    return this.registrations().filter((r) => r !== keep);
  }

  /**
   * Drops a registration with what goes with it (SPC-4 §5.13.11.3): a holder's reservation is
   * released (RO types tell the remaining registrants), an AR reservation ends with the last
   * registrant.
   */
  private unregister(reg: Registration, notices: Notice[]): void {
    this.remove(reg);
    const res = this.reservation;
    if (res === undefined) return;
    if (res.holder === reg) {
      this.reservation = undefined;
      if (res.type === PR_WRITE_EXCLUSIVE_REGISTRANTS_ONLY || res.type === PR_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY) {
        notices.push({ code: ASC_RESERVATIONS_RELEASED, to: this.registrations() });
      }
    } else if (res.holder === undefined && this.count === 0) {
      this.reservation = undefined;
    }
  }

  /** REGISTER (ignoreKey false) and REGISTER AND IGNORE EXISTING KEY (true). */
  register(req: PrOutRequest, ignoreKey: boolean, notices: Notice[]): ScsiResult | undefined {
    const reg = this.registrationOf(req.nexus);
    if (reg === undefined) {
      if (!ignoreKey && req.key !== 0n) return conflict();
      if (req.saKey === 0n) return undefined; // nothing to register: GOOD, no change
      if (this.count >= MAX_REGISTRATIONS) return checkCondition(ILLEGAL_REQUEST, ASC_INSUFFICIENT_REGISTRATION_RESOURCES);
      this.add({
        initiatorPort: req.nexus.initiatorPort,
        targetPort: req.nexus.targetPort,
        relativePort: req.nexus.relativePort,
        key: req.saKey,
        allTgPt: req.allTgPt,
      });
    } else {
      if (!ignoreKey && req.key !== reg.key) return conflict();
      if (req.saKey === 0n) this.unregister(reg, notices);
      else reg.key = req.saKey; // a holder keeps its reservation under the new key
    }
    this.aptpl = req.aptpl;
    this.bump();
    return undefined;
  }

  /** The common gate of RESERVE, RELEASE, CLEAR, PREEMPT: a registered nexus with its own key. */
  private registered(req: PrOutRequest): Registration | ScsiResult {
    const reg = this.registrationOf(req.nexus);
    if (reg === undefined || reg.key !== req.key) return conflict();
    return reg;
  }

  reserve(req: PrOutRequest): ScsiResult | undefined {
    const reg = this.registered(req);
    if (!isRegistration(reg)) return reg;
    const res = this.reservation;
    if (res !== undefined) {
      // Only a holder may ask again, and only for the same type (SPC-4 §5.13.9).
      if (!this.isHolder(req.nexus) || res.type !== req.type) return conflict();
      return undefined;
    }
    this.reservation = { type: req.type, holder: isAllRegistrants(req.type) ? undefined : reg };
    return undefined;
  }

  release(req: PrOutRequest, notices: Notice[]): ScsiResult | undefined {
    const reg = this.registered(req);
    if (!isRegistration(reg)) return reg;
    const res = this.reservation;
    if (res === undefined || !this.isHolder(req.nexus)) return undefined; // nothing of ours to release
    if (res.type !== req.type) return checkCondition(ILLEGAL_REQUEST, ASC_INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
    this.reservation = undefined;
    if (registrantsShare(res.type)) notices.push({ code: ASC_RESERVATIONS_RELEASED, to: this.others(reg) });
    return undefined;
  }

  clear(req: PrOutRequest, notices: Notice[]): ScsiResult | undefined {
    const reg = this.registered(req);
    if (!isRegistration(reg)) return reg;
    notices.push({ code: ASC_RESERVATIONS_PREEMPTED, to: this.others(reg) });
    this.restore([], undefined, this.generation + 1, this.aptpl);
    return undefined;
  }

  /**
   * PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.4). Returns the registrations it removed (whose
   * tasks PREEMPT AND ABORT aborts) or the refusal. The preempting nexus never removes itself.
   */
  preempt(req: PrOutRequest, notices: Notice[]): Registration[] | ScsiResult {
    const reg = this.registered(req);
    if (!isRegistration(reg)) return reg;
    const res = this.reservation;
    const sark = req.saKey;
    // Taking over: SARK names the holder (or is 0 under an all-registrants reservation).
    const takeOver = res !== undefined && (res.holder === undefined ? sark === 0n : sark === res.holder.key);
    if (!takeOver && sark === 0n) return invalidFieldInParameterList(8); // SARK 0 names nobody
    const everyone = takeOver && res!.holder === undefined;
    const removed = this.registrations().filter((r) => r !== reg && (everyone || r.key === sark));
    // Removing registrations only: SARK must name someone (the holder is never among them here).
    if (!takeOver && removed.length === 0) return conflict();
    for (const r of removed) this.remove(r);
    if (takeOver) {
      this.reservation = { type: req.type, holder: isAllRegistrants(req.type) ? undefined : reg };
      // A new type in the old one's place: the registrants left are told the old one was released.
      if (res!.type !== req.type) notices.push({ code: ASC_RESERVATIONS_RELEASED, to: this.others(reg) });
    }
    notices.push({ code: ASC_REGISTRATIONS_PREEMPTED, to: removed });
    this.bump();
    return removed;
  }
}

export function isRegistration(x: Registration | ScsiResult): x is Registration {
  return 'key' in x;
}

// ------------------------------------------------------------------ conflict rules

/**
 * How a command fares under a persistent reservation held by another nexus (SPC-4 table
 * "SPC commands that are allowed in the presence of various reservations", SBC-3 likewise):
 * ALLOWED always runs; READ runs under the write exclusive types; WRITE only for registrants of
 * RO/AR types; OWN rules are the command's (PR OUT, SPC-2 RESERVE/RELEASE).
 */
const ALLOWED = 1;
const READ = 2;
const WRITE = 3;
const OWN = 4;

/** By opcode, for commands whose descriptor's access does not tell (0: decide by access). */
const BY_OPCODE = new Uint8Array(256);
for (const op of [0x00, 0x03, 0x12, 0x25, 0x4d, 0x5e, 0x86, 0x87, 0xa0]) BY_OPCODE[op] = ALLOWED; // TUR, REQUEST SENSE, INQUIRY, READ CAPACITY(10), LOG SENSE, PR IN, ACCESS CONTROL IN/OUT, REPORT LUNS
for (const op of [0x16, 0x17, 0x56, 0x57, 0x5f]) BY_OPCODE[op] = OWN; // RESERVE/RELEASE(6/10), PR OUT
/** MAINTENANCE IN (A3h) reports that are always allowed: TARGET PGS, IDENTIFYING INFORMATION, ALIASES, PRIORITY, TIMESTAMP. */
const ALLOWED_A3 = new Set([0x05, 0x0a, 0x0b, 0x0e, 0x0f]);

function commandClass(cmd: ScsiCommand, d: ReservedCommand): number {
  const op = d.opcode;
  const fixed = BY_OPCODE[op]!;
  if (fixed !== 0) return fixed;
  if (op === 0x9e && d.serviceAction === 0x10) return ALLOWED; // READ CAPACITY(16)
  if (op === 0xab && d.serviceAction === 0x01) return ALLOWED; // READ MEDIA SERIAL NUMBER
  if (op === 0xa3 && d.serviceAction !== undefined && ALLOWED_A3.has(d.serviceAction)) return ALLOWED;
  if (op === 0x1b) {
    // START STOP UNIT: starting (POWER CONDITION 0) is harmless; stopping is a write (SBC-3).
    const b4 = cmd.cdb[4]!;
    return (b4 & 0x01) !== 0 && b4 >>> 4 === 0 ? ALLOWED : WRITE;
  }
  // MODE SENSE, RSOC, RECEIVE COPY RESULTS and the like read device state: READ class.
  return d.access === 'write' ? WRITE : READ;
}

/** SPC-2 reservation held by another nexus: all but these conflict (SPC-2 §5.5.1). */
function allowedUnderSpc2(op: number): boolean {
  return op === 0x12 || op === 0xa0 || op === 0x03 || op === 0x17 || op === 0x57;
}

/** The rules for one LU's state; the caller has the state already (hot path: no lookups twice). */
export function reservationConflict(st: LuReservations, cmd: ScsiCommand, d: ReservedCommand): boolean {
  const spc2 = st.spc2;
  if (spc2 !== undefined) {
    const op = d.opcode;
    // SPC-2 §5.5.1: with a RESERVE in effect, PR IN and PR OUT conflict whoever sends them.
    if (op === 0x5e || op === 0x5f) return true;
    if (!sameNexus(spc2, cmd.nexus) && !allowedUnderSpc2(op)) return true;
  }
  const res = st.reservation;
  if (res === undefined) return false;
  const cls = commandClass(cmd, d);
  if (cls === ALLOWED || cls === OWN) return false;
  const reg = st.registrationOf(cmd.nexus);
  if (reg !== undefined && (res.holder === undefined || res.holder === reg)) return false; // a holder
  if (cls === READ && writeExclusive(res.type)) return false;
  return !(registrantsShare(res.type) && reg !== undefined);
}

// ------------------------------------------------------------------ the table of all LUs

/** The subset of a pino logger the reservations use. */
export interface ReservationLogger {
  error(o: object, msg: string): void;
}

/**
 * Reservation state of every logical unit behind the target, loaded lazily from the store on
 * first use of each LU (the first command to it).
 */
export class PersistentReservations {
  private readonly units = new Map<string, LuReservations>();
  /** LUs whose state is in the store right now: a change to APTPL=0 or to nothing removes it. */
  private readonly persisted = new Set<string>();

  constructor(
    readonly store: ReservationStore | undefined,
    private readonly log?: ReservationLogger,
  ) {}

  of(wwn: string): LuReservations {
    let u = this.units.get(wwn);
    if (u === undefined) {
      u = this.load(wwn);
      this.units.set(wwn, u);
    }
    return u;
  }

  /** The default `conflictsWithReservation` of ScsiLogicalUnits. */
  readonly conflicts = (cmd: ScsiCommand, lu: LunDevice, d: ReservedCommand): boolean => {
    const st = this.of(lu.identity.wwn);
    if (st.spc2 === undefined && st.reservation === undefined) return false;
    return reservationConflict(st, cmd, d);
  };

  private load(wwn: string): LuReservations {
    const u = new LuReservations();
    if (this.store === undefined) return u;
    let blob: Buffer | undefined;
    try {
      blob = this.store.load(wwn);
      if (blob === undefined) return u;
      const s = decodeReservations(blob);
      u.restore(s.registrations, s.reservation, s.generation, true);
      this.persisted.add(wwn);
    } catch (err) {
      // Better to serve the LU without its old registrations than to refuse every command to it;
      // the operator learns which LU lost them and that its clustered hosts must register again.
      this.log?.error(
        { err, wwn, bytes: blob?.length },
        `persistent reservations of LU ${wwn} could not be restored (APTPL): starting with none; hosts must register their keys again`,
      );
    }
    return u;
  }

  /**
   * Makes a PR OUT change durable (APTPL=1) or removes what is stored (APTPL=0, or nothing left
   * to keep). On a store failure the change is undone from `before` and the error rethrown, so
   * the command fails without changing anything.
   */
  commit(wwn: string, st: LuReservations, before: Buffer): void {
    if (this.store === undefined) return;
    const keep = st.aptpl && (st.registrationCount > 0 || st.reservation !== undefined);
    if (!keep && !this.persisted.has(wwn)) return;
    try {
      this.store.save(wwn, keep ? encodeReservations(st) : undefined);
    } catch (err) {
      const s = decodeReservations(before);
      st.restore(s.registrations, s.reservation, s.generation, s.aptpl);
      this.log?.error(
        { err, wwn },
        `persistent reservations of LU ${wwn} could not be saved (APTPL): the PERSISTENT RESERVE OUT failed and changed nothing; check the array database`,
      );
      throw err;
    }
    if (keep) this.persisted.add(wwn);
    else this.persisted.delete(wwn);
  }

  /** SPC-2 reservations end with their I_T nexus (logout, connection loss, reinstatement). */
  nexusLost(n: Nexus): void {
    for (const u of this.units.values()) if (u.spc2 !== undefined && sameNexus(u.spc2, n)) u.spc2 = undefined;
  }

  /** LOGICAL UNIT RESET / target reset: SPC-2 reservations end; persistent ones stay. */
  reset(wwn?: string): void {
    if (wwn === undefined) for (const u of this.units.values()) u.spc2 = undefined;
    else {
      const u = this.units.get(wwn);
      if (u !== undefined) u.spc2 = undefined;
    }
  }
}
