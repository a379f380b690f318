/**
 * NBD I/O under SCSI reservations taken over iSCSI, against the real `arraylab serve`: the raw
 * test initiator takes a persistent reservation (PERSISTENT RESERVE OUT) or an SPC-2 RESERVE(6)
 * on a volume, and NBD clients (libnbd through nbdsh, qemu-io) are refused with EPERM and write
 * nothing while it is held; reads are refused only under the Exclusive Access types and SPC-2.
 * After RELEASE, and after the reserving session logs out (SPC-2), NBD writes go through again.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as op from '../../emulator/iscsi/opcodes.js';
import { startArraylab, type Arraylab } from '../support/arraylab.js';
import { iscsiPortalOf, type Portal } from '../support/iscsi.js';
import { RawInitiator, TARGET_IQN } from '../support/iscsiTestInitiator.js';
import { startNbdsh, type NbdshSession } from '../support/nbdshSession.js';
import { requireTool } from '../support/tools.js';
import { run } from './harness.js';

const HOST_A = 'iqn.2026-11.lab.arraylab.test:nbd-reserver';
const KEY = 0xabcn;
const PR = { REGISTER: 0, RESERVE: 1, RELEASE: 2, CLEAR: 3 } as const;
const TYPE = { WE: 1, EA: 3, WE_RO: 5, EA_RO: 6, WE_AR: 7, EA_AR: 8 } as const;
const TUR = [0x00, 0, 0, 0, 0, 0];

let lab: Arraylab;
let portal: Portal;
let ini: RawInitiator;
let py: NbdshSession;

/** One SCSI command to completion; its status (0 GOOD, 0x18 RESERVATION CONFLICT). */
async function scsi(f: { cdb: number[]; write?: Buffer; readBytes?: number }): Promise<number> {
  const itt = ini.command({ cdb: f.cdb, read: f.readBytes !== undefined, write: f.write !== undefined, edtl: f.readBytes ?? f.write?.length ?? 0 }, f.write);
  for (;;) {
    const p = await ini.recv(10_000);
    if (p === null) throw new Error(`no answer to itt ${itt}`);
    if (p.itt !== itt) continue;
    if (p.opcode === op.OP_SCSI_DATA_IN) {
      if ((p.flags & op.DATAIN_STATUS) !== 0) return p.bhs[3]!;
      continue;
    }
    if (p.opcode === op.OP_SCSI_RESP) return p.bhs[3]!;
    throw new Error(`unexpected ${op.opcodeName(p.opcode)}`);
  }
}

function prOut(sa: number, o: { key?: bigint; sark?: bigint; type?: number; aptpl?: boolean } = {}): Promise<number> {
  const params = Buffer.alloc(24);
  params.writeBigUInt64BE(o.key ?? 0n, 0);
  params.writeBigUInt64BE(o.sark ?? 0n, 8);
  if (o.aptpl) params[20] = 1;
  return scsi({ cdb: [0x5f, sa, o.type ?? 0, 0, 0, 0, 0, 0, 24, 0], write: params });
}

async function login(): Promise<RawInitiator> {
  const i = await RawInitiator.connect(portal.port);
  const r = await i.login({ initiatorName: HOST_A });
  expect(r.bhs[36], `login: ${r.bhs[36]}/${r.bhs[37]}`).toBe(0);
  ini = i;
  // A new nexus starts with unit attentions (power on): clear them.
  for (let n = 0; n < 5; n++) if ((await scsi({ cdb: TUR })) === 0) break;
  return i;
}

/** NBD errno (or null for success) of a write, a trim, a zeroing and a read over the open connection. */
async function nbdOutcomes(): Promise<{ write: unknown; trim: unknown; zero: unknown; read: unknown }> {
  return py.ok(`out = {
  "write": err_of(lambda: h.pwrite(b"\\x77" * 4096, 65536)),
  "trim": err_of(lambda: h.trim(4096, 0)),
  "zero": err_of(lambda: h.zero(4096, 8192)),
  "read": err_of(lambda: h.pread(4096, 65536)),
}
out = {k: (None if v is None else v["errno"]) for k, v in out.items()}`);
}

beforeAll(async () => {
  requireTool('qemu-io');
  lab = await startArraylab({ config: { iscsi: { targetName: TARGET_IQN }, volumes: [{ name: 'vol1', size: '4MiB', blockSize: 512 }] } });
  portal = iscsiPortalOf(lab);
  await login();
  py = await startNbdsh();
  // Opened before any reservation: the check is per request, not at connect.
  await py.ok(`h = connect(${JSON.stringify(lab.nbdUri('vol1'))})
h.pwrite(b"\\x11" * 4096, 0)`);
});

afterAll(async () => {
  py?.close();
  ini?.close();
  await lab?.stop();
});

describe('persistent reservations', () => {
  it('Write Exclusive: NBD writes, trims and zeroes fail with EPERM and change nothing; reads go on; RELEASE lets writes in again', async () => {
    expect(await prOut(PR.REGISTER, { sark: KEY })).toBe(0);
    expect(await prOut(PR.RESERVE, { key: KEY, type: TYPE.WE })).toBe(0);
    expect(await nbdOutcomes()).toEqual({ write: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: null });
    // Nothing was written: the block still holds what was there before the reservation.
    expect(await py.ok('out = h.pread(4096, 0) == b"\\x11" * 4096 and h.pread(4096, 65536) == bytes(4096)')).toBe(true);
    // A client connecting now (qemu-io) sees the refusal, with the reason in the server's log.
    const q = await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x55 0 4096', lab.nbdUri('vol1')]);
    expect(q.stdout + q.stderr).toMatch(/Operation not permitted/);
    expect(lab.logs()).toMatch(
      /NBD write refused: volume vol1 is reserved over iSCSI by a persistent reservation \(Write Exclusive held by iqn\.2026-11\.lab\.arraylab\.test:nbd-reserver/,
    );
    expect(await prOut(PR.RELEASE, { key: KEY, type: TYPE.WE })).toBe(0);
    expect(await nbdOutcomes()).toEqual({ write: null, trim: null, zero: null, read: null });
  });

  it('every type keeps NBD writes out; the Exclusive Access types keep reads out too', async () => {
    for (const [name, type] of Object.entries(TYPE)) {
      expect(await prOut(PR.RESERVE, { key: KEY, type }), name).toBe(0);
      const exclusiveAccess = name.startsWith('EA');
      const out = await nbdOutcomes();
      expect(out, name).toEqual({ write: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: exclusiveAccess ? 'EPERM' : null });
      expect(await prOut(PR.RELEASE, { key: KEY, type }), name).toBe(0);
    }
    expect(await nbdOutcomes()).toEqual({ write: null, trim: null, zero: null, read: null });
    // CLEAR drops the registration: nothing is left for the next test.
    expect(await prOut(PR.CLEAR, { key: KEY })).toBe(0);
  });
});

describe('SPC-2 RESERVE', () => {
  it('RESERVE(6) keeps NBD reads and writes out until RELEASE(6), and until the reserving session logs out', async () => {
    expect(await scsi({ cdb: [0x16, 0, 0, 0, 0, 0] })).toBe(0);
    expect(await nbdOutcomes()).toEqual({ write: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: 'EPERM' });
    expect(await scsi({ cdb: [0x17, 0, 0, 0, 0, 0] })).toBe(0);
    expect(await nbdOutcomes()).toEqual({ write: null, trim: null, zero: null, read: null });

    expect(await scsi({ cdb: [0x16, 0, 0, 0, 0, 0] })).toBe(0);
    expect((await nbdOutcomes()).write).toBe('EPERM');
    // The nexus goes: its SPC-2 reservation goes with it.
    ini.logout();
    await ini.expect(op.OP_LOGOUT_RESP);
    ini.close();
    await ini.closed;
    await expect.poll(async () => (await nbdOutcomes()).write, { timeout: 5000 }).toBe(null);
  });
});

describe('a persistent reservation kept across a restart (APTPL)', () => {
  it('refuses NBD writes after the restart, before any initiator logs in again', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'nbd-aptpl-'));
    const config = { iscsi: { targetName: TARGET_IQN }, volumes: [{ name: 'vol1', size: '4MiB', blockSize: 512 }] };
    try {
      await lab.stop();
      lab = await startArraylab({ dataDir, config });
      portal = iscsiPortalOf(lab);
      await login();
      expect(await prOut(PR.REGISTER, { sark: KEY, aptpl: true })).toBe(0);
      expect(await prOut(PR.RESERVE, { key: KEY, type: TYPE.WE })).toBe(0);
      ini.close();
      await lab.stop();

      lab = await startArraylab({ dataDir, config });
      portal = iscsiPortalOf(lab);
      py.close();
      py = await startNbdsh();
      await py.ok(`h = connect(${JSON.stringify(lab.nbdUri('vol1'))})`);
      expect(await nbdOutcomes()).toEqual({ write: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: null });
      await login();
      expect(await prOut(PR.CLEAR, { key: KEY })).toBe(0);
      expect(await nbdOutcomes()).toEqual({ write: null, trim: null, zero: null, read: null });
      py.close();
      ini.close();
      await lab.stop();
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
