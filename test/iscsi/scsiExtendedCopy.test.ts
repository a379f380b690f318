/** EXTENDED COPY (LID1) and RECEIVE COPY RESULTS over MemoryBlockStore LUNs, through ScsiLogicalUnits.execute. */
import { describe, expect, it, vi } from 'vitest';
import { BlockDeviceError } from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { configureCopyManager, endCopyNexus } from '../../emulator/iscsi/scsi/copyManager.js';
import { ScsiLogicalUnits } from '../../emulator/iscsi/scsi/scsiTarget.js';
import { thirdPartyCopyVpd } from '../../emulator/iscsi/scsi/thirdPartyCopyVpd.js';
import { CHECK_CONDITION, GOOD, type LunDevice, type Nexus, type ScsiResult } from '../../emulator/iscsi/scsi/types.js';

const MiB = 1024 * 1024;
const nexus: Nexus = {
  initiatorPort: 'iqn.1994-05.com.redhat:host1,i,0x023d00000001',
  targetPort: 'iqn.2026-01.dev.arraylab:array1,t,0x0001',
  relativePort: 1,
};
const other: Nexus = { ...nexus, initiatorPort: 'iqn.1994-05.com.redhat:host2,i,0x023d00000002' };
const WWN = ['600140512345678900000000000000aa', '600140512345678900000000000000bb', '600140512345678900000000000000cc'];
const UNKNOWN_WWN = '6001405123456789000000000000ffff';

function lunOf(device: MemoryBlockStore, wwn: string, extra: Partial<LunDevice> = {}): LunDevice {
  return {
    device,
    identity: { wwn, serial: `AL-${wwn.slice(-2)}`, vendor: 'ARRAYLAB', product: 'VOLUME', revision: '0.1' },
    readOnly: false,
    writeCacheEnabled: true,
    ...extra,
  };
}

/** LUN 0 and 1: 4 MiB of 512-byte blocks; LUN 2: 4 MiB of 4096-byte blocks. `other` sees LUN 0 only. */
function setup(opts: { readOnly1?: boolean } = {}) {
  const devs = [
    new MemoryBlockStore({ size: 4 * MiB, blockSize: 512, thin: true }),
    new MemoryBlockStore({ size: 4 * MiB, blockSize: 512, thin: true }),
    new MemoryBlockStore({ size: 4 * MiB, blockSize: 4096, thin: true }),
  ];
  const lus = devs.map((d, i) => lunOf(d, WWN[i]!, i === 1 && opts.readOnly1 ? { readOnly: true } : {}));
  const all = new Map<number, LunDevice>(lus.map((lu, i) => [i, lu]));
  const onlyFirst = new Map<number, LunDevice>([[0, lus[0]!]]);
  const t = new ScsiLogicalUnits((nx) => (nx.initiatorPort === other.initiatorPort ? onlyFirst : all));
  const exec = (cdb: number[], dataOut: Buffer = Buffer.alloc(0), nx = nexus, lun = 0): Promise<ScsiResult> => {
    const padded = Buffer.alloc(Math.max(16, cdb.length));
    Buffer.from(cdb).copy(padded);
    return t.execute({ cdb: padded, lun, nexus: nx, dataOut, expectedDataInLength: 0 });
  };
  const xcopy = (list: Buffer, nx = nexus, plen = list.length) => exec([0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...be(plen, 4), 0, 0], list, nx);
  const rcr = (sa: number, listId: number, alloc = 1024, nx = nexus) =>
    exec([0x84, sa, listId, 0, 0, 0, 0, 0, 0, 0, ...be(alloc, 4), 0, 0], Buffer.alloc(0), nx);
  return { devs, lus, t, exec, xcopy, rcr };
}

function be(n: number, bytes: number): number[] {
  const out: number[] = [];
  for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) % 256);
  return out;
}

/** Identification CSCD descriptor (E4h) with an NAA designator, as libiscsi's populate_tgt_desc builds it. */
function cscd(wwn: string, blockSize: number, o: { type?: number; byte1?: number } = {}): Buffer {
  const d = Buffer.alloc(32);
  d[0] = o.type ?? 0xe4;
  d[1] = o.byte1 ?? 0;
  d[4] = 0x01; // binary
  d[5] = 0x03; // LU association, NAA
  d[7] = 16;
  Buffer.from(wwn, 'hex').copy(d, 8);
  d[29] = (blockSize >> 16) & 0xff;
  d.writeUInt16BE(blockSize & 0xffff, 30);
  return d;
}

/** Block→block segment descriptor (02h). */
function seg(src: number, dst: number, blocks: number, srcLba: number, dstLba: number, o: { dc?: boolean; type?: number } = {}): Buffer {
  const d = Buffer.alloc(28);
  d[0] = o.type ?? 0x02;
  d[1] = o.dc ? 0x02 : 0;
  d.writeUInt16BE(o.type === undefined || o.type === 0x02 ? 0x18 : 0x10, 2);
  d.writeUInt16BE(src, 4);
  d.writeUInt16BE(dst, 6);
  d.writeUInt16BE(blocks, 10);
  Buffer.from(be(srcLba, 8)).copy(d, 12);
  Buffer.from(be(dstLba, 8)).copy(d, 20);
  return d;
}

function list(cscds: Buffer[], segs: Buffer[], o: { listId?: number; usage?: number; byte1?: number } = {}): Buffer {
  const h = Buffer.alloc(16);
  h[0] = o.listId ?? 1;
  h[1] = o.byte1 ?? (o.usage ?? 0) << 3;
  const c = Buffer.concat(cscds);
  const s = Buffer.concat(segs);
  h.writeUInt16BE(c.length, 2);
  h.writeUInt32BE(s.length, 8);
  return Buffer.concat([h, c, s]);
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed + (i >> 9)) & 0xff;
  return b;
}

async function readBack(dev: MemoryBlockStore, offset: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len);
  await dev.read(offset, b);
  return b;
}

function expectGood(r: ScsiResult): Buffer {
  expect(r.sense ? [...r.sense].map((b) => b.toString(16)) : undefined).toBeUndefined();
  expect(r.status).toBe(GOOD);
  return r.dataIn ?? Buffer.alloc(0);
}
function expectSense(r: ScsiResult, key: number, asc: number, ascq = 0): Buffer {
  expect(r.status).toBe(CHECK_CONDITION);
  const s = r.sense!;
  expect(s[0]! & 0x7f).toBe(0x70);
  expect(s[7]).toBe(s.length - 8);
  expect({ key: s[2]! & 0x0f, asc: s[12], ascq: s[13] }).toEqual({ key, asc, ascq });
  return s;
}
/** Sense-key-specific field pointer: [SKSV, C/D (CDB), byte]. */
function fieldPointer(s: Buffer): [boolean, boolean, number] {
  return [(s[15]! & 0x80) !== 0, (s[15]! & 0x40) !== 0, s.readUInt16BE(16)];
}
const ILLEGAL = 0x5;
const COPY_ABORTED = 0xa;
const DATA_PROTECT = 0x7;

describe('EXTENDED COPY: data movement', () => {
  it('copies between two LUNs across chunk boundaries and touches nothing else', async () => {
    const { devs, xcopy } = setup();
    const data = pattern(2500 * 512, 1); // 1.22 MiB: two chunks
    await devs[0]!.write(10 * 512, data);
    const before = await readBack(devs[1]!, 0, 4 * MiB);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 2500, 10, 100)])));
    expect((await readBack(devs[1]!, 100 * 512, data.length)).equals(data)).toBe(true);
    const after = await readBack(devs[1]!, 0, 4 * MiB);
    expect(after.subarray(0, 100 * 512).equals(before.subarray(0, 100 * 512))).toBe(true);
    expect(after.subarray(2600 * 512).equals(before.subarray(2600 * 512))).toBe(true);
  });

  it('copies within one LUN, start to end, as libiscsi ExtendedCopy.Simple does (one CSCD, index 0 both ways)', async () => {
    const { devs, xcopy } = setup();
    const blocks = devs[0]!.size / 512;
    const data = Buffer.alloc(2048 * 512, 'A');
    await devs[0]!.write(0, data);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 2048, 0, blocks - 2048)], { usage: 2 })));
    expect((await readBack(devs[0]!, (blocks - 2048) * 512, data.length)).equals(data)).toBe(true);
  });

  it('overlapping ranges of one LUN copy as memmove does, in both directions', async () => {
    const { devs, xcopy } = setup();
    const data = pattern(3000 * 512, 7);
    await devs[0]!.write(0, data);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 2500, 0, 300)])));
    expect((await readBack(devs[0]!, 300 * 512, 2500 * 512)).equals(data.subarray(0, 2500 * 512))).toBe(true);
    await devs[0]!.write(0, data);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 2500, 300, 0)])));
    expect((await readBack(devs[0]!, 0, 2500 * 512)).equals(data.subarray(300 * 512, 2800 * 512))).toBe(true);
  });

  it('runs a multi-segment list in order, zero-block segments included, and COPY STATUS counts it', async () => {
    const { devs, xcopy, rcr } = setup();
    const a = pattern(64 * 512, 2);
    const b = pattern(8 * 4096, 3);
    await devs[0]!.write(0, a);
    await devs[2]!.write(4096, b);
    const l = list(
      [cscd(WWN[0]!, 512), cscd(WWN[1]!, 512), cscd(WWN[2]!, 4096)],
      [
        seg(0, 1, 64, 0, 1000), // LUN 0 → LUN 1
        seg(1, 0, 32, 1000, 5000), // then from where the first segment wrote: order matters
        seg(2, 1, 8, 1, 200), // 8 blocks of 4096 (DC 0: source blocks) into 512-byte blocks
        seg(0, 2, 16, 0, 100, { dc: true }), // DC 1: 16 destination blocks of 4096 = 128 source blocks
        seg(0, 1, 0, 0, 0), // nothing to do, not an error
      ],
      { listId: 7 },
    );
    expectGood(await xcopy(l));
    expect((await readBack(devs[1]!, 1000 * 512, a.length)).equals(a)).toBe(true);
    expect((await readBack(devs[0]!, 5000 * 512, 32 * 512)).equals(a.subarray(0, 32 * 512))).toBe(true);
    expect((await readBack(devs[1]!, 200 * 512, b.length)).equals(b)).toBe(true);
    expect((await readBack(devs[2]!, 100 * 4096, 128 * 512)).equals(await readBack(devs[0]!, 0, 128 * 512))).toBe(true);
    const st = expectGood(await rcr(0x00, 7));
    expect([...st]).toEqual([0, 0, 0, 8, 0x01, 0, 5, 0x00, ...be(64 * 512 + 32 * 512 + 8 * 4096 + 16 * 4096, 4)]);
  });

  it('writes through device.write in bounded pieces, and hands whole segments to a configured copyRange instead', async () => {
    const { devs, t, xcopy } = setup();
    const writes = vi.spyOn(devs[1]!, 'write');
    expectGood(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 5000, 0, 0)])));
    expect(writes.mock.calls.map((c) => c[1].length)).toEqual([MiB, MiB, 5000 * 512 - 2 * MiB]);
    writes.mockClear();

    const copyRange = vi.fn(async () => {});
    configureCopyManager(t, { copyRange });
    expectGood(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[2]!, 4096)], [seg(0, 1, 80, 16, 3)])));
    expect(copyRange).toHaveBeenCalledWith(devs[0], 16 * 512, devs[2], 3 * 4096, 80 * 512);
    expect(writes).not.toHaveBeenCalled();
  });
});

describe('EXTENDED COPY: parameter list refusals (ILLEGAL REQUEST)', () => {
  const one = () => [cscd(WWN[0]!, 512)];
  const s = () => [seg(0, 0, 8, 0, 100)];

  it('PARAMETER LIST LENGTH 0 is GOOD; lists cut short or longer than advertised are PARAMETER LIST LENGTH ERROR', async () => {
    const { xcopy } = setup();
    expectGood(await xcopy(Buffer.alloc(0)));
    const l = list(one(), s());
    expectSense(await xcopy(l.subarray(0, 16 + 31)), ILLEGAL, 0x1a); // truncating the CSCD descriptor
    expectSense(await xcopy(l.subarray(0, l.length - 1)), ILLEGAL, 0x1a); // truncating the segment descriptor
    expectSense(await xcopy(l.subarray(0, 15)), ILLEGAL, 0x1a); // not even a header
    // 17 CSCD and 65 segment descriptors: 2364 bytes of descriptors, more than the 2048 advertised.
    const big = list(Array.from({ length: 17 }, one).flat(), Array.from({ length: 65 }, s).flat());
    expectSense(await xcopy(big), ILLEGAL, 0x1a);
    const inline = Buffer.from(l);
    inline.writeUInt32BE(4, 12); // inline data is not supported (MAXIMUM INLINE DATA LENGTH 0)
    expectSense(await xcopy(Buffer.concat([inline, Buffer.alloc(4)])), ILLEGAL, 0x1a);
  });

  it('data-out shorter than the PARAMETER LIST LENGTH is refused before parsing', async () => {
    const { xcopy } = setup();
    const l = list(one(), s());
    expectSense(await xcopy(l, nexus, l.length + 10), ILLEGAL, 0x0e, 0x03);
  });

  it('more CSCD or segment descriptors than advertised: TOO MANY ... DESCRIPTORS, pointing at the first one too many', async () => {
    const { xcopy } = setup();
    const r1 = expectSense(await xcopy(list(Array.from({ length: 17 }, one).flat(), s())), ILLEGAL, 0x26, 0x06);
    expect(fieldPointer(r1)).toEqual([true, false, 16 + 16 * 32]);
    const r2 = expectSense(await xcopy(list(one(), Array.from({ length: 65 }, s).flat())), ILLEGAL, 0x26, 0x08);
    expect(fieldPointer(r2)).toEqual([true, false, 16 + 32 + 64 * 28]);
    expectGood(await xcopy(list(Array.from({ length: 16 }, one).flat(), Array.from({ length: 64 }, s).flat().slice(0, 40))));
  });

  it('unsupported descriptor types: UNSUPPORTED TARGET / SEGMENT DESCRIPTOR TYPE CODE', async () => {
    const { xcopy } = setup();
    const r1 = expectSense(await xcopy(list([cscd(WWN[0]!, 512, { type: 0xe0 })], s())), ILLEGAL, 0x26, 0x07);
    expect(fieldPointer(r1)).toEqual([true, false, 16]);
    const stream = seg(0, 0, 0, 0, 0, { type: 0x03 }).subarray(0, 20); // stream→stream, 20 bytes
    const r2 = expectSense(await xcopy(list(one(), [stream])), ILLEGAL, 0x26, 0x09);
    expect(fieldPointer(r2)).toEqual([true, false, 48]);
  });

  it('bad fields: INVALID FIELD IN PARAMETER LIST with a pointer to the byte', async () => {
    const { xcopy } = setup();
    const cases: [Buffer, number][] = [
      [list(one(), s(), { byte1: 0x80 }), 1], // reserved header bit
      [list(one(), s(), { byte1: 0x08 }), 1], // LIST ID USAGE 01b is reserved
      [list([cscd(WWN[0]!, 512, { byte1: 0x01 })], s()), 17], // peripheral device type 01h (tape)
      [list([cscd(WWN[0]!, 4096)], s()), 16 + 29], // DISK BLOCK LENGTH does not match the LUN
    ];
    for (const [l, byte] of cases) {
      const r = expectSense(await xcopy(l), ILLEGAL, 0x26);
      expect(fieldPointer(r)).toEqual([true, false, byte]);
    }
    const badLen = list(one(), s());
    badLen.writeUInt16BE(0x14, 48 + 2); // a block→block descriptor is 0x18 long
    expect(fieldPointer(expectSense(await xcopy(badLen), ILLEGAL, 0x26))).toEqual([true, false, 50]);
  });

  it('LU ID TYPE and NUL are obsolete in SPC-4 and ignored (libiscsi ValidTgtDescr on an SPC-4 target)', async () => {
    const { xcopy } = setup();
    expectGood(await xcopy(list([cscd(WWN[0]!, 512, { byte1: 0xc0 })], s())));
    expectGood(await xcopy(list([cscd(WWN[0]!, 512, { byte1: 0x20 })], s())));
  });

  it('EXTENDED COPY LID4 (service action 01h) is not supported: INVALID FIELD IN CDB', async () => {
    const { exec } = setup();
    const r = expectSense(await exec([0x83, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]), ILLEGAL, 0x24);
    expect(fieldPointer(r)).toEqual([true, true, 1]);
  });
});

describe('EXTENDED COPY: segment refusals lose nothing', () => {
  it('a CSCD naming no LUN of this nexus, or an index past the list: COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE', async () => {
    const { devs, xcopy } = setup();
    await devs[0]!.write(0, pattern(8 * 512, 5));
    const before = await readBack(devs[1]!, 0, 64 * 512);
    const r1 = expectSense(await xcopy(list([cscd(WWN[0]!, 512), cscd(UNKNOWN_WWN, 512)], [seg(0, 1, 8, 0, 0)])), COPY_ABORTED, 0x0d, 0x02);
    expect(fieldPointer(r1)).toEqual([true, false, 48]); // the CSCD descriptor that names nothing
    const r2 = expectSense(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 1, 8, 0, 0)])), COPY_ABORTED, 0x0d, 0x02);
    expect(fieldPointer(r2)).toEqual([true, false, 48 + 6]); // DESTINATION CSCD DESCRIPTOR INDEX
    // LUN 1 exists but is not mapped to the other initiator.
    expectSense(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0)]), other), COPY_ABORTED, 0x0d, 0x02);
    expect((await readBack(devs[1]!, 0, 64 * 512)).equals(before)).toBe(true);
  });

  it('a range past the end: COPY ABORTED carrying the CSCD sense LBA OUT OF RANGE; earlier segments are not run either', async () => {
    const { devs, xcopy } = setup();
    const blocks = devs[1]!.size / 512;
    await devs[0]!.write(0, pattern(2048 * 512, 9));
    const before = await readBack(devs[1]!, 0, 4 * MiB);
    const l = list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 16, 0, 0), seg(0, 1, 2048, 0, blocks - 1)]);
    const s = expectSense(await xcopy(l), COPY_ABORTED, 0, 0);
    expect(fieldPointer(s)).toEqual([true, false, 16 + 64 + 28 + 20]); // DESTINATION LBA of the second segment
    expect([s[8], s[9]]).toEqual([0, 18]); // destination CSCD status and sense data at byte 18
    expect(s[18]).toBe(CHECK_CONDITION);
    expect([s[19 + 2]! & 0x0f, s[19 + 12], s[19 + 13]]).toEqual([ILLEGAL, 0x21, 0x00]);
    const src = expectSense(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 2, blocks - 1, 0)])), COPY_ABORTED, 0, 0);
    expect([src[8], src[9], src[19 + 12]]).toEqual([18, 0, 0x21]);
    expectSense(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 1, 0, 2 ** 60)])), COPY_ABORTED, 0, 0);
    expect((await readBack(devs[1]!, 0, 4 * MiB)).equals(before)).toBe(true);
  });

  it('a read-only destination (LUN policy or device): DATA PROTECT / WRITE PROTECTED; a read-only source is fine', async () => {
    const { devs, xcopy } = setup({ readOnly1: true });
    expectSense(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0)])), DATA_PROTECT, 0x27);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(1, 0, 8, 0, 0)])));
    const ro = new MemoryBlockStore({ size: MiB, blockSize: 512, thin: true, readOnly: true });
    const luns = new Map<number, LunDevice>([
      [0, lunOf(devs[0]!, WWN[0]!)],
      [1, lunOf(ro, WWN[1]!)],
    ]);
    const t = new ScsiLogicalUnits(() => luns);
    const l = list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0)]);
    const cdb = Buffer.from([0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...be(l.length, 4), 0, 0]);
    expectSense(await t.execute({ cdb, lun: 0, nexus, dataOut: l, expectedDataInLength: 0 }), DATA_PROTECT, 0x27);
  });

  it('blocks that do not fill whole destination blocks: COPY ABORTED / UNEXPECTED INEXACT SEGMENT', async () => {
    const { xcopy } = setup();
    expectSense(await xcopy(list([cscd(WWN[0]!, 512), cscd(WWN[2]!, 4096)], [seg(0, 1, 7, 0, 0)])), COPY_ABORTED, 0x26, 0x0a);
  });
});

describe('RECEIVE COPY RESULTS', () => {
  it('OPERATING PARAMETERS reports the limits EXTENDED COPY enforces, truncated to the allocation length', async () => {
    const { rcr } = setup();
    const d = expectGood(await rcr(0x03, 0));
    expect(d.length).toBe(46);
    expect(d.readUInt32BE(0)).toBe(42); // AVAILABLE DATA
    expect(d[4]).toBe(0x01); // SNLID
    expect([d.readUInt16BE(8), d.readUInt16BE(10)]).toEqual([16, 64]); // CSCD, segment descriptors
    expect([d.readUInt32BE(12), d.readUInt32BE(16), d.readUInt32BE(20), d.readUInt32BE(24)]).toEqual([2048, 256 * MiB, 0, 0]);
    expect([d.readUInt16BE(34), d[36], d[37]]).toEqual([16, 16, 9]);
    expect([...d.subarray(43)]).toEqual([2, 0x02, 0xe4]);
    expect(expectGood(await rcr(0x03, 0, 12)).equals(d.subarray(0, 12))).toBe(true);
  });

  it('COPY STATUS: INVALID FIELD IN CDB for an unknown list identifier, then the held status, per I_T nexus', async () => {
    const { t, xcopy, rcr } = setup();
    expect(fieldPointer(expectSense(await rcr(0x00, 1), ILLEGAL, 0x24))).toEqual([true, true, 2]);
    expectGood(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 2048, 0, 4096)], { listId: 1 })));
    expect([...expectGood(await rcr(0x00, 1))]).toEqual([0, 0, 0, 8, 0x01, 0, 1, 0x00, ...be(MiB, 4)]);
    expectSense(await rcr(0x00, 1, 1024, other), ILLEGAL, 0x24); // another nexus has no such list
    // LIST ID USAGE 11b: no list identifier, nothing held; a refused list holds nothing either.
    expectGood(await xcopy(list([cscd(WWN[0]!, 512)], [seg(0, 0, 8, 0, 100)], { listId: 2, usage: 3 })));
    expectSense(await rcr(0x00, 2), ILLEGAL, 0x24);
    expectSense(await xcopy(list([cscd(UNKNOWN_WWN, 512)], [seg(0, 0, 8, 0, 100)], { listId: 3 })), COPY_ABORTED, 0x0d, 0x02);
    expectSense(await rcr(0x00, 3), ILLEGAL, 0x24);
    // I_T nexus loss discards what was held for the nexus.
    endCopyNexus(t, nexus);
    expectSense(await rcr(0x00, 1), ILLEGAL, 0x24);
  });

  it('a device error mid-copy: COPY ABORTED with the CSCD sense, status "completed with errors", FAILED SEGMENT DETAILS once', async () => {
    const { devs, xcopy, rcr } = setup();
    let calls = 0;
    vi.spyOn(devs[1]!, 'write').mockImplementation(async () => {
      if (++calls === 2) throw new BlockDeviceError('EIO', 'injected');
    });
    const l = list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0), seg(0, 1, 4096, 0, 8)], { listId: 9 });
    const s = expectSense(await xcopy(l), COPY_ABORTED, 0, 0);
    expect(fieldPointer(s)).toEqual([true, false, 16 + 64 + 28]); // the second segment
    expect([s[9], s[18], s[19 + 2]! & 0x0f, s[19 + 12]]).toEqual([18, CHECK_CONDITION, 0x3, 0x0c]); // MEDIUM ERROR, WRITE ERROR
    const st = expectGood(await rcr(0x00, 9));
    expect([st[4], st.readUInt16BE(5), st.readUInt32BE(8)]).toEqual([0x02, 1, 8 * 512]);
    const fsd = expectGood(await rcr(0x04, 9));
    expect(fsd.readUInt32BE(0)).toBe(fsd.length - 4);
    expect([fsd[56], fsd.readUInt16BE(58)]).toEqual([CHECK_CONDITION, s.length]);
    expect(fsd.subarray(60).equals(s)).toBe(true);
    expect([...expectGood(await rcr(0x04, 9))]).toEqual([0, 0, 0, 0]); // discarded once transferred
  });

  it('a list identifier in use is refused with OPERATION IN PROGRESS, and COPY STATUS shows the copy running', async () => {
    const { devs, xcopy, rcr } = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const write = devs[1]!.write.bind(devs[1]!);
    vi.spyOn(devs[1]!, 'write').mockImplementation(async (...a) => {
      await gate;
      return write(...a);
    });
    const l = list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0)], { listId: 4 });
    const first = xcopy(l);
    await new Promise((r) => setImmediate(r));
    expect(expectGood(await rcr(0x00, 4))[4]).toBe(0x00); // operation in progress
    expectSense(await xcopy(l), ILLEGAL, 0x00, 0x16);
    release();
    expectGood(await first);
    expect(expectGood(await rcr(0x00, 4))[4]).toBe(0x01);
  });

  it('RECEIVE DATA (01h) is not supported; the service actions are in the dispatch table for RSOC', async () => {
    const { t, rcr } = setup();
    expectSense(await rcr(0x01, 1), ILLEGAL, 0x24);
    expect(t.table.forOpcode(0x84).list.map((d) => d.serviceAction)).toEqual([0x00, 0x03, 0x04]);
    expect(t.table.forOpcode(0x83).list.map((d) => d.serviceAction)).toEqual([0x00]);
  });

  it('more copies at once than MAXIMUM CONCURRENT COPIES: the next one is refused with INSUFFICIENT RESOURCES', async () => {
    const { devs, xcopy } = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const write = devs[1]!.write.bind(devs[1]!);
    vi.spyOn(devs[1]!, 'write').mockImplementation(async (...a) => {
      await gate;
      return write(...a);
    });
    const l = list([cscd(WWN[0]!, 512), cscd(WWN[1]!, 512)], [seg(0, 1, 8, 0, 0)], { usage: 3 });
    const running = Array.from({ length: 16 }, () => xcopy(l));
    await new Promise((r) => setImmediate(r));
    expectSense(await xcopy(l), ILLEGAL, 0x55, 0x03);
    release();
    for (const r of await Promise.all(running)) expectGood(r);
    expectGood(await xcopy(l));
  });
});

describe('THIRD-PARTY COPY VPD page (8Fh)', () => {
  it('lists the copy commands the dispatch table runs and the descriptor types EXTENDED COPY accepts', () => {
    const { t } = setup();
    const p = thirdPartyCopyVpd(t);
    expect([p[1], p.readUInt16BE(2)]).toEqual([0x8f, p.length - 4]);
    // Supported Commands: 83h with SA 00h; 84h with SAs 00h, 03h, 04h; padded to 16 bytes.
    expect([...p.subarray(4, 20)]).toEqual([0, 1, 0, 12, 8, 0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04, 0, 0, 0]);
    // Supported Descriptors: 02h (block→block), E4h (identification CSCD).
    expect([...p.subarray(20)]).toEqual([0, 8, 0, 4, 2, 0x02, 0xe4, 0]);
  });
});
