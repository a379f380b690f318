/**
 * The iSCSI target's transport with hand-made PDUs: the command window, R2T flow, Data-In
 * splitting, NOP, logout, task management, session rules and the bad-input list.
 */
import { afterEach, describe, expect, it } from 'vitest';
import * as op from '../../emulator/iscsi/opcodes.js';
import { parseText } from '../../emulator/iscsi/text.js';
import { RawInitiator, rw10, startTarget, type TargetFixture } from '../support/iscsiTestInitiator.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let f: TargetFixture | undefined;
const clients: RawInitiator[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await f?.close();
  f = undefined;
});

async function session(opts: Parameters<RawInitiator['login']>[0] = {}, fixture: Parameters<typeof startTarget>[0] = {}) {
  f ??= await startTarget(fixture);
  const c = await RawInitiator.connect(f.port);
  clients.push(c);
  const r = await c.login(opts);
  expect(r.bhs[36], `login status 0x${r.bhs[36]!.toString(16)}${r.bhs[37]!.toString(16)}`).toBe(0);
  return c;
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** SCSI status and sense key/ASC/ASCQ of a SCSI Response. */
function statusOf(p: { bhs: Buffer; data: Buffer }) {
  const sense = p.data.length >= 16 ? p.data.subarray(2) : undefined;
  return { status: p.bhs[3], key: sense ? sense[2]! & 0xf : undefined, asc: sense ? (sense[12]! << 8) | sense[13]! : undefined };
}

describe('login and the command window', () => {
  it('announces a 128-command window and advances it as commands complete', async () => {
    const c = await session();
    const login = await c.recv(10).then(() => undefined);
    expect(login).toBeUndefined();
    c.command({ cdb: [0x00, 0, 0, 0, 0, 0], edtl: 0 }); // TEST UNIT READY, CmdSN 1
    const r = await c.expect(op.OP_SCSI_RESP);
    expect(r.expCmdSN).toBe(2);
    expect(r.maxCmdSN).toBe(2 + 127);
  });

  it('ignores a command outside the window, logs it, and keeps serving in-window commands', async () => {
    const c = await session();
    c.command({ cdb: [0x00], edtl: 0, cmdSN: 1 + 1000 }); // far beyond MaxCmdSN
    expect(await c.recv(300)).toBeNull();
    c.command({ cdb: [0x00], edtl: 0, cmdSN: 0 }); // already used (below ExpCmdSN)
    expect(await c.recv(300)).toBeNull();
    c.command({ cdb: [0x00], edtl: 0 });
    const r = await c.expect(op.OP_SCSI_RESP);
    expect(r.bhs[3]).toBe(0);
    expect(f!.logger.find('warn', 'outside the CmdSN window').length).toBe(2);
  });

  it('delivers commands in CmdSN order when they arrive out of order', async () => {
    const c = await session();
    const data = pattern(512, 7);
    // CmdSN 2 (a READ) arrives before CmdSN 1 (the WRITE it must see).
    c.command({ cdb: rw10(0x28, 10, 1), read: true, edtl: 512, cmdSN: 2, itt: 200 });
    expect(await c.recv(200)).toBeNull();
    c.command({ cdb: rw10(0x2a, 10, 1), write: true, edtl: 512, cmdSN: 1, itt: 100 }, data);
    c.cmdSN = 3;
    const got = new Map<number, Buffer>();
    for (let i = 0; i < 2; i++) {
      const p = (await c.recv())!;
      got.set(p.itt, p.data);
    }
    expect(got.get(200)!.equals(data)).toBe(true);
  });

  it('refuses a login to another target name with 0x0203 and logs it', async () => {
    f = await startTarget();
    const c = await RawInitiator.connect(f.port);
    clients.push(c);
    const r = await c.loginRequest({ csg: 1, nsg: 3, transit: true, isid: 1 }, [
      ['InitiatorName', 'iqn.2026-11.lab.arraylab:x'],
      ['TargetName', 'iqn.2026-11.lab.arraylab:other'],
    ]);
    expect([r.bhs[36], r.bhs[37]]).toEqual([2, 3]);
    await c.closed;
    expect(f.logger.find('warn', 'login refused')[0]!.fields.reason).toContain('not this target');
  });

  it('closes a connection that never finishes login after loginTimeoutMs', async () => {
    f = await startTarget({ loginTimeoutMs: 200 });
    const c = await RawInitiator.connect(f.port);
    clients.push(c);
    await c.closed;
    expect(f.logger.find('warn', 'login did not complete in time').length).toBe(1);
  });

  it('a second login with the same initiator and ISID reinstates the session (the old connection closes)', async () => {
    const a = await session({ isid: 0x400000000042 });
    const b = await session({ isid: 0x400000000042 });
    await a.closed;
    b.command({ cdb: [0x00], edtl: 0 });
    expect((await b.expect(op.OP_SCSI_RESP)).bhs[3]).toBe(0);
    expect(f!.target.sessions().length).toBe(1);
  });

  it('a discovery session answers SendTargets=All and rejects SCSI commands', async () => {
    const c = await session({ sessionType: 'Discovery' });
    c.text([['SendTargets', 'All']]);
    const t = await c.expect(op.OP_TEXT_RESP);
    const pairs = parseText(t.data);
    expect(pairs).toContainEqual(['TargetAddress', `127.0.0.1:${f!.port},1`]);
    c.command({ cdb: [0x00], edtl: 0 });
    const rej = await c.expect(op.OP_REJECT);
    expect(rej.bhs[2]).toBe(op.REJECT_PROTOCOL_ERROR);
  });
});

describe('data transfer', () => {
  it('takes immediate data, then unsolicited Data-Out up to FirstBurstLength, then solicits the rest (MaxBurstLength)', async () => {
    const c = await session();
    const len = 600 * KiB;
    const data = pattern(len, 3);
    const itt = c.command({ cdb: rw10(0x2a, 0, len / 512), write: true, edtl: len, final: false }, data.subarray(0, 16 * KiB));
    c.dataOut({ itt, ttt: op.RESERVED_TAG, dataSN: 0, bufferOffset: 16 * KiB, final: false }, data.subarray(16 * KiB, 40 * KiB));
    c.dataOut({ itt, ttt: op.RESERVED_TAG, dataSN: 1, bufferOffset: 40 * KiB, final: true }, data.subarray(40 * KiB, 64 * KiB));
    let offset = 64 * KiB;
    while (offset < len) {
      const r2t = await c.expect(op.OP_R2T);
      const bo = r2t.bhs.readUInt32BE(40);
      const ddtl = r2t.bhs.readUInt32BE(44);
      expect(bo).toBe(offset);
      expect(ddtl).toBe(Math.min(256 * KiB, len - offset)); // MaxBurstLength the helper negotiates
      for (let sent = 0, sn = 0; sent < ddtl; sn++) {
        const n = Math.min(64 * KiB, ddtl - sent);
        c.dataOut({ itt, ttt: r2t.ttt, dataSN: sn, bufferOffset: bo + sent, final: sent + n === ddtl }, data.subarray(bo + sent, bo + sent + n));
        sent += n;
      }
      offset += ddtl;
    }
    const resp = await c.expect(op.OP_SCSI_RESP);
    expect(resp.bhs[3]).toBe(0);
    const back = Buffer.alloc(len);
    await f!.provider.store('vol0').read(0, back);
    expect(back.equals(data)).toBe(true);
  });

  it('R2T flow with InitialR2T=Yes / ImmediateData=No negotiated', async () => {
    f = await startTarget();
    const c = await RawInitiator.connect(f.port);
    clients.push(c);
    const keys: [string, string][] = [
      ['InitiatorName', 'iqn.2026-11.lab.arraylab:r2t'],
      ['TargetName', 'iqn.2026-11.lab.arraylab:array0'],
    ];
    let r = await c.loginRequest({ csg: 1, nsg: 3, transit: true, isid: 9 }, [
      ...keys,
      ['InitialR2T', 'Yes'],
      ['ImmediateData', 'No'],
      ['MaxBurstLength', '65536'],
      ['MaxRecvDataSegmentLength', '8192'],
    ]);
    expect(r.bhs[36]).toBe(0);
    const neg = new Map(parseText(r.data));
    expect(neg.get('InitialR2T')).toBe('Yes');
    expect(neg.get('ImmediateData')).toBe('No');
    const len = 200 * KiB;
    const data = pattern(len, 9);
    const itt = c.command({ cdb: rw10(0x2a, 8, len / 512), write: true, edtl: len });
    let offset = 0;
    let r2tsn = 0;
    while (offset < len) {
      const r2t = await c.expect(op.OP_R2T);
      expect(r2t.bhs.readUInt32BE(36)).toBe(r2tsn++);
      expect(r2t.bhs.readUInt32BE(40)).toBe(offset);
      const ddtl = r2t.bhs.readUInt32BE(44);
      expect(ddtl).toBe(Math.min(64 * KiB, len - offset));
      for (let sent = 0, sn = 0; sent < ddtl; sn++) {
        const n = Math.min(8 * KiB, ddtl - sent);
        c.dataOut({ itt, ttt: r2t.ttt, dataSN: sn, bufferOffset: offset + sent, final: sent + n === ddtl }, data.subarray(offset + sent, offset + sent + n));
        sent += n;
      }
      offset += ddtl;
    }
    r = await c.expect(op.OP_SCSI_RESP);
    expect(r.bhs[3]).toBe(0);
    expect(r.bhs.readUInt32BE(36)).toBe(r2tsn); // ExpDataSN counts the R2Ts
    // Read it back: Data-In split at the initiator's MaxRecvDataSegmentLength (8192), status in the last.
    c.command({ cdb: rw10(0x28, 8, len / 512), read: true, edtl: len });
    const parts: Buffer[] = [];
    for (;;) {
      const p = await c.expect(op.OP_SCSI_DATA_IN);
      expect(p.data.length).toBeLessThanOrEqual(8192);
      parts.push(p.data);
      if (p.flags & op.DATAIN_STATUS) {
        expect(p.bhs[3]).toBe(0);
        break;
      }
    }
    expect(parts.length).toBe(len / 8192);
    expect(Buffer.concat(parts).equals(data)).toBe(true);
  });

  it('reports residual underflow and overflow on reads', async () => {
    const c = await session();
    c.command({ cdb: rw10(0x28, 0, 1), read: true, edtl: 4096 });
    let p = await c.expect(op.OP_SCSI_DATA_IN);
    expect(p.flags & op.DATAIN_UNDERFLOW).toBeTruthy();
    expect(p.bhs.readUInt32BE(44)).toBe(4096 - 512);
    c.command({ cdb: rw10(0x28, 0, 4), read: true, edtl: 1024 });
    p = await c.expect(op.OP_SCSI_DATA_IN);
    expect(p.data.length).toBe(1024);
    expect(p.flags & op.DATAIN_OVERFLOW).toBeTruthy();
    expect(p.bhs.readUInt32BE(44)).toBe(1024);
  });

  it('sends sense in a SCSI Response (not in Data-In) for a failed command', async () => {
    const c = await session();
    c.command({ cdb: rw10(0x28, 0x7fffffff, 1), read: true, edtl: 512 });
    const r = await c.expect(op.OP_SCSI_RESP);
    expect(statusOf(r)).toEqual({ status: 2, key: 5, asc: 0x2100 });
  });
});

describe('NOP, logout, task management', () => {
  it('answers a NOP-Out ping with the same data', async () => {
    const c = await session();
    const ping = pattern(1000, 5);
    const itt = c.nop(ping);
    const r = await c.expect(op.OP_NOP_IN);
    expect(r.itt).toBe(itt);
    expect(r.ttt).toBe(op.RESERVED_TAG);
    expect(r.data.equals(ping)).toBe(true);
  });

  it('logout gets a response, then the connection closes and the export handles close', async () => {
    const c = await session();
    c.command({ cdb: [0x00], edtl: 0 });
    await c.expect(op.OP_SCSI_RESP);
    c.logout();
    const r = await c.expect(op.OP_LOGOUT_RESP);
    expect(r.bhs[2]).toBe(op.LOGOUT_RSP_SUCCESS);
    await c.closed;
    await new Promise((res) => setTimeout(res, 50));
    expect(f!.provider.openCount).toBe(0);
    expect(f!.provider.allClosedOnce).toBe(true);
    expect(f!.target.sessions()).toEqual([]);
  });

  it('ABORT TASK on a write waiting for data: function complete, no response for the task', async () => {
    const c = await session();
    const itt = c.command({ cdb: rw10(0x2a, 0, 512), write: true, edtl: 256 * KiB }); // no data sent: waits for R2T data
    await c.expect(op.OP_R2T);
    const tmf = c.tmf(op.TMF_ABORT_TASK, { referencedTaskTag: itt, refCmdSN: 1 });
    const r = await c.expect(op.OP_TASK_MGMT_RESP);
    expect(r.itt).toBe(tmf);
    expect(r.bhs[2]).toBe(op.TMF_RSP_COMPLETE);
    c.tmf(op.TMF_ABORT_TASK, { referencedTaskTag: 0x1234, refCmdSN: 0 });
    expect((await c.expect(op.OP_TASK_MGMT_RESP)).bhs[2]).toBe(op.TMF_RSP_NO_TASK);
    c.command({ cdb: [0x00], edtl: 0 });
    const next = await c.expect(op.OP_SCSI_RESP); // not the aborted write's
    expect(next.itt).not.toBe(itt);
  });

  it('LOGICAL UNIT RESET completes and raises the reset unit attention (29/03); an unknown LUN is answered as such', async () => {
    const c = await session();
    c.tmf(op.TMF_LOGICAL_UNIT_RESET, { lun: 0 });
    expect((await c.expect(op.OP_TASK_MGMT_RESP)).bhs[2]).toBe(op.TMF_RSP_COMPLETE);
    c.command({ cdb: [0x00], edtl: 0 });
    expect(statusOf(await c.expect(op.OP_SCSI_RESP))).toEqual({ status: 2, key: 6, asc: 0x2903 });
    c.tmf(op.TMF_LOGICAL_UNIT_RESET, { lun: 9 });
    expect((await c.expect(op.OP_TASK_MGMT_RESP)).bhs[2]).toBe(op.TMF_RSP_NO_LUN);
  });

  it('lunsChanged raises REPORTED LUNS DATA HAS CHANGED; a resize raises CAPACITY DATA HAS CHANGED', async () => {
    f = await startTarget({
      exports: [
        { name: 'vol0', size: 8 * MiB },
        { name: 'vol1', size: 8 * MiB },
      ],
    });
    f.affinity.set('*', [{ lun: 0, exportName: 'vol0' }]);
    const c = await session();
    f.affinity.set('*', [
      { lun: 0, exportName: 'vol0' },
      { lun: 1, exportName: 'vol1' },
    ]);
    f.target.lunsChanged();
    c.command({ cdb: [0x00], edtl: 0 });
    expect(statusOf(await c.expect(op.OP_SCSI_RESP))).toEqual({ status: 2, key: 6, asc: 0x3f0e });
    expect(f.target.sessions()[0]!.luns.map((l) => l.lun)).toEqual([0, 1]);
    f.provider.resize('vol0', 16 * MiB);
    c.command({ cdb: [0x00], edtl: 0 });
    expect(statusOf(await c.expect(op.OP_SCSI_RESP))).toEqual({ status: 2, key: 6, asc: 0x2a09 });
  });
});

describe('bad input', () => {
  it('an unknown opcode gets Reject (command not supported) and the session goes on', async () => {
    const c = await session();
    const bhs = Buffer.alloc(48);
    bhs[0] = 0x1c; // not an initiator opcode
    bhs[1] = 0x80;
    c.raw(bhs);
    const r = await c.expect(op.OP_REJECT);
    expect(r.bhs[2]).toBe(op.REJECT_COMMAND_NOT_SUPPORTED);
    expect(r.data.equals(bhs)).toBe(true);
    c.nop(Buffer.from('still here'));
    expect((await c.expect(op.OP_NOP_IN)).data.toString()).toBe('still here');
  });

  it('a data segment beyond MaxRecvDataSegmentLength is rejected and the connection closed, without reading it', async () => {
    const c = await session();
    const bhs = Buffer.alloc(48);
    bhs[0] = op.OP_NOP_OUT | op.IMMEDIATE_BIT;
    bhs[1] = 0x80;
    bhs.writeUIntBE(0xffffff, 5, 3); // 16 MiB - 1
    c.raw(bhs);
    const r = await c.recv();
    expect(r?.opcode).toBe(op.OP_REJECT);
    await c.closed;
    expect(f!.logger.find('warn', 'malformed PDU').length).toBe(1);
  });

  it('a Data-Out out of sequence is rejected and ends only its task (ABORTED COMMAND); the connection keeps serving', async () => {
    const c = await session();
    const itt = c.command({ cdb: rw10(0x2a, 0, 2), write: true, edtl: 1024, final: false });
    c.dataOut({ itt, ttt: op.RESERVED_TAG, dataSN: 5, bufferOffset: 0, final: true }, Buffer.alloc(1024, 7));
    const rej = await c.expect(op.OP_REJECT);
    expect(rej.bhs[2]).toBe(op.REJECT_PROTOCOL_ERROR);
    const resp = await c.expect(op.OP_SCSI_RESP);
    expect(resp.bhs.readUInt32BE(16)).toBe(itt);
    expect(resp.bhs[3]).toBe(0x02); // CHECK CONDITION
    const sense = resp.data.subarray(2);
    expect(sense[2]! & 0x0f).toBe(0x0b); // ABORTED COMMAND
    expect((sense[12]! << 8) | sense[13]!).toBe(0x4b00); // DATA PHASE ERROR
    expect(f!.logger.find('warn', 'Data-Out out of sequence').some((l) => String(l.fields.reason).includes('DataSN 5'))).toBe(true);
    // Nothing was written, and the same connection still works.
    const r = c.command({ cdb: rw10(0x28, 0, 2), read: true, edtl: 1024 });
    const data = await c.expect(op.OP_SCSI_DATA_IN);
    expect(data.bhs.readUInt32BE(16)).toBe(r);
    expect(data.data.equals(Buffer.alloc(1024))).toBe(true);
  });

  it('a data digest error is rejected (reason 0x02) and the connection closed', async () => {
    const c = await session({ headerDigest: true, dataDigest: true });
    expect(c.dataDigest).toBe(true);
    c.nop(Buffer.from('digest ok'));
    expect((await c.expect(op.OP_NOP_IN)).data.toString()).toBe('digest ok');
    const itt = c.command({ cdb: rw10(0x2a, 0, 1), write: true, edtl: 512, final: false });
    c.dataOut({ itt, ttt: op.RESERVED_TAG, dataSN: 0, bufferOffset: 0, final: true }, Buffer.alloc(512, 1), { corruptDataDigest: true });
    const r = await c.expect(op.OP_REJECT);
    expect(r.bhs[2]).toBe(op.REJECT_DATA_DIGEST_ERROR);
    await c.closed;
  });

  it('garbage instead of a login closes the connection without a crash', async () => {
    f = await startTarget();
    const c = await RawInitiator.connect(f.port);
    clients.push(c);
    c.raw(Buffer.alloc(48, 0xff));
    await c.closed;
    const d = await session();
    d.command({ cdb: [0x00], edtl: 0 });
    expect((await d.expect(op.OP_SCSI_RESP)).bhs[3]).toBe(0);
  });

  it('an immediate-data write larger than FirstBurstLength is a protocol error', async () => {
    const c = await session();
    c.command({ cdb: rw10(0x2a, 0, 256), write: true, edtl: 128 * KiB }, Buffer.alloc(128 * KiB));
    const r = await c.recv();
    expect(r?.opcode).toBe(op.OP_REJECT);
    await c.closed;
  });
});
