import { describe, expect, it } from 'vitest';
import { crc32c } from '../../emulator/net/crc32c.js';
import * as op from '../../emulator/iscsi/opcodes.js';
import {
  buildAsyncMessage,
  buildDataIn,
  buildDataInPdus,
  buildLoginResponse,
  buildLogoutResponse,
  buildNopIn,
  buildR2T,
  buildReject,
  buildScsiResponse,
  buildTaskMgmtResponse,
  buildTextResponse,
  dataDigest,
  dataInHeaderSpace,
  dataSegmentTrailer,
  frameSize,
  headerDigest,
  type InitiatorPdu,
  IscsiPduError,
  pad4,
  parseAhs,
  parseBhs,
  PduFramer,
  readDigest,
  readLun,
  sealHeader,
  verifyHeaderDigest,
  writeDigest,
  writeLun,
  writeSenseSegment,
} from '../../emulator/iscsi/pdu.js';
import { buildInitiatorBhs } from '../support/iscsiInitiatorPdu.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const seq = { statSN: 7, expCmdSN: 2, maxCmdSN: 33 };
const SEQ_HEX = '00000007 00000002 00000021';

function built(fn: (b: Buffer, off: number) => number): Buffer {
  const b = Buffer.alloc(64, 0xee); // dirty: builders must zero reserved bytes
  expect(fn(b, 8)).toBe(48);
  expect(b[7]).toBe(0xee);
  expect(b[56]).toBe(0xee);
  return b.subarray(8, 56);
}

function thrown(fn: () => unknown): IscsiPduError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(IscsiPduError);
    return e as IscsiPduError;
  }
  throw new Error('expected an IscsiPduError');
}

describe('target PDU builders: byte-exact layouts', () => {
  it('Login Response (T, CSG=1, NSG=3, ISID, TSIH, status)', () => {
    const b = built((buf, off) =>
      buildLoginResponse(buf, off, {
        ...seq,
        transit: true,
        continue: false,
        csg: op.STAGE_OPERATIONAL,
        nsg: op.STAGE_FULL_FEATURE,
        versionMax: 0,
        versionActive: 0,
        isid: 0x23d000000001,
        tsih: 1,
        itt: 0x12345678,
        statusClass: 0,
        statusDetail: 0,
        dataSegmentLength: 0x1234,
      }),
    );
    expect(b.toString('hex')).toBe(hex(`23870000 00001234 23d0000000010001 12345678 00000000 ${SEQ_HEX} 00000000 00000000 00000000`).toString('hex'));
  });

  it('Login Response failure keeps NSG zero when T is clear and carries class/detail', () => {
    const b = built((buf, off) =>
      buildLoginResponse(buf, off, {
        ...seq,
        transit: false,
        continue: false,
        csg: 0,
        nsg: 3,
        versionMax: 0,
        versionActive: 0,
        isid: 1,
        tsih: 0,
        itt: 9,
        statusClass: op.LOGIN_CLASS_INITIATOR_ERROR,
        statusDetail: op.LOGIN_AUTH_FAILED,
        dataSegmentLength: 0,
      }),
    );
    expect(b[1]).toBe(0x00);
    expect(b[36]).toBe(2);
    expect(b[37]).toBe(1);
    expect(() =>
      buildLoginResponse(Buffer.alloc(48), 0, {
        ...seq,
        transit: true,
        continue: true,
        csg: 0,
        nsg: 1,
        versionMax: 0,
        versionActive: 0,
        isid: 0,
        tsih: 0,
        itt: 0,
        statusClass: 0,
        statusDetail: 0,
        dataSegmentLength: 0,
      }),
    ).toThrow(/both T and C/);
  });

  it('SCSI Response with CHECK CONDITION, sense segment and underflow residual', () => {
    const b = built((buf, off) =>
      buildScsiResponse(buf, off, {
        ...seq,
        itt: 0xabcdef01,
        response: op.RESPONSE_COMPLETED,
        status: 0x02,
        dataSegmentLength: 20,
        expDataSN: 3,
        residual: 512,
      }),
    );
    expect(b.toString('hex')).toBe(hex(`21820002 00000014 0000000000000000 abcdef01 00000000 ${SEQ_HEX} 00000003 00000000 00000200`).toString('hex'));
    const over = built((buf, off) =>
      buildScsiResponse(buf, off, { ...seq, itt: 1, response: 0, status: 0, dataSegmentLength: 0, expDataSN: 0, residual: -4096 }),
    );
    expect(over[1]).toBe(0x80 | op.RESP_OVERFLOW);
    expect(over.readUInt32BE(44)).toBe(4096);
    const seg = Buffer.alloc(20);
    expect(writeSenseSegment(seg, 0, Buffer.alloc(18, 0x70))).toBe(20);
    expect(seg.readUInt16BE(0)).toBe(18);
  });

  it('SCSI Data-In: final with status and underflow; non-final has no StatSN', () => {
    const b = built((buf, off) =>
      buildDataIn(buf, off, {
        ...seq,
        final: true,
        status: 0,
        lun: 1,
        itt: 0x11,
        ttt: op.RESERVED_TAG,
        dataSN: 4,
        bufferOffset: 0x10000,
        dataSegmentLength: 0x2000,
        residual: 100,
      }),
    );
    expect(b.toString('hex')).toBe(hex(`25830000 00002000 0001000000000000 00000011 ffffffff ${SEQ_HEX} 00000004 00010000 00000064`).toString('hex'));
    const mid = built((buf, off) =>
      buildDataIn(buf, off, { ...seq, final: false, lun: 1, itt: 0x11, ttt: op.RESERVED_TAG, dataSN: 0, bufferOffset: 0, dataSegmentLength: 8 }),
    );
    expect(mid[1]).toBe(0);
    expect(mid.readUInt32BE(24)).toBe(0); // StatSN reserved without S
    expect(mid.readUInt32BE(28)).toBe(2);
    expect(() =>
      buildDataIn(Buffer.alloc(48), 0, { ...seq, final: false, status: 0, lun: 0, itt: 0, ttt: 0, dataSN: 0, bufferOffset: 0, dataSegmentLength: 0 }),
    ).toThrow(/must also be final/);
    expect(() =>
      buildDataIn(Buffer.alloc(48), 0, { ...seq, final: true, status: 0x02, lun: 0, itt: 0, ttt: 0, dataSN: 0, bufferOffset: 0, dataSegmentLength: 0 }),
    ).toThrow(/send a SCSI Response/);
  });

  it('R2T', () => {
    const b = built((buf, off) =>
      buildR2T(buf, off, { ...seq, lun: 1, itt: 0x22, ttt: 0x33, r2tSN: 1, bufferOffset: 65536, desiredDataTransferLength: 262144 }),
    );
    expect(b.toString('hex')).toBe(hex(`31800000 00000000 0001000000000000 00000022 00000033 ${SEQ_HEX} 00000001 00010000 00040000`).toString('hex'));
    expect(() => buildR2T(Buffer.alloc(48), 0, { ...seq, lun: 0, itt: 0, ttt: 0, r2tSN: 0, bufferOffset: 0, desiredDataTransferLength: 0 })).toThrow(
      /must not be 0/,
    );
  });

  it('Reject carries the 48-byte header as its data segment', () => {
    const b = built((buf, off) => buildReject(buf, off, { ...seq, reason: op.REJECT_PROTOCOL_ERROR }));
    expect(b.toString('hex')).toBe(hex(`3f800400 00000030 0000000000000000 ffffffff 00000000 ${SEQ_HEX} 00000000 00000000 00000000`).toString('hex'));
  });

  it('NOP-In, TMF Response, Text Response, Logout Response, Async Message', () => {
    const nop = built((buf, off) => buildNopIn(buf, off, { ...seq, lun: 0, itt: op.RESERVED_TAG, ttt: 0x77, dataSegmentLength: 0 }));
    expect(nop.toString('hex')).toBe(hex(`20800000 00000000 0000000000000000 ffffffff 00000077 ${SEQ_HEX} 00000000 00000000 00000000`).toString('hex'));
    const tmf = built((buf, off) => buildTaskMgmtResponse(buf, off, { ...seq, itt: 5, response: op.TMF_RSP_NO_TASK }));
    expect(tmf.toString('hex')).toBe(hex(`22800100 00000000 0000000000000000 00000005 00000000 ${SEQ_HEX} 00000000 00000000 00000000`).toString('hex'));
    const txt = built((buf, off) => buildTextResponse(buf, off, { ...seq, final: false, continue: true, lun: 0, itt: 6, ttt: 0x99, dataSegmentLength: 8192 }));
    expect(txt.subarray(0, 24).toString('hex')).toBe('24400000000020000000000000000000' + '0000000600000099');
    const lo = built((buf, off) => buildLogoutResponse(buf, off, { ...seq, itt: 8, response: 0, time2Wait: 2, time2Retain: 20 }));
    expect(lo.toString('hex')).toBe(hex(`26800000 00000000 0000000000000000 00000008 00000000 ${SEQ_HEX} 00000000 00020014 00000000`).toString('hex'));
    const am = built((buf, off) => buildAsyncMessage(buf, off, { ...seq, lun: 2, asyncEvent: op.ASYNC_LOGOUT_REQUEST, parameter3: 5, dataSegmentLength: 0 }));
    expect(am.toString('hex')).toBe(hex(`32800000 00000000 0002000000000000 ffffffff 00000000 ${SEQ_HEX} 01000000 00000005 00000000`).toString('hex'));
  });
});

describe('initiator PDUs: parse', () => {
  it('parses a SCSI Command byte layout (READ(10), LUN 1, immediate)', () => {
    const b = hex('41c10000 00000000 0001000000000000 00000010 00001000 00000005 00000003 ' + '28000000 00100000 08000000 00000000');
    const p = parseBhs(b);
    expect(p).toMatchObject({
      kind: 'scsi-cmd',
      immediate: true,
      final: true,
      read: true,
      write: false,
      attr: op.ATTR_SIMPLE,
      lun: 1,
      itt: 0x10,
      expectedDataTransferLength: 4096,
      cmdSN: 5,
      expStatSN: 3,
    });
    if (p.kind !== 'scsi-cmd') throw new Error('kind');
    expect(p.cdb.toString('hex')).toBe('28000000001000000800000000000000');
    b.fill(0); // the CDB is a copy, not a view
    expect(p.cdb[0]).toBe(0x28);
  });

  it('parses a Login Request: CSG/NSG, ISID, CID', () => {
    const b = hex('43810000 0000004c 23d0000000010000 00000000 00010000 00000000 00000000 00000000 00000000 00000000 00000000');
    expect(parseBhs(b)).toMatchObject({
      kind: 'login-req',
      immediate: true,
      transit: true,
      continue: false,
      csg: 0,
      nsg: 1,
      isid: 0x23d000000001,
      tsih: 0,
      cid: 1,
      dataSegmentLength: 0x4c,
    });
  });

  const samples: InitiatorPdu[] = [
    { kind: 'nop-out', immediate: true, ahsLength: 0, dataSegmentLength: 0, itt: 1, lun: 0, ttt: op.RESERVED_TAG, cmdSN: 10, expStatSN: 11 },
    {
      kind: 'scsi-cmd',
      immediate: false,
      ahsLength: 0,
      dataSegmentLength: 512,
      itt: 2,
      final: false,
      read: false,
      write: true,
      attr: 1,
      lun: 300,
      expectedDataTransferLength: 1 << 20,
      cmdSN: 12,
      expStatSN: 13,
      cdb: hex('2a000000000000000800000000000000'),
    },
    {
      kind: 'tmf-req',
      immediate: true,
      ahsLength: 0,
      dataSegmentLength: 0,
      itt: 3,
      function: op.TMF_ABORT_TASK,
      lun: 4,
      referencedTaskTag: 2,
      cmdSN: 14,
      expStatSN: 15,
      refCmdSN: 12,
      expDataSN: 0,
    },
    {
      kind: 'login-req',
      immediate: true,
      ahsLength: 0,
      dataSegmentLength: 100,
      itt: 4,
      transit: true,
      continue: false,
      csg: 1,
      nsg: 3,
      versionMax: 0,
      versionMin: 0,
      isid: 0x400001370000,
      tsih: 0,
      cid: 0,
      cmdSN: 1,
      expStatSN: 0,
    },
    {
      kind: 'text-req',
      immediate: false,
      ahsLength: 0,
      dataSegmentLength: 16,
      itt: 5,
      final: true,
      continue: false,
      lun: 0,
      ttt: op.RESERVED_TAG,
      cmdSN: 2,
      expStatSN: 1,
    },
    {
      kind: 'data-out',
      immediate: false,
      ahsLength: 0,
      dataSegmentLength: 8192,
      itt: 6,
      final: true,
      lun: 1,
      ttt: 0x1000,
      expStatSN: 5,
      dataSN: 3,
      bufferOffset: 24576,
    },
    { kind: 'logout-req', immediate: true, ahsLength: 0, dataSegmentLength: 0, itt: 7, reasonCode: op.LOGOUT_CLOSE_SESSION, cid: 0, cmdSN: 9, expStatSN: 8 },
    {
      kind: 'snack',
      immediate: false,
      ahsLength: 0,
      dataSegmentLength: 0,
      itt: 8,
      type: op.SNACK_STATUS,
      lun: 0,
      ttt: 0,
      expStatSN: 3,
      begRun: 1,
      runLength: 2,
    },
    {
      kind: 'scsi-cmd',
      immediate: false,
      ahsLength: 8,
      dataSegmentLength: 0,
      itt: 9,
      final: true,
      read: true,
      write: true,
      attr: 0,
      lun: -1,
      expectedDataTransferLength: 0,
      cmdSN: 0,
      expStatSN: 0,
      cdb: Buffer.alloc(16),
    },
  ];
  for (const s of samples) {
    it(`round-trips ${s.kind} build → parse → build`, () => {
      const a = Buffer.alloc(48, 0xcc);
      buildInitiatorBhs(a, 0, s);
      const parsed = parseBhs(a);
      expect(parsed).toEqual(s);
      const b = Buffer.alloc(48, 0x33);
      buildInitiatorBhs(b, 0, parsed);
      expect(b.equals(a)).toBe(true);
    });
  }

  it('refuses truncated headers and target or unknown opcodes', () => {
    const t = thrown(() => parseBhs(Buffer.alloc(47)));
    expect(t.code).toBe('truncated');
    expect(t.fatal).toBe(true);
    expect(t.message).toMatch(/47 of 48 bytes/);
    for (const code of [op.OP_NOP_IN, op.OP_SCSI_DATA_IN, 0x3e, 0x1c]) {
      const b = Buffer.alloc(48);
      b[0] = code;
      const e = thrown(() => parseBhs(b));
      expect(e.code).toBe('unknown-opcode');
      expect(e.rejectReason).toBe(op.REJECT_COMMAND_NOT_SUPPORTED);
      expect(e.fatal).toBe(false);
    }
  });

  it('decodes LUN addressing: peripheral, flat, and unsupported forms as -1', () => {
    const b = Buffer.alloc(8);
    writeLun(b, 0, 5);
    expect(b.toString('hex')).toBe('0005000000000000');
    writeLun(b, 0, 300);
    expect(b.toString('hex')).toBe('412c000000000000');
    expect(readLun(b, 0)).toBe(300);
    expect(readLun(hex('0100000000000000'), 0)).toBe(-1); // bus id 1
    expect(readLun(hex('c000000000000000'), 0)).toBe(-1); // extended
    expect(readLun(hex('0001000100000000'), 0)).toBe(-1); // two levels
    expect(() => writeLun(b, 0, 16384)).toThrow(/outside 0..16383/);
  });
});

describe('framing', () => {
  const limits = { maxRecvDataSegmentLength: 262144, headerDigest: false, dataDigest: false };

  function bhs(opcode: number, ahsWords: number, dsl: number): Buffer {
    const b = Buffer.alloc(48);
    b[0] = opcode;
    b[4] = ahsWords;
    b.writeUIntBE(dsl, 5, 3);
    return b;
  }

  it('computes the rest of a PDU with padding and digests', () => {
    expect(frameSize(bhs(1, 0, 0), 0, limits).restLength).toBe(0);
    expect(frameSize(bhs(1, 0, 5), 0, limits)).toMatchObject({ paddedDataLength: 8, restLength: 8 });
    const d = frameSize(bhs(1, 2, 5), 0, { ...limits, headerDigest: true, dataDigest: true });
    expect(d).toEqual({ ahsLength: 8, headerDigestLength: 4, dataSegmentLength: 5, paddedDataLength: 8, dataDigestLength: 4, restLength: 24 });
    // No data digest without data.
    expect(frameSize(bhs(0, 0, 0), 0, { ...limits, headerDigest: true, dataDigest: true }).restLength).toBe(4);
    expect(pad4(0)).toBe(0);
    expect(pad4(4097)).toBe(4100);
  });

  it('refuses huge data segments and AHS, naming the numbers', () => {
    const e = thrown(() => frameSize(bhs(op.OP_SCSI_DATA_OUT, 0, 0xffffff), 0, limits));
    expect(e.code).toBe('data-too-large');
    expect(e.message).toMatch(/SCSI Data-Out DataSegmentLength 16777215 exceeds the negotiated MaxRecvDataSegmentLength 262144/);
    expect(thrown(() => frameSize(bhs(1, 0, 8193), 0, { ...limits, maxRecvDataSegmentLength: 8192 })).code).toBe('data-too-large');
    const a = thrown(() => frameSize(bhs(1, 200, 0), 0, limits));
    expect(a.code).toBe('ahs-too-long');
    expect(a.message).toMatch(/AHS length 200 \(800 bytes\) exceeds the 264-byte limit/);
    expect(a.fatal).toBe(true);
    expect(thrown(() => frameSize(Buffer.alloc(10), 0, limits)).code).toBe('truncated');
  });

  it('PduFramer alternates BHS and rest reads', () => {
    const f = new PduFramer(limits);
    expect(f.need).toBe(48);
    expect(f.header(bhs(1, 0, 10)).restLength).toBe(12);
    expect(f.need).toBe(12);
    expect(() => f.header(bhs(1, 0, 0))).toThrow(/twice/);
    f.rest();
    expect(f.need).toBe(48);
    f.header(bhs(0, 0, 0));
    expect(f.need).toBe(48); // nothing after the header
    f.limits = { ...limits, headerDigest: true };
    f.header(bhs(0, 0, 0));
    expect(f.need).toBe(4);
  });

  it('parses AHS entries and rejects malformed ones', () => {
    // Extended CDB: AHSLength = 1 reserved + 16 extra CDB bytes = 17; padded to 20 bytes. Then bidi: length 5.
    const ahs = Buffer.alloc(20 + 8);
    ahs.writeUInt16BE(17, 0);
    ahs[2] = 1;
    for (let i = 0; i < 16; i++) ahs[4 + i] = i + 1;
    ahs.writeUInt16BE(5, 20);
    ahs[22] = 2;
    ahs.writeUInt32BE(4096, 24);
    const r = parseAhs(ahs, 0, ahs.length);
    expect([...r.extendedCdb!]).toEqual(Array.from({ length: 16 }, (_, i) => i + 1));
    expect(r.bidiReadLength).toBe(4096);

    const bad = Buffer.alloc(8);
    bad.writeUInt16BE(200, 0); // overruns
    bad[2] = 1;
    expect(thrown(() => parseAhs(bad, 0, 8)).message).toMatch(/AHSLength 200, which overruns the 8-byte AHS/);
    bad.writeUInt16BE(1, 0);
    bad[2] = 9; // unknown type
    expect(thrown(() => parseAhs(bad, 0, 8)).code).toBe('bad-ahs');
    bad[2] = 2; // bidi with wrong length
    expect(thrown(() => parseAhs(bad, 0, 8)).message).toMatch(/expected 5/);
    expect(thrown(() => parseAhs(Buffer.alloc(2), 0, 2)).code).toBe('bad-ahs');
    expect(thrown(() => parseAhs(Buffer.alloc(4), 0, 8)).message).toMatch(/overruns/);
  });

  it('header digests: seal, verify, and catch a flipped bit', () => {
    const b = Buffer.alloc(52);
    buildNopIn(b, 0, { ...seq, lun: 0, itt: 1, ttt: op.RESERVED_TAG, dataSegmentLength: 0 });
    sealHeader(b, 0);
    expect(b.readUInt32LE(48)).toBe(crc32c(b, 0, 48));
    expect(headerDigest(b, 0, 0)).toBe(b.readUInt32LE(48));
    verifyHeaderDigest(b, 0, 0);
    b[20]! ^= 1;
    const e = thrown(() => verifyHeaderDigest(b, 0, 0));
    expect(e.code).toBe('header-digest');
    expect(e.fatal).toBe(true);
  });

  it('stores digests least-significant byte first, as RFC 3720 B.4 lists them ("aa 36 91 8a")', () => {
    const b = Buffer.alloc(4);
    writeDigest(b, 0, crc32c(Buffer.alloc(32)));
    expect([...b]).toEqual([0xaa, 0x36, 0x91, 0x8a]);
    expect(readDigest(b, 0)).toBe(0x8a9136aa);
  });

  it('data digest covers the zero padding', () => {
    const data = Buffer.from('abcde');
    const padded = Buffer.concat([data, Buffer.alloc(3)]);
    expect(dataDigest(data)).toBe(crc32c(padded));
    const t = Buffer.alloc(8, 0xff);
    expect(dataSegmentTrailer(t, 0, data, true)).toBe(7);
    expect(t.subarray(0, 3).equals(Buffer.alloc(3))).toBe(true);
    expect(t.readUInt32LE(3)).toBe(crc32c(padded));
    expect(dataSegmentTrailer(t, 0, Buffer.alloc(8), false)).toBe(0);
  });
});

describe('Data-In sequences', () => {
  const payload = Buffer.alloc(10001);
  for (let i = 0; i < payload.length; i++) payload[i] = i & 0xff;
  const base = { ...seq, lun: 3, itt: 0x42, maxRecvDataSegmentLength: 4096, headerDigest: false, dataDigest: false };

  it('splits at MaxRecvDataSegmentLength without copying the payload', () => {
    const out: Buffer[] = [];
    const headers = Buffer.alloc(dataInHeaderSpace(payload.length, 4096));
    expect(buildDataInPdus(out, headers, payload, { ...base, status: 0, residual: 99 })).toBe(3);
    // header, data, header, data, header, data, padding(3)
    expect(out.map((b) => b.length)).toEqual([48, 4096, 48, 4096, 48, 1809, 3]);
    for (const i of [1, 3, 5]) expect(out[i]!.buffer).toBe(payload.buffer);
    expect(Buffer.concat([out[1]!, out[3]!, out[5]!]).equals(payload)).toBe(true);
    const hs = [out[0]!, out[2]!, out[4]!].map((h) => ({
      flags: h[1],
      dsl: h.readUIntBE(5, 3),
      dataSN: h.readUInt32BE(36),
      off: h.readUInt32BE(40),
      statSN: h.readUInt32BE(24),
      res: h.readUInt32BE(44),
    }));
    expect(hs).toEqual([
      { flags: 0, dsl: 4096, dataSN: 0, off: 0, statSN: 0, res: 0 },
      { flags: 0, dsl: 4096, dataSN: 1, off: 4096, statSN: 0, res: 0 },
      { flags: 0x80 | op.DATAIN_STATUS | op.DATAIN_UNDERFLOW, dsl: 1809, dataSN: 2, off: 8192, statSN: 7, res: 99 },
    ]);
  });

  it('sets F at each MaxBurstLength boundary, continues DataSN/offsets, adds digests', () => {
    const out: Buffer[] = [];
    const headers = Buffer.alloc(dataInHeaderSpace(payload.length, 4096));
    const next = buildDataInPdus(out, headers, payload, {
      ...base,
      maxBurstLength: 8192,
      dataSN: 10,
      bufferOffset: 65536,
      headerDigest: true,
      dataDigest: true,
    });
    expect(next).toBe(13);
    expect(out.map((b) => b.length)).toEqual([52, 4096, 4, 52, 4096, 4, 52, 1809, 7]);
    const h = [out[0]!, out[3]!, out[6]!];
    expect(h.map((x) => x[1])).toEqual([0, 0x80, 0x80]);
    expect(h.map((x) => x.readUInt32BE(36))).toEqual([10, 11, 12]);
    expect(h.map((x) => x.readUInt32BE(40))).toEqual([65536, 69632, 73728]);
    for (const x of h) verifyHeaderDigest(x, 0, 0);
    expect(out[2]!.readUInt32LE(0)).toBe(crc32c(out[1]!));
    expect(out[8]!.readUInt32LE(3)).toBe(dataDigest(out[7]!));
  });

  it('yields nothing for an empty payload and refuses a short header buffer', () => {
    const out: Buffer[] = [];
    expect(buildDataInPdus(out, Buffer.alloc(64), Buffer.alloc(0), base)).toBe(0);
    expect(out).toEqual([]);
    expect(() => buildDataInPdus(out, Buffer.alloc(64), payload, base)).toThrow(/short/);
    expect(() => buildDataInPdus(out, Buffer.alloc(1000), payload, { ...base, maxRecvDataSegmentLength: 0 })).toThrow(/512/);
  });
});

describe('hostile headers', () => {
  it('random headers only ever fail with IscsiPduError', () => {
    let x = 0x9e3779b9;
    const b = Buffer.alloc(48);
    let parsed = 0;
    for (let n = 0; n < 20000; n++) {
      for (let i = 0; i < 48; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        b[i] = x & 0xff;
      }
      if (n & 1) b[0]! &= 0x47; // bias towards valid initiator opcodes
      try {
        frameSize(b, 0, { maxRecvDataSegmentLength: 262144, headerDigest: true, dataDigest: true });
        parseBhs(b);
        parsed++;
      } catch (e) {
        if (!(e instanceof IscsiPduError)) throw e;
      }
    }
    expect(parsed).toBeGreaterThan(0);
  });
});
