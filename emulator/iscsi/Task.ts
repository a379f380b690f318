/**
 * One SCSI task of a session (RFC 7143 §3.2.1 "task" = a SCSI command and its data transfer):
 * where its Data-Out lands and which part of it is still to be solicited.
 *
 * Write data goes straight into one buffer of the command's expected length, at the offset the
 * Data-Out names: immediate data, then unsolicited Data-Out (InitialR2T=No, up to
 * FirstBurstLength), then one R2T sequence after another of at most MaxBurstLength, with at
 * most MaxOutstandingR2T open at once. DataPDUInOrder and DataSequenceInOrder are Yes, so each
 * sequence arrives in order and every check is an equality.
 */
import type { ScsiResult } from './scsi/types.js';

export type TaskState =
  /** Arrived ahead of a CmdSN gap: takes data, does nothing else yet. */
  | 'held'
  /** In CmdSN order, collecting data (or waiting for a buffer). */
  | 'receiving'
  /** Handed to the SCSI layer. */
  | 'running'
  /** Response sent, or aborted: forgotten. */
  | 'done';

export interface R2TState {
  ttt: number;
  /** Buffer offset of the sequence and its Desired Data Transfer Length. */
  offset: number;
  length: number;
  received: number;
  nextDataSN: number;
}

export class Task {
  state: TaskState = 'held';
  /** Where Data-Out goes: the pooled full buffer, a small staging buffer, or null (discarded). */
  buf: Buffer | null = null;
  /** The pool buffer to give back (buf is a view of it), when it came from the pool. */
  pooled: Buffer | null = null;
  /** Bytes of the pool budget this task holds. */
  budget = 0;
  /** Data is being collected in a staging buffer until the connection's budget frees a full one. */
  waitingForBuffer = false;
  /** Data-Out bytes received (in order, so also the next expected offset of unsolicited data). */
  received = 0;
  /** Offset where unsolicited data (immediate + unsolicited Data-Out) ends. */
  unsolicitedEnd = 0;
  /** No more unsolicited Data-Out follows (F bit seen, or none was allowed). */
  unsolicitedDone = true;
  unsolicitedDataSN = 0;
  /** Next offset to solicit with an R2T. */
  r2tNext = 0;
  r2tSN = 0;
  readonly r2ts: R2TState[] = [];
  /** Set when the task must not run: the response to send once its data is in (e.g. EDTL too large). */
  failure: ScsiResult | undefined;
  /** TMF aborted it: no response is sent (RFC 7143 §4.2.3.3). */
  aborted = false;
  /** Counted in the command window's in-flight commands (non-immediate, accepted in order). */
  counted = false;
  /** Residual of a write-only command (EDTL minus what its CDB consumes), fixed before it runs. */
  writeResidual = 0;
  /** Data-In PDUs sent (the SCSI Response's ExpDataSN for a read). */
  dataSN = 0;
  /** Resolves when the task is finished (response sent or dropped); TMF responses wait for it. */
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;

  constructor(
    readonly itt: number,
    readonly lun: number,
    readonly cmdSN: number,
    readonly immediate: boolean,
    readonly read: boolean,
    readonly write: boolean,
    readonly edtl: number,
    readonly cdb: Buffer,
    /** Bidirectional Read Data Length from the AHS (bidi commands only). */
    readonly bidiReadLength: number | undefined,
  ) {
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
  }

  /** Bytes of write data still to arrive. */
  get dataOutstanding(): number {
    return this.write ? this.edtl - this.received : 0;
  }

  /** All write data is in and no R2T is open. */
  get dataComplete(): boolean {
    return this.received === (this.write ? this.edtl : 0) && this.r2ts.length === 0;
  }

  finish(): void {
    this.state = 'done';
    this.resolveFinished();
  }
}
