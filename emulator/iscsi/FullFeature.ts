/**
 * Full feature phase of one connection (RFC 7143 §3.2.2 onward): each PDU the initiator sends
 * after login, in CmdSN order, to the SCSI layer and back.
 *
 * SCSI commands: write data lands in one buffer per command (Task.ts); R2Ts solicit what
 * immediate and unsolicited data did not bring; the command runs once its data is in; the
 * answer goes back as Data-In (status folded into the last one when there is no sense) and/or
 * a SCSI Response with sense and residuals. Text (SendTargets), NOP-Out, Logout here; task
 * management in taskManagement.ts.
 *
 * Memory per connection is bounded: at most QUEUE_DEPTH commands (the window) plus a few
 * immediate ones, each holding at most its EDTL (32 MiB) of write data, with full write buffers
 * capped at WRITE_BUDGET in total; a command beyond the budget keeps only its unsolicited data
 * (at most FirstBurstLength) and is not solicited until a buffer frees.
 */
import { assert } from '../../proto/util/assert.js';
import { BufferPool } from '../net/BufferPool.js';
import { ConnectionError, type Connection, type FullFeaturePhase } from './Connection.js';
import type { Negotiator } from './negotiation.js';
import { NegotiationError, sendTargetsResponse } from './negotiation.js';
import {
  BHS_LENGTH,
  LOGOUT_CLOSE_CONNECTION,
  LOGOUT_CLOSE_SESSION,
  LOGOUT_REMOVE_FOR_RECOVERY,
  LOGOUT_RSP_CID_NOT_FOUND,
  LOGOUT_RSP_RECOVERY_UNSUPPORTED,
  LOGOUT_RSP_SUCCESS,
  REJECT_COMMAND_NOT_SUPPORTED,
  REJECT_IMMEDIATE_COMMAND,
  REJECT_PROTOCOL_ERROR,
  RESERVED_TAG,
  RESPONSE_COMPLETED,
  opcodeName,
} from './opcodes.js';
import {
  buildDataInPdus,
  buildLogoutResponse,
  buildNopIn,
  buildR2T,
  buildScsiResponse,
  buildTaskMgmtResponse,
  buildTextResponse,
  dataInHeaderSpace,
  IscsiPduError,
  parseAhs,
  type DataInSequence,
  type DataOutPdu,
  type FrameSize,
  type InitiatorPdu,
  type LogoutRequestPdu,
  type NopOutPdu,
  type R2TFields,
  type ScsiCommandPdu,
  type ScsiResponseFields,
  type TaskMgmtRequestPdu,
  type TextRequestPdu,
} from './pdu.js';
import { shortenWrite, writeDataLength } from './residual.js';
import { MAX_TRANSFER_BYTES } from './scsi/limits.js';
import type { ScsiLogicalUnits } from './scsi/scsiTarget.js';
import {
  ABORTED_COMMAND,
  ASC_DATA_OFFSET_ERROR,
  ASC_DATA_PHASE_ERROR,
  ASC_INTERNAL_TARGET_FAILURE,
  ASC_INVALID_FIELD_IN_COMMAND_IU,
  checkCondition,
  HARDWARE_ERROR,
  ILLEGAL_REQUEST,
} from './scsi/sense.js';
import { CONDITION_MET, GOOD, type ScsiCommand, type ScsiResult } from './scsi/types.js';
import type { Session } from './Session.js';
import { QUEUE_DEPTH } from './Session.js';
import { Task, type R2TState, type TaskState } from './Task.js';
import { buildText, parseText, splitText, TextError, TextReassembler, type TextPair } from './text.js';

/** Full write buffers one connection may hold at once (pool size classes). */
export const WRITE_BUDGET = 64 * 1024 * 1024;
/** Immediate commands (not counted by the window) one connection may have running. */
export const MAX_IMMEDIATE_TASKS = 16;
/** Warnings of one kind per connection before the rest go to debug. */
const WARN_LIMIT = 20;

const EMPTY = Buffer.alloc(0);
const GOOD_RESULT: ScsiResult = { status: GOOD };

/** What the full feature phase needs from the target. */
export interface FullFeatureHost {
  readonly scsi: ScsiLogicalUnits;
  readonly targetName: string;
  /** Task management (taskManagement.ts); resolves to the TMF response code. */
  taskManagement(ffp: FullFeature, pdu: TaskMgmtRequestPdu): Promise<number>;
  /** After a TARGET COLD RESET response: drop every connection. */
  afterTmfResponse?(ffp: FullFeature, pdu: TaskMgmtRequestPdu, response: number): void;
}

export class FullFeature implements FullFeaturePhase {
  readonly tasks: Map<number, Task>;
  /** Tasks staging unsolicited data until the budget frees a full buffer, in arrival order. */
  private readonly waiting: Task[] = [];
  private budgetUsed = 0;
  private immediateTasks = 0;
  private nextTtt = 1;
  private closed = false;
  private warnings = 0;
  private readonly textIn = new TextReassembler();
  private textOut: { itt: number; ttt: number; parts: Buffer[] } | undefined;
  // Reused field objects: no allocation per PDU for these.
  private readonly resp: ScsiResponseFields = {
    statSN: 0,
    expCmdSN: 0,
    maxCmdSN: 0,
    itt: 0,
    response: 0,
    status: 0,
    dataSegmentLength: 0,
    expDataSN: 0,
    residual: 0,
  };
  private readonly r2t: R2TFields = { statSN: 0, expCmdSN: 0, maxCmdSN: 0, lun: 0, itt: 0, ttt: 0, r2tSN: 0, bufferOffset: 0, desiredDataTransferLength: 0 };
  private readonly dataIn: DataInSequence = {
    statSN: 0,
    expCmdSN: 0,
    maxCmdSN: 0,
    lun: 0,
    itt: 0,
    maxRecvDataSegmentLength: 8192,
    headerDigest: false,
    dataDigest: false,
  };
  private readonly parts: Buffer[] = [];

  constructor(
    readonly conn: Connection,
    readonly session: Session,
    readonly negotiator: Negotiator,
    readonly host: FullFeatureHost,
  ) {
    this.tasks = session.tasks;
  }

  get log() {
    return this.conn.log;
  }

  /** Handles one PDU whose header is in conn.hdr; reads its data segment. False: stop reading. */
  handle(pdu: InitiatorPdu, size: FrameSize): Promise<boolean> | boolean {
    if (this.session.discovery && pdu.kind !== 'text-req' && pdu.kind !== 'logout-req' && pdu.kind !== 'nop-out') {
      return this.rejectPdu(size, REJECT_PROTOCOL_ERROR, `${pdu.kind} in a discovery session (only Text, NOP-Out and Logout are allowed)`);
    }
    switch (pdu.kind) {
      case 'scsi-cmd':
        return this.scsiCommand(pdu, size);
      case 'data-out':
        return this.dataOut(pdu, size);
      case 'nop-out':
        return this.nopOut(pdu, size);
      case 'text-req':
        return this.text(pdu, size);
      case 'tmf-req':
        return this.tmf(pdu, size);
      case 'logout-req':
        return this.logout(pdu, size);
      case 'snack':
        return this.rejectPdu(size, REJECT_PROTOCOL_ERROR, 'SNACK at ErrorRecoveryLevel 0');
      case 'login-req':
        return this.rejectPdu(size, REJECT_PROTOCOL_ERROR, 'Login Request in full feature phase');
    }
  }

  private async rejectPdu(size: FrameSize, reason: number, why: string): Promise<boolean> {
    this.warn({ reason: why }, 'PDU rejected');
    if (!(await this.conn.skipSegment(size))) return false;
    this.conn.reject(reason);
    return true;
  }

  private warn(o: object, msg: string): void {
    if (this.warnings++ < WARN_LIMIT) this.log.warn(o, msg);
    else this.log.debug(o, msg);
  }

  // ================================================================== ordering

  /**
   * Runs a non-SCSI command in CmdSN order. Immediate ones run now; an out-of-window or
   * duplicate CmdSN is ignored (RFC 7143 §4.2.2.1). Returns false when the command was dropped.
   */
  private ordered(cmdSN: number, immediate: boolean, what: string, run: () => void): boolean {
    if (immediate) {
      run();
      return true;
    }
    const w = this.session.window;
    switch (w.check(cmdSN)) {
      case 'now':
        w.accept();
        run();
        w.complete();
        this.runHeld();
        return true;
      case 'later':
        w.hold(cmdSN, () => {
          run();
          w.complete();
        });
        return true;
      default:
        this.dropOutOfWindow(cmdSN, what);
        return false;
    }
  }

  private dropOutOfWindow(cmdSN: number, what: string): void {
    const w = this.session.window;
    this.warn({ cmdSN, expCmdSN: w.expCmdSN, maxCmdSN: w.maxCmdSN, pdu: what }, 'command outside the CmdSN window or a duplicate: ignored (RFC 7143 §4.2.2.1)');
  }

  /** Starts held commands whose turn has come. */
  private runHeld(): void {
    const w = this.session.window;
    for (let item = w.takeNext(); item !== undefined; item = w.takeNext()) {
      w.accept();
      if (item instanceof Task) {
        item.counted = true;
        if (item.aborted) this.finishTask(item);
        else this.startTask(item);
      } else (item as () => void)();
    }
  }

  // ================================================================== SCSI Command

  private async scsiCommand(pdu: ScsiCommandPdu, size: FrameSize): Promise<boolean> {
    const p = this.session.params;
    const conn = this.conn;
    let cdb = pdu.cdb;
    let bidi: number | undefined;
    if (size.ahsLength > 0) {
      try {
        const ahs = parseAhs(conn.hdr, BHS_LENGTH, size.ahsLength);
        if (ahs.extendedCdb !== undefined) cdb = Buffer.concat([cdb, ahs.extendedCdb]);
        bidi = ahs.bidiReadLength;
      } catch (err) {
        if (err instanceof IscsiPduError) throw new ConnectionError(err.message, err.rejectReason);
        throw err;
      }
    }
    const imm = size.dataSegmentLength;
    const edtl = pdu.expectedDataTransferLength;
    if (imm > 0 && !pdu.write) throw new ConnectionError('SCSI Command carries data but has no W bit', REJECT_PROTOCOL_ERROR);
    if (imm > 0 && !p.immediateData) throw new ConnectionError('immediate data sent although ImmediateData=No was negotiated', REJECT_PROTOCOL_ERROR);
    if (imm > edtl) throw new ConnectionError(`immediate data (${imm} bytes) exceeds the Expected Data Transfer Length ${edtl}`, REJECT_PROTOCOL_ERROR);
    if (imm > p.firstBurstLength)
      throw new ConnectionError(`immediate data (${imm} bytes) exceeds FirstBurstLength ${p.firstBurstLength}`, REJECT_PROTOCOL_ERROR);
    if (!pdu.final && (p.initialR2T || !pdu.write)) {
      throw new ConnectionError(
        'SCSI Command without the F bit, but no unsolicited Data-Out may follow (InitialR2T=Yes or not a write)',
        REJECT_PROTOCOL_ERROR,
      );
    }
    const w = this.session.window;
    const admission = pdu.immediate ? 'now' : w.check(pdu.cmdSN);
    if (admission === 'outside' || admission === 'duplicate') {
      this.dropOutOfWindow(pdu.cmdSN, 'SCSI Command');
      return conn.skipSegment(size);
    }
    if (pdu.immediate && this.immediateTasks >= MAX_IMMEDIATE_TASKS) {
      this.warn({ itt: pdu.itt, limit: MAX_IMMEDIATE_TASKS }, 'too many immediate commands: rejected');
      if (!(await conn.skipSegment(size))) return false;
      conn.reject(REJECT_IMMEDIATE_COMMAND);
      return true;
    }
    if (this.tasks.has(pdu.itt)) {
      throw new ConnectionError(`Initiator Task Tag 0x${pdu.itt.toString(16)} is already in use by a running task`, REJECT_PROTOCOL_ERROR);
    }
    const task = new Task(pdu.itt, pdu.lun, pdu.cmdSN, pdu.immediate, pdu.read, pdu.write, edtl, cdb, bidi);
    this.tasks.set(pdu.itt, task);
    if (pdu.immediate) this.immediateTasks++;
    if (pdu.write) {
      task.unsolicitedEnd = p.initialR2T ? imm : Math.min(edtl, p.firstBurstLength);
      task.unsolicitedDone = pdu.final;
      if (edtl > 0) this.giveBuffer(task);
    }
    if (imm > 0) {
      const ok = task.buf === null ? await conn.skipSegment(size) : await conn.readSegmentInto(size, task.buf, 0);
      if (!ok) return false;
      task.received = imm;
    }
    if (pdu.immediate) this.startTask(task);
    else if (admission === 'now') {
      w.accept();
      task.counted = true;
      this.startTask(task);
      this.runHeld();
    } else w.hold(pdu.cmdSN, task);
    return true;
  }

  /** Gives a write task the buffer its data lands in, within the connection's budget. */
  private giveBuffer(task: Task): void {
    if (task.edtl > MAX_TRANSFER_BYTES) {
      // Never allocate what a client asks for beyond the largest transfer we advertise.
      this.warn({ itt: task.itt, edtl: task.edtl, max: MAX_TRANSFER_BYTES }, 'write larger than the maximum transfer length: its data is discarded');
      task.failure = checkCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_COMMAND_IU);
      return;
    }
    const size = BufferPool.bufferSize(task.edtl);
    if (this.waiting.length === 0 && (this.budgetUsed + size <= WRITE_BUDGET || this.budgetUsed === 0)) {
      this.takeBudget(task, size);
      return;
    }
    // Over budget: keep only the unsolicited part until a buffer frees.
    task.buf = Buffer.allocUnsafe(task.unsolicitedEnd);
    task.waitingForBuffer = true;
    this.waiting.push(task);
  }

  private takeBudget(task: Task, size: number): void {
    assert(this.budgetUsed === 0 || this.budgetUsed + size <= WRITE_BUDGET, 'write buffers: beyond WRITE_BUDGET only when none is held');
    const pooled = this.conn.pool.acquire(task.edtl);
    task.pooled = pooled;
    task.budget = size;
    this.budgetUsed += size;
    task.buf = pooled.subarray(0, task.edtl);
  }

  private releaseBuffer(task: Task, reusable: boolean): void {
    if (task.pooled !== null && reusable) this.conn.pool.release(task.pooled);
    task.pooled = null;
    task.buf = null;
    if (task.budget > 0) {
      this.budgetUsed -= task.budget;
      assert(this.budgetUsed >= 0, 'write buffers: a task gives back only the budget it took');
      task.budget = 0;
      this.serveWaiting();
    }
    if (task.waitingForBuffer) {
      task.waitingForBuffer = false;
      const i = this.waiting.indexOf(task);
      if (i >= 0) this.waiting.splice(i, 1);
    }
  }

  private serveWaiting(): void {
    while (this.waiting.length > 0 && !this.closed) {
      const t = this.waiting[0]!;
      const size = BufferPool.bufferSize(t.edtl);
      if (this.budgetUsed + size > WRITE_BUDGET && this.budgetUsed !== 0) return;
      this.waiting.shift();
      const staging = t.buf!;
      t.waitingForBuffer = false;
      this.takeBudget(t, size);
      staging.copy(t.buf!, 0, 0, t.received);
      this.advance(t);
    }
  }

  private startTask(task: Task): void {
    task.state = 'receiving';
    this.advance(task);
  }

  /** Moves a task on after a change: solicit more data, or run it. */
  private advance(task: Task): void {
    if (task.state !== 'receiving') return;
    if (task.write && task.received < task.edtl) {
      if (!task.unsolicitedDone || task.waitingForBuffer) return;
      if (task.failure === undefined) {
        this.solicit(task);
        return;
      }
    }
    if (task.r2ts.length > 0) return;
    this.execute(task);
  }

  /** Sends R2Ts for the data not yet asked for, up to MaxOutstandingR2T sequences of MaxBurstLength. */
  private solicit(task: Task): void {
    const p = this.session.params;
    if (task.r2tNext < task.received) task.r2tNext = task.received;
    while (task.r2ts.length < p.maxOutstandingR2T && task.r2tNext < task.edtl) {
      const len = Math.min(p.maxBurstLength, task.edtl - task.r2tNext);
      const ttt = this.nextTtt;
      this.nextTtt = this.nextTtt === 0xfffffffe ? 1 : this.nextTtt + 1;
      const r: R2TState = { ttt, offset: task.r2tNext, length: len, received: 0, nextDataSN: 0 };
      task.r2ts.push(r);
      task.r2tNext += len;
      const f = this.r2t;
      const s = this.conn.seq(false);
      f.statSN = s.statSN;
      f.expCmdSN = s.expCmdSN;
      f.maxCmdSN = s.maxCmdSN;
      f.lun = Math.max(task.lun, 0);
      f.itt = task.itt;
      f.ttt = ttt;
      f.r2tSN = task.r2tSN++;
      f.bufferOffset = r.offset;
      f.desiredDataTransferLength = len;
      const at = this.conn.beginPdu(0);
      buildR2T(this.conn.out.slab, at, f);
      this.conn.endPdu(at);
    }
    assert(
      task.r2tNext <= task.edtl && task.r2ts.length <= p.maxOutstandingR2T,
      'R2T: at most MaxOutstandingR2T open, none past the expected data transfer length',
    );
  }

  // ================================================================== Data-Out

  private async dataOut(pdu: DataOutPdu, size: FrameSize): Promise<boolean> {
    const conn = this.conn;
    const task = this.tasks.get(pdu.itt);
    const len = size.dataSegmentLength;
    if (task === undefined || task.state === 'done' || task.state === 'running') {
      // Aborted or finished task: its data is late, not wrong (RFC 7143 §4.2.3.3).
      this.log.debug({ itt: pdu.itt, ttt: pdu.ttt }, 'Data-Out for no waiting task: discarded');
      return conn.skipSegment(size);
    }
    if (!task.write) throw new ConnectionError(`Data-Out for task 0x${task.itt.toString(16)}, which is not a write`, REJECT_PROTOCOL_ERROR);
    let r: R2TState | undefined;
    if (pdu.ttt === RESERVED_TAG) {
      if (task.unsolicitedDone) throw new ConnectionError('unsolicited Data-Out after the F bit, or with InitialR2T=Yes', REJECT_PROTOCOL_ERROR);
      if (pdu.dataSN !== task.unsolicitedDataSN)
        return this.dataSequenceError(task, size, `Data-Out DataSN ${pdu.dataSN}, expected ${task.unsolicitedDataSN}`, ASC_DATA_PHASE_ERROR);
      if (pdu.bufferOffset !== task.received)
        return this.dataSequenceError(task, size, `Data-Out BufferOffset ${pdu.bufferOffset}, expected ${task.received}`, ASC_DATA_OFFSET_ERROR);
      if (pdu.bufferOffset + len > task.unsolicitedEnd) {
        throw new ConnectionError(
          `unsolicited data up to ${pdu.bufferOffset + len} exceeds FirstBurstLength/EDTL (${task.unsolicitedEnd})`,
          REJECT_PROTOCOL_ERROR,
        );
      }
    } else {
      for (const x of task.r2ts) if (x.ttt === pdu.ttt) r = x;
      if (r === undefined)
        throw new ConnectionError(`Data-Out with Target Transfer Tag 0x${pdu.ttt.toString(16)}, which no open R2T of the task has`, REJECT_PROTOCOL_ERROR);
      if (pdu.dataSN !== r.nextDataSN)
        return this.dataSequenceError(task, size, `Data-Out DataSN ${pdu.dataSN}, expected ${r.nextDataSN}`, ASC_DATA_PHASE_ERROR);
      if (pdu.bufferOffset !== r.offset + r.received) {
        return this.dataSequenceError(task, size, `Data-Out BufferOffset ${pdu.bufferOffset}, expected ${r.offset + r.received}`, ASC_DATA_OFFSET_ERROR);
      }
      if (r.received + len > r.length) throw new ConnectionError(`Data-Out overruns the R2T's ${r.length} bytes`, REJECT_PROTOCOL_ERROR);
      if (pdu.final && r.received + len !== r.length) throw new ConnectionError('Data-Out with F before the end of the R2T sequence', REJECT_PROTOCOL_ERROR);
    }
    const ok = task.buf === null ? await conn.skipSegment(size) : await conn.readSegmentInto(size, task.buf, pdu.bufferOffset);
    if (!ok) return false;
    // The task may have been aborted while its data streamed in.
    if ((task.state as TaskState) === 'done') return true;
    task.received += len;
    assert(task.received <= task.edtl, 'Data-Out: a task never takes more data than its expected data transfer length');
    if (r === undefined) {
      task.unsolicitedDataSN++;
      if (pdu.final) task.unsolicitedDone = true;
    } else {
      r.nextDataSN++;
      r.received += len;
      if (r.received === r.length) task.r2ts.splice(task.r2ts.indexOf(r), 1);
    }
    this.advance(task);
    return true;
  }

  /**
   * A Data-Out out of sequence (DataSN or BufferOffset): the PDU is rejected and its data
   * dropped, and the task ends with ABORTED COMMAND; the connection and the other tasks go
   * on (one initiator's bug costs one command, not the session). Later Data-Out of the task
   * finds it done and is discarded.
   */
  private async dataSequenceError(task: Task, size: FrameSize, reason: string, asc: number): Promise<boolean> {
    this.log.warn({ itt: task.itt, reason }, 'Data-Out out of sequence: rejecting it and ending the task with ABORTED COMMAND');
    if (!(await this.conn.skipSegment(size))) return false;
    this.conn.reject(REJECT_PROTOCOL_ERROR);
    if ((task.state as TaskState) === 'done') return true;
    task.failure ??= checkCondition(ABORTED_COMMAND, asc);
    task.unsolicitedDone = true;
    task.r2ts.length = 0;
    this.advance(task);
    return true;
  }

  // ================================================================== execution and response

  private execute(task: Task): void {
    assert(task.r2ts.length === 0, 'R2T: a task runs with no R2T open');
    assert(task.failure !== undefined || !task.write || task.received === task.edtl, 'a write runs only once all its data is in');
    task.state = 'running';
    if (task.failure !== undefined) {
      this.complete(task, task.failure, true);
      return;
    }
    if (task.write && !task.read && !this.fitWrite(task)) {
      this.complete(task, GOOD_RESULT, true);
      return;
    }
    const cmd: ScsiCommand = {
      cdb: task.cdb,
      lun: task.lun,
      nexus: this.session.nexus,
      dataOut: task.write && task.buf !== null ? task.buf : EMPTY,
      expectedDataInLength: task.read ? (task.write ? (task.bidiReadLength ?? 0) : task.edtl) : 0,
    };
    this.host.scsi.execute(cmd).then(
      (r) => this.complete(task, r, true),
      (err: unknown) => {
        this.log.error({ err, itt: task.itt }, 'SCSI layer threw: answering HARDWARE ERROR');
        this.complete(task, checkCondition(HARDWARE_ERROR, ASC_INTERNAL_TARGET_FAILURE), false);
      },
    );
  }

  /**
   * Residuals of a WRITE-family command: EDTL above the CDB's length is underflow (the CDB's
   * length is written); below it is overflow, and only EDTL's whole blocks are written (the
   * CDB is shortened). Returns false when nothing is left to write (answer GOOD at once).
   */
  private fitWrite(task: Task): boolean {
    const bs = this.session.lunDevices.get(task.lun)?.device.blockSize;
    if (bs === undefined) return true;
    const wanted = writeDataLength(task.cdb, bs);
    if (wanted === undefined) return true;
    task.writeResidual = task.edtl - wanted;
    if (wanted <= task.edtl) return true;
    return shortenWrite(task.cdb, Math.floor(task.edtl / bs));
  }

  private complete(task: Task, r: ScsiResult, reusable: boolean): void {
    this.releaseBuffer(task, reusable);
    const silent = task.aborted || this.closed;
    this.finishTask(task);
    if (silent) {
      // Nothing was queued from it: the pooled read buffer is free.
      if (r.dataInBuffer !== undefined) this.conn.pool.release(r.dataInBuffer);
      return;
    }
    try {
      this.respond(task, r);
    } catch (err) {
      this.log.error({ err, itt: task.itt }, 'building the response failed');
    }
  }

  /** Forgets a task and frees its window slot (before the response, so it carries the opened window). */
  finishTask(task: Task): void {
    if (task.state === 'done') return;
    if (this.tasks.get(task.itt) === task) this.tasks.delete(task.itt);
    if (task.counted) {
      task.counted = false;
      this.session.window.complete();
    }
    if (task.immediate) {
      this.immediateTasks--;
      assert(this.immediateTasks >= 0, 'immediate commands: each finishes once');
    }
    task.finish();
  }

  private respond(task: Task, r: ScsiResult): void {
    let data = r.dataIn;
    let residual: number;
    if (task.write && !task.read) {
      residual = task.writeResidual;
      data = undefined;
    } else {
      const want = task.read ? (task.write ? (task.bidiReadLength ?? 0) : task.edtl) : 0;
      const have = data === undefined ? 0 : data.length;
      residual = want - have;
      if (data !== undefined && have > want) data = data.subarray(0, want);
    }
    const ok = r.sense === undefined && (r.status === GOOD || r.status === CONDITION_MET);
    if (data !== undefined && data.length > 0) {
      if (ok) {
        this.sendDataIn(task, data, r.status, residual, r.dataInBuffer);
        return;
      }
      this.sendDataIn(task, data, undefined, 0, r.dataInBuffer);
    } else if (r.dataInBuffer !== undefined) {
      this.conn.pool.release(r.dataInBuffer); // none of it is sent
    }
    this.sendResponse(task, r.status, r.sense, residual);
  }

  /** `owned`: the pooled buffer payload is a view of, released once the socket has sent it all. */
  private sendDataIn(task: Task, payload: Buffer, status: number | undefined, residual: number, owned?: Buffer): void {
    const conn = this.conn;
    const s = this.dataIn;
    const seq = conn.seq(status !== undefined);
    s.statSN = seq.statSN;
    s.expCmdSN = seq.expCmdSN;
    s.maxCmdSN = seq.maxCmdSN;
    s.lun = Math.max(task.lun, 0);
    s.itt = task.itt;
    s.maxRecvDataSegmentLength = conn.sendLimit;
    s.maxBurstLength = this.session.params.maxBurstLength;
    s.dataSN = task.dataSN;
    s.status = status;
    s.residual = residual;
    s.headerDigest = conn.limits.headerDigest;
    s.dataDigest = conn.limits.dataDigest;
    const headers = conn.out.scratch(dataInHeaderSpace(payload.length, conn.sendLimit));
    const parts = this.parts;
    parts.length = 0;
    task.dataSN = buildDataInPdus(parts, headers, payload, s);
    const last = parts.length - 1;
    for (let i = 0; i < last; i++) conn.out.queue(parts[i]!);
    // Parts leave in order: once the last is sent, so is every view of `owned`.
    conn.out.queue(parts[last]!, owned === undefined ? undefined : (ok) => ok && this.conn.pool.release(owned));
    parts.length = 0;
  }

  private sendResponse(task: Task, status: number, sense: Buffer | undefined, residual: number): void {
    const conn = this.conn;
    let segment: Buffer | undefined;
    if (sense !== undefined && sense.length > 0) {
      segment = Buffer.allocUnsafe(2 + sense.length);
      segment.writeUInt16BE(sense.length, 0);
      sense.copy(segment, 2);
    }
    const f = this.resp;
    const seq = conn.seq(true);
    f.statSN = seq.statSN;
    f.expCmdSN = seq.expCmdSN;
    f.maxCmdSN = seq.maxCmdSN;
    f.itt = task.itt;
    f.response = RESPONSE_COMPLETED;
    f.status = status;
    f.dataSegmentLength = segment === undefined ? 0 : segment.length;
    f.expDataSN = task.read ? task.dataSN : task.r2tSN;
    f.residual = residual;
    const at = conn.beginPdu(f.dataSegmentLength);
    buildScsiResponse(conn.out.slab, at, f);
    conn.endPdu(at, segment);
  }

  /** Stops a task for task management: no response will be sent for it. */
  abortTask(task: Task): void {
    if (task.state === 'done' || task.aborted) return;
    task.aborted = true;
    if (task.state === 'running') return; // complete() drops the result
    if (task.state === 'held') return; // runHeld() finishes it when its CmdSN comes up
    this.releaseBuffer(task, true);
    this.finishTask(task);
  }

  // ================================================================== NOP-Out

  private async nopOut(pdu: NopOutPdu, size: FrameSize): Promise<boolean> {
    const data = await this.conn.readSegment(size);
    if (data === null) return false;
    if (pdu.itt === RESERVED_TAG) return true; // answer to our NOP-In, or a ping that wants no reply
    // Echo the ping data (RFC 7143 §11.19), at most what the initiator can receive.
    const echo = data.length > this.conn.sendLimit ? data.subarray(0, this.conn.sendLimit) : data;
    const held = pdu.immediate ? echo : Buffer.from(echo);
    this.ordered(pdu.cmdSN, pdu.immediate, 'NOP-Out', () => {
      const at = this.conn.beginPdu(held.length);
      buildNopIn(this.conn.out.slab, at, {
        ...this.conn.seq(true),
        lun: Math.max(pdu.lun, 0),
        itt: pdu.itt,
        ttt: RESERVED_TAG,
        dataSegmentLength: held.length,
      });
      this.conn.endPdu(at, held);
    });
    return true;
  }

  // ================================================================== Text

  private async text(pdu: TextRequestPdu, size: FrameSize): Promise<boolean> {
    const data = await this.conn.readSegment(size);
    if (data === null) return false;
    this.ordered(pdu.cmdSN, pdu.immediate, 'Text Request', () => this.textStep(pdu, data));
    return true;
  }

  private textStep(pdu: TextRequestPdu, data: Buffer): void {
    const out = this.textOut;
    if (out !== undefined && pdu.ttt === out.ttt && pdu.itt === out.itt && data.length === 0) {
      this.sendTextPart(pdu);
      return;
    }
    this.textOut = undefined;
    let pairs: TextPair[];
    let full: Buffer | null;
    try {
      full = this.textIn.push(data, pdu.continue);
      if (full === null) {
        // More of the request to come: ask for it with an empty response and a TTT.
        this.sendText(pdu, EMPTY, false, true, this.takeTtt());
        return;
      }
      pairs = parseText(full);
    } catch (err) {
      if (!(err instanceof TextError)) throw err;
      this.textIn.reset();
      this.warn({ reason: err.message }, 'malformed Text Request: rejected');
      this.conn.reject(REJECT_PROTOCOL_ERROR);
      return;
    }
    let response: TextPair[];
    try {
      const step = this.negotiator.text(pairs);
      response = step.response;
      if (step.sendTargets !== undefined) {
        const addr = this.conn.localAddress.includes(':') ? `[${this.conn.localAddress}]` : this.conn.localAddress;
        const listing = [{ name: this.host.targetName, addresses: [`${addr}:${this.conn.localPort},${this.negotiator.config.targetPortalGroupTag}`] }];
        response.push(...sendTargetsResponse(step.sendTargets, listing, this.session.params));
      }
    } catch (err) {
      if (!(err instanceof NegotiationError)) throw err;
      this.warn({ reason: err.message }, 'Text Request refused');
      this.conn.reject(REJECT_PROTOCOL_ERROR);
      return;
    }
    this.conn.sendLimit = this.session.params.initiatorMaxRecvDataSegmentLength;
    const body = response.length === 0 ? EMPTY : buildText(response);
    const parts = splitText(body, this.conn.sendLimit);
    if (parts.length === 1) {
      this.sendText(pdu, parts[0]!, true, false, RESERVED_TAG);
      return;
    }
    this.textOut = { itt: pdu.itt, ttt: this.takeTtt(), parts };
    this.sendTextPart(pdu);
  }

  private sendTextPart(pdu: TextRequestPdu): void {
    const out = this.textOut!;
    const part = out.parts.shift()!;
    const last = out.parts.length === 0;
    if (last) this.textOut = undefined;
    this.sendText(pdu, part, last, !last, last ? RESERVED_TAG : out.ttt);
  }

  private sendText(pdu: TextRequestPdu, body: Buffer, final: boolean, cont: boolean, ttt: number): void {
    const at = this.conn.beginPdu(body.length);
    buildTextResponse(this.conn.out.slab, at, { ...this.conn.seq(true), final, continue: cont, lun: 0, itt: pdu.itt, ttt, dataSegmentLength: body.length });
    this.conn.endPdu(at, body);
  }

  private takeTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt === 0xfffffffe ? 1 : this.nextTtt + 1;
    return t;
  }

  // ================================================================== Task management

  private async tmf(pdu: TaskMgmtRequestPdu, size: FrameSize): Promise<boolean> {
    if (!(await this.conn.skipSegment(size))) return false;
    this.ordered(pdu.cmdSN, pdu.immediate, 'Task Management Request', () => {
      void this.host.taskManagement(this, pdu).then(
        (response) => {
          if (this.closed) return;
          const at = this.conn.beginPdu(0);
          buildTaskMgmtResponse(this.conn.out.slab, at, { ...this.conn.seq(true), itt: pdu.itt, response });
          this.conn.endPdu(at);
          this.host.afterTmfResponse?.(this, pdu, response);
        },
        (err: unknown) => this.log.error({ err }, 'task management failed'),
      );
    });
    return true;
  }

  // ================================================================== Logout

  private async logout(pdu: LogoutRequestPdu, size: FrameSize): Promise<boolean> {
    if (!(await this.conn.skipSegment(size))) return false;
    const w = this.session.window;
    if (!pdu.immediate) {
      const adm = w.check(pdu.cmdSN);
      if (adm === 'outside' || adm === 'duplicate') {
        this.dropOutOfWindow(pdu.cmdSN, 'Logout Request');
        return true;
      }
      if (adm === 'now') {
        w.accept();
        w.complete();
      }
    }
    let response = LOGOUT_RSP_SUCCESS;
    if (pdu.reasonCode === LOGOUT_REMOVE_FOR_RECOVERY) response = LOGOUT_RSP_RECOVERY_UNSUPPORTED;
    else if (pdu.reasonCode === LOGOUT_CLOSE_CONNECTION && pdu.cid !== this.conn.cid) response = LOGOUT_RSP_CID_NOT_FOUND;
    else if (pdu.reasonCode !== LOGOUT_CLOSE_SESSION && pdu.reasonCode !== LOGOUT_CLOSE_CONNECTION) {
      this.warn({ reason: pdu.reasonCode }, 'Logout Request with an unknown reason code: rejected');
      this.conn.reject(REJECT_COMMAND_NOT_SUPPORTED);
      return true;
    }
    if (response !== LOGOUT_RSP_SUCCESS) {
      this.sendLogout(pdu, response);
      return true;
    }
    // Close: finish what runs (their responses go out first), drop what waits for data.
    this.conn.stop();
    await this.quiesce();
    this.sendLogout(pdu, LOGOUT_RSP_SUCCESS);
    this.log.info(
      {
        initiator: this.session.initiatorName,
        tsih: this.session.tsih,
        reason: pdu.reasonCode === LOGOUT_CLOSE_SESSION ? 'close session' : 'close connection',
      },
      'initiator logged out',
    );
    return false;
  }

  private sendLogout(pdu: LogoutRequestPdu, response: number): void {
    const at = this.conn.beginPdu(0);
    buildLogoutResponse(this.conn.out.slab, at, { ...this.conn.seq(true), itt: pdu.itt, response, time2Wait: 0, time2Retain: 0 });
    this.conn.endPdu(at);
  }

  /** Aborts tasks still waiting for data and waits for running ones (which still answer). */
  private async quiesce(): Promise<void> {
    for (const item of this.session.window.dropHeld()) if (item instanceof Task) this.abortHeld(item);
    const running: Promise<void>[] = [];
    for (const t of [...this.tasks.values()]) {
      if (t.state === 'running') running.push(t.finished);
      else this.abortTask(t);
    }
    await Promise.all(running);
  }

  private abortHeld(task: Task): void {
    task.aborted = true;
    this.releaseBuffer(task, true);
    this.finishTask(task);
  }

  /**
   * The connection is ending (EOF, error, logout, target close): tasks waiting for data are
   * dropped, running ones finish and answer if the socket still takes it; then nothing more is sent.
   */
  async shutdown(): Promise<void> {
    if (this.closed) return;
    await this.quiesce();
    this.closed = true;
  }

  /** For logs: the opcode name of the PDU being handled. */
  static pduName(hdr: Buffer): string {
    return opcodeName(hdr[0]! & 0x3f);
  }
}

export { QUEUE_DEPTH };
