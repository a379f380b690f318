/**
 * ScsiLogicalUnits: the SCSI device server for all LUNs behind one target, transport-free.
 *
 * execute() order (SAM-5 / SPC-4):
 *   1. LUN lookup; an unmapped LUN runs only INQUIRY (peripheral qualifier 011b), REPORT LUNS
 *      and REQUEST SENSE; everything else is LOGICAL UNIT NOT SUPPORTED.
 *   2. opcode / service action lookup (INVALID COMMAND OPERATION CODE / INVALID FIELD IN CDB).
 *   3. pending unit attention of this I_T nexus and LUN (reported and cleared, except for
 *      INQUIRY, REPORT LUNS and REQUEST SENSE: see SPC-4 §5.14).
 *   4. CDB usage mask (reserved bits, unsupported options).
 *   5. reservation hook (RESERVATION CONFLICT): persistent reservations plug in here.
 *   6. per-LUN support (e.g. UNMAP on thick LUNs), then the handler; BlockDeviceErrors become sense.
 */
import { checkCdbUsage, DispatchTable, isResult, type CommandDescriptor } from './dispatch.js';
import { checkCondition, invalidOpcode, lunNotSupported, senseForError, UNIT_ATTENTION } from './sense.js';
import { RangeLocks } from './compareAndWrite.js';
import { allCommands } from './commands.js';
import { RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiCommand, type ScsiResult, type ScsiTarget } from './types.js';

export interface ScsiLogicalUnitsOptions {
  /**
   * Seam for persistent reservations: return true when the command conflicts with a
   * reservation held by another nexus; the command then ends with RESERVATION CONFLICT.
   */
  conflictsWithReservation?: (cmd: ScsiCommand, lun: LunDevice, command: CommandDescriptor) => boolean;
}

function uaKey(nexus: Nexus, lun: number): string {
  return `${nexus.initiatorPort}\n${nexus.targetPort}\n${lun}`;
}

export class ScsiLogicalUnits implements ScsiTarget {
  readonly table: DispatchTable;
  /** Serialises COMPARE AND WRITE against overlapping COMPARE AND WRITEs and writes. */
  readonly locks = new RangeLocks();
  private readonly unitAttentions = new Map<string, number[]>();
  private readonly conflicts: ScsiLogicalUnitsOptions['conflictsWithReservation'];

  constructor(
    readonly lunsFor: (nexus: Nexus) => ReadonlyMap<number, LunDevice>,
    opts: ScsiLogicalUnitsOptions = {},
  ) {
    this.table = new DispatchTable(allCommands);
    this.conflicts = opts.conflictsWithReservation;
  }

  /**
   * Queues a unit attention (ASC << 8 | ASCQ, e.g. ASC_CAPACITY_DATA_CHANGED) for one I_T nexus
   * and LUN. A condition already pending is not queued twice.
   */
  establishUnitAttention(nexus: Nexus, lun: number, ascq16: number): void {
    const key = uaKey(nexus, lun);
    const q = this.unitAttentions.get(key);
    if (q === undefined) this.unitAttentions.set(key, [ascq16]);
    else if (!q.includes(ascq16)) q.push(ascq16);
  }

  /** Takes the oldest pending unit attention of a nexus and LUN, optionally only one of a code. */
  takeUnitAttention(nexus: Nexus, lun: number, only?: number): number | undefined {
    if (this.unitAttentions.size === 0) return undefined;
    const key = uaKey(nexus, lun);
    const q = this.unitAttentions.get(key);
    if (q === undefined) return undefined;
    const i = only === undefined ? 0 : q.indexOf(only);
    if (i < 0) return undefined;
    const [code] = q.splice(i, 1);
    if (q.length === 0) this.unitAttentions.delete(key);
    return code;
  }

  hasUnitAttention(nexus: Nexus, lun: number): boolean {
    return this.unitAttentions.size !== 0 && this.unitAttentions.has(uaKey(nexus, lun));
  }

  async execute(cmd: ScsiCommand): Promise<ScsiResult> {
    let writing = false;
    try {
      const cdb = cmd.cdb;
      const lu = this.lunsFor(cmd.nexus).get(cmd.lun);
      const d = this.table.lookup(cdb);
      if (isResult(d)) return lu === undefined ? lunNotSupported() : (this.pendingUnitAttention(cmd) ?? d);
      if (lu === undefined) {
        if (d.unmapped === undefined) return lunNotSupported();
        return checkCdbUsage(cdb, d) ?? (await d.unmapped(cmd, this));
      }
      if (d.ua === undefined && this.unitAttentions.size !== 0) {
        const ua = this.pendingUnitAttention(cmd);
        if (ua !== undefined) return ua;
      }
      const bad = checkCdbUsage(cdb, d);
      if (bad !== undefined) return bad;
      if (this.conflicts !== undefined && this.conflicts(cmd, lu, d)) return { status: RESERVATION_CONFLICT };
      if (d.supported !== undefined && !d.supported(lu)) return invalidOpcode();
      writing = d.access === 'write';
      return await d.handler(cmd, lu, this);
    } catch (err) {
      return senseForError(err, writing);
    }
  }

  private pendingUnitAttention(cmd: ScsiCommand): ScsiResult | undefined {
    const code = this.takeUnitAttention(cmd.nexus, cmd.lun);
    return code === undefined ? undefined : checkCondition(UNIT_ATTENTION, code);
  }
}
