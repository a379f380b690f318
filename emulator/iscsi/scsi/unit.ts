/** TEST UNIT READY, REQUEST SENSE and START STOP UNIT (SPC-4, SBC-3). */
import type { CommandDescriptor, DeviceServer } from './dispatch.js';
import { ASC_LUN_NOT_SUPPORTED, buildSense, ILLEGAL_REQUEST, invalidFieldInCdb, NO_SENSE, truncate, UNIT_ATTENTION } from './sense.js';
import { GOOD, type LunDevice, type ScsiCommand, type ScsiResult } from './types.js';

function testUnitReady(): ScsiResult {
  return { status: GOOD };
}

/**
 * REQUEST SENSE: returns (and clears) a pending unit attention, else NO SENSE (autosense has
 * delivered every CHECK CONDITION already). Only fixed format: DESC=1 is INVALID FIELD IN CDB.
 */
function requestSense(cmd: ScsiCommand, _lu: LunDevice | undefined, t: DeviceServer): ScsiResult {
  if ((cmd.cdb[1]! & 0x01) !== 0) return invalidFieldInCdb(1, 0);
  const ua = t.takeUnitAttention(cmd.nexus, cmd.lun);
  const sense = ua === undefined ? buildSense(NO_SENSE, 0) : buildSense(UNIT_ATTENTION, ua);
  return { status: GOOD, dataIn: truncate(sense, cmd.cdb[4]!) };
}

/** SPC-4 §6.39: for an unsupported LUN, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as parameter data. */
function requestSenseUnmapped(cmd: ScsiCommand): ScsiResult {
  if ((cmd.cdb[1]! & 0x01) !== 0) return invalidFieldInCdb(1, 0);
  return { status: GOOD, dataIn: truncate(buildSense(ILLEGAL_REQUEST, ASC_LUN_NOT_SUPPORTED), cmd.cdb[4]!) };
}

/**
 * START STOP UNIT: a virtual disk is always spinning. POWER CONDITION other than START_VALID (0)
 * is not supported (INVALID FIELD IN CDB); LOEJ is refused (no removable medium to load or eject:
 * libiscsi's test_startstopunit_simple expects that to fail on non-removable media); a stop
 * without NO_FLUSH flushes the write cache first, as SBC-3 asks.
 */
async function startStopUnit(cmd: ScsiCommand, lu: LunDevice): Promise<ScsiResult> {
  const b4 = cmd.cdb[4]!;
  if ((b4 & 0xf0) !== 0) return invalidFieldInCdb(4, 31 - Math.clz32(b4 & 0xf0));
  const b3 = cmd.cdb[3]! & 0x0f;
  if (b3 !== 0) return invalidFieldInCdb(3, 31 - Math.clz32(b3));
  if ((b4 & 0x01) === 0 && (b4 & 0x04) === 0) await lu.device.flush();
  return { status: GOOD };
}

export const unitCommands: CommandDescriptor[] = [
  { name: 'TEST UNIT READY', opcode: 0x00, usage: [0x00, 0, 0, 0, 0, 0], access: 'none', handler: testUnitReady },
  {
    name: 'REQUEST SENSE',
    opcode: 0x03,
    usage: [0x03, 0x01, 0, 0, 0xff, 0],
    access: 'none',
    ua: 'report',
    handler: requestSense,
    unmapped: requestSenseUnmapped,
  },
  {
    name: 'START STOP UNIT',
    opcode: 0x1b,
    // IMMED; POWER CONDITION MODIFIER (must be 0 with START_VALID); POWER CONDITION, NO_FLUSH, START
    usage: [0x1b, 0x01, 0, 0x0f, 0xf5, 0],
    access: 'none',
    handler: startStopUnit,
  },
];
