/**
 * The persistent reservation state of one LU as the ReservationStore keeps it (APTPL=1): JSON in
 * a Buffer, readable with `sqlite3` when an operator needs to see who holds a LUN. Decoding
 * trusts nothing: every field is checked, and bad state is an Error naming the field.
 */
import { isAllRegistrants, isValidPrType, MAX_REGISTRATIONS, type Registration, type Reservation } from './reservationTypes.js';

const VERSION = 1;
/** iSCSI names are at most 223 bytes; ",i,0x" + ISID and slack on top. */
const MAX_PORT_NAME = 512;

interface StoredRegistration {
  i: string; // initiator port
  t: string; // target port
  r: number; // relative target port
  k: string; // key, 16 hex digits
  a: boolean; // ALL_TG_PT
}
interface StoredState {
  v: number;
  generation: number;
  aptpl: boolean;
  registrations: StoredRegistration[];
  /** holder: index into registrations, -1 for the all-registrants types. */
  reservation?: { type: number; holder: number };
}

export interface DecodedReservations {
  readonly generation: number;
  readonly aptpl: boolean;
  readonly registrations: Registration[];
  readonly reservation: Reservation | undefined;
}

/** What encodeReservations reads of one LU's state (persistentReservations.ts's LuReservations). */
export interface ReservationState {
  readonly generation: number;
  readonly aptpl: boolean;
  readonly reservation: Reservation | undefined;
  registrations(): Registration[];
}

export function encodeReservations(st: ReservationState): Buffer {
  const regs = st.registrations();
  const res = st.reservation;
  const out: StoredState = {
    v: VERSION,
    generation: st.generation,
    aptpl: st.aptpl,
    registrations: regs.map((r) => ({ i: r.initiatorPort, t: r.targetPort, r: r.relativePort, k: r.key.toString(16).padStart(16, '0'), a: r.allTgPt })),
  };
  if (res !== undefined) out.reservation = { type: res.type, holder: res.holder === undefined ? -1 : regs.indexOf(res.holder) };
  return Buffer.from(JSON.stringify(out), 'utf8');
}

function bad(what: string): never {
  throw new Error(`stored persistent reservation state is invalid: ${what}`);
}

function portName(x: unknown, what: string): string {
  if (typeof x !== 'string' || x.length === 0 || x.length > MAX_PORT_NAME) bad(`${what} must be a port name of 1-${MAX_PORT_NAME} characters`);
  return x;
}

function decodeRegistration(x: unknown, n: number): Registration {
  if (typeof x !== 'object' || x === null) bad(`registration ${n} is not an object`);
  const r = x as Partial<StoredRegistration>;
  if (typeof r.k !== 'string' || !/^[0-9a-f]{16}$/.test(r.k) || /^0+$/.test(r.k)) bad(`registration ${n} key must be 16 hex digits, not zero`);
  if (typeof r.r !== 'number' || !Number.isInteger(r.r) || r.r < 0 || r.r > 0xffff) bad(`registration ${n} relative port must be 0-65535`);
  if (typeof r.a !== 'boolean') bad(`registration ${n} ALL_TG_PT must be a boolean`);
  return {
    initiatorPort: portName(r.i, `registration ${n} initiator port`),
    targetPort: portName(r.t, `registration ${n} target port`),
    relativePort: r.r,
    key: BigInt(`0x${r.k}`),
    allTgPt: r.a,
  };
}

export function decodeReservations(blob: Buffer): DecodedReservations {
  let raw: unknown;
  try {
    raw = JSON.parse(blob.toString('utf8'));
  } catch {
    bad('not JSON');
  }
  if (typeof raw !== 'object' || raw === null) bad('not an object');
  const s = raw as Partial<StoredState>;
  if (s.v !== VERSION) bad(`version ${String(s.v)} is not ${VERSION}`);
  if (typeof s.generation !== 'number' || !Number.isInteger(s.generation) || s.generation < 0 || s.generation > 0xffffffff)
    bad('generation must be a 32-bit unsigned integer');
  if (typeof s.aptpl !== 'boolean') bad('aptpl must be a boolean');
  if (!Array.isArray(s.registrations) || s.registrations.length > MAX_REGISTRATIONS) bad(`registrations must be a list of at most ${MAX_REGISTRATIONS}`);
  const registrations = s.registrations.map(decodeRegistration);
  let reservation: Reservation | undefined;
  if (s.reservation !== undefined) {
    const { type, holder } = s.reservation;
    if (typeof type !== 'number' || !isValidPrType(type)) bad('reservation type is not a persistent reservation type');
    const all = isAllRegistrants(type);
    if (typeof holder !== 'number' || !Number.isInteger(holder) || (all ? holder !== -1 : holder < 0 || holder >= registrations.length)) {
      bad('reservation holder must name a registration (-1 for the all-registrants types)');
    }
    if (registrations.length === 0) bad('a reservation without registrations');
    reservation = { type, holder: all ? undefined : registrations[holder] };
  }
  return { generation: s.generation, aptpl: s.aptpl, registrations, reservation };
}
