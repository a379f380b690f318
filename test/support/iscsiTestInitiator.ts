/**
 * Test support for the iSCSI target: a target over MemoryProvider exports, a logger that keeps
 * what it was told, and a raw initiator over node:net for the PDUs real initiators never send
 * (bad lengths, out-of-window CmdSN, wrong DataSN, hand-made R2T flows).
 */
import { connect, type Socket } from 'node:net';
import { IscsiTarget } from '../../emulator/iscsi/IscsiTarget.js';
import { crc32c } from '../../emulator/net/crc32c.js';
import * as op from '../../emulator/iscsi/opcodes.js';
import { dataDigest, pad4, readDigest, writeDigest, type InitiatorPdu } from '../../emulator/iscsi/pdu.js';
import { buildInitiatorBhs } from './iscsiInitiatorPdu.js';
import { buildText, parseText, type TextPair } from '../../emulator/iscsi/text.js';
import type { IscsiAuthOptions, IscsiLogger, IscsiTargetOptions, LunMapping } from '../../emulator/iscsi/types.js';
import { MemoryProvider } from './memoryProvider.js';

export const TARGET_IQN = 'iqn.2026-11.lab.arraylab:array0';
export const INITIATOR_IQN = 'iqn.2026-11.lab.arraylab:test-initiator';

export interface LogRecord {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  fields: Record<string, unknown>;
}

/** A pino-compatible logger that records every call (children share the record list). */
export class CaptureLogger implements IscsiLogger {
  constructor(
    readonly records: LogRecord[] = [],
    private readonly bindings: Record<string, unknown> = {},
  ) {}
  private add(level: LogRecord['level'], o: object | string, msg?: string): void {
    if (typeof o === 'string') this.records.push({ level, msg: o, fields: { ...this.bindings } });
    else this.records.push({ level, msg: msg ?? '', fields: { ...this.bindings, ...(o as Record<string, unknown>) } });
  }
  debug(o: object | string, msg?: string) {
    this.add('debug', o, msg);
  }
  info(o: object | string, msg?: string) {
    this.add('info', o, msg);
  }
  warn(o: object | string, msg?: string) {
    this.add('warn', o, msg);
  }
  error(o: object | string, msg?: string) {
    this.add('error', o, msg);
  }
  child(bindings: object): IscsiLogger {
    return new CaptureLogger(this.records, { ...this.bindings, ...bindings });
  }
  /** Records at a level whose message contains `text`. */
  find(level: LogRecord['level'], text: string): LogRecord[] {
    return this.records.filter((r) => r.level === level && r.msg.includes(text));
  }
}

export interface TargetFixture {
  target: IscsiTarget;
  provider: MemoryProvider;
  logger: CaptureLogger;
  port: number;
  /** Host affinity: initiator IQN -> LUNs; `*` for everyone else. Mutate, then target.lunsChanged(). */
  affinity: Map<string, LunMapping[]>;
  url(lun?: number): string;
  close(): Promise<void>;
}

export interface FixtureOptions {
  exports?: { name: string; size: number; blockSize?: 512 | 4096 }[];
  auth?: IscsiAuthOptions;
  /** Per-initiator CHAP (the array's host CHAP). */
  chapFor?: (initiatorName: string) => IscsiAuthOptions | undefined;
  chapAlgorithms?: readonly number[];
  loginThrottle?: IscsiTargetOptions['loginThrottle'];
  loginTimeoutMs?: number;
  maxConnections?: number;
}

export async function startTarget(o: FixtureOptions = {}): Promise<TargetFixture> {
  const provider = new MemoryProvider();
  const exports = o.exports ?? [{ name: 'vol0', size: 64 * 1024 * 1024 }];
  for (const e of exports) provider.add(e.name, { size: e.size, blockSize: e.blockSize ?? 512 });
  const affinity = new Map<string, LunMapping[]>([['*', exports.map((e, i) => ({ lun: i, exportName: e.name }))]]);
  const logger = new CaptureLogger();
  const target = new IscsiTarget({
    targetName: TARGET_IQN,
    provider,
    logger,
    luns: { lunsFor: (iqn) => affinity.get(iqn) ?? affinity.get('*') ?? [], ...(o.chapFor ? { chapFor: o.chapFor } : {}) },
    ...(o.auth ? { auth: o.auth } : {}),
    ...(o.chapAlgorithms ? { chapAlgorithms: o.chapAlgorithms } : {}),
    ...(o.loginThrottle !== undefined ? { loginThrottle: o.loginThrottle } : {}),
    ...(o.loginTimeoutMs !== undefined ? { loginTimeoutMs: o.loginTimeoutMs } : {}),
    ...(o.maxConnections !== undefined ? { maxConnections: o.maxConnections } : {}),
  });
  const { port } = await target.listen(0, '127.0.0.1');
  return {
    target,
    provider,
    logger,
    port,
    affinity,
    url: (lun = 0) => `iscsi://127.0.0.1:${port}/${TARGET_IQN}/${lun}`,
    close: () => target.close(),
  };
}

// ======================================================================================
// Raw initiator
// ======================================================================================

/** A PDU as received: header fields the tests look at, and the data segment. */
export interface RxPdu {
  opcode: number;
  bhs: Buffer;
  data: Buffer;
  flags: number;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface LoginOptions {
  isid?: number;
  initiatorName?: string;
  sessionType?: 'Normal' | 'Discovery';
  keys?: TextPair[];
  headerDigest?: boolean;
  dataDigest?: boolean;
}

export class RawInitiator {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  ended = false;
  readonly closed: Promise<void>;
  cmdSN = 1;
  expStatSN = 0;
  itt = 1;
  headerDigest = false;
  dataDigest = false;
  /** What login negotiated (the target's answers). */
  negotiated = new Map<string, string>();
  tsih = 0;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.waiter?.();
        resolve();
      });
    });
  }

  static connect(port: number): Promise<RawInitiator> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(new RawInitiator(s)));
      s.once('error', reject);
    });
  }

  /** Sends a PDU built from parsed-form fields, with its data segment, padding and digests. */
  send(p: InitiatorPdu, data: Buffer = Buffer.alloc(0), opts: { ahs?: Buffer; corruptDataDigest?: boolean; corruptHeaderDigest?: boolean } = {}): void {
    const ahs = opts.ahs ?? Buffer.alloc(0);
    const bhs = Buffer.alloc(48);
    buildInitiatorBhs(bhs, 0, { ...p, ahsLength: ahs.length, dataSegmentLength: p.dataSegmentLength } as InitiatorPdu);
    const parts: Buffer[] = [bhs, ahs];
    if (this.headerDigest) {
      const d = Buffer.alloc(4);
      writeDigest(d, 0, crc32c(Buffer.concat([bhs, ahs])) ^ (opts.corruptHeaderDigest ? 1 : 0));
      parts.push(d);
    }
    if (data.length > 0) {
      parts.push(data, Buffer.alloc(pad4(data.length) - data.length));
      if (this.dataDigest) {
        const d = Buffer.alloc(4);
        writeDigest(d, 0, dataDigest(data) ^ (opts.corruptDataDigest ? 1 : 0));
        parts.push(d);
      }
    }
    this.socket.write(Buffer.concat(parts));
  }

  /** Sends raw bytes as they are. */
  raw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Next PDU from the target, or null when the connection closed (or after timeoutMs). */
  async recv(timeoutMs = 5000): Promise<RxPdu | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const pdu = this.parse();
      if (pdu) return pdu;
      if (this.ended) return null;
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          this.waiter = null;
          resolve();
        };
      });
    }
  }

  /** Receives until a PDU of the given opcode arrives (others are returned in `skipped`). */
  async expect(opcode: number, timeoutMs = 5000): Promise<RxPdu> {
    for (;;) {
      const p = await this.recv(timeoutMs);
      if (p === null) throw new Error(`expected ${op.opcodeName(opcode)}, got ${this.ended ? 'connection closed' : 'nothing'}`);
      if (p.opcode === opcode) return p;
      throw new Error(`expected ${op.opcodeName(opcode)}, got ${op.opcodeName(p.opcode)}`);
    }
  }

  private parse(): RxPdu | null {
    const b = this.buf;
    if (b.length < 48) return null;
    const ahs = b[4]! * 4;
    const dsl = (b[5]! << 16) | (b[6]! << 8) | b[7]!;
    const hd = this.headerDigest ? 4 : 0;
    const dd = this.dataDigest && dsl > 0 ? 4 : 0;
    const total = 48 + ahs + hd + pad4(dsl) + dd;
    if (b.length < total) return null;
    const bhs = Buffer.from(b.subarray(0, 48));
    if (hd) {
      const got = readDigest(b, 48 + ahs);
      if (got !== crc32c(b, 0, 48 + ahs)) throw new Error('target sent a bad header digest');
    }
    const data = Buffer.from(b.subarray(48 + ahs + hd, 48 + ahs + hd + dsl));
    if (dd) {
      const got = readDigest(b, 48 + ahs + hd + pad4(dsl));
      if (got !== dataDigest(data)) throw new Error('target sent a bad data digest');
    }
    this.buf = b.subarray(total);
    const opcode = bhs[0]! & 0x3f;
    const p: RxPdu = {
      opcode,
      bhs,
      data,
      flags: bhs[1]!,
      itt: bhs.readUInt32BE(16),
      ttt: bhs.readUInt32BE(20),
      statSN: bhs.readUInt32BE(24),
      expCmdSN: bhs.readUInt32BE(28),
      maxCmdSN: bhs.readUInt32BE(32),
    };
    // Data-In without S carries no StatSN; R2T and unsolicited NOP-In do not advance it.
    const carriesStatus =
      opcode !== op.OP_R2T && !(opcode === op.OP_SCSI_DATA_IN && (p.flags & op.DATAIN_STATUS) === 0) && !(opcode === op.OP_NOP_IN && p.itt === op.RESERVED_TAG);
    if (carriesStatus) this.expStatSN = (p.statSN + 1) >>> 0;
    return p;
  }

  /** A full login (AuthMethod=None) to full feature phase; returns the final Login Response. */
  async login(o: LoginOptions = {}): Promise<RxPdu> {
    const keys: TextPair[] = [
      ['InitiatorName', o.initiatorName ?? INITIATOR_IQN],
      ['SessionType', o.sessionType ?? 'Normal'],
      ...((o.sessionType ?? 'Normal') === 'Normal' ? ([['TargetName', TARGET_IQN]] as TextPair[]) : []),
      ['AuthMethod', 'None'],
    ];
    const isid = o.isid ?? 0x400001370000;
    let r = await this.loginRequest({ csg: 0, nsg: 1, transit: true, isid }, keys);
    if (r.bhs[36] !== 0) return r;
    const op1: TextPair[] = [
      ['HeaderDigest', o.headerDigest ? 'CRC32C' : 'None'],
      ['DataDigest', o.dataDigest ? 'CRC32C' : 'None'],
      ...((o.sessionType ?? 'Normal') === 'Normal'
        ? ([
            ['InitialR2T', 'No'],
            ['ImmediateData', 'Yes'],
            ['MaxBurstLength', '262144'],
            ['FirstBurstLength', '65536'],
          ] as TextPair[])
        : []),
      ['MaxRecvDataSegmentLength', '65536'],
      ...(o.keys ?? []),
    ];
    r = await this.loginRequest({ csg: 1, nsg: 3, transit: true, isid }, op1);
    if (r.bhs[36] === 0) {
      for (const [k, v] of parseText(r.data)) this.negotiated.set(k, v);
      this.tsih = r.bhs.readUInt16BE(14);
      this.headerDigest = this.negotiated.get('HeaderDigest') === 'CRC32C';
      this.dataDigest = this.negotiated.get('DataDigest') === 'CRC32C';
    }
    return r;
  }

  async loginRequest(
    f: { csg: number; nsg: number; transit: boolean; isid: number; tsih?: number; cont?: boolean },
    keys: TextPair[] | Buffer,
  ): Promise<RxPdu> {
    const data = Buffer.isBuffer(keys) ? keys : buildText(keys);
    this.send(
      {
        kind: 'login-req',
        immediate: true,
        ahsLength: 0,
        dataSegmentLength: data.length,
        itt: this.itt,
        transit: f.transit,
        continue: f.cont ?? false,
        csg: f.csg,
        nsg: f.nsg,
        versionMax: 0,
        versionMin: 0,
        isid: f.isid,
        tsih: f.tsih ?? 0,
        cid: 1,
        cmdSN: this.cmdSN,
        expStatSN: this.expStatSN,
      },
      data,
    );
    return this.expect(op.OP_LOGIN_RESP);
  }

  /** A SCSI command; `data` is immediate data. Returns the ITT. CmdSN advances unless immediate or given. */
  command(
    f: {
      cdb: number[] | Buffer;
      lun?: number;
      read?: boolean;
      write?: boolean;
      edtl: number;
      final?: boolean;
      cmdSN?: number;
      immediate?: boolean;
      itt?: number;
    },
    data: Buffer = Buffer.alloc(0),
  ): number {
    const itt = f.itt ?? this.itt++;
    const cdb = Buffer.alloc(16);
    Buffer.from(f.cdb).copy(cdb);
    const cmdSN = f.cmdSN ?? this.cmdSN;
    if (f.cmdSN === undefined && !f.immediate) this.cmdSN = (this.cmdSN + 1) >>> 0;
    this.send(
      {
        kind: 'scsi-cmd',
        immediate: f.immediate ?? false,
        ahsLength: 0,
        dataSegmentLength: data.length,
        itt,
        final: f.final ?? true,
        read: f.read ?? false,
        write: f.write ?? false,
        attr: op.ATTR_SIMPLE,
        lun: f.lun ?? 0,
        expectedDataTransferLength: f.edtl,
        cmdSN,
        expStatSN: this.expStatSN,
        cdb,
      },
      data,
    );
    return itt;
  }

  dataOut(
    f: { itt: number; ttt: number; dataSN: number; bufferOffset: number; final: boolean; lun?: number },
    data: Buffer,
    opts: { corruptDataDigest?: boolean } = {},
  ): void {
    this.send(
      {
        kind: 'data-out',
        immediate: false,
        ahsLength: 0,
        dataSegmentLength: data.length,
        itt: f.itt,
        final: f.final,
        lun: f.lun ?? 0,
        ttt: f.ttt,
        expStatSN: this.expStatSN,
        dataSN: f.dataSN,
        bufferOffset: f.bufferOffset,
      },
      data,
      opts,
    );
  }

  nop(data: Buffer = Buffer.alloc(0), f: { immediate?: boolean; itt?: number } = {}): number {
    const itt = f.itt ?? this.itt++;
    const immediate = f.immediate ?? true;
    this.send(
      {
        kind: 'nop-out',
        immediate,
        ahsLength: 0,
        dataSegmentLength: data.length,
        itt,
        lun: 0,
        ttt: op.RESERVED_TAG,
        cmdSN: this.cmdSN,
        expStatSN: this.expStatSN,
      },
      data,
    );
    if (!immediate) this.cmdSN = (this.cmdSN + 1) >>> 0;
    return itt;
  }

  text(keys: TextPair[]): number {
    const itt = this.itt++;
    const data = buildText(keys);
    this.send(
      {
        kind: 'text-req',
        immediate: true,
        ahsLength: 0,
        dataSegmentLength: data.length,
        itt,
        final: true,
        continue: false,
        lun: 0,
        ttt: op.RESERVED_TAG,
        cmdSN: this.cmdSN,
        expStatSN: this.expStatSN,
      },
      data,
    );
    return itt;
  }

  tmf(fn: number, f: { lun?: number; referencedTaskTag?: number; refCmdSN?: number } = {}): number {
    const itt = this.itt++;
    this.send({
      kind: 'tmf-req',
      immediate: true,
      ahsLength: 0,
      dataSegmentLength: 0,
      itt,
      function: fn,
      lun: f.lun ?? 0,
      referencedTaskTag: f.referencedTaskTag ?? op.RESERVED_TAG,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
      refCmdSN: f.refCmdSN ?? 0,
      expDataSN: 0,
    });
    return itt;
  }

  logout(reason = op.LOGOUT_CLOSE_SESSION): number {
    const itt = this.itt++;
    this.send({
      kind: 'logout-req',
      immediate: true,
      ahsLength: 0,
      dataSegmentLength: 0,
      itt,
      reasonCode: reason,
      cid: 1,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
    });
    return itt;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** READ(10)/WRITE(10) CDBs. */
export function rw10(opcode: 0x28 | 0x2a, lba: number, blocks: number): number[] {
  return [opcode, 0, (lba >>> 24) & 0xff, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff, 0, (blocks >>> 8) & 0xff, blocks & 0xff, 0];
}
