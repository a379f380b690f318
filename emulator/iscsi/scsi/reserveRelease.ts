/**
 * SPC-2 RESERVE(6), RELEASE(6), RESERVE(10), RELEASE(10): one nexus reserves the whole LU.
 *
 * Third-party reservations (3RDPTY, LONGID) are not supported: the usage masks refuse them with
 * INVALID FIELD IN CDB. Next to persistent reservations they behave as SPC-4 §5.13.3 says (CRH=1
 * in REPORT CAPABILITIES): a PR holder, or a registrant under an RO/AR reservation, gets GOOD and
 * nothing changes; anyone else is refused while any registration exists. The reservation ends
 * with RELEASE, the nexus (logout, connection loss), a LOGICAL UNIT RESET or a target reset.
 */
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import type { LuReservations } from './persistentReservations.js';
import { sameNexus } from './persistentReservations.js';
import { registrantsShare } from './reservationTypes.js';
import { GOOD, RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiCommand, type ScsiResult } from './types.js';

/** With registrations present: 'noop' for the holder (or a sharing registrant), else 'conflict'. */
function nextToPersistent(st: LuReservations, n: Nexus): 'noop' | 'conflict' | undefined {
  if (st.registrationCount === 0) return undefined;
  if (st.isHolder(n)) return 'noop';
  const res = st.reservation;
  if (res !== undefined && registrantsShare(res.type) && st.registrationOf(n) !== undefined) return 'noop';
  return 'conflict';
}

function reserve(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): ScsiResult {
  const st = t.reservations.of(lu.identity.wwn);
  const pr = nextToPersistent(st, cmd.nexus);
  if (pr === 'noop') return { status: GOOD };
  if (pr === 'conflict') return { status: RESERVATION_CONFLICT };
  if (st.spc2 !== undefined && !sameNexus(st.spc2, cmd.nexus)) return { status: RESERVATION_CONFLICT };
  const n = cmd.nexus;
  st.spc2 = { initiatorPort: n.initiatorPort, targetPort: n.targetPort, relativePort: n.relativePort };
  return { status: GOOD };
}

/** Releasing what one does not hold is GOOD and changes nothing (SPC-2 §7.17). */
function release(cmd: ScsiCommand, lu: LunDevice, t: DeviceServer): ScsiResult {
  const st = t.reservations.of(lu.identity.wwn);
  const pr = nextToPersistent(st, cmd.nexus);
  if (pr === 'conflict') return { status: RESERVATION_CONFLICT };
  if (st.spc2 !== undefined && sameNexus(st.spc2, cmd.nexus)) st.spc2 = undefined;
  return { status: GOOD };
}

export const reserveReleaseCommands: CommandDescriptor[] = [
  // Byte 1 (obsolete extents, third party) and bytes 2-4 must be zero.
  { name: 'RESERVE(6)', opcode: 0x16, usage: [0x16, 0, 0, 0, 0, 0], access: 'none', handler: reserve },
  { name: 'RELEASE(6)', opcode: 0x17, usage: [0x17, 0, 0, 0, 0, 0], access: 'none', handler: release },
  // 3RDPTY, LONGID, THIRD PARTY DEVICE ID and PARAMETER LIST LENGTH (used only with LONGID): zero.
  { name: 'RESERVE(10)', opcode: 0x56, usage: [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], access: 'none', handler: reserve },
  { name: 'RELEASE(10)', opcode: 0x57, usage: [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], access: 'none', handler: release },
];
