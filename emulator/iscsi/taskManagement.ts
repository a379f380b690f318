/**
 * Task management functions (RFC 7143 §11.5-6, SAM-5 §7). Each resolves to the TMF response
 * code once every task it affects is gone: aborted tasks that were waiting for data are
 * dropped at once, running ones finish in the device and their results are discarded, so an
 * aborted task never gets a response (§4.2.3.3) and the TMF response comes after all of them.
 *
 * Scope: ABORT TASK and ABORT TASK SET act on the requesting session's tasks; CLEAR TASK SET
 * and LOGICAL UNIT RESET on every session's tasks for that logical unit (one task set per LU,
 * TST=000b); TARGET WARM/COLD RESET on every task of the target. Tasks of other sessions are
 * aborted silently (TAS=0 in the Control mode page).
 */
import { snLess } from './commandWindow.js';
import type { FullFeature } from './FullFeature.js';
import {
  TMF_ABORT_TASK,
  TMF_ABORT_TASK_SET,
  TMF_CLEAR_ACA,
  TMF_CLEAR_TASK_SET,
  TMF_LOGICAL_UNIT_RESET,
  TMF_RSP_COMPLETE,
  TMF_RSP_NO_LUN,
  TMF_RSP_NO_TASK,
  TMF_RSP_NOT_SUPPORTED,
  TMF_RSP_REASSIGN_UNSUPPORTED,
  TMF_RSP_REJECTED,
  TMF_TARGET_COLD_RESET,
  TMF_TARGET_WARM_RESET,
  TMF_TASK_REASSIGN,
} from './opcodes.js';
import type { TaskMgmtRequestPdu } from './pdu.js';
import type { BlockDevice } from '../block/BlockDevice.js';
import type { LunDevice } from './scsi/types.js';
import type { Task } from './Task.js';

/** BUS DEVICE RESET FUNCTION OCCURRED: after a LOGICAL UNIT RESET. */
export const UA_LU_RESET = 0x2903;
/** SCSI BUS RESET OCCURRED: after a target reset. */
export const UA_TARGET_RESET = 0x2902;

export interface TmfScope {
  /** Every connection in full feature phase, this one included. */
  allSessions(): Iterable<FullFeature>;
  /** Queues a unit attention for one session's LUN (the SCSI layer's per-nexus queue). */
  unitAttention(ffp: FullFeature, lun: number, ascq16: number): void;
  /** Optional hook of the SCSI layer for what a reset clears beyond tasks (reservations). */
  resetLogicalUnit?(device: BlockDevice): void;
}

const NAMES: Record<number, string> = {
  [TMF_ABORT_TASK]: 'ABORT TASK',
  [TMF_ABORT_TASK_SET]: 'ABORT TASK SET',
  [TMF_CLEAR_ACA]: 'CLEAR ACA',
  [TMF_CLEAR_TASK_SET]: 'CLEAR TASK SET',
  [TMF_LOGICAL_UNIT_RESET]: 'LOGICAL UNIT RESET',
  [TMF_TARGET_WARM_RESET]: 'TARGET WARM RESET',
  [TMF_TARGET_COLD_RESET]: 'TARGET COLD RESET',
  [TMF_TASK_REASSIGN]: 'TASK REASSIGN',
};

export function tmfName(fn: number): string {
  return NAMES[fn] ?? `function ${fn}`;
}

export async function taskManagement(scope: TmfScope, ffp: FullFeature, pdu: TaskMgmtRequestPdu): Promise<number> {
  const response = await run(scope, ffp, pdu);
  ffp.log.info({ function: tmfName(pdu.function), lun: pdu.lun, referencedTaskTag: pdu.referencedTaskTag, response }, 'task management request');
  return response;
}

async function run(scope: TmfScope, ffp: FullFeature, pdu: TaskMgmtRequestPdu): Promise<number> {
  switch (pdu.function) {
    case TMF_ABORT_TASK: {
      const task = ffp.tasks.get(pdu.referencedTaskTag);
      if (task === undefined || task.state === 'done') {
        // §11.6.1: a task we never received whose CmdSN is inside the window and before the
        // TMF counts as received and aborted; one already answered does not exist.
        const w = ffp.session.window;
        const inWindow = !snLess(pdu.refCmdSN, w.expCmdSN) && !snLess(w.maxCmdSN, pdu.refCmdSN) && snLess(pdu.refCmdSN, pdu.cmdSN);
        return inWindow ? TMF_RSP_COMPLETE : TMF_RSP_NO_TASK;
      }
      ffp.abortTask(task);
      await settled([task]);
      return TMF_RSP_COMPLETE;
    }
    case TMF_ABORT_TASK_SET:
    case TMF_CLEAR_TASK_SET:
    case TMF_LOGICAL_UNIT_RESET: {
      const lu = ffp.session.lunDevices.get(pdu.lun);
      if (lu === undefined) return TMF_RSP_NO_LUN;
      if (pdu.function === TMF_ABORT_TASK_SET) {
        const affected: Task[] = [];
        for (const t of ffp.tasks.values()) if (t.lun === pdu.lun) affected.push(t);
        abortAll(ffp, affected);
        await settled(affected);
      } else if (pdu.function === TMF_CLEAR_TASK_SET) {
        await settled(abortLogicalUnitTasks(scope, lu.identity.wwn));
      } else {
        await logicalUnitReset(scope, lu);
      }
      return TMF_RSP_COMPLETE;
    }
    case TMF_TARGET_WARM_RESET:
    case TMF_TARGET_COLD_RESET:
      await targetReset(scope);
      return TMF_RSP_COMPLETE;
    case TMF_CLEAR_ACA:
      return TMF_RSP_NOT_SUPPORTED; // NACA is never accepted, so there is no ACA to clear
    case TMF_TASK_REASSIGN:
      return TMF_RSP_REASSIGN_UNSUPPORTED; // ErrorRecoveryLevel 0
    default:
      return TMF_RSP_REJECTED;
  }
}

/**
 * LOGICAL UNIT RESET of one logical unit, whoever asks (an initiator's TMF, or the array: a
 * reset fault): every session's tasks on it are aborted, then its SPC-2 reservation ends and
 * every nexus that sees it gets BUS DEVICE RESET FUNCTION OCCURRED. Sessions open their own
 * handle (and device) per volume, so the logical unit is known by its WWN, not by its device.
 */
export async function logicalUnitReset(scope: TmfScope, lu: LunDevice): Promise<void> {
  const wwn = lu.identity.wwn;
  await settled(abortLogicalUnitTasks(scope, wwn));
  scope.resetLogicalUnit?.(lu.device);
  for (const other of scope.allSessions()) {
    for (const [lun, d] of other.session.lunDevices) if (d.identity.wwn === wwn) scope.unitAttention(other, lun, UA_LU_RESET);
  }
}

/** TARGET WARM RESET: every task of the target is aborted, every nexus gets SCSI BUS RESET OCCURRED on each LUN. */
export async function targetReset(scope: TmfScope): Promise<void> {
  const affected: Task[] = [];
  const sessions = [...scope.allSessions()];
  for (const other of sessions) {
    const all = [...other.tasks.values()];
    abortAll(other, all);
    affected.push(...all);
  }
  await settled(affected);
  const reset = new Set<BlockDevice>();
  for (const other of sessions) {
    for (const [lun, lu] of other.session.lunDevices) {
      reset.add(lu.device);
      scope.unitAttention(other, lun, UA_TARGET_RESET);
    }
  }
  for (const d of reset) scope.resetLogicalUnit?.(d);
}

/** Aborts every session's tasks on the logical unit with this WWN (one task set per LU); returns them. */
function abortLogicalUnitTasks(scope: TmfScope, wwn: string): Task[] {
  const affected: Task[] = [];
  for (const other of scope.allSessions()) {
    const mine: Task[] = [];
    for (const t of other.tasks.values()) if (other.session.lunDevices.get(t.lun)?.identity.wwn === wwn) mine.push(t);
    abortAll(other, mine);
    affected.push(...mine);
  }
  return affected;
}

function abortAll(ffp: FullFeature, tasks: Task[]): void {
  for (const t of tasks) ffp.abortTask(t);
}

/** Waits for aborted tasks to be gone; a task held behind a CmdSN gap is dropped when its turn comes. */
function settled(tasks: Task[]): Promise<unknown> {
  return Promise.all(tasks.filter((t) => t.state !== 'held').map((t) => t.finished));
}
