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
 *   5. reservations (RESERVATION CONFLICT): persistent and SPC-2, see persistentReservations.ts.
 *   6. per-LUN support (e.g. UNMAP on thick LUNs), then the handler; BlockDeviceErrors become sense.
 *
 * The transport tells it which I_T nexuses exist (addNexus at login, removeNexus at logout or
 * connection loss) so that unit attentions about a device reach every nexus that sees it, and
 * calls resetLogicalUnit / resetTarget for the task management resets.
 */
import type { BlockDevice } from '../../block/BlockDevice.js';
import type { ReservationStore } from '../types.js';
import { checkCdbUsage, DispatchTable, isResult, type CommandDescriptor, type DataInPool, type DeviceServer } from './dispatch.js';
import { checkCondition, invalidOpcode, lunNotSupported, senseForError, UNIT_ATTENTION } from './sense.js';
import { allCommands } from './commands.js';
import { PersistentReservations, registrationMatches, type ReservationLogger } from './persistentReservations.js';
import { RangeLocks } from './rangeLocks.js';
import type { Registration } from './reservationTypes.js';
import { RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiCommand, type ScsiResult, type ScsiTarget } from './types.js';

/** BUS DEVICE RESET FUNCTION OCCURRED (SAM-5): after a LOGICAL UNIT RESET. */
export const ASC_BUS_DEVICE_RESET_FUNCTION_OCCURRED = 0x2903;
/** SCSI BUS RESET OCCURRED: what the transport reports after a target reset. */
export const ASC_SCSI_BUS_RESET_OCCURRED = 0x2902;

export interface ScsiLogicalUnitsOptions {
  /**
   * Replaces the reservation rules (persistent and SPC-2): return true when the command
   * conflicts; it then ends with RESERVATION CONFLICT. For tests and other policies.
   */
  conflictsWithReservation?: (cmd: ScsiCommand, lun: LunDevice, command: CommandDescriptor) => boolean;
  /** Keeps APTPL=1 reservation state across restarts; without it APTPL=1 is refused. */
  reservations?: ReservationStore;
  /** PREEMPT AND ABORT: abort every task of these nexuses on the LU (the transport owns tasks). */
  abortTasks?: (wwn: string, nexuses: readonly Nexus[]) => void;
  /** Where unreadable stored reservation state is reported. */
  logger?: ReservationLogger;
  /** Reusable buffers for large READ data (the transport's BufferPool); it releases them once sent. */
  dataInPool?: DataInPool;
}

function nexusKey(nexus: Nexus): string {
  return `${nexus.initiatorPort}\n${nexus.targetPort}\n`;
}

function uaKey(nexus: Nexus, lun: number): string {
  return `${nexusKey(nexus)}${lun}`;
}

export class ScsiLogicalUnits implements ScsiTarget, DeviceServer {
  readonly table: DispatchTable;
  /** Serialises COMPARE AND WRITE against overlapping COMPARE AND WRITEs and writes. */
  readonly locks = new RangeLocks();
  /** Persistent and SPC-2 reservation state of every LU, by WWN. */
  readonly reservations: PersistentReservations;
  private readonly unitAttentions = new Map<string, number[]>();
  private readonly conflicts: (cmd: ScsiCommand, lun: LunDevice, command: CommandDescriptor) => boolean;
  /** Live I_T nexuses (logged-in sessions), by nexusKey. */
  private readonly nexuses = new Map<string, Nexus>();
  private readonly abortTasks: ScsiLogicalUnitsOptions['abortTasks'];
  readonly dataInPool: DataInPool | undefined;

  constructor(
    readonly lunsFor: (nexus: Nexus) => ReadonlyMap<number, LunDevice>,
    opts: ScsiLogicalUnitsOptions = {},
  ) {
    this.table = new DispatchTable(allCommands);
    this.reservations = new PersistentReservations(opts.reservations, opts.logger);
    this.conflicts = opts.conflictsWithReservation ?? this.reservations.conflicts;
    this.abortTasks = opts.abortTasks;
    this.dataInPool = opts.dataInPool;
  }

  /** A session logged in: its nexus now receives unit attentions about the devices it sees. */
  addNexus(nexus: Nexus): void {
    this.nexuses.set(nexusKey(nexus), nexus);
  }

  /**
   * A session ended (I_T nexus loss): its SPC-2 reservations end. Its persistent registrations
   * stay (SPC-4 §5.13.1), and so do its pending unit attentions: they belong to the nexus, which
   * a reinstated session (same initiator port) takes up again.
   */
  removeNexus(nexus: Nexus): void {
    this.nexuses.delete(nexusKey(nexus));
    this.reservations.nexusLost(nexus);
  }

  /** Queues a unit attention on every live nexus that sees the device, at its LUN there. */
  establishUnitAttentionForDevice(wwn: string, ascq16: number, except?: Nexus): void {
    const skip = except === undefined ? undefined : nexusKey(except);
    this.unitAttentionWhere(wwn, ascq16, (n) => skip === undefined || nexusKey(n) !== skip);
  }

  /** Queues a unit attention on the live nexuses of these registrations that see the device. */
  unitAttentionForRegistrants(wwn: string, ascq16: number, registrations: readonly Registration[]): void {
    this.unitAttentionWhere(wwn, ascq16, (n) => registrations.some((r) => registrationMatches(r, n)));
  }

  /** PREEMPT AND ABORT: hands the transport the live nexuses of the preempted registrations. */
  abortTasksOfRegistrants(wwn: string, registrations: readonly Registration[]): void {
    if (this.abortTasks === undefined) return;
    const victims = [...this.nexuses.values()].filter((n) => registrations.some((r) => registrationMatches(r, n)));
    if (victims.length > 0) this.abortTasks(wwn, victims);
  }

  private unitAttentionWhere(wwn: string, ascq16: number, pick: (n: Nexus) => boolean): void {
    for (const n of this.nexuses.values()) {
      if (!pick(n)) continue;
      for (const [lun, lu] of this.lunsFor(n)) if (lu.identity.wwn === wwn) this.establishUnitAttention(n, lun, ascq16);
    }
  }

  /**
   * LOGICAL UNIT RESET (SAM-5 §6.3.3): the device's SPC-2 reservation ends (persistent ones
   * stay) and every nexus that sees it gets BUS DEVICE RESET FUNCTION OCCURRED, the one that
   * asked included. Given a BlockDevice (the transport's TmfScope hook, which queues the unit
   * attentions itself) only the reservation part is done.
   */
  resetLogicalUnit(device: string | BlockDevice): void {
    if (typeof device !== 'string') {
      const wwn = this.wwnOf(device);
      if (wwn !== undefined) this.reservations.reset(wwn);
      return;
    }
    this.reservations.reset(device);
    this.establishUnitAttentionForDevice(device, ASC_BUS_DEVICE_RESET_FUNCTION_OCCURRED);
  }

  /** TARGET WARM/COLD RESET: every SPC-2 reservation ends; every live nexus gets `ascq16` on each LUN. */
  resetTarget(ascq16: number = ASC_SCSI_BUS_RESET_OCCURRED): void {
    this.reservations.reset();
    for (const n of this.nexuses.values()) for (const lun of this.lunsFor(n).keys()) this.establishUnitAttention(n, lun, ascq16);
  }

  private wwnOf(device: BlockDevice): string | undefined {
    for (const n of this.nexuses.values()) for (const lu of this.lunsFor(n).values()) if (lu.device === device) return lu.identity.wwn;
    return undefined;
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
      if (this.conflicts(cmd, lu, d)) return { status: RESERVATION_CONFLICT };
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
