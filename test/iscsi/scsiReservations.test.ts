/**
 * Reservations through ScsiLogicalUnits.execute: PERSISTENT RESERVE IN/OUT (every service
 * action, every type's conflict matrix), SPC-2 RESERVE/RELEASE, unit attentions to the other
 * nexuses, resets, APTPL persistence and malformed input. Three initiators see one LU, at
 * different LUN numbers (host affinity).
 */
import { describe, expect, it, vi } from 'vitest';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import type { ReservationStore } from '../../emulator/iscsi/types.js';
import { ScsiLogicalUnits, type ScsiLogicalUnitsOptions } from '../../emulator/iscsi/scsi/scsiTarget.js';
import { CHECK_CONDITION, GOOD, RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiResult } from '../../emulator/iscsi/scsi/types.js';

const TARGET = 'iqn.2026-01.dev.arraylab:array1,t,0x0001';
const nexusOf = (host: string, isid = '023d00000001'): Nexus => ({
  initiatorPort: `iqn.1994-05.com.redhat:${host},i,0x${isid}`,
  targetPort: TARGET,
  relativePort: 1,
});
const A = nexusOf('alpha');
const B = nexusOf('bravo');
const C = nexusOf('charlie');
const WWN = '600140512345678900000000000000aa';
/** LUN of the LU on each initiator port: one LU, three LUN numbers. */
const LUNS = [
  [A, 0],
  [B, 3],
  [C, 7],
] as const;

const ILLEGAL = 0x5;
const UNIT_ATTENTION = 0x6;
const HARDWARE = 0x4;

const WE = 1;
const EA = 3;
const WE_RO = 5;
const EA_RO = 6;
const WE_AR = 7;
const EA_AR = 8;

// PR OUT service actions
const REGISTER = 0;
const RESERVE = 1;
const RELEASE = 2;
const CLEAR = 3;
const PREEMPT = 4;
const PREEMPT_AND_ABORT = 5;
const REGISTER_IGNORE = 6;

class MemoryStore implements ReservationStore {
  readonly rows = new Map<string, Buffer>();
  failSave = false;
  load(wwn: string): Buffer | undefined {
    return this.rows.get(wwn);
  }
  save(wwn: string, state: Buffer | undefined): void {
    if (this.failSave) throw new Error('disk full');
    if (state === undefined) this.rows.delete(wwn);
    else this.rows.set(wwn, Buffer.from(state));
  }
}

function setup(opts: ScsiLogicalUnitsOptions & { dev?: MemoryBlockStore } = {}) {
  const dev = opts.dev ?? new MemoryBlockStore({ size: 1024 * 1024, blockSize: 512, thin: true });
  const lu: LunDevice = {
    device: dev,
    identity: { wwn: WWN, serial: 'AL0001', vendor: 'ARRAYLAB', product: 'VOLUME', revision: '0.1' },
    readOnly: false,
    writeCacheEnabled: true,
  };
  // Host affinity by initiator port, as the transport's lunsFor does.
  const maps = new Map<string, Map<number, LunDevice>>();
  const lunOf = (n: Nexus): number => [...maps.get(n.initiatorPort)!.keys()][0]!;
  const t = new ScsiLogicalUnits((n) => maps.get(n.initiatorPort) ?? new Map(), opts);
  const login = (n: Nexus, lun: number): void => {
    maps.set(n.initiatorPort, new Map([[lun, lu]]));
    t.addNexus(n);
  };
  for (const [n, lun] of LUNS) login(n, lun);
  const exec = (n: Nexus, cdb: number[], dataOut: Buffer = Buffer.alloc(0)): Promise<ScsiResult> => {
    const c = Buffer.alloc(Math.max(16, cdb.length));
    Buffer.from(cdb).copy(c);
    return t.execute({ cdb: c, lun: lunOf(n), nexus: n, dataOut, expectedDataInLength: 65535 });
  };
  return { t, dev, lu, exec, login };
}
type Exec = ReturnType<typeof setup>['exec'];

function params(key: bigint, sark: bigint, flags = 0): Buffer {
  const p = Buffer.alloc(24);
  p.writeBigUInt64BE(key, 0);
  p.writeBigUInt64BE(sark, 8);
  p[20] = flags;
  return p;
}
function prOutCdb(sa: number, type = 0, length = 24, scope = 0): number[] {
  return [0x5f, sa, (scope << 4) | type, 0, 0, (length >>> 24) & 0xff, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff, 0];
}
function prOut(exec: Exec, n: Nexus, sa: number, o: { key?: bigint; sark?: bigint; type?: number; flags?: number } = {}): Promise<ScsiResult> {
  return exec(n, prOutCdb(sa, o.type ?? 0), params(o.key ?? 0n, o.sark ?? 0n, o.flags ?? 0));
}
async function prIn(exec: Exec, n: Nexus, sa: number, alloc = 8192): Promise<Buffer> {
  const r = await exec(n, [0x5e, sa, 0, 0, 0, 0, 0, alloc >>> 8, alloc & 0xff, 0]);
  expectGood(r);
  return r.dataIn ?? Buffer.alloc(0);
}
async function readKeys(exec: Exec, n: Nexus = A): Promise<{ generation: number; keys: bigint[] }> {
  const d = await prIn(exec, n, 0);
  const keys: bigint[] = [];
  for (let i = 0; i < d.readUInt32BE(4) / 8; i++) keys.push(d.readBigUInt64BE(8 + 8 * i));
  return { generation: d.readUInt32BE(0), keys };
}
async function readReservation(exec: Exec, n: Nexus = A): Promise<{ key: bigint; type: number } | undefined> {
  const d = await prIn(exec, n, 1);
  if (d.readUInt32BE(4) === 0) return undefined;
  expect(d.readUInt32BE(4)).toBe(16);
  return { key: d.readBigUInt64BE(8), type: d[21]! & 0x0f };
}

const read10 = (exec: Exec, n: Nexus) => exec(n, [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
const write10 = (exec: Exec, n: Nexus) => exec(n, [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], Buffer.alloc(512, 0x5a));
const tur = (exec: Exec, n: Nexus) => exec(n, [0, 0, 0, 0, 0, 0]);

function expectGood(r: ScsiResult): void {
  expect(r.sense ? [...r.sense.subarray(0, 18)].map((b) => b.toString(16)) : undefined).toBeUndefined();
  expect(r.status).toBe(GOOD);
}
function expectSense(r: ScsiResult, key: number, ascq16: number): Buffer {
  expect(r.status).toBe(CHECK_CONDITION);
  const s = r.sense!;
  expect({ key: s[2]! & 0x0f, asc: s[12], ascq: s[13] }).toEqual({ key, asc: ascq16 >> 8, ascq: ascq16 & 0xff });
  return s;
}
function expectConflict(r: ScsiResult): void {
  expect(r.status).toBe(RESERVATION_CONFLICT);
}
/** Field pointer of ILLEGAL REQUEST sense: [C/D, byte, bit or undefined]. */
function fieldOf(s: Buffer): [boolean, number, number | undefined] {
  expect(s[15]! & 0x80).toBe(0x80);
  return [(s[15]! & 0x40) !== 0, s.readUInt16BE(16), (s[15]! & 0x08) !== 0 ? s[15]! & 7 : undefined];
}
async function clearUa(exec: Exec, n: Nexus): Promise<number[]> {
  const seen: number[] = [];
  for (let i = 0; i < 10; i++) {
    const r = await tur(exec, n);
    if (r.status === GOOD) return seen;
    seen.push((r.sense![12]! << 8) | r.sense![13]!);
  }
  throw new Error('unit attentions do not end');
}

describe('PERSISTENT RESERVE IN/OUT in the dispatch table', () => {
  it('REPORT SUPPORTED OPERATION CODES lists PR IN 0-3, PR OUT 0-6 (no REGISTER AND MOVE), RESERVE/RELEASE', async () => {
    const { exec } = setup();
    const r = await exec(A, [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
    expectGood(r);
    const d = r.dataIn!;
    const listed: string[] = [];
    for (let p = 4; p < 4 + d.readUInt32BE(0); p += 8) listed.push(`${d[p]!.toString(16)}/${d.readUInt16BE(p + 2)}`);
    for (const sa of [0, 1, 2, 3]) expect(listed).toContain(`5e/${sa}`);
    for (const sa of [0, 1, 2, 3, 4, 5, 6]) expect(listed).toContain(`5f/${sa}`);
    expect(listed).not.toContain('5f/7');
    for (const op of ['16/0', '17/0', '56/0', '57/0']) expect(listed).toContain(op);
  });

  it('refuses other service actions with INVALID FIELD IN CDB (libiscsi PrinServiceactionRange)', async () => {
    const { exec } = setup();
    for (let sa = 4; sa < 0x20; sa++) expectSense(await exec(A, [0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0]), ILLEGAL, 0x2400);
    expectSense(await exec(A, prOutCdb(7), params(0n, 1n)), ILLEGAL, 0x2400); // REGISTER AND MOVE
  });
});

describe('REGISTER and READ KEYS', () => {
  it('registers, refuses a wrong key, changes and removes keys, counting the generation', async () => {
    const { exec } = setup();
    expect(await readKeys(exec)).toEqual({ generation: 0, keys: [] });
    expectConflict(await prOut(exec, A, REGISTER, { key: 5n, sark: 0x1111n })); // unregistered with a key
    expectGood(await prOut(exec, A, REGISTER, { sark: 0x1111n }));
    expectGood(await prOut(exec, B, REGISTER_IGNORE, { key: 99n, sark: 0x2222n }));
    expect(await readKeys(exec, C)).toEqual({ generation: 2, keys: [0x1111n, 0x2222n] });
    expectConflict(await prOut(exec, A, REGISTER, { key: 0n, sark: 0x1112n })); // libiscsi: re-register fails
    expectGood(await prOut(exec, A, REGISTER, { key: 0x1111n, sark: 0xffff_ffff_ffff_ffffn }));
    expectGood(await prOut(exec, B, REGISTER_IGNORE, { sark: 0x3333n }));
    expect(await readKeys(exec)).toEqual({ generation: 4, keys: [0xffff_ffff_ffff_ffffn, 0x3333n] });
    expectGood(await prOut(exec, A, REGISTER, { key: 0xffff_ffff_ffff_ffffn, sark: 0n }));
    expectGood(await prOut(exec, C, REGISTER, { sark: 0n })); // unregistered, nothing to register: no change
    expect(await readKeys(exec)).toEqual({ generation: 5, keys: [0x3333n] });
  });

  it('READ KEYS truncated to 8 bytes keeps ADDITIONAL LENGTH (libiscsi PrinReadKeys.Truncate)', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 7n }));
    const d = await prIn(exec, A, 0, 8);
    expect(d.length).toBe(8);
    expect(d.readUInt32BE(4)).toBe(8);
  });

  it('refuses the 257th registration with INSUFFICIENT REGISTRATION RESOURCES, registering nothing', async () => {
    const { exec, login } = setup();
    for (let i = 0; i < 256; i++) {
      const n = nexusOf('alpha', i.toString(16).padStart(12, '0'));
      login(n, 0);
      expectGood(await prOut(exec, n, REGISTER, { sark: BigInt(i + 1) }));
    }
    const extra = nexusOf('alpha', 'ffff00000000');
    login(extra, 0);
    expectSense(await prOut(exec, extra, REGISTER, { sark: 1000n }), ILLEGAL, 0x5504);
    const { keys, generation } = await readKeys(exec, B);
    expect(keys.length).toBe(256);
    expect(generation).toBe(256);
  });
});

describe('RESERVE, RELEASE, READ RESERVATION, READ FULL STATUS, REPORT CAPABILITIES', () => {
  it('reserves, shows the holder, refuses others and type changes, releases', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 0xaan }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 0xbbn }));
    expectConflict(await prOut(exec, C, RESERVE, { key: 0xccn, type: WE })); // not registered
    expectConflict(await prOut(exec, A, RESERVE, { key: 0xbbn, type: WE })); // someone else's key
    expectGood(await prOut(exec, A, RESERVE, { key: 0xaan, type: WE }));
    const gen = (await readKeys(exec)).generation;
    expect(await readReservation(exec, C)).toEqual({ key: 0xaan, type: WE });
    expectGood(await prOut(exec, A, RESERVE, { key: 0xaan, type: WE })); // again, same type
    expectConflict(await prOut(exec, A, RESERVE, { key: 0xaan, type: EA })); // type change
    expectConflict(await prOut(exec, B, RESERVE, { key: 0xbbn, type: WE })); // not the holder
    expectGood(await prOut(exec, B, RELEASE, { key: 0xbbn, type: WE })); // not the holder: nothing
    expect(await readReservation(exec)).toEqual({ key: 0xaan, type: WE });
    expectSense(await prOut(exec, A, RELEASE, { key: 0xaan, type: EA }), ILLEGAL, 0x2604);
    expectGood(await prOut(exec, A, RELEASE, { key: 0xaan, type: WE }));
    expect(await readReservation(exec)).toBeUndefined();
    expect((await readKeys(exec)).generation).toBe(gen); // RESERVE and RELEASE leave PRGENERATION alone
    expect(await clearUa(exec, B)).toEqual([]); // WE release tells nobody
  });

  it('a holder keeps its reservation under a new key; all-registrants types report key 0', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    expectGood(await prOut(exec, A, REGISTER, { key: 1n, sark: 2n }));
    expect(await readReservation(exec)).toEqual({ key: 2n, type: EA });
    expectGood(await prOut(exec, A, RELEASE, { key: 2n, type: EA }));
    expectGood(await prOut(exec, A, RESERVE, { key: 2n, type: WE_AR }));
    expect(await readReservation(exec)).toEqual({ key: 0n, type: WE_AR });
  });

  it('READ FULL STATUS describes each registration with its iSCSI TransportID', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 0xa1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 0xb1n, flags: 0x04 })); // ALL_TG_PT
    expectGood(await prOut(exec, A, RESERVE, { key: 0xa1n, type: WE_RO }));
    const d = await prIn(exec, C, 3);
    expect(d.readUInt32BE(0)).toBe(2);
    const end = 8 + d.readUInt32BE(4);
    expect(end).toBe(d.length);
    const seen: { key: bigint; flags: number; type: number; rel: number; id: string }[] = [];
    for (let p = 8; p < end; ) {
      const len = d.readUInt32BE(p + 20);
      const id = d.subarray(p + 24, p + 24 + len);
      expect(id[0]).toBe(0x45); // format 01b, iSCSI
      expect(id.readUInt16BE(2) % 4).toBe(0);
      expect(len).toBeGreaterThanOrEqual(24);
      seen.push({
        key: d.readBigUInt64BE(p),
        flags: d[p + 12]!,
        type: d[p + 13]!,
        rel: d.readUInt16BE(p + 18),
        id: id.subarray(4).toString('utf8').replace(/\0+$/, ''),
      });
      p += 24 + len;
    }
    expect(seen).toEqual([
      { key: 0xa1n, flags: 0x01, type: WE_RO, rel: 1, id: A.initiatorPort },
      { key: 0xb1n, flags: 0x02, type: 0, rel: 0, id: B.initiatorPort },
    ]);
  });

  it('REPORT CAPABILITIES: all six types, ATP_C, CRH, no SIP_C; PTPL_C only with a store', async () => {
    const none = setup();
    const d = await prIn(none.exec, A, 2);
    expect(d.readUInt16BE(0)).toBe(8);
    expect(d[2]).toBe(0x14); // CRH, ATP_C; SIP_C 0, PTPL_C 0
    expect(d[3]! & 0x80).toBe(0x80); // TMV
    expect((d[3]! >> 4) & 7).toBeLessThanOrEqual(5);
    expect(d.readUInt16BE(4)).toBe(0xea01);
    const store = new MemoryStore();
    const withStore = setup({ reservations: store });
    expect((await prIn(withStore.exec, A, 2))[2]! & 0x01).toBe(1);
    expect((await prIn(withStore.exec, A, 2))[3]! & 0x01).toBe(0);
    expectGood(await prOut(withStore.exec, A, REGISTER, { sark: 1n, flags: 0x01 }));
    expect((await prIn(withStore.exec, A, 2))[3]! & 0x01).toBe(1); // PTPL_A
  });
});

describe('conflict matrix (SPC-4 §5.13.1, libiscsi ProutReserve.Access*)', () => {
  // [type, registered non-holder read, write, unregistered read, write]
  const cases: [string, number, boolean, boolean, boolean, boolean][] = [
    ['WR EX', WE, true, false, true, false],
    ['EX AC', EA, false, false, false, false],
    ['WR EX RO', WE_RO, true, true, true, false],
    ['EX AC RO', EA_RO, true, true, false, false],
    ['WR EX AR', WE_AR, true, true, true, false],
    ['EX AC AR', EA_AR, true, true, false, false],
  ];
  for (const [name, type, regRead, regWrite, unregRead, unregWrite] of cases) {
    it(`${name}: holder, registrant and stranger`, async () => {
      const { exec } = setup();
      expectGood(await prOut(exec, A, REGISTER_IGNORE, { sark: 0xa0n }));
      expectGood(await prOut(exec, B, REGISTER_IGNORE, { sark: 0xb0n }));
      expectGood(await prOut(exec, A, RESERVE, { key: 0xa0n, type }));
      expectGood(await read10(exec, A));
      expectGood(await write10(exec, A));
      const outcome = async (r: Promise<ScsiResult>, allowed: boolean) => {
        const res = await r;
        if (allowed) expectGood(res);
        else expectConflict(res);
      };
      await outcome(read10(exec, B), regRead);
      await outcome(write10(exec, B), regWrite);
      await outcome(read10(exec, C), unregRead);
      await outcome(write10(exec, C), unregWrite);
      // Always allowed: INQUIRY, REPORT LUNS, TEST UNIT READY, READ CAPACITY, PR IN, REQUEST SENSE.
      for (const cdb of [
        [0x12, 0, 0, 0, 36, 0],
        [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        [0x03, 0, 0, 0, 18, 0],
      ]) {
        expectGood(await exec(C, cdb));
      }
      // MODE SENSE reads (allowed under WE types), MODE SELECT and SYNCHRONIZE CACHE write.
      await outcome(exec(C, [0x1a, 0x08, 0x3f, 0, 255, 0]), unregRead);
      await outcome(exec(C, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), false);
      await outcome(exec(C, [0x15, 0x10, 0, 0, 0, 0]), false);
      await outcome(exec(B, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), regWrite);
      // Stopping the unit is a write; starting it is not.
      await outcome(exec(C, [0x1b, 0, 0, 0, 0x01, 0]), true);
      await outcome(exec(C, [0x1b, 0, 0, 0, 0x00, 0]), false);
      // The holder releases; then everyone may do everything.
      expectGood(await prOut(exec, A, RELEASE, { key: 0xa0n, type }));
      await clearUa(exec, B);
      expectGood(await write10(exec, C));
    });
  }

  it('unregistering the holder ends EX AC; an AR reservation lasts until the last registrant (Ownership*)', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    expectGood(await prOut(exec, A, REGISTER, { key: 1n, sark: 0n }));
    expect(await readReservation(exec)).toBeUndefined();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA_AR }));
    expectGood(await prOut(exec, A, REGISTER, { key: 1n, sark: 0n }));
    expect(await readReservation(exec)).toEqual({ key: 0n, type: EA_AR });
    expectConflict(await read10(exec, A)); // A is a stranger now
    expectGood(await prOut(exec, B, RELEASE, { key: 2n, type: EA_AR })); // any registrant holds it
    expect(await readReservation(exec)).toBeUndefined();
  });

  it('unregistering an RO holder tells the other registrants RESERVATIONS RELEASED', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: WE_RO }));
    expectGood(await prOut(exec, A, REGISTER, { key: 1n, sark: 0n }));
    expect(await clearUa(exec, B)).toEqual([0x2a04]);
    expect(await clearUa(exec, A)).toEqual([]);
    expect(await clearUa(exec, C)).toEqual([]);
  });
});

describe('unit attentions, CLEAR and PREEMPT', () => {
  it('RELEASE of an RO/AR reservation reaches the other registrants at their own LUN', async () => {
    const { exec, t } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA_RO }));
    expectGood(await prOut(exec, A, RELEASE, { key: 1n, type: EA_RO }));
    expect(t.hasUnitAttention(B, 3)).toBe(true);
    expect(t.hasUnitAttention(B, 0)).toBe(false);
    const r = await read10(exec, B);
    expectSense(r, UNIT_ATTENTION, 0x2a04);
    expectGood(await read10(exec, B));
    expect(t.hasUnitAttention(A, 0)).toBe(false);
    expect(t.hasUnitAttention(C, 7)).toBe(false);
  });

  it('CLEAR removes everything, bumps the generation once and tells the others RESERVATIONS PREEMPTED', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    const gen = (await readKeys(exec)).generation;
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    expectConflict(await prOut(exec, C, CLEAR, { key: 3n }));
    expectConflict(await prOut(exec, B, CLEAR, { key: 1n })); // not B's key
    expectGood(await prOut(exec, B, CLEAR, { key: 2n }));
    expect(await readReservation(exec, B)).toBeUndefined();
    expect(await readKeys(exec, B)).toEqual({ generation: gen + 1, keys: [] });
    expect(await clearUa(exec, A)).toEqual([0x2a03]);
    expect(await clearUa(exec, B)).toEqual([]);
    expectGood(await write10(exec, C));
  });

  it('PREEMPT without a reservation removes registrations (libiscsi ProutPreempt.RemoveRegistration)', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER_IGNORE, { sark: 0x10n }));
    expectGood(await prOut(exec, B, REGISTER_IGNORE, { sark: 0x20n }));
    const gen = (await readKeys(exec)).generation;
    expectSense(await prOut(exec, B, PREEMPT, { key: 0x20n, sark: 0n, type: EA }), ILLEGAL, 0x2600);
    expectConflict(await prOut(exec, B, PREEMPT, { key: 0x20n, sark: 0x99n, type: EA })); // names nobody
    expectConflict(await prOut(exec, C, PREEMPT, { key: 0n, sark: 0x10n, type: EA })); // not registered
    expectConflict(await prOut(exec, B, PREEMPT, { key: 0x20n, sark: 0x20n, type: EA })); // only itself
    expectGood(await prOut(exec, B, PREEMPT, { key: 0x20n, sark: 0x10n, type: EA }));
    expect(await readKeys(exec, B)).toEqual({ generation: gen + 1, keys: [0x20n] });
    expect(await readReservation(exec, B)).toBeUndefined();
    expect(await clearUa(exec, A)).toEqual([0x2a05]);
    expect(await clearUa(exec, B)).toEqual([]);
  });

  it('PREEMPT of the holder takes the reservation; a new type tells the survivors it was released', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    expectGood(await prOut(exec, C, REGISTER, { sark: 3n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: WE }));
    expectGood(await prOut(exec, B, PREEMPT, { key: 2n, sark: 1n, type: EA }));
    expect(await readReservation(exec, B)).toEqual({ key: 2n, type: EA });
    expect((await readKeys(exec, B)).keys).toEqual([2n, 3n]);
    expect(await clearUa(exec, A)).toEqual([0x2a05]);
    expect(await clearUa(exec, C)).toEqual([0x2a04]);
    expect(await clearUa(exec, B)).toEqual([]);
    expectConflict(await read10(exec, A));
    expectGood(await write10(exec, B));
    // PREEMPT naming a registrant other than the holder leaves the reservation alone.
    expectGood(await prOut(exec, B, PREEMPT, { key: 2n, sark: 3n, type: EA }));
    expect(await readReservation(exec, B)).toEqual({ key: 2n, type: EA });
    expect(await clearUa(exec, C)).toEqual([0x2a05]);
  });

  it('PREEMPT with SARK 0 under an all-registrants reservation removes everyone else', async () => {
    const { exec } = setup();
    for (const [n, k] of [
      [A, 1n],
      [B, 2n],
      [C, 3n],
    ] as const)
      expectGood(await prOut(exec, n, REGISTER, { sark: k }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: WE_AR }));
    expectGood(await prOut(exec, C, PREEMPT, { key: 3n, sark: 0n, type: WE_AR }));
    expect((await readKeys(exec, C)).keys).toEqual([3n]);
    expect(await readReservation(exec, C)).toEqual({ key: 0n, type: WE_AR });
    expect(await clearUa(exec, A)).toEqual([0x2a05]);
    expect(await clearUa(exec, B)).toEqual([0x2a05]);
  });

  it('PREEMPT AND ABORT hands the preempted nexuses to the transport to abort their tasks', async () => {
    const abortTasks = vi.fn();
    const { exec } = setup({ abortTasks });
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, REGISTER, { sark: 2n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    expectGood(await prOut(exec, B, PREEMPT, { key: 2n, sark: 1n, type: EA }));
    expect(abortTasks).not.toHaveBeenCalled(); // plain PREEMPT aborts nothing
    await clearUa(exec, A);
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, B, PREEMPT_AND_ABORT, { key: 2n, sark: 1n, type: EA }));
    expect(abortTasks).toHaveBeenCalledWith(WWN, [A]);
  });

  it('establishUnitAttentionForDevice reaches every live nexus but the one excepted; registrations outlive the session', async () => {
    const { exec, t } = setup();
    expectGood(await prOut(exec, C, REGISTER, { sark: 3n }));
    t.establishUnitAttentionForDevice(WWN, 0x2a09, B);
    expect([t.hasUnitAttention(A, 0), t.hasUnitAttention(B, 3), t.hasUnitAttention(C, 7)]).toEqual([true, false, true]);
    t.removeNexus(C);
    t.establishUnitAttentionForDevice(WWN, 0x2a01); // C is gone: not queued for it
    t.addNexus(C); // the session is reinstated: what was pending for the nexus is still there
    expect(await clearUa(exec, C)).toEqual([0x2a09]);
    expect((await readKeys(exec, C)).keys).toEqual([3n]);
    expect(await clearUa(exec, A)).toEqual([0x2a09, 0x2a01]);
  });
});

describe('malformed PERSISTENT RESERVE OUT', () => {
  it('parameter list length other than 24 is PARAMETER LIST LENGTH ERROR and changes nothing', async () => {
    const { exec } = setup();
    for (const len of [0, 23, 25, 4096]) {
      const data = Buffer.concat([params(0n, 1n), Buffer.alloc(Math.max(0, len - 24))]).subarray(0, len);
      expectSense(await exec(A, prOutCdb(REGISTER, 0, len), data), ILLEGAL, 0x1a00);
    }
    expect((await readKeys(exec)).keys).toEqual([]);
  });

  it('less data than the parameter list length is refused', async () => {
    const { exec } = setup();
    expectSense(await exec(A, prOutCdb(REGISTER), Buffer.alloc(10)), ILLEGAL, 0x0e03);
  });

  it('SPEC_I_PT, reserved bits and APTPL without a store are INVALID FIELD IN PARAMETER LIST at the bit', async () => {
    const { exec } = setup();
    expect(fieldOf(expectSense(await prOut(exec, A, REGISTER, { sark: 1n, flags: 0x08 }), ILLEGAL, 0x2600))).toEqual([false, 20, 3]);
    expect(fieldOf(expectSense(await prOut(exec, A, REGISTER, { sark: 1n, flags: 0x20 }), ILLEGAL, 0x2600))).toEqual([false, 20, 5]);
    expect(fieldOf(expectSense(await prOut(exec, A, REGISTER, { sark: 1n, flags: 0x01 }), ILLEGAL, 0x2600))).toEqual([false, 20, 0]);
    const p = params(0n, 1n);
    p[21] = 1;
    expect(fieldOf(expectSense(await exec(A, prOutCdb(REGISTER), p), ILLEGAL, 0x2600))).toEqual([false, 21, undefined]);
    expect((await readKeys(exec)).keys).toEqual([]);
    // APTPL means nothing to other service actions: ignored there.
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: WE, flags: 0x01 }));
  });

  it('SCOPE other than LU_SCOPE and unknown types are INVALID FIELD IN CDB', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expect(fieldOf(expectSense(await exec(A, prOutCdb(RESERVE, WE, 24, 2), params(1n, 0n)), ILLEGAL, 0x2400))).toEqual([true, 2, 7]);
    for (const type of [0, 2, 4, 9, 15]) {
      expect(fieldOf(expectSense(await prOut(exec, A, RESERVE, { key: 1n, type }), ILLEGAL, 0x2400))).toEqual([true, 2, 3]);
    }
    expect(await readReservation(exec)).toBeUndefined();
  });
});

describe('APTPL', () => {
  it('keeps registrations and the reservation across a restart, and forgets them with APTPL=0', async () => {
    const store = new MemoryStore();
    const first = setup({ reservations: store });
    expectGood(await prOut(first.exec, A, REGISTER, { sark: 0xa1n, flags: 0x01 }));
    expectGood(await prOut(first.exec, B, REGISTER, { sark: 0xb2n, flags: 0x05 })); // APTPL, ALL_TG_PT
    expectGood(await prOut(first.exec, A, RESERVE, { key: 0xa1n, type: EA_RO }));
    expect(store.rows.has(WWN)).toBe(true);
    const gen = (await readKeys(first.exec)).generation;

    const second = setup({ reservations: store, dev: first.dev });
    expect(await readKeys(second.exec, C)).toEqual({ generation: gen, keys: [0xa1n, 0xb2n] });
    expect(await readReservation(second.exec)).toEqual({ key: 0xa1n, type: EA_RO });
    expectConflict(await read10(second.exec, C));
    expectGood(await write10(second.exec, B));
    const full = await prIn(second.exec, A, 3);
    expect(full[8 + 12]).toBe(0x01); // A holds it
    expect(full[8 + 24 + full.readUInt32BE(8 + 20) + 12]).toBe(0x02); // B: ALL_TG_PT

    expectGood(await prOut(second.exec, A, REGISTER, { key: 0xa1n, sark: 0xa1n })); // APTPL=0 now
    expect(store.rows.has(WWN)).toBe(false);
    const third = setup({ reservations: store, dev: first.dev });
    expect((await readKeys(third.exec)).keys).toEqual([]);
  });

  it('a store that fails leaves the command failed and the state as it was', async () => {
    const store = new MemoryStore();
    const logger = { error: vi.fn() };
    const { exec } = setup({ reservations: store, logger });
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n, flags: 0x01 }));
    store.failSave = true;
    expectSense(await prOut(exec, B, REGISTER, { sark: 2n, flags: 0x01 }), HARDWARE, 0x4400);
    expectSense(await prOut(exec, A, RESERVE, { key: 1n, type: EA }), HARDWARE, 0x4400);
    expect(await readKeys(exec)).toEqual({ generation: 1, keys: [1n] });
    expect(await readReservation(exec)).toBeUndefined();
    expect(logger.error).toHaveBeenCalledTimes(2);
    expect(logger.error.mock.calls[0]![1]).toContain(`LU ${WWN} could not be saved`);
    store.failSave = false;
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    expect(store.rows.has(WWN)).toBe(true);
  });

  it('unreadable stored state is logged and the LU starts without registrations', async () => {
    const store = new MemoryStore();
    store.rows.set(WWN, Buffer.from('{"v":1,"generation":3,"aptpl":true,"registrations":[{"i":"x","t":"y","r":1,"k":"zz","a":false}]}'));
    const logger = { error: vi.fn() };
    const { exec } = setup({ reservations: store, logger });
    expect(await readKeys(exec)).toEqual({ generation: 0, keys: [] });
    expect(logger.error).toHaveBeenCalledOnce();
    expect(logger.error.mock.calls[0]![1]).toContain(WWN);
  });
});

describe('SPC-2 RESERVE / RELEASE', () => {
  it('one initiator reserves; the other conflicts but may INQUIRY, REPORT LUNS, REQUEST SENSE and RELEASE (Reserve6.2Initiators)', async () => {
    const { exec } = setup();
    for (const [res, rel] of [
      [
        [0x16, 0, 0, 0, 0, 0],
        [0x17, 0, 0, 0, 0, 0],
      ],
      [
        [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      ],
    ]) {
      expectGood(await exec(A, res!));
      expectGood(await exec(A, res!)); // again by the holder
      expectConflict(await exec(B, res!));
      expectGood(await exec(B, rel!)); // a no-op from a non-holder
      expectGood(await exec(A, [0x1a, 0x08, 0x3f, 0, 255, 0]));
      expectConflict(await exec(B, [0x1a, 0x08, 0x3f, 0, 255, 0]));
      expectConflict(await read10(exec, B));
      expectConflict(await tur(exec, B));
      expectGood(await exec(B, [0x12, 0, 0, 0, 36, 0]));
      expectGood(await exec(B, [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
      expectGood(await exec(B, [0x03, 0, 0, 0, 18, 0]));
      // PR IN and PR OUT conflict whoever sends them while an SPC-2 reservation exists.
      expectConflict(await exec(A, [0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0]));
      expectConflict(await prOut(exec, B, REGISTER, { sark: 1n }));
      expectGood(await exec(A, rel!));
      expectGood(await exec(B, res!));
      expectGood(await exec(B, rel!));
    }
  });

  it('refuses third-party reservations', async () => {
    const { exec } = setup();
    expectSense(await exec(A, [0x56, 0x10, 0, 5, 0, 0, 0, 0, 0, 0]), ILLEGAL, 0x2400);
    expectSense(await exec(A, [0x56, 0x02, 0, 0, 0, 0, 0, 0, 8, 0]), ILLEGAL, 0x2400);
  });

  it('conflicts with registrations except for a PR holder, which gets GOOD and no reservation (CRH)', async () => {
    const { exec } = setup();
    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectConflict(await exec(C, [0x16, 0, 0, 0, 0, 0]));
    expectConflict(await exec(A, [0x16, 0, 0, 0, 0, 0])); // registered, no reservation
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: WE }));
    expectGood(await exec(A, [0x16, 0, 0, 0, 0, 0]));
    expectGood(await exec(A, [0x17, 0, 0, 0, 0, 0]));
    expect(await readReservation(exec)).toEqual({ key: 1n, type: WE });
    expectGood(await read10(exec, C)); // no SPC-2 reservation was made
  });

  it('ends with the nexus, a LOGICAL UNIT RESET or a target reset; persistent reservations stay', async () => {
    const { exec, t, dev } = setup();
    const reserved = async () => (await exec(B, [0x16, 0, 0, 0, 0, 0])).status === RESERVATION_CONFLICT;
    expectGood(await exec(A, [0x16, 0, 0, 0, 0, 0]));
    t.removeNexus(A);
    expect(await reserved()).toBe(false);
    expectGood(await exec(B, [0x17, 0, 0, 0, 0, 0]));
    t.addNexus(A);

    expectGood(await exec(A, [0x16, 0, 0, 0, 0, 0]));
    t.resetLogicalUnit(WWN);
    expect(await clearUa(exec, A)).toEqual([0x2903]);
    expect(await clearUa(exec, C)).toEqual([0x2903]);
    expect(await reserved()).toBe(false); // B's RESERVE reported its unit attention first...
    expect(await reserved()).toBe(false); // ...and then reserved
    expectGood(await exec(B, [0x17, 0, 0, 0, 0, 0]));

    expectGood(await exec(A, [0x16, 0, 0, 0, 0, 0]));
    t.resetLogicalUnit(dev); // the transport's form: no unit attentions of its own
    expect(await clearUa(exec, C)).toEqual([]);
    expectGood(await exec(B, [0x16, 0, 0, 0, 0, 0]));
    t.resetTarget();
    expect(await clearUa(exec, A)).toEqual([0x2902]);
    expectGood(await exec(A, [0x16, 0, 0, 0, 0, 0]));
    expectGood(await exec(A, [0x17, 0, 0, 0, 0, 0]));

    expectGood(await prOut(exec, A, REGISTER, { sark: 1n }));
    expectGood(await prOut(exec, A, RESERVE, { key: 1n, type: EA }));
    t.resetTarget();
    t.resetLogicalUnit(WWN);
    expect(await clearUa(exec, A)).toEqual([0x2902, 0x2903]);
    expect(await readReservation(exec)).toEqual({ key: 1n, type: EA });
  });
});
