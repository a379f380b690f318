/** Reservation types, sense codes and the shapes shared by the reservation files. */

/** PERSISTENT RESERVE OUT TYPE codes (SPC-4 table 169). */
export const PR_WRITE_EXCLUSIVE = 0x1;
export const PR_EXCLUSIVE_ACCESS = 0x3;
export const PR_WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5;
export const PR_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6;
export const PR_WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7;
export const PR_EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8;

export function isValidPrType(type: number): boolean {
  return type === 1 || type === 3 || (type >= 5 && type <= 8);
}
/** WR EX AR, EX AC AR: every registrant is a reservation holder. */
export function isAllRegistrants(type: number): boolean {
  return type === PR_WRITE_EXCLUSIVE_ALL_REGISTRANTS || type === PR_EXCLUSIVE_ACCESS_ALL_REGISTRANTS;
}
/** RO and AR types: registered nexuses get the holder's access. */
export function registrantsShare(type: number): boolean {
  return type >= PR_WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
}
/** The write exclusive family: reads stay open to everyone. */
export function writeExclusive(type: number): boolean {
  return type === PR_WRITE_EXCLUSIVE || type === PR_WRITE_EXCLUSIVE_REGISTRANTS_ONLY || type === PR_WRITE_EXCLUSIVE_ALL_REGISTRANTS;
}

/** Additional sense codes of reservations (ASC << 8 | ASCQ). */
export const ASC_INVALID_RELEASE_OF_PERSISTENT_RESERVATION = 0x2604;
export const ASC_RESERVATIONS_PREEMPTED = 0x2a03;
export const ASC_RESERVATIONS_RELEASED = 0x2a04;
export const ASC_REGISTRATIONS_PREEMPTED = 0x2a05;
export const ASC_INSUFFICIENT_REGISTRATION_RESOURCES = 0x5504;

/** Registrations per logical unit; one more is INSUFFICIENT REGISTRATION RESOURCES. */
export const MAX_REGISTRATIONS = 256;

export interface Registration {
  /** "<iqn>,i,0x<isid>" */
  readonly initiatorPort: string;
  /** "<iqn>,t,0x<tpgt>"; ignored for matching when allTgPt is set. */
  readonly targetPort: string;
  readonly relativePort: number;
  /** Reservation key, 64 bits, never 0. */
  key: bigint;
  /** ALL_TG_PT=1: the initiator port is registered through every target port. */
  readonly allTgPt: boolean;
}

export interface Reservation {
  readonly type: number;
  /** The holder's registration; undefined for the all-registrants types. */
  readonly holder: Registration | undefined;
}

/** What a command does to the medium, as its dispatch descriptor (dispatch.ts) declares it. */
export type CommandAccess = 'none' | 'read' | 'write';

/** What the reservation rules read of a command's descriptor; dispatch.ts's CommandDescriptor is one. */
export interface ReservedCommand {
  readonly opcode: number;
  /** Present for commands selected by a service action. */
  readonly serviceAction?: number;
  readonly access: CommandAccess;
}
