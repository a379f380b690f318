/** SCSI identity and inventory: INQUIRY/VPD, MODE SENSE/SELECT, REPORT LUNS, RSOC, unit attentions, unmapped LUNs. */
import { describe, expect, it } from 'vitest';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { ASC_CAPACITY_DATA_CHANGED, ASC_POWER_ON_RESET, ASC_REPORTED_LUNS_DATA_CHANGED } from '../../emulator/iscsi/scsi/sense.js';
import { ScsiLogicalUnits } from '../../emulator/iscsi/scsi/scsiTarget.js';
import { CHECK_CONDITION, GOOD, type LunDevice, type Nexus, type ScsiResult } from '../../emulator/iscsi/scsi/types.js';

const MiB = 1024 * 1024;
const TARGET = 'iqn.2026-01.dev.arraylab:array1';
const nexus: Nexus = { initiatorPort: 'iqn.1994-05.com.redhat:host1,i,0x023d00000001', targetPort: `${TARGET},t,0x0001`, relativePort: 3 };
const other: Nexus = { ...nexus, initiatorPort: 'iqn.1994-05.com.redhat:host2,i,0x023d00000002' };

function lunOf(device: MemoryBlockStore, extra: Partial<LunDevice> = {}): LunDevice {
  return {
    device,
    identity: { wwn: '600140512345678900000000000000aa', serial: 'AL0001', vendor: 'ARRAYLAB', product: 'VOLUME', revision: '0.1' },
    readOnly: false,
    writeCacheEnabled: true,
    ...extra,
  };
}

function setup(opts: { thin?: boolean; readOnly?: boolean; wce?: boolean; luns?: number[] } = {}) {
  const dev = new MemoryBlockStore({ size: 4 * MiB, blockSize: 512, thin: opts.thin ?? true });
  const lu = lunOf(dev, { readOnly: opts.readOnly ?? false, writeCacheEnabled: opts.wce ?? true });
  const luns = new Map<number, LunDevice>((opts.luns ?? [0]).map((l) => [l, lu]));
  const t = new ScsiLogicalUnits(() => luns);
  const exec = (cdb: number[], dataOut: Buffer = Buffer.alloc(0), lun = 0, nx = nexus): Promise<ScsiResult> => {
    const padded = Buffer.alloc(Math.max(16, cdb.length));
    Buffer.from(cdb).copy(padded);
    return t.execute({ cdb: padded, lun, nexus: nx, dataOut, expectedDataInLength: 0 });
  };
  return { dev, lu, luns, t, exec };
}

function expectGood(r: ScsiResult): Buffer {
  expect(r.sense ? [...r.sense].map((b) => b.toString(16)) : undefined).toBeUndefined();
  expect(r.status).toBe(GOOD);
  return r.dataIn ?? Buffer.alloc(0);
}
function expectSense(r: ScsiResult, key: number, asc: number, ascq = 0): Buffer {
  expect(r.status).toBe(CHECK_CONDITION);
  const s = r.sense!;
  expect([s[0]! & 0x7f, s[7]]).toEqual([0x70, 10]);
  expect({ key: s[2]! & 0x0f, asc: s[12], ascq: s[13] }).toEqual({ key, asc, ascq });
  return s;
}
const ILLEGAL = 0x5;
const inquiry = (evpd: number, page: number, alloc = 0xffff) => [0x12, evpd, page, alloc >> 8, alloc & 0xff, 0];

describe('INQUIRY', () => {
  it('standard data: byte-exact header, identity padded, version descriptors, truncated to the allocation length', async () => {
    const { exec } = setup();
    const d = expectGood(await exec(inquiry(0, 0)));
    expect(d.length).toBe(74);
    expect([...d.subarray(0, 8)]).toEqual([0x00, 0x00, 0x06, 0x12, 69, 0x08, 0x00, 0x02]); // 3PC: EXTENDED COPY
    expect(d.toString('latin1', 8, 16)).toBe('ARRAYLAB');
    expect(d.toString('latin1', 16, 32)).toBe('VOLUME          ');
    expect(d.toString('latin1', 32, 36)).toBe('0.1 ');
    expect([d.readUInt16BE(58), d.readUInt16BE(60), d.readUInt16BE(62), d.readUInt16BE(64)]).toEqual([0x00a0, 0x0460, 0x04c0, 0x0960]);
    expect(expectGood(await exec(inquiry(0, 0, 36))).length).toBe(36);
    expect(expectGood(await exec(inquiry(0, 0, 0))).length).toBe(0);
    const s = expectSense(await exec(inquiry(0, 0x80)), ILLEGAL, 0x24);
    expect(s.readUInt16BE(16)).toBe(2);
    expectSense(await exec([0x12, 0x02, 0, 0, 36, 0]), ILLEGAL, 0x24); // CMDDT
  });

  it('an unmapped LUN answers with peripheral qualifier 011b; other commands get LOGICAL UNIT NOT SUPPORTED', async () => {
    const { exec } = setup();
    const d = expectGood(await exec(inquiry(0, 0), undefined, 5));
    expect(d[0]).toBe(0x7f);
    expect(d[5]).toBe(0); // no device, no copy manager
    expect(d.length).toBe(74);
    expectSense(await exec([0, 0, 0, 0, 0, 0], undefined, 5), ILLEGAL, 0x25);
    expectSense(await exec([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], undefined, 5), ILLEGAL, 0x25);
    expectSense(await exec([0xc7, 0, 0, 0, 0, 0], undefined, 5), ILLEGAL, 0x25);
    const rs = expectGood(await exec([0x03, 0, 0, 0, 252, 0], undefined, 5));
    expect([rs[0], rs[2], rs[12], rs[13]]).toEqual([0x70, 0x05, 0x25, 0x00]);
    const rl = expectGood(await exec([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], undefined, 5));
    expect(rl.readUInt32BE(0)).toBe(8);
  });

  it('VPD 00h lists the supported pages; 80h the serial', async () => {
    const { exec } = setup();
    expect([...expectGood(await exec(inquiry(1, 0)))]).toEqual([0, 0, 0, 7, 0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]);
    // Every listed page answers (8Fh's content: scsiExtendedCopy.test.ts).
    for (const page of [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]) {
      const p = expectGood(await exec(inquiry(1, page)));
      expect([p[0], p[1], p.readUInt16BE(2)]).toEqual([0, page, p.length - 4]);
    }
    const sn = expectGood(await exec(inquiry(1, 0x80)));
    expect([...sn.subarray(0, 4)]).toEqual([0, 0x80, 0, 6]);
    expect(sn.toString('latin1', 4)).toBe('AL0001');
    expectSense(await exec(inquiry(1, 0x81)), ILLEGAL, 0x24);
    expect(expectGood(await exec(inquiry(1, 0x83, 4))).length).toBe(4);
  });

  it('VPD 83h: NAA, T10 vendor ID, relative target port, target port and target device names', async () => {
    const { exec } = setup();
    const d = expectGood(await exec(inquiry(1, 0x83)));
    expect([d[0], d[1]]).toEqual([0, 0x83]);
    expect(d.readUInt16BE(2)).toBe(d.length - 4);
    const found: { head: number[]; value: Buffer }[] = [];
    for (let p = 4; p < d.length; ) {
      const len = d[p + 3]!;
      found.push({ head: [d[p]!, d[p + 1]!], value: d.subarray(p + 4, p + 4 + len) });
      p += 4 + len;
    }
    expect(found.map((f) => f.head)).toEqual([
      [0x01, 0x03],
      [0x02, 0x01],
      [0x51, 0x94],
      [0x53, 0x98],
      [0x53, 0xa8],
    ]);
    expect(found[0]!.value.toString('hex')).toBe('600140512345678900000000000000aa');
    expect(found[1]!.value.toString('latin1')).toBe('ARRAYLABAL0001');
    expect([...found[2]!.value]).toEqual([0, 0, 0, 3]);
    for (const [i, name] of [
      [3, `${TARGET},t,0x0001`],
      [4, TARGET],
    ] as const) {
      const v = found[i]!.value;
      expect(v.length % 4).toBe(0);
      expect(v.toString('utf8').replace(/\0+$/, '')).toBe(name);
      expect(v[v.length - 1]).toBe(0);
    }
  });

  it('VPD B0h block limits, B1h characteristics, B2h provisioning (thin and thick)', async () => {
    for (const thin of [true, false]) {
      const { exec } = setup({ thin });
      const b0 = expectGood(await exec(inquiry(1, 0xb0)));
      expect(b0.length).toBe(64);
      expect([b0[1], b0.readUInt16BE(2)]).toEqual([0xb0, 0x3c]);
      expect(b0[4]).toBe(0x00); // WSNZ 0: WRITE SAME of 0 blocks runs to the end of the medium
      expect(b0[5]).toBe(255);
      expect(b0.readUInt32BE(8)).toBe((32 * MiB) / 512);
      expect(b0.readUInt32BE(24)).toBe(thin ? 256 : 0);
      expect(b0.readUInt32BE(20)).toBe(thin ? 1024 * 1024 : 0);
      expect(b0.readBigUInt64BE(36)).toBe(BigInt((1024 * MiB) / 512));
      // WRITE ATOMIC: 1 MiB at most, aligned to and a multiple of the 4 KiB physical block; no boundaries.
      expect([b0.readUInt32BE(44), b0.readUInt32BE(48), b0.readUInt32BE(52), b0.readUInt32BE(56), b0.readUInt32BE(60)]).toEqual([2048, 8, 8, 0, 0]);
      const b1 = expectGood(await exec(inquiry(1, 0xb1)));
      expect([b1.length, b1.readUInt16BE(2), b1.readUInt16BE(4)]).toEqual([64, 0x3c, 1]);
      const b2 = expectGood(await exec(inquiry(1, 0xb2)));
      expect([...b2]).toEqual(thin ? [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0] : [0, 0xb2, 0, 4, 0, 0, 0, 0]);
    }
  });
});

describe('MODE SENSE / MODE SELECT', () => {
  const sense6 = (page: number, opts: { dbd?: boolean; pc?: number; sub?: number; alloc?: number } = {}) => [
    0x1a,
    opts.dbd ? 0x08 : 0,
    ((opts.pc ?? 0) << 6) | page,
    opts.sub ?? 0,
    opts.alloc ?? 255,
    0,
  ];

  it('MODE SENSE(6): header, block descriptor, caching page with WCE, control page, all pages', async () => {
    const { exec } = setup({ wce: true });
    const d = expectGood(await exec(sense6(0x08)));
    expect(d.length).toBe(4 + 8 + 20);
    expect([d[0], d[1], d[2], d[3]]).toEqual([31, 0, 0x10, 8]);
    expect(d.readUInt32BE(4)).toBe(8192);
    expect(d.readUIntBE(9, 3)).toBe(512);
    expect([d[12], d[13], d[14]]).toEqual([0x08, 0x12, 0x04]);
    const all = expectGood(await exec(sense6(0x3f, { dbd: true })));
    expect(all.length).toBe(4 + 20 + 12);
    expect([all[0], all[3], all[4], all[24], all[25]]).toEqual([35, 0, 0x08, 0x0a, 0x0a]);
    expect(expectGood(await exec(sense6(0x3f, { sub: 0xff, dbd: true }))).equals(all)).toBe(true);
    const ch = expectGood(await exec(sense6(0x08, { pc: 1, dbd: true })));
    expect([...ch.subarray(6)].every((b) => b === 0)).toBe(true);
    expect(expectGood(await exec(sense6(0x3f, { alloc: 10 }))).length).toBe(10);
    expectSense(await exec(sense6(0x08, { pc: 3 })), ILLEGAL, 0x39);
    expectSense(await exec(sense6(0x19)), ILLEGAL, 0x24);
    expectSense(await exec(sense6(0x08, { sub: 1 })), ILLEGAL, 0x24);
  });

  it('WCE mirrors the LUN; WP is set on read-only LUNs; MODE SENSE(10) with LLBAA has a long descriptor', async () => {
    const { exec } = setup({ wce: false, readOnly: true });
    const d = expectGood(await exec([0x5a, 0x10, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0]));
    expect(d.length).toBe(8 + 16 + 20);
    expect(d.readUInt16BE(0)).toBe(42);
    expect([d[3], d[4], d.readUInt16BE(6)]).toEqual([0x90, 0x01, 16]);
    expect(Number(d.readBigUInt64BE(8))).toBe(8192);
    expect(d.readUInt32BE(20)).toBe(512);
    expect(d[26]).toBe(0x00);
  });

  it('MODE SELECT accepts the current values and refuses changes', async () => {
    const { exec } = setup({ wce: true });
    const current = expectGood(await exec(sense6(0x3f)));
    const params = Buffer.from(current);
    params[0] = 0; // MODE DATA LENGTH is reserved in MODE SELECT
    params[2] = 0;
    expectGood(await exec([0x15, 0x10, 0, 0, params.length, 0], params));
    const changed = Buffer.from(params);
    changed[4 + 8 + 2] = 0x00; // clear WCE
    const s = expectSense(await exec([0x15, 0x10, 0, 0, changed.length, 0], changed), ILLEGAL, 0x26);
    expect([s[15], s.readUInt16BE(16)]).toEqual([0x88 | 2, 14]);
    expectSense(await exec([0x15, 0x11, 0, 0, params.length, 0], params), ILLEGAL, 0x24); // SP
    expectSense(await exec([0x15, 0x10, 0, 0, 3, 0], params), ILLEGAL, 0x1a);
    expectSense(await exec([0x15, 0x10, 0, 0, 20, 0], params), ILLEGAL, 0x1a); // page cut short
    const wrongBs = Buffer.from(params);
    wrongBs.writeUIntBE(4096, 9, 3);
    expectSense(await exec([0x15, 0x10, 0, 0, wrongBs.length, 0], wrongBs), ILLEGAL, 0x26);
    // MODE SELECT(10), no block descriptor, control page only
    const ten = Buffer.concat([Buffer.alloc(8), current.subarray(4 + 8 + 20)]);
    expectGood(await exec([0x55, 0x10, 0, 0, 0, 0, 0, 0, ten.length, 0], ten));
    expectGood(await exec([0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]));
  });
});

describe('REPORT LUNS', () => {
  it('lists LUNs in SAM encoding; SELECT REPORT 01h is empty; others are refused', async () => {
    const { exec } = setup({ luns: [0, 7, 300] });
    const d = expectGood(await exec([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
    expect(d.readUInt32BE(0)).toBe(24);
    expect(d.toString('hex')).toBe('00000018' + '00000000' + '0000000000000000' + '0007000000000000' + '412c000000000000');
    expect(expectGood(await exec([0xa0, 0, 0x02, 0, 0, 0, 0, 0, 0, 16, 0, 0])).length).toBe(16);
    expect(expectGood(await exec([0xa0, 0, 0x01, 0, 0, 0, 0, 0, 1, 0, 0, 0])).toString('hex')).toBe('0000000000000000');
    expectSense(await exec([0xa0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0]), ILLEGAL, 0x24);
  });
});

describe('REPORT SUPPORTED OPERATION CODES and the dispatch table', () => {
  const rsocAll = (rctd = false) => [0xa3, 0x0c, rctd ? 0x80 : 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
  const rsocOne = (opts: number, op: number, sa = 0) => [0xa3, 0x0c, opts, op, sa >> 8, sa & 0xff, 0, 0, 1, 0, 0, 0];

  function parseAll(d: Buffer, size: number): { op: number; sa: number; servactv: boolean; cdbLen: number }[] {
    const out = [];
    expect(d.readUInt32BE(0)).toBe(d.length - 4);
    for (let p = 4; p < d.length; p += size) {
      out.push({ op: d[p]!, sa: d.readUInt16BE(p + 2), servactv: (d[p + 5]! & 1) === 1, cdbLen: d.readUInt16BE(p + 6) });
    }
    return out;
  }

  it('lists exactly the dispatch table, and every listed command dispatches (never INVALID COMMAND OPERATION CODE)', async () => {
    const { exec, t } = setup();
    const list = parseAll(expectGood(await exec(rsocAll())), 8);
    expect(list).toHaveLength(t.table.commands.length);
    for (const [i, d] of t.table.commands.entries()) {
      expect(list[i]).toEqual({ op: d.opcode, sa: d.serviceAction ?? 0, servactv: d.serviceAction !== undefined, cdbLen: d.usage.length });
    }
    const listed = new Set(list.map((c) => c.op));
    for (let op = 0; op < 256; op++) {
      const cdb = [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
      const r = await exec(cdb);
      const invalidOpcode = r.status === CHECK_CONDITION && r.sense![12] === 0x20;
      expect({ op, invalidOpcode }).toEqual({ op, invalidOpcode: !listed.has(op) });
    }
    expect(list.map((c) => c.op)).toEqual(
      expect.arrayContaining([0x00, 0x03, 0x12, 0x1a, 0x25, 0x28, 0x2a, 0x35, 0x41, 0x42, 0x5a, 0x88, 0x89, 0x8a, 0x93, 0x9e, 0xa0, 0xa3]),
    );
  });

  it('RCTD adds command timeouts descriptors', async () => {
    const { exec, t } = setup();
    const d = expectGood(await exec(rsocAll(true)));
    expect(d.length).toBe(4 + 20 * t.table.commands.length);
    expect(d[4 + 5]! & 0x02).toBe(0x02);
    expect(d.readUInt16BE(4 + 8)).toBe(0x0a);
  });

  it('one-command forms return the usage mask dispatch enforces', async () => {
    const { exec, t } = setup();
    for (const d of t.table.commands) {
      const r = d.serviceAction === undefined ? await exec(rsocOne(1, d.opcode)) : await exec(rsocOne(2, d.opcode, d.serviceAction));
      const data = expectGood(r);
      expect(data[1]! & 0x07).toBe(0x03);
      expect(data.readUInt16BE(2)).toBe(d.usage.length);
      expect([...data.subarray(4, 4 + d.usage.length)]).toEqual([...d.usage]);
      // Setting a bit the mask leaves out is INVALID FIELD IN CDB; the NACA bit of the control byte is always out.
      const cdb = Array<number>(16).fill(0);
      cdb[0] = d.opcode;
      if (d.serviceAction !== undefined) cdb[1] = d.serviceAction;
      cdb[d.usage.length - 1] = 0x04;
      const s = expectSense(await exec(cdb), ILLEGAL, 0x24);
      expect(s.readUInt16BE(16)).toBe(d.usage.length - 1);
    }
    expectSense(await exec(rsocOne(1, 0x9e)), ILLEGAL, 0x24); // has service actions
    expectSense(await exec(rsocOne(2, 0x28)), ILLEGAL, 0x24); // has none
    expect([...expectGood(await exec(rsocOne(1, 0xc0)))]).toEqual([0, 1, 0, 0]);
    expect(expectGood(await exec(rsocOne(2, 0x9e, 0x11)))[1]).toBe(0x01);
    expect(expectGood(await exec(rsocOne(3, 0x28)))[1]).toBe(0x03);
    expectSense(await exec(rsocOne(4, 0x28)), ILLEGAL, 0x24);
  });

  it('omits UNMAP on thick LUNs', async () => {
    const { exec } = setup({ thin: false });
    const list = parseAll(expectGood(await exec(rsocAll())), 8);
    expect(list.some((c) => c.op === 0x42)).toBe(false);
    expect(expectGood(await exec(rsocOne(1, 0x42)))[1]).toBe(0x01);
  });

  it('an unsupported service action is INVALID FIELD IN CDB, an unknown opcode INVALID COMMAND OPERATION CODE', async () => {
    const { exec } = setup();
    const s = expectSense(await exec([0x9e, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]), ILLEGAL, 0x24);
    expect(s.readUInt16BE(16)).toBe(1);
    const o = expectSense(await exec([0xc1, 0, 0, 0, 0, 0]), ILLEGAL, 0x20);
    expect([o[15], o.readUInt16BE(16)]).toEqual([0xcf, 0]);
    expectSense(
      await (async () => {
        const { t } = setup();
        return t.execute({ cdb: Buffer.from([0x28, 0, 0, 0]), lun: 0, nexus, dataOut: Buffer.alloc(0), expectedDataInLength: 0 });
      })(),
      ILLEGAL,
      0x24,
    ); // CDB shorter than the command
  });
});

describe('TEST UNIT READY, REQUEST SENSE, START STOP UNIT', () => {
  it('basics', async () => {
    const { exec, dev } = setup();
    expectGood(await exec([0, 0, 0, 0, 0, 0]));
    const rs = expectGood(await exec([0x03, 0, 0, 0, 18, 0]));
    expect([...rs]).toEqual([0x70, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(expectGood(await exec([0x03, 0, 0, 0, 8, 0])).length).toBe(8);
    expectSense(await exec([0x03, 1, 0, 0, 18, 0]), ILLEGAL, 0x24); // DESC
    let flushes = 0;
    dev.flush = async () => void flushes++;
    expectGood(await exec([0x1b, 0, 0, 0, 0x01, 0]));
    expect(flushes).toBe(0);
    expectGood(await exec([0x1b, 0, 0, 0, 0x00, 0])); // stop: flush
    expectGood(await exec([0x1b, 1, 0, 0, 0x04, 0])); // stop, NO_FLUSH
    expect(flushes).toBe(1);
    expectSense(await exec([0x1b, 0, 0, 0, 0x03, 0]), ILLEGAL, 0x24); // LOEJ: not removable
    expectSense(await exec([0x1b, 0, 0, 0, 0x30, 0]), ILLEGAL, 0x24);
    expectSense(await exec([0x1b, 0, 0, 0x01, 0x01, 0]), ILLEGAL, 0x24);
  });
});

describe('unit attentions', () => {
  it('are per nexus and LUN; INQUIRY keeps them; other commands report and clear; REQUEST SENSE returns and clears', async () => {
    const { exec, t } = setup();
    t.establishUnitAttention(nexus, 0, ASC_POWER_ON_RESET);
    t.establishUnitAttention(nexus, 0, ASC_POWER_ON_RESET); // not queued twice
    t.establishUnitAttention(nexus, 0, ASC_CAPACITY_DATA_CHANGED);
    expectGood(await exec([0, 0, 0, 0, 0, 0], undefined, 0, other));
    expectGood(await exec([0x12, 0, 0, 0, 36, 0]));
    expectSense(await exec([0, 0, 0, 0, 0, 0]), 0x6, 0x29, 0x00);
    const rs = expectGood(await exec([0x03, 0, 0, 0, 18, 0]));
    expect([rs[2], rs[12], rs[13]]).toEqual([0x6, 0x2a, 0x09]);
    expectGood(await exec([0, 0, 0, 0, 0, 0]));
    expect(t.hasUnitAttention(nexus, 0)).toBe(false);
  });

  it('REPORT LUNS clears only REPORTED LUNS DATA HAS CHANGED', async () => {
    const { exec, t } = setup();
    t.establishUnitAttention(nexus, 0, ASC_POWER_ON_RESET);
    t.establishUnitAttention(nexus, 0, ASC_REPORTED_LUNS_DATA_CHANGED);
    expectGood(await exec([0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
    expectSense(await exec([0, 0, 0, 0, 0, 0]), 0x6, 0x29, 0x00);
    expectGood(await exec([0, 0, 0, 0, 0, 0]));
  });
});
