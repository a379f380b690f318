/**
 * The dispatch table: one CommandDescriptor per supported (operation code, service action).
 * REPORT SUPPORTED OPERATION CODES is generated from it, and the CDB usage mask of each
 * descriptor is enforced here (any bit outside it is INVALID FIELD IN CDB), so what RSOC
 * reports and what the device server accepts cannot drift apart.
 */
import type { PersistentReservations } from './persistentReservations.js';
import type { RangeLocks } from './rangeLocks.js';
import type { CommandAccess, Registration } from './reservationTypes.js';
import { invalidFieldInCdb, invalidOpcode } from './sense.js';
import type { LunDevice, Nexus, ScsiCommand, ScsiResult } from './types.js';

export type { CommandAccess };

/**
 * What a command handler may use of the device server. ScsiLogicalUnits (scsiTarget.ts)
 * implements it; handlers import this interface, not that class, which imports every handler
 * through the command table (commands.ts): so the dependencies run one way only.
 */
export interface DeviceServer {
  /** The commands served (REPORT SUPPORTED OPERATION CODES, the third-party copy VPD page). */
  readonly table: DispatchTable;
  /** Range locks of COMPARE AND WRITE, ORWRITE and WRITE ATOMIC, which the other writes respect. */
  readonly locks: RangeLocks;
  /** Persistent and SPC-2 reservation state of every LU. */
  readonly reservations: PersistentReservations;
  /** The LUN map an I_T nexus sees. */
  lunsFor(nexus: Nexus): ReadonlyMap<number, LunDevice>;
  /** Takes the oldest pending unit attention of a nexus and LUN, optionally only one of a code. */
  takeUnitAttention(nexus: Nexus, lun: number, only?: number): number | undefined;
  /** Queues a unit attention on the live nexuses of these registrations that see the device. */
  unitAttentionForRegistrants(wwn: string, ascq16: number, registrations: readonly Registration[]): void;
  /** PREEMPT AND ABORT: hands the transport the live nexuses of the preempted registrations. */
  abortTasksOfRegistrants(wwn: string, registrations: readonly Registration[]): void;
  /** Reusable buffers for large READ data (ScsiResult.dataInBuffer); none: allocate per command. */
  readonly dataInPool: DataInPool | undefined;
}

/** The transport's pool of large buffers, as READ takes from it. */
export interface DataInPool {
  /** A buffer of at least n bytes, its contents arbitrary. */
  acquire(n: number): Buffer;
}

export type Handler = (cmd: ScsiCommand, lu: LunDevice, target: DeviceServer) => Promise<ScsiResult> | ScsiResult;

export interface CommandDescriptor {
  readonly name: string;
  readonly opcode: number;
  /** Present for commands selected by a service action in CDB byte 1 bits 4-0. */
  readonly serviceAction?: number;
  /**
   * CDB usage data (SPC-4 RSOC): byte 0 is the operation code, every other byte has a bit set for
   * each CDB bit the device server interprets (or accepts and ignores, like DPO). Its length is
   * the CDB length.
   */
  readonly usage: readonly number[];
  readonly access: CommandAccess;
  /**
   * Unit attention handling (SPC-4 §5.14): 'report' commands are the ones that run with a UA
   * pending (INQUIRY, REPORT LUNS, REQUEST SENSE); every other command reports and clears it.
   */
  readonly ua?: 'report';
  /** Runs for an unmapped LUN (INQUIRY, REPORT LUNS, REQUEST SENSE); others get LUN NOT SUPPORTED. */
  readonly unmapped?: (cmd: ScsiCommand, target: DeviceServer) => Promise<ScsiResult> | ScsiResult;
  /** Per-LUN support, e.g. UNMAP only on thin LUNs; unsupported reads as INVALID COMMAND OPERATION CODE. */
  readonly supported?: (lu: LunDevice) => boolean;
  readonly handler: Handler;
}

interface ServiceActionGroup {
  readonly byServiceAction: (CommandDescriptor | undefined)[];
}

export class DispatchTable {
  private readonly byOpcode: (CommandDescriptor | ServiceActionGroup | undefined)[] = new Array(256).fill(undefined);
  readonly commands: readonly CommandDescriptor[];

  constructor(commands: readonly CommandDescriptor[]) {
    this.commands = [...commands].sort((a, b) => a.opcode - b.opcode || (a.serviceAction ?? 0) - (b.serviceAction ?? 0));
    for (const d of this.commands) {
      if (d.usage[0] !== d.opcode) throw new Error(`${d.name}: usage data must start with the opcode`);
      const slot = this.byOpcode[d.opcode];
      if (d.serviceAction === undefined) {
        if (slot !== undefined) throw new Error(`${d.name}: opcode ${d.opcode} registered twice`);
        this.byOpcode[d.opcode] = d;
      } else {
        if (slot !== undefined && !('byServiceAction' in slot)) throw new Error(`${d.name}: opcode ${d.opcode} mixes service actions`);
        const group = slot ?? { byServiceAction: new Array(32).fill(undefined) };
        if (group.byServiceAction[d.serviceAction] !== undefined) throw new Error(`${d.name}: registered twice`);
        if ((d.usage[1]! & 0x1f) !== 0x1f) throw new Error(`${d.name}: usage must cover the service action field`);
        group.byServiceAction[d.serviceAction] = d;
        this.byOpcode[d.opcode] = group;
      }
    }
  }

  /** The descriptor for a CDB, or the CHECK CONDITION for an unknown opcode or service action. */
  lookup(cdb: Buffer): CommandDescriptor | ScsiResult {
    if (cdb.length === 0) return invalidOpcode();
    const slot = this.byOpcode[cdb[0]!];
    if (slot === undefined) return invalidOpcode();
    if ('handler' in slot) return slot;
    if (cdb.length < 2) return invalidOpcode();
    // SPC-4: an unsupported service action of a supported opcode is INVALID FIELD IN CDB.
    return slot.byServiceAction[cdb[1]! & 0x1f] ?? invalidFieldInCdb(1, 4);
  }

  /** Descriptors of one opcode (one, or all its service actions), for RSOC. */
  forOpcode(opcode: number): { serviceActions: boolean; list: CommandDescriptor[] } {
    const slot = this.byOpcode[opcode & 0xff];
    if (slot === undefined) return { serviceActions: false, list: [] };
    if ('handler' in slot) return { serviceActions: false, list: [slot] };
    return { serviceActions: true, list: slot.byServiceAction.filter((d): d is CommandDescriptor => d !== undefined) };
  }
}

export function isResult(x: CommandDescriptor | ScsiResult): x is ScsiResult {
  return 'status' in x;
}

/**
 * Checks the CDB against the descriptor's usage mask: too short a CDB, or any bit set that the
 * device server does not use (reserved fields, unsupported options like RDPROTECT or NACA), is
 * INVALID FIELD IN CDB with a field pointer to the first offending bit.
 */
export function checkCdbUsage(cdb: Buffer, d: CommandDescriptor): ScsiResult | undefined {
  const usage = d.usage;
  const n = usage.length;
  if (cdb.length < n) return invalidFieldInCdb(cdb.length === 0 ? 0 : cdb.length - 1);
  for (let i = 1; i < n; i++) {
    const bad = cdb[i]! & ~usage[i]!;
    if (bad !== 0) return invalidFieldInCdb(i, 31 - Math.clz32(bad));
  }
  return undefined;
}
