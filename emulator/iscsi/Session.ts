/**
 * One iSCSI session (RFC 7143 §3.3): the I_T nexus, its negotiated parameters, its command
 * window, its tasks and its LUN map. MaxConnections is 1, so a session has one connection;
 * keeping the session apart from the connection keeps the RFC's split visible (window and
 * tasks are the session's, StatSN the connection's).
 */
import { CommandWindow } from './commandWindow.js';
import { closeLun, syncLuns, type MappedLun, type OpenContext } from './lunMap.js';
import type { SessionParams } from './negotiation.js';
import type { LunDevice, Nexus } from './scsi/types.js';
import type { Task } from './Task.js';
import type { IscsiLogger, IscsiSessionInfo, LunMapping } from './types.js';

/** Commands an initiator may have outstanding (the window size). */
export const QUEUE_DEPTH = 128;

export class Session {
  readonly window: CommandWindow;
  /** Tasks by Initiator Task Tag. */
  readonly tasks = new Map<number, Task>();
  readonly luns = new Map<number, MappedLun>();
  /** What the SCSI layer sees: LUN -> device. */
  readonly lunDevices = new Map<number, LunDevice>();
  readonly nexus: Nexus;
  closed = false;

  constructor(
    readonly tsih: number,
    readonly isid: number,
    readonly params: SessionParams,
    targetName: string,
    tpgt: number,
    firstCmdSN: number,
    readonly remoteAddress: string,
    readonly log: IscsiLogger,
  ) {
    this.window = new CommandWindow(firstCmdSN, QUEUE_DEPTH);
    this.nexus = {
      initiatorPort: `${params.initiatorName ?? ''},i,0x${isidHex(isid)}`,
      targetPort: `${targetName},t,0x${tpgt.toString(16).padStart(4, '0')}`,
      relativePort: 1,
    };
  }

  get initiatorName(): string {
    return this.params.initiatorName ?? '';
  }

  get discovery(): boolean {
    return this.params.sessionType === 'Discovery';
  }

  /** Brings the LUN map in line with host affinity; returns the LUNs that changed. */
  mapLuns(wanted: readonly LunMapping[], ctx: OpenContext): number[] {
    const changed = syncLuns(this.luns, wanted, ctx);
    this.lunDevices.clear();
    for (const [lun, m] of this.luns) this.lunDevices.set(lun, m.device);
    return changed;
  }

  unmapAll(): void {
    for (const m of this.luns.values()) closeLun(m, this.log);
    this.luns.clear();
    this.lunDevices.clear();
  }

  info(): IscsiSessionInfo {
    return {
      initiatorName: this.initiatorName,
      isid: isidHex(this.isid),
      tsih: this.tsih,
      connections: this.closed ? 0 : 1,
      remoteAddresses: this.closed ? [] : [this.remoteAddress],
      luns: [...this.luns.values()].map((m) => ({ lun: m.lun, exportName: m.exportName })).sort((a, b) => a.lun - b.lun),
    };
  }
}

export function isidHex(isid: number): string {
  return isid.toString(16).padStart(12, '0');
}
