/**
 * Faults on demand (issue 15) as iSCSI initiators see them, against the real `arraylab serve`:
 * qemu-io over iscsi:// (libiscsi) for what a host sees (errno, reconnect), and the raw test
 * initiator for the exact bytes (status, sense key/ASC/ASCQ, INFORMATION, login status).
 *
 * Error faults give CHECK CONDITION with the given sense, or MEDIUM ERROR 03/11/00 on reads and
 * 03/0C/00 on writes by default, with the failing LBA; bad blocks likewise. A disconnect drops
 * the session's connection (qemu reconnects and goes on); its refuse window turns logins away
 * with 0x0301 (service unavailable) until it ends. A LUN reset queues 29/03 and a target reset
 * 29/02 for every nexus that sees the LU.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as op from '../../emulator/iscsi/opcodes.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type * as pb from '../../proto/gen/index.js';
import { startArraylab, type Arraylab, loggedErrors } from '../support/arraylab.js';
import { iscsiPortalOf, iscsiUrl, type Portal } from '../support/iscsi.js';
import { RawInitiator, rw10, TARGET_IQN } from '../support/iscsiTestInitiator.js';
import { runProcess } from '../support/process.js';
import { requireTool } from '../support/tools.js';
import { sleep, until } from '../support/wait.js';

const BS = 512;
const HOST_A = 'iqn.2026-11.lab.arraylab.test:fault-a';
const HOST_B = 'iqn.2026-11.lab.arraylab.test:fault-b';

let lab: Arraylab;
let client: ArrayClient;
let portal: Portal;
const initiators: RawInitiator[] = [];

interface Sense {
  key: number;
  asc: number;
  ascq: number;
  /** INFORMATION, when its VALID bit is set. */
  information: number | undefined;
}

interface ScsiOutcome {
  status: number;
  sense: Sense | undefined;
  data: Buffer;
}

function parseSense(seg: Buffer): Sense | undefined {
  if (seg.length < 2) return undefined;
  const s = seg.subarray(2, 2 + seg.readUInt16BE(0));
  const code = s[0]! & 0x7f;
  if (code === 0x72 || code === 0x73) return { key: s[1]! & 0x0f, asc: s[2]!, ascq: s[3]!, information: undefined };
  return { key: s[2]! & 0x0f, asc: s[12]!, ascq: s[13]!, information: (s[0]! & 0x80) !== 0 ? s.readUInt32BE(3) : undefined };
}

/** One SCSI command to completion: Data-In collected, status from the last Data-In or the SCSI Response. */
async function scsi(ini: RawInitiator, f: { cdb: number[]; lun?: number; readBytes?: number; write?: Buffer }): Promise<ScsiOutcome> {
  const itt = ini.command(
    { cdb: f.cdb, lun: f.lun ?? 0, read: f.readBytes !== undefined, write: f.write !== undefined, edtl: f.readBytes ?? f.write?.length ?? 0 },
    f.write,
  );
  const data: Buffer[] = [];
  for (;;) {
    const p = await ini.recv(10_000);
    if (p === null) throw new Error(`no answer to the command (itt ${itt}): ${ini.ended ? 'connection closed' : 'timed out'}`);
    if (p.itt !== itt) continue;
    if (p.opcode === op.OP_SCSI_DATA_IN) {
      data.push(p.data);
      if ((p.flags & op.DATAIN_STATUS) !== 0) return { status: p.bhs[3]!, sense: undefined, data: Buffer.concat(data) };
      continue;
    }
    if (p.opcode === op.OP_SCSI_RESP) return { status: p.bhs[3]!, sense: parseSense(p.data), data: Buffer.concat(data) };
    throw new Error(`unexpected ${op.opcodeName(p.opcode)} for itt ${itt}`);
  }
}

const TUR = [0x00, 0, 0, 0, 0, 0];

/** Logs in and clears the unit attentions a new nexus starts with (power on), so the next one seen is the test's. */
async function loggedIn(initiatorName = HOST_A, isid = 0x400001370000): Promise<RawInitiator> {
  const ini = await RawInitiator.connect(portal.port);
  initiators.push(ini);
  const r = await ini.login({ initiatorName, isid });
  expect(r.bhs[36], `login of ${initiatorName}: status ${r.bhs[36]}/${r.bhs[37]}`).toBe(0);
  for (const lun of [0, 1]) {
    for (let i = 0; i < 5; i++) if ((await scsi(ini, { cdb: TUR, lun })).status === 0) break;
  }
  return ini;
}

function add(spec: pb.FaultSpec): Promise<{ id: string }> {
  return client.addFault(spec);
}

function qemuIo(cmds: string[], timeoutMs = 30_000): Promise<{ code: number | null; output: string; ms: number }> {
  const args = ['-f', 'raw'];
  for (const c of cmds) args.push('-c', c);
  args.push(iscsiUrl(portal, 0));
  return runProcess(requireTool('qemu-io'), args, { env: process.env, timeoutMs });
}

/** The server's log reaches us through a pipe, a little after the client saw the effect. */
async function logged(what: RegExp | string): Promise<void> {
  await until(`the server to log ${String(what)}`, () => (typeof what === 'string' ? lab.logs().includes(what) : what.test(lab.logs())), {
    timeoutMs: 5000,
    intervalMs: 20,
  });
}

const hex = (s: Sense | undefined): string =>
  s === undefined ? 'no sense' : [s.key, s.asc, s.ascq].map((n) => n.toString(16).padStart(2, '0').toUpperCase()).join('/');

beforeAll(async () => {
  requireTool('qemu-io');
  lab = await startArraylab({
    config: {
      iscsi: { targetName: TARGET_IQN },
      volumes: [
        { name: 'vol1', size: '8MiB', blockSize: BS },
        { name: 'vol2', size: '4MiB', blockSize: BS },
      ],
    },
  });
  client = new ArrayClient(lab.apiAddress);
  portal = iscsiPortalOf(lab);
});

afterEach(async () => {
  for (const i of initiators.splice(0)) i.close();
  await client.clearFaults({ flags: true });
});

afterAll(async () => {
  client?.close();
  // Dropped connections, refused opens and resets are warnings; nothing may have been an error.
  const errors = loggedErrors(lab);
  await lab?.stop();
  expect(errors).toEqual([]);
});

describe('error faults over iSCSI', () => {
  it('qemu-io (libiscsi) fails reads and writes inside the LBA range with EIO, and not outside it', async () => {
    await add({ kind: 'error', target: 'volume:vol1', ops: ['read', 'write'], lba: '100-199' });
    const bad = await qemuIo([`read ${150 * BS} ${BS}`]);
    expect(bad.output).toContain('read failed: Input/output error');
    const badWrite = await qemuIo([`write -P 0x12 ${199 * BS} ${BS}`]);
    expect(badWrite.output).toContain('write failed: Input/output error');
    const good = await qemuIo([`read ${200 * BS} ${BS}`, `write -P 0x13 ${99 * BS} ${BS}`, `read -P 0x13 ${99 * BS} ${BS}`]);
    expect(good.code, good.output).toBe(0);
    expect(good.output).not.toMatch(/failed/);
  });

  it('qemu-io maps a given sense to its errno (05/24/00 ILLEGAL REQUEST: EINVAL)', async () => {
    await add({ kind: 'error', target: 'volume:vol1', ops: ['read'], lba: '100-199', sense: '05/24/00' });
    expect((await qemuIo([`read ${100 * BS} ${BS}`])).output).toContain('read failed: Invalid argument');
  });

  it('CHECK CONDITION carries MEDIUM ERROR 03/11/00 (read) and 03/0C/00 (write) with the failing LBA, or the sense given', async () => {
    const ini = await loggedIn();
    const f = await add({ kind: 'error', target: 'volume:vol1', ops: ['read', 'write'], lba: '100-199' });
    const read = await scsi(ini, { cdb: rw10(0x28, 150, 1), readBytes: BS });
    expect(read.status).toBe(0x02);
    expect(hex(read.sense)).toBe('03/11/00');
    expect(read.sense?.information).toBe(150);
    const write = await scsi(ini, { cdb: rw10(0x2a, 120, 1), write: Buffer.alloc(BS, 0x21) });
    expect(write.status).toBe(0x02);
    expect(hex(write.sense)).toBe('03/0C/00');
    expect(write.sense?.information).toBe(120);
    // A command that overlaps the range from before it: INFORMATION is its own first block.
    expect((await scsi(ini, { cdb: rw10(0x28, 96, 8), readBytes: 8 * BS })).sense?.information).toBe(96);
    expect((await scsi(ini, { cdb: rw10(0x28, 200, 1), readBytes: BS })).status).toBe(0);
    expect((await scsi(ini, { cdb: rw10(0x28, 1, 1), readBytes: BS, lun: 1 })).status).toBe(0);
    await client.removeFault(f.id);

    await add({ kind: 'error', target: 'volume:vol1', ops: ['read'], lba: '100-199', sense: '0B/47/00' });
    expect(hex((await scsi(ini, { cdb: rw10(0x28, 100, 1), readBytes: BS })).sense)).toBe('0B/47/00');
    await client.clearFaults();
    await add({ kind: 'error', target: 'volume:vol1', ops: ['write'], errno: 'ENOSPC' });
    expect(hex((await scsi(ini, { cdb: rw10(0x2a, 5, 1), write: Buffer.alloc(BS) })).sense)).toBe('07/27/07');
    await client.clearFaults();
    await add({ kind: 'error', target: 'volume:vol1', ops: ['read'], errno: 'ENOMEM' });
    expect(hex((await scsi(ini, { cdb: rw10(0x28, 5, 1), readBytes: BS })).sense)).toBe('04/55/03');
  });

  it('a bad block fails reads with 03/11/00 naming it, until rewritten', async () => {
    const ini = await loggedIn();
    await add({ kind: 'bad-blocks', target: 'volume:vol1', lba: '10,11' });
    const r = await scsi(ini, { cdb: rw10(0x28, 8, 8), readBytes: 8 * BS });
    expect(hex(r.sense)).toBe('03/11/00');
    expect(r.sense?.information).toBe(10);
    expect((await scsi(ini, { cdb: rw10(0x2a, 10, 1), write: Buffer.alloc(BS, 7) })).status).toBe(0);
    const r2 = await scsi(ini, { cdb: rw10(0x28, 8, 8), readBytes: 8 * BS });
    expect(r2.sense?.information).toBe(11);
    expect((await scsi(ini, { cdb: rw10(0x2a, 11, 1), write: Buffer.alloc(BS, 7) })).status).toBe(0);
    expect((await scsi(ini, { cdb: rw10(0x28, 8, 8), readBytes: 8 * BS })).status).toBe(0);
  });
});

describe('connect faults', () => {
  it('a connect fault on one LUN refuses the login with 0x0301 (initiators retry it); removed, logins succeed', async () => {
    const f = await add({ kind: 'error', target: 'export:vol2', ops: ['connect'] });
    const ini = await RawInitiator.connect(portal.port);
    initiators.push(ini);
    const r = await ini.login({ initiatorName: HOST_A });
    expect([r.bhs[36], r.bhs[37]]).toEqual([0x03, 0x01]);
    await logged(/LUN 1 \(export vol2\) refuses connections for now: connection to vol2 refused by fault f\d+/);
    // qemu over LUN 0 is turned away too: the login is the initiator's, not the LUN's.
    const q = await qemuIo([`read 0 ${BS}`]);
    expect(q.code).not.toBe(0);
    await client.removeFault(f.id);
    const ok = await loggedIn();
    expect((await scsi(ok, { cdb: rw10(0x28, 0, 1), readBytes: BS, lun: 1 })).status).toBe(0);
  });
});

describe('disconnect', () => {
  it('drops the session: the initiator sees the TCP connection close; with refuseMs logins get 0x0301 until the window ends', async () => {
    const ini = await loggedIn();
    const other = await loggedIn(HOST_B);
    await add({ kind: 'disconnect', target: 'export:vol1', refuseMs: 2000 });
    await Promise.race([Promise.all([ini.closed, other.closed]), sleep(3000).then(() => Promise.reject(new Error('the connections stayed open')))]);

    const again = await RawInitiator.connect(portal.port);
    initiators.push(again);
    const refused = await again.login({ initiatorName: HOST_A });
    // Target error / service unavailable: initiators retry it.
    expect([refused.bhs[36], refused.bhs[37]]).toEqual([0x03, 0x01]);
    await logged(/LUN 0 \(export vol1\) refuses connections for now: export vol1 refuses connections for \d+ s more/);

    await sleep(2100);
    const back = await loggedIn();
    expect((await scsi(back, { cdb: rw10(0x28, 0, 1), readBytes: BS })).status).toBe(0);
  });

  it('qemu-io (libiscsi) reconnects after the drop and its next read succeeds', async () => {
    const logins = (): number =>
      lab
        .logs()
        .split('\n')
        .filter((l) => l.includes('initiator logged in')).length;
    const before = logins();
    const run = qemuIo([`write -P 0x5c 0 ${BS}`, 'sleep 1500', `read -P 0x5c 0 ${BS}`]);
    await sleep(700);
    const f = await add({ kind: 'disconnect', target: 'export:vol1' });
    const r = await run;
    expect(r.code, r.output).toBe(0);
    expect(r.output).not.toMatch(/failed/);
    expect(r.output).toMatch(/read 512\/512 bytes/);
    await until('the second login to be logged', () => logins() - before >= 2, { timeoutMs: 5000, intervalMs: 20 });
    expect(logins() - before).toBe(2);
    await logged(`connection dropped by the array: fault ${f.id} dropped the connection`);
  });

  it('qemu-io (libiscsi) retries the login refused during the refuse window and reads on after it', async () => {
    const run = qemuIo([`write -P 0x5d 0 ${BS}`, 'sleep 1000', `read -P 0x5d 0 ${BS}`], 30_000);
    await sleep(500);
    await add({ kind: 'disconnect', target: 'export:vol1', refuseMs: 2000 });
    const r = await run;
    console.log(`qemu-io across a 2 s refuse window: ${(r.ms / 1000).toFixed(1)} s, exit ${r.code}`);
    expect(r.code, r.output).toBe(0);
    expect(r.output).not.toMatch(/failed/);
    await logged(/login refused/);
  });
});

describe('reset', () => {
  async function nextSense(ini: RawInitiator, lun: number): Promise<string> {
    const r = await scsi(ini, { cdb: TUR, lun });
    return r.status === 0 ? 'GOOD' : hex(r.sense);
  }

  it('a LUN reset queues BUS DEVICE RESET FUNCTION OCCURRED (06/29/03) on every nexus that sees the LU, once', async () => {
    const a = await loggedIn(HOST_A);
    const b = await loggedIn(HOST_B);
    await add({ kind: 'reset', target: 'export:vol1', scope: 'lun' });
    for (const ini of [a, b]) {
      expect(await nextSense(ini, 0)).toBe('06/29/03');
      expect(await nextSense(ini, 0)).toBe('GOOD');
      // vol2 (LUN 1) was not reset.
      expect(await nextSense(ini, 1)).toBe('GOOD');
    }
  });

  it('a LOGICAL UNIT RESET from one initiator reaches the other nexus too (each session has its own handle of the volume)', async () => {
    const a = await loggedIn(HOST_A);
    const b = await loggedIn(HOST_B);
    a.tmf(op.TMF_LOGICAL_UNIT_RESET, { lun: 0 });
    const rsp = await a.expect(op.OP_TASK_MGMT_RESP);
    expect(rsp.bhs[2]).toBe(op.TMF_RSP_COMPLETE);
    expect(await nextSense(a, 0)).toBe('06/29/03');
    expect(await nextSense(b, 0)).toBe('06/29/03');
    expect(await nextSense(b, 1)).toBe('GOOD');
  });

  it('a target reset queues SCSI BUS RESET OCCURRED (06/29/02) on every LUN of every nexus, once', async () => {
    const a = await loggedIn(HOST_A);
    const b = await loggedIn(HOST_B);
    await add({ kind: 'reset', target: 'volume:vol1', scope: 'target' });
    for (const ini of [a, b]) {
      for (const lun of [0, 1]) {
        expect(await nextSense(ini, lun)).toBe('06/29/02');
        expect(await nextSense(ini, lun)).toBe('GOOD');
      }
    }
  });

  it('a reset with a trigger fires on the command that matches it; reads go on after the unit attention', async () => {
    const ini = await loggedIn();
    await add({ kind: 'reset', target: 'volume:vol1', ops: ['read'], lba: '300-300', once: true, scope: 'lun' });
    expect((await scsi(ini, { cdb: rw10(0x28, 0, 1), readBytes: BS })).status).toBe(0);
    // The command that fired it is aborted by the reset (TAS=0: no response), as a real LU reset would.
    const itt = ini.command({ cdb: rw10(0x28, 300, 1), lun: 0, read: true, edtl: BS });
    await sleep(300);
    expect(await nextSense(ini, 0)).toBe('06/29/03');
    expect(await nextSense(ini, 0)).toBe('GOOD');
    expect(itt).toBeGreaterThan(0);
  });
});
