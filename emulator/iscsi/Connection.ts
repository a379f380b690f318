/**
 * One TCP connection from accept to close: framing of the byte stream into PDUs, the login
 * phase, the hand-over to full feature phase (FullFeature.ts), the send primitives every
 * handler uses, and teardown.
 *
 * Reading is one loop: a BHS, its AHS and header digest, then the data segment, which the
 * PDU's handler reads itself (straight into a write buffer for Data-Out), so nothing is ever
 * buffered beyond the negotiated MaxRecvDataSegmentLength. Teardown runs once whatever ends the
 * connection; running SCSI commands finish before the session's export handles close.
 */
import type { Socket } from 'node:net';
import type { BufferPool } from '../net/BufferPool.js';
import { BatchedWriter } from '../net/BatchedWriter.js';
import type { InputQueue } from '../net/InputQueue.js';
import { LOGIN_MRDSL, LoginExchange, LoginFailure, type LoginHost, type LoginIdentity } from './login.js';
import type { SessionParams, TargetNegotiationConfig } from './negotiation.js';
import {
  BHS_LENGTH,
  DIGEST_LENGTH,
  ISCSI_VERSION,
  LOGIN_CLASS_INITIATOR_ERROR,
  LOGIN_CLASS_SUCCESS,
  LOGIN_CLASS_TARGET_ERROR,
  LOGIN_INIT_ERROR,
  LOGIN_TARGET_ERROR,
  OPCODE_MASK,
  REJECT_DATA_DIGEST_ERROR,
  opcodeName,
} from './opcodes.js';
import {
  buildLoginResponse,
  buildReject,
  dataDigest,
  dataSegmentTrailer,
  DEFAULT_MAX_AHS_LENGTH,
  frameSize,
  IscsiPduError,
  parseBhs,
  readDigest,
  sealHeader,
  verifyHeaderDigest,
  type FrameLimits,
  type FrameSize,
  type InitiatorPdu,
  type LoginRequestPdu,
  type TargetSeq,
} from './pdu.js';
import type { Session } from './Session.js';
import type { IscsiAuthOptions, IscsiLogger } from './types.js';

/**
 * What a connection needs of its full feature phase (FullFeature.ts implements it): the small
 * interface keeps this file from importing FullFeature, which imports it.
 */
export interface FullFeaturePhase {
  /** Handles one PDU whose header is in conn.hdr; reads its data segment. False: stop reading. */
  handle(pdu: InitiatorPdu, size: FrameSize): Promise<boolean> | boolean;
  /** The connection is ending: settle the session's tasks; nothing is sent after it resolves. */
  shutdown(): Promise<void>;
}

/** What a connection needs from its target. */
export interface ConnectionContext {
  readonly targetName: string;
  /** The CHAP an initiator must pass (its host's, else the target's), or undefined for none. */
  authFor(initiatorName: string | undefined): IscsiAuthOptions | undefined;
  readonly chapAlgorithms?: readonly number[] | undefined;
  readonly config: TargetNegotiationConfig;
  readonly logger: IscsiLogger;
  readonly loginTimeoutMs: number;
  readonly pool: BufferPool;
  /** Login complete: create the session (throws LoginFailure). */
  openSession(conn: Connection, params: SessionParams, id: LoginIdentity): Session;
  /** Starts full feature phase on a connection whose session was just created. */
  startFullFeature(conn: Connection, session: Session): FullFeaturePhase;
  /** The connection is gone: the session ends with it (MaxConnections=1, ErrorRecoveryLevel 0). */
  connectionClosed(conn: Connection): void;
  /** A login ended in a refusal (after its final response was queued): the failed-login throttle counts it. */
  loginRefused?(conn: Connection, failure: LoginFailure): void;
  /** A login reached full feature phase. */
  loggedIn?(conn: Connection): void;
}

/** A protocol violation the connection cannot recover from at ErrorRecoveryLevel 0. */
export class ConnectionError extends Error {
  constructor(
    message: string,
    /** Reject reason to send (with the offending header) before closing, if any. */
    readonly rejectReason?: number,
  ) {
    super(message);
    this.name = 'ConnectionError';
  }
}

/** A data segment whose digest did not match: the caller decides (Reject, or drop the connection). */
export class DataDigestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataDigestError';
  }
}

/** How long a closing socket may take to flush before it is destroyed. */
const CLOSE_GRACE_MS = 5000;
/** Stop reading while this much output is queued on a client that does not read. */
const OUTPUT_HIGH_WATER = 16 * 1024 * 1024;
/** Output slab: 256 KiB holds the headers of a burst of completions (Data-In, SCSI Response, R2T) in one write. */
const OUTPUT_SLAB = 256 * 1024;
/** Copy step when streaming a large data segment into its buffer. */
const FILL_STEP = 256 * 1024;

let nextId = 1;

/** Received bytes buffered before the socket is paused. */
export const INPUT_HIGH_WATER = 512 * 1024;

export class Connection {
  readonly id = `iscsi-${nextId++}`;
  readonly log: IscsiLogger;
  readonly remoteAddress: string;
  readonly localAddress: string;
  readonly localPort: number;
  readonly input: InputQueue;
  readonly out: BatchedWriter;
  /** Framing limits: 8192 and no digests during login, the negotiated values after. */
  readonly limits: FrameLimits = { maxRecvDataSegmentLength: LOGIN_MRDSL, headerDigest: false, dataDigest: false, maxAhsLength: DEFAULT_MAX_AHS_LENGTH };
  /** The BHS, AHS and header digest of the PDU being handled (its first 48 bytes go into a Reject). */
  readonly hdr = Buffer.alloc(BHS_LENGTH + DEFAULT_MAX_AHS_LENGTH + DIGEST_LENGTH);
  /** Initiator's MaxRecvDataSegmentLength: the largest data segment we send. */
  sendLimit = LOGIN_MRDSL;
  statSN = 0;
  /** Connection ID the initiator gave at login. */
  cid = 0;
  session: Session | undefined;
  ffp: FullFeaturePhase | undefined;
  /** Resolves once the connection is closed and its session torn down. */
  readonly done: Promise<void>;
  /** Set when the connection must stop reading (logout, error, shutdown). */
  stopping = false;

  private readonly seqFields: TargetSeq = { statSN: 0, expCmdSN: 0, maxCmdSN: 0 };
  private finished = false;
  private drainWaiter: (() => void) | null = null;

  /** `input` reads `socket` (InputQueue.adopt with INPUT_HIGH_WATER). */
  constructor(
    readonly socket: Socket,
    input: InputQueue,
    readonly ctx: ConnectionContext,
  ) {
    const host = socket.remoteAddress ?? 'unknown';
    this.remoteAddress = host.includes(':') ? `[${host}]:${socket.remotePort}` : `${host}:${socket.remotePort}`;
    this.localAddress = socket.localAddress ?? '127.0.0.1';
    this.localPort = socket.localPort ?? 3260;
    this.log = ctx.logger.child({ conn: this.id, remote: this.remoteAddress });
    socket.setNoDelay(true);
    socket.on('error', this.onSocketError);
    this.input = input;
    this.out = new BatchedWriter(socket, OUTPUT_SLAB);
    this.out.onDrain(() => {
      const w = this.drainWaiter;
      this.drainWaiter = null;
      w?.();
    });
    this.done = this.run().catch((err: unknown) => this.log.error({ err }, 'connection teardown failed'));
  }

  get pool(): BufferPool {
    return this.ctx.pool;
  }

  // ------------------------------------------------------------------ lifecycle

  private async run(): Promise<void> {
    const timer = setTimeout(() => {
      if (this.ffp !== undefined) return;
      this.log.warn({ timeoutMs: this.ctx.loginTimeoutMs }, 'login did not complete in time: closing the connection');
      this.stop();
      this.socket.destroy();
    }, this.ctx.loginTimeoutMs);
    try {
      await this.readLoop();
    } catch (err) {
      this.log.error({ err }, 'connection failed');
    } finally {
      clearTimeout(timer);
      await this.teardown();
    }
  }

  /** Stops reading; the read loop ends at its next wait. */
  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.input.detach();
  }

  /** Flushes what is queued, then ends the socket; destroys it if it lingers. */
  endSocket(): void {
    const s = this.socket;
    this.out.flush();
    if (!s.destroyed && !s.writableEnded) s.end();
    setTimeout(() => s.destroy(), CLOSE_GRACE_MS).unref();
  }

  destroy(): void {
    this.stop();
    this.socket.destroy();
  }

  private async teardown(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    this.stop();
    try {
      await this.ffp?.shutdown();
    } catch (err) {
      this.log.error({ err }, 'ending the session failed');
    }
    this.endSocket();
    this.ctx.connectionClosed(this);
    await this.closed();
    this.log.debug('connection closed');
  }

  private closed(): Promise<void> {
    const s = this.socket;
    if (s.closed) return Promise.resolve();
    return new Promise((resolve) => {
      s.once('close', () => resolve());
      if (s.closed) resolve();
    });
  }

  private readonly onSocketError = (err: Error & { code?: string }): void => {
    this.log.debug({ code: err.code, msg: err.message }, 'socket error');
  };

  // ------------------------------------------------------------------ reading

  private async readLoop(): Promise<void> {
    const input = this.input;
    const hdr = this.hdr;
    for (;;) {
      if (this.stopping) return;
      if (this.out.pending > OUTPUT_HIGH_WATER && !this.out.closed) {
        // The initiator does not read its responses: stop taking new work until it does.
        await new Promise<void>((resolve) => (this.drainWaiter = resolve));
        continue;
      }
      if (input.length < BHS_LENGTH && !(await input.need(BHS_LENGTH))) return;
      input.consume(BHS_LENGTH);
      input.buf.copy(hdr, 0, input.off, input.off + BHS_LENGTH);
      let size: FrameSize;
      try {
        size = frameSize(hdr, 0, this.limits);
      } catch (err) {
        if (!(err instanceof IscsiPduError)) throw err;
        this.log.warn({ pdu: opcodeName(hdr[0]! & OPCODE_MASK), reason: err.message }, 'malformed PDU: closing the connection');
        if (this.ffp !== undefined) this.reject(err.rejectReason);
        return;
      }
      const extra = size.ahsLength + size.headerDigestLength;
      if (extra > 0) {
        if (input.length < extra && !(await input.need(extra))) return;
        input.consume(extra);
        input.buf.copy(hdr, BHS_LENGTH, input.off, input.off + extra);
        if (size.headerDigestLength > 0) {
          try {
            verifyHeaderDigest(hdr, 0, size.ahsLength);
          } catch (err) {
            // Nothing after a bad header can be trusted: its lengths may be wrong (RFC 7143 §7.8).
            this.log.warn({ reason: (err as Error).message }, 'header digest error: closing the connection');
            return;
          }
        }
      }
      let pdu: InitiatorPdu;
      try {
        pdu = parseBhs(hdr);
      } catch (err) {
        if (!(err instanceof IscsiPduError)) throw err;
        this.log.warn({ reason: err.message }, 'PDU rejected');
        if (!(await this.skipSegment(size))) return;
        if (this.ffp === undefined) return; // during login anything but a Login Request ends the login
        this.reject(err.rejectReason);
        continue;
      }
      try {
        if (this.ffp !== undefined) {
          if (!(await this.ffp.handle(pdu, size))) return;
        } else {
          if (pdu.kind !== 'login-req') {
            this.log.warn({ pdu: opcodeName(hdr[0]! & OPCODE_MASK) }, 'PDU other than Login Request during login: closing the connection');
            return;
          }
          if (!(await this.loginStep(pdu, size))) return;
        }
      } catch (err) {
        if (err instanceof ConnectionError) {
          this.log.warn({ pdu: opcodeName(hdr[0]! & OPCODE_MASK), itt: hdr.readUInt32BE(16), reason: err.message }, 'protocol error: closing the connection');
          if (err.rejectReason !== undefined) this.reject(err.rejectReason);
          return;
        }
        if (err instanceof DataDigestError) {
          this.log.warn({ pdu: opcodeName(hdr[0]! & OPCODE_MASK), reason: err.message }, 'data digest error: rejecting the PDU and closing the connection');
          this.reject(REJECT_DATA_DIGEST_ERROR);
          return;
        }
        throw err;
      }
    }
  }

  /**
   * Reads the current PDU's data segment (with padding and digest) and returns it: a view of
   * the socket's chunk when it sits in one, else a copy. Null when the stream ended.
   */
  async readSegment(size: FrameSize): Promise<Buffer | null> {
    const len = size.dataSegmentLength;
    const total = size.paddedDataLength + size.dataDigestLength;
    if (total === 0) return EMPTY;
    if (this.input.length < total && !(await this.input.need(total))) return null;
    const data = this.input.take(len);
    this.input.consume(size.paddedDataLength - len + size.dataDigestLength);
    if (size.dataDigestLength > 0) this.checkDigest(data, 0, len, this.input.buf, this.input.off + size.paddedDataLength - len);
    return data;
  }

  /** Reads the current PDU's data segment into dest[at, at + length). False when the stream ended. */
  async readSegmentInto(size: FrameSize, dest: Buffer, at: number): Promise<boolean> {
    const len = size.dataSegmentLength;
    if (len > 0 && !(await this.input.fill(dest.subarray(at, at + len), len, FILL_STEP))) return false;
    const tail = size.paddedDataLength - len + size.dataDigestLength;
    if (tail === 0) return true;
    if (this.input.length < tail && !(await this.input.need(tail))) return false;
    this.input.consume(tail);
    if (size.dataDigestLength > 0) this.checkDigest(dest, at, at + len, this.input.buf, this.input.off + tail - DIGEST_LENGTH);
    return true;
  }

  /** Drops the current PDU's data segment as it streams in. False when the stream ended. */
  skipSegment(size: FrameSize): Promise<boolean> {
    const total = size.paddedDataLength + size.dataDigestLength;
    return total === 0 ? Promise.resolve(true) : this.input.discard(total);
  }

  private checkDigest(data: Buffer, start: number, end: number, digestBuf: Buffer, digestAt: number): void {
    const want = dataDigest(data, start, end);
    const got = readDigest(digestBuf, digestAt);
    if (want !== got) throw new DataDigestError(`data digest mismatch: computed 0x${want.toString(16)}, received 0x${got.toString(16)}`);
  }

  // ------------------------------------------------------------------ login

  private login: LoginExchange | undefined;

  /** The login's negotiator: full feature Text requests continue with it. */
  get negotiator() {
    return this.login?.negotiator;
  }

  private async loginStep(pdu: LoginRequestPdu, size: FrameSize): Promise<boolean> {
    const data = await this.readSegment(size);
    if (data === null) return false;
    if (this.login === undefined) {
      this.login = new LoginExchange(this.loginHost());
      // StatSN starts where the initiator expects it (its ExpStatSN of the first request).
      this.statSN = hdrExpStatSN(this.hdr);
    }
    let session: Session | undefined;
    try {
      const r = this.login.handle(pdu, data);
      const seq = this.seqFields;
      seq.statSN = this.statSN++;
      seq.expCmdSN = pdu.cmdSN;
      seq.maxCmdSN = (pdu.cmdSN + 127) >>> 0;
      if (r.fullFeature) {
        session = this.session!;
        seq.expCmdSN = session.window.expCmdSN;
        seq.maxCmdSN = session.window.maxCmdSN;
      }
      const at = this.beginPdu(r.text.length);
      buildLoginResponse(this.out.slab, at, {
        ...seq,
        transit: r.transit,
        continue: r.continue,
        csg: r.csg,
        nsg: r.nsg,
        versionMax: ISCSI_VERSION,
        versionActive: ISCSI_VERSION,
        isid: pdu.isid,
        tsih: r.tsih,
        itt: pdu.itt,
        statusClass: r.statusClass,
        statusDetail: r.statusDetail,
        dataSegmentLength: r.text.length,
      });
      this.endPdu(at, r.text);
    } catch (err) {
      const f =
        err instanceof LoginFailure
          ? err
          : new LoginFailure(`internal error during login: ${err instanceof Error ? err.message : String(err)}`, LOGIN_CLASS_TARGET_ERROR, LOGIN_TARGET_ERROR);
      if (!(err instanceof LoginFailure)) this.log.error({ err }, 'login failed on a target error');
      const p = this.login.params;
      this.log.warn(
        {
          initiator: p.initiatorName,
          sessionType: p.sessionType,
          status: `0x${((f.statusClass << 8) | f.statusDetail).toString(16).padStart(4, '0')}`,
          ...(this.login.authLabel !== undefined ? { chap: this.login.authLabel } : {}),
          reason: f.message,
        },
        'login refused',
      );
      this.sendLoginFailure(pdu, f.statusClass, f.statusDetail);
      this.ctx.loginRefused?.(this, f);
      return false;
    }
    if (session !== undefined) {
      const p = session.params;
      this.sendLimit = p.initiatorMaxRecvDataSegmentLength;
      this.limits.maxRecvDataSegmentLength = p.targetMaxRecvDataSegmentLength;
      this.limits.headerDigest = p.headerDigest;
      this.limits.dataDigest = p.dataDigest;
      this.ffp = this.ctx.startFullFeature(this, session);
      this.log.info(
        {
          initiator: p.initiatorName,
          sessionType: p.sessionType,
          isid: session.info().isid,
          tsih: session.tsih,
          auth: p.authMethod ?? 'None',
          ...(this.login!.authLabel !== undefined ? { chap: this.login!.authLabel } : {}),
          headerDigest: p.headerDigest,
          dataDigest: p.dataDigest,
          luns: session.luns.size,
        },
        'initiator logged in',
      );
      this.ctx.loggedIn?.(this);
    }
    return true;
  }

  private loginHost(): LoginHost {
    const conn = this;
    return {
      targetName: this.ctx.targetName,
      authFor: (name) => this.ctx.authFor(name),
      chapAlgorithms: this.ctx.chapAlgorithms,
      config: this.ctx.config,
      enterFullFeature(params, id) {
        conn.cid = id.cid;
        const s = conn.ctx.openSession(conn, params, id);
        conn.session = s;
        return s.tsih;
      },
    };
  }

  private sendLoginFailure(pdu: LoginRequestPdu, statusClass: number, statusDetail: number): void {
    const at = this.beginPdu(0);
    buildLoginResponse(this.out.slab, at, {
      statSN: this.statSN++,
      expCmdSN: pdu.cmdSN,
      maxCmdSN: pdu.cmdSN,
      transit: false,
      continue: false,
      csg: pdu.csg,
      nsg: 0,
      versionMax: ISCSI_VERSION,
      versionActive: ISCSI_VERSION,
      isid: pdu.isid,
      tsih: 0,
      itt: pdu.itt,
      statusClass: statusClass === LOGIN_CLASS_SUCCESS ? LOGIN_CLASS_INITIATOR_ERROR : statusClass,
      statusDetail: statusClass === LOGIN_CLASS_SUCCESS ? LOGIN_INIT_ERROR : statusDetail,
      dataSegmentLength: 0,
    });
    this.endPdu(at);
  }

  // ------------------------------------------------------------------ sending

  /** The StatSN/ExpCmdSN/MaxCmdSN of a PDU; `advance` when the PDU carries status. */
  seq(advance: boolean): TargetSeq {
    const s = this.seqFields;
    s.statSN = advance ? this.statSN++ : this.statSN;
    const w = this.session!.window;
    s.expCmdSN = w.expCmdSN;
    s.maxCmdSN = w.maxCmdSN;
    return s;
  }

  /**
   * Reserves room for a PDU with a data segment of dataLength bytes; the caller writes the BHS
   * at the returned offset of `out.slab`, then calls endPdu.
   */
  beginPdu(dataLength: number): number {
    const hl = BHS_LENGTH + (this.limits.headerDigest ? DIGEST_LENGTH : 0);
    const dl = dataLength > 0 ? ((dataLength + 3) & ~3) + (this.limits.dataDigest ? DIGEST_LENGTH : 0) : 0;
    return this.out.reserve(hl + dl);
  }

  /** Seals the header (digest) and copies the data segment, padding and data digest. */
  endPdu(at: number, data?: Buffer): void {
    const slab = this.out.slab;
    let p = at + BHS_LENGTH;
    if (this.limits.headerDigest) {
      sealHeader(slab, at);
      p += DIGEST_LENGTH;
    }
    if (data !== undefined && data.length > 0) {
      data.copy(slab, p);
      p += data.length;
      dataSegmentTrailer(slab, p, data, this.limits.dataDigest);
    }
  }

  /** Reject (RFC 7143 §11.17) of the PDU whose header is in `hdr`. */
  reject(reason: number): void {
    if (this.session === undefined) return;
    const header = Buffer.from(this.hdr.subarray(0, BHS_LENGTH));
    const at = this.beginPdu(BHS_LENGTH);
    buildReject(this.out.slab, at, { ...this.seq(true), reason });
    this.endPdu(at, header);
  }
}

const EMPTY = Buffer.alloc(0);

function hdrExpStatSN(hdr: Buffer): number {
  return hdr.readUInt32BE(28);
}
