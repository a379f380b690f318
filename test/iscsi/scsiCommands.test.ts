/** SCSI block commands over a MemoryBlockStore: READ/WRITE/VERIFY/PRE-FETCH/SYNC, provisioning, C&W, errors. */
import { describe, expect, it, vi } from 'vitest';
import { BlockDeviceError } from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { ScsiLogicalUnits } from '../../emulator/iscsi/scsi/scsiTarget.js';
import { CHECK_CONDITION, CONDITION_MET, GOOD, RESERVATION_CONFLICT, type LunDevice, type Nexus, type ScsiResult } from '../../emulator/iscsi/scsi/types.js';

const MiB = 1024 * 1024;
const nexus: Nexus = {
  initiatorPort: 'iqn.1994-05.com.redhat:host1,i,0x023d00000001',
  targetPort: 'iqn.2026-01.dev.arraylab:array1,t,0x0001',
  relativePort: 1,
};

function lunOf(device: MemoryBlockStore, extra: Partial<LunDevice> = {}): LunDevice {
  return {
    device,
    identity: { wwn: '600140512345678900000000000000aa', serial: 'AL0001', vendor: 'ARRAYLAB', product: 'VOLUME', revision: '0.1' },
    readOnly: false,
    writeCacheEnabled: true,
    ...extra,
  };
}

function setup(opts: { size?: number; blockSize?: 512 | 4096; thin?: boolean; readOnly?: boolean } = {}) {
  const dev = new MemoryBlockStore({ size: opts.size ?? 4 * MiB, blockSize: opts.blockSize ?? 512, thin: opts.thin ?? true });
  const lu = lunOf(dev, { readOnly: opts.readOnly ?? false });
  const luns = new Map<number, LunDevice>([[0, lu]]);
  const t = new ScsiLogicalUnits(() => luns);
  const exec = (cdb: number[], dataOut: Buffer = Buffer.alloc(0), lun = 0): Promise<ScsiResult> => {
    const padded = Buffer.alloc(Math.max(16, cdb.length));
    Buffer.from(cdb).copy(padded);
    return t.execute({ cdb: padded, lun, nexus, dataOut, expectedDataInLength: 0 });
  };
  return { dev, lu, luns, t, exec, blocks: dev.size / dev.blockSize, bs: dev.blockSize };
}

function be(n: number, bytes: number): number[] {
  const out: number[] = [];
  for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) % 256);
  return out;
}
const rw6 = (op: number, lba: number, n: number) => [op, (lba >>> 16) & 0x1f, (lba >>> 8) & 0xff, lba & 0xff, n, 0];
const rw10 = (op: number, lba: number, n: number, b1 = 0) => [op, b1, ...be(lba, 4), 0, ...be(n, 2), 0];
const rw12 = (op: number, lba: number, n: number, b1 = 0) => [op, b1, ...be(lba, 4), ...be(n, 4), 0, 0];
const rw16 = (op: number, lba: number, n: number, b1 = 0) => [op, b1, ...be(lba, 8), ...be(n, 4), 0, 0];

function expectGood(r: ScsiResult): void {
  expect(r.sense ? [...r.sense.subarray(0, 18)].map((b) => b.toString(16)) : undefined).toBeUndefined();
  expect(r.status).toBe(GOOD);
}
function expectSense(r: ScsiResult, key: number, asc: number, ascq = 0): Buffer {
  expect(r.status).toBe(CHECK_CONDITION);
  const s = r.sense!;
  expect(s.length).toBe(18);
  expect(s[0]! & 0x7f).toBe(0x70);
  expect(s[7]).toBe(10);
  expect({ key: s[2]! & 0x0f, asc: s[12], ascq: s[13] }).toEqual({ key, asc, ascq });
  return s;
}
const ILLEGAL = 0x5;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

describe('READ / WRITE', () => {
  it('round-trips data through every CDB size', async () => {
    const { exec, bs } = setup();
    const cases: [number, number, (op: number, lba: number, n: number) => number[]][] = [
      [0x0a, 0x08, rw6],
      [0x2a, 0x28, rw10],
      [0xaa, 0xa8, rw12],
      [0x8a, 0x88, rw16],
    ];
    for (const [i, [w, r, cdb]] of cases.entries()) {
      const data = pattern(3 * bs, i);
      expectGood(await exec(cdb(w, 10 + 8 * i, 3), data));
      const res = await exec(cdb(r, 10 + 8 * i, 3));
      expectGood(res);
      expect(res.dataIn!.equals(data)).toBe(true);
    }
  });

  it('READ(6) and WRITE(6) with transfer length 0 move 256 blocks; READ(10) with 0 moves nothing', async () => {
    const { exec, bs } = setup();
    const data = pattern(256 * bs, 3);
    expectGood(await exec(rw6(0x0a, 0, 0), data));
    const r = await exec(rw6(0x08, 0, 0));
    expect(r.dataIn!.length).toBe(256 * bs);
    expect(r.dataIn!.equals(data)).toBe(true);
    const z = await exec(rw10(0x28, 0, 0));
    expectGood(z);
    expect(z.dataIn).toBeUndefined();
  });

  it('LBA OUT OF RANGE past the end, for zero-length transfers beyond it, and for huge 64-bit LBAs', async () => {
    const { exec, blocks } = setup();
    expectSense(await exec(rw10(0x28, blocks, 1)), ILLEGAL, 0x21);
    expectSense(await exec(rw10(0x28, blocks - 1, 2)), ILLEGAL, 0x21);
    expectSense(await exec(rw10(0x28, blocks + 1, 0)), ILLEGAL, 0x21);
    expectSense(await exec(rw10(0x28, 0xffffffff, 1)), ILLEGAL, 0x21);
    expectSense(await exec([0x88, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]), ILLEGAL, 0x21);
    expectSense(await exec([0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0]), ILLEGAL, 0x21);
    expectSense(await exec(rw16(0x8a, blocks - 1, 2), Buffer.alloc(1024)), ILLEGAL, 0x21);
    expectGood(await exec(rw10(0x28, blocks, 0)));
    expectGood(await exec(rw10(0x28, blocks - 1, 1)));
  });

  it('refuses transfers above the advertised maximum with INVALID FIELD IN CDB at the length', async () => {
    const { exec } = setup({ size: 1024 * MiB });
    const s = expectSense(await exec(rw16(0x88, 0, 65537)), ILLEGAL, 0x24);
    expect(s[15]).toBe(0xc0); // SKSV, C/D
    expect(s.readUInt16BE(16)).toBe(10);
    expectGood(await exec(rw16(0x88, 0, 65536)));
  });

  it('rejects RDPROTECT, RARC, NACA and reserved bits with a field pointer', async () => {
    const { exec } = setup();
    let s = expectSense(await exec(rw10(0x28, 0, 1, 0x20)), ILLEGAL, 0x24);
    expect([s[15], s.readUInt16BE(16)]).toEqual([0xc8 | 5, 1]);
    s = expectSense(await exec(rw10(0x28, 0, 1, 0x04)), ILLEGAL, 0x24);
    expect([s[15], s.readUInt16BE(16)]).toEqual([0xc8 | 2, 1]);
    const naca = rw10(0x28, 0, 1);
    naca[9] = 0x04;
    s = expectSense(await exec(naca), ILLEGAL, 0x24);
    expect([s[15], s.readUInt16BE(16)]).toEqual([0xc8 | 2, 9]);
    expectGood(await exec(rw10(0x28, 0, 1, 0x18))); // DPO + FUA are fine
  });

  it('passes FUA to the device, and WRITE AND VERIFY always writes with FUA', async () => {
    const { dev, exec, bs } = setup();
    const spy = vi.spyOn(dev, 'write');
    await exec(rw10(0x2a, 0, 1, 0x08), Buffer.alloc(bs, 1));
    expect(spy.mock.calls[0]![2]).toEqual({ fua: true });
    await exec(rw10(0x2a, 0, 1, 0x10), Buffer.alloc(bs, 1));
    expect(spy.mock.calls[1]![2]).toEqual({ fua: false });
    expectGood(await exec(rw10(0x2e, 2, 1, 0x02), Buffer.alloc(bs, 2)));
    expect(spy.mock.calls[2]![2]).toEqual({ fua: true });
    expectGood(await exec(rw16(0x8e, 3, 1), Buffer.alloc(bs, 3)));
    expectGood(await exec(rw12(0xae, 4, 1), Buffer.alloc(bs, 4)));
    expect(spy).toHaveBeenCalledTimes(5);
  });

  it('refuses (writing nothing) a command whose data-out is shorter than the CDB asks', async () => {
    const { exec, bs } = setup();
    expectGood(await exec(rw10(0x2a, 0, 2), Buffer.alloc(2 * bs, 0x61)));
    expectSense(await exec(rw10(0x2a, 0, 2), Buffer.alloc(bs, 0x62)), ILLEGAL, 0x0e, 0x03);
    expectSense(await exec(rw16(0x8a, 0, 1), Buffer.alloc(200, 0x62)), ILLEGAL, 0x0e, 0x03);
    expect((await exec(rw10(0x28, 0, 2))).dataIn!.equals(Buffer.alloc(2 * bs, 0x61))).toBe(true);
    expectSense(await exec(rw10(0x2f, 0, 2, 0x02), Buffer.alloc(bs)), ILLEGAL, 0x0e, 0x03);
    expectSense(await exec(rw10(0x41, 0, 2)), ILLEGAL, 0x0e, 0x03);
    expectSense(await exec([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Buffer.alloc(8)), ILLEGAL, 0x0e, 0x03);
  });

  it('a read-only LUN (or device) gets DATA PROTECT / WRITE PROTECTED for every write command, reads work', async () => {
    for (const ro of ['lun', 'device'] as const) {
      const dev = new MemoryBlockStore({ size: 4 * MiB, blockSize: 512, readOnly: ro === 'device' });
      const luns = new Map([[0, lunOf(dev, { readOnly: ro === 'lun' })]]);
      const t = new ScsiLogicalUnits(() => luns);
      const run = (cdb: number[], dataOut = Buffer.alloc(0)) => {
        const c = Buffer.alloc(16);
        Buffer.from(cdb).copy(c);
        return t.execute({ cdb: c, lun: 0, nexus, dataOut, expectedDataInLength: 0 });
      };
      const blk = Buffer.alloc(512, 1);
      for (const cdb of [rw6(0x0a, 0, 1), rw10(0x2a, 0, 1), rw12(0xaa, 0, 1), rw16(0x8a, 0, 1), rw10(0x2e, 0, 1), rw10(0x41, 0, 1)]) {
        expectSense(await run(cdb, blk), 0x7, 0x27);
      }
      expectSense(await run([0x89, 0, ...be(0, 8), 0, 0, 0, 1, 0, 0], Buffer.alloc(1024)), 0x7, 0x27);
      expectSense(await run([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Buffer.alloc(24)), 0x7, 0x27);
      expectGood(await run(rw10(0x28, 0, 1)));
      expectGood(await run(rw10(0x2f, 0, 1)));
    }
  });

  it('maps BlockDeviceError codes to sense', async () => {
    const { dev, exec, bs } = setup();
    const cases: [string, 'read' | 'write', number, number, number][] = [
      ['EIO', 'read', 0x3, 0x11, 0x00],
      ['EIO', 'write', 0x3, 0x0c, 0x00],
      ['EPERM', 'write', 0x7, 0x27, 0x00],
      ['ENOSPC', 'write', 0x7, 0x27, 0x07],
      ['EACCES', 'read', 0x2, 0x04, 0x03],
      ['EINVAL', 'read', 0x5, 0x21, 0x00],
      ['EOVERFLOW', 'read', 0x5, 0x21, 0x00],
      ['ESHUTDOWN', 'read', 0x2, 0x04, 0x00],
    ];
    for (const [code, op, key, asc, ascq] of cases) {
      const spy = vi.spyOn(dev, op).mockRejectedValueOnce(new BlockDeviceError(code as never, 'injected'));
      const r = op === 'read' ? await exec(rw10(0x28, 0, 1)) : await exec(rw10(0x2a, 0, 1), Buffer.alloc(bs));
      expectSense(r, key, asc, ascq);
      spy.mockRestore();
    }
    vi.spyOn(dev, 'read').mockRejectedValueOnce(new Error('bug'));
    expectSense(await exec(rw10(0x28, 0, 1)), 0x4, 0x44);
  });
});

describe('VERIFY, PRE-FETCH, SYNCHRONIZE CACHE', () => {
  it('VERIFY BYTCHK 0, 01b (MISCOMPARE with offset), 11b and reserved 10b', async () => {
    const { exec, bs } = setup();
    const data = pattern(4 * bs, 9);
    expectGood(await exec(rw10(0x2a, 100, 4), data));
    expectGood(await exec(rw10(0x2f, 100, 4)));
    expectGood(await exec(rw16(0x8f, 100, 4, 0x02), data));
    const bad = Buffer.from(data);
    bad[bs + 17]! ^= 0xff;
    const s = expectSense(await exec(rw12(0xaf, 100, 4, 0x02), bad), 0xe, 0x1d);
    expect(s[0]).toBe(0xf0); // VALID
    expect(s.readUInt32BE(3)).toBe(bs + 17);
    expectSense(await exec(rw10(0x2f, 100, 4, 0x04)), ILLEGAL, 0x24);
    // BYTCHK 11b: one block compared with every block
    expectGood(await exec(rw10(0x2a, 200, 3), Buffer.alloc(3 * bs, 0x5a)));
    expectGood(await exec(rw10(0x2f, 200, 3, 0x06), Buffer.alloc(bs, 0x5a)));
    const s2 = expectSense(await exec(rw10(0x2f, 199, 3, 0x06), Buffer.alloc(bs, 0x5a)), 0xe, 0x1d);
    expect(s2.readUInt32BE(3)).toBe(0);
    expectSense(await exec(rw10(0x2f, 0xffffff, 1)), ILLEGAL, 0x21);
  });

  it('PRE-FETCH answers CONDITION MET when the range fits the cache, GOOD when it does not', async () => {
    const { exec, blocks, dev } = setup({ size: 256 * MiB });
    const spy = vi.spyOn(dev, 'cache');
    expect((await exec(rw10(0x34, 0, 16))).status).toBe(CONDITION_MET);
    expect(spy).toHaveBeenCalledWith(0, 16 * 512);
    expect((await exec(rw16(0x90, 0, 0))).status).toBe(GOOD); // 0: to the end, 256 MiB
    expect((await exec(rw16(0x90, blocks - 8, 0))).status).toBe(CONDITION_MET);
    expectSense(await exec(rw10(0x34, blocks, 1)), ILLEGAL, 0x21);
  });

  it('SYNCHRONIZE CACHE flushes the device and checks the range', async () => {
    const { exec, dev, blocks } = setup();
    const spy = vi.spyOn(dev, 'flush');
    expectGood(await exec(rw10(0x35, 0, 0)));
    expectGood(await exec(rw16(0x91, 10, 10, 0x02)));
    expect(spy).toHaveBeenCalledTimes(2);
    expectSense(await exec(rw10(0x35, blocks, 1)), ILLEGAL, 0x21);
    expectSense(await exec(rw10(0x35, 0, 0, 0x04)), ILLEGAL, 0x24);
  });
});

describe('READ CAPACITY', () => {
  it('(10) and (16) report the last LBA and block size; (16) has LBPME/LBPRZ only on thin LUNs', async () => {
    for (const thin of [true, false]) {
      const { exec, blocks } = setup({ thin, blockSize: 4096, size: 8 * MiB });
      const r10 = await exec([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      expect(r10.dataIn!.length).toBe(8);
      expect(r10.dataIn!.readUInt32BE(0)).toBe(blocks - 1);
      expect(r10.dataIn!.readUInt32BE(4)).toBe(4096);
      const r16 = await exec([0x9e, 0x10, ...be(0, 8), ...be(32, 4), 0, 0]);
      const d = r16.dataIn!;
      expect(d.length).toBe(32);
      expect(d.readUInt32BE(0) * 2 ** 32 + d.readUInt32BE(4)).toBe(blocks - 1);
      expect(d.readUInt32BE(8)).toBe(4096);
      expect(d[14]).toBe(thin ? 0xc0 : 0x00);
      expect((await exec([0x9e, 0x10, ...be(0, 8), ...be(12, 4), 0, 0])).dataIn!.length).toBe(12);
    }
  });

  it('(10) reports FFFFFFFFh for devices with 2^32 blocks or more, and refuses an LBA without PMI', async () => {
    const { exec } = setup({ size: 4 * 1024 * 1024 * MiB, blockSize: 512 });
    expect((await exec([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).dataIn!.readUInt32BE(0)).toBe(0xffffffff);
    expectSense(await exec([0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]), ILLEGAL, 0x24);
    expectGood(await exec([0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]));
  });
});

function unmapList(descs: [number, number][], opts: { bdLen?: number } = {}): Buffer {
  const b = Buffer.alloc(8 + 16 * descs.length);
  b.writeUInt16BE(6 + 16 * descs.length, 0);
  b.writeUInt16BE(opts.bdLen ?? 16 * descs.length, 2);
  descs.forEach(([lba, n], i) => {
    b.writeBigUInt64BE(BigInt(lba), 8 + 16 * i);
    b.writeUInt32BE(n, 16 + 16 * i);
  });
  return b;
}
const unmapCdb = (plen: number) => [0x42, 0, 0, 0, 0, 0, 0, ...be(plen, 2), 0];
const lbaStatusCdb = (lba: number, alloc = 4096) => [0x9e, 0x12, ...be(lba, 8), ...be(alloc, 4), 0, 0];

function lbaStatus(r: ScsiResult): [number, number, number][] {
  const d = r.dataIn!;
  const len = d.readUInt32BE(0);
  expect((len - 4) % 16).toBe(0);
  const out: [number, number, number][] = [];
  for (let p = 8; p < 4 + len; p += 16) out.push([Number(d.readBigUInt64BE(p)), d.readUInt32BE(p + 8), d[p + 12]!]);
  return out;
}

describe('provisioning: UNMAP, GET LBA STATUS, WRITE SAME', () => {
  it('UNMAP and GET LBA STATUS round trip; unmapped blocks read zeroes (LBPRZ)', async () => {
    const { exec, blocks, bs } = setup();
    expect(lbaStatus(await exec(lbaStatusCdb(0)))).toEqual([[0, blocks, 1]]);
    expectGood(await exec(rw10(0x2a, 0, 16), pattern(16 * bs, 1)));
    expect(lbaStatus(await exec(lbaStatusCdb(0)))).toEqual([
      [0, 16, 0],
      [16, blocks - 16, 1],
    ]);
    const list = unmapList([
      [4, 4],
      [12, 2],
    ]);
    expectGood(await exec(unmapCdb(list.length), list));
    expect(lbaStatus(await exec(lbaStatusCdb(0)))).toEqual([
      [0, 4, 0],
      [4, 4, 1],
      [8, 4, 0],
      [12, 2, 1],
      [14, 2, 0],
      [16, blocks - 16, 1],
    ]);
    expect(lbaStatus(await exec(lbaStatusCdb(5)))[0]).toEqual([5, 3, 1]);
    const r = await exec(rw10(0x28, 4, 4));
    expect(r.dataIn!.equals(Buffer.alloc(4 * bs))).toBe(true);
    // allocation length honoured by truncation: header + 1 descriptor
    expect((await exec(lbaStatusCdb(0, 24))).dataIn!.length).toBe(24);
    expectSense(await exec(lbaStatusCdb(blocks)), ILLEGAL, 0x21);
  });

  it('UNMAP parameter list validation', async () => {
    const { exec, blocks, bs } = setup();
    expectGood(await exec(unmapCdb(0)));
    expectSense(await exec(unmapCdb(4), Buffer.alloc(4)), ILLEGAL, 0x1a);
    // out of range: nothing is unmapped, even the valid first descriptor
    expectGood(await exec(rw10(0x2a, 0, 1), Buffer.alloc(bs, 1)));
    const oor = unmapList([
      [0, 1],
      [blocks - 1, 2],
    ]);
    expectSense(await exec(unmapCdb(oor.length), oor), ILLEGAL, 0x21);
    expect(lbaStatus(await exec(lbaStatusCdb(0)))[0]).toEqual([0, 1, 0]);
    const many = unmapList(Array.from({ length: 257 }, (_, i) => [i, 1] as [number, number]));
    expectSense(await exec(unmapCdb(many.length), many), ILLEGAL, 0x26);
    // an incomplete trailing descriptor is ignored
    const partial = unmapList([[0, 1]], { bdLen: 20 });
    expectGood(await exec(unmapCdb(partial.length), partial));
    expect(lbaStatus(await exec(lbaStatusCdb(0)))[0]).toEqual([0, blocks, 1]);
    expectSense(await exec([0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0], unmapList([[0, 1]])), ILLEGAL, 0x24); // ANCHOR
  });

  it('UNMAP is not supported on a thick LUN', async () => {
    const { exec } = setup({ thin: false });
    expectSense(await exec(unmapCdb(24), unmapList([[0, 1]])), ILLEGAL, 0x20);
    expect(lbaStatus(await exec(lbaStatusCdb(0)))[0]![2]).toBe(0);
  });

  it('WRITE SAME repeats a block; zeroes with UNMAP deallocate, without stay mapped; NDOB', async () => {
    const { exec, bs, blocks } = setup();
    const block = pattern(bs, 5);
    expectGood(await exec(rw10(0x41, 10, 5000), block));
    const r = await exec(rw10(0x28, 10, 5000));
    for (let i = 0; i < 5000; i++) expect(r.dataIn!.subarray(i * bs, (i + 1) * bs).equals(block)).toBe(true);
    expectGood(await exec(rw16(0x93, 10, 100, 0x08), Buffer.alloc(bs)));
    expect(lbaStatus(await exec(lbaStatusCdb(10)))[0]).toEqual([10, 100, 1]);
    expect(lbaStatus(await exec(lbaStatusCdb(110)))[0]).toEqual([110, 4900, 0]);
    expectGood(await exec(rw16(0x93, 6000, 100), Buffer.alloc(bs)));
    expect(lbaStatus(await exec(lbaStatusCdb(6000)))[0]).toEqual([6000, 100, 0]);
    expect((await exec(rw10(0x28, 6000, 100))).dataIn!.equals(Buffer.alloc(100 * bs))).toBe(true);
    expectGood(await exec(rw10(0x2a, 6200, 100), pattern(100 * bs, 8)));
    expectGood(await exec(rw16(0x93, 6200, 100, 0x09)));
    expect(lbaStatus(await exec(lbaStatusCdb(6200)))[0]).toEqual([6200, blocks - 6200, 1]);
    expectGood(await exec(rw10(0x2a, 6300, 10), pattern(10 * bs, 8)));
    expectGood(await exec(rw16(0x93, 6300, 10, 0x01)));
    expect((await exec(rw10(0x28, 6300, 10))).dataIn!.equals(Buffer.alloc(10 * bs))).toBe(true);
    expect(lbaStatus(await exec(lbaStatusCdb(6300)))[0]).toEqual([6300, 10, 0]);
    // NUMBER OF LOGICAL BLOCKS 0 (WSNZ 0): from the LBA to the last block.
    expectGood(await exec(rw10(0x41, blocks - 8, 0), block));
    const tail = (await exec(rw10(0x28, blocks - 8, 8))).dataIn!;
    for (let i = 0; i < 8; i++) expect(tail.subarray(i * bs, (i + 1) * bs).equals(block)).toBe(true);
    expectSense(await exec(rw10(0x41, 0, 1, 0x10), block), ILLEGAL, 0x24); // ANCHOR
    expectSense(await exec(rw10(0x41, 0, 1, 0x01), block), ILLEGAL, 0x24); // NDOB only in (16)
    expectSense(await exec(rw10(0x41, blocks - 1, 2), block), ILLEGAL, 0x21);
  });
});

describe('COMPARE AND WRITE', () => {
  const caw = (lba: number, n: number) => [0x89, 0, ...be(lba, 8), 0, 0, 0, n, 0, 0];

  it('writes when the data matches and reports the miscompare offset otherwise', async () => {
    const { exec, bs, blocks } = setup();
    const old = pattern(2 * bs, 1);
    const next = pattern(2 * bs, 2);
    expectGood(await exec(rw10(0x2a, 50, 2), old));
    expectGood(await exec(caw(50, 2), Buffer.concat([old, next])));
    expect((await exec(rw10(0x28, 50, 2))).dataIn!.equals(next)).toBe(true);
    const wrong = Buffer.from(next);
    wrong[bs + 3]! ^= 1;
    const s = expectSense(await exec(caw(50, 2), Buffer.concat([wrong, old])), 0xe, 0x1d);
    expect(s[0]).toBe(0xf0);
    expect(s.readUInt32BE(3)).toBe(bs + 3);
    expect((await exec(rw10(0x28, 50, 2))).dataIn!.equals(next)).toBe(true);
    expectGood(await exec(caw(50, 0)));
    // 256 blocks wrap to 0 in the one-byte field: with data attached that is past the maximum, not a no-op.
    expectSense(await exec(caw(0, 256 & 0xff), Buffer.alloc(2 * 256 * bs)), ILLEGAL, 0x24);
    expect((await exec(rw10(0x28, 50, 2))).dataIn!.equals(next)).toBe(true);
    expectSense(await exec(caw(blocks - 1, 2), Buffer.alloc(4 * bs)), ILLEGAL, 0x21);
    expectSense(await exec(caw(0, 2), Buffer.alloc(2 * bs)), ILLEGAL, 0x0e, 0x03);
  });

  it('is atomic: of two racing overlapping COMPARE AND WRITEs with the same compare data, one wins', async () => {
    const { exec, bs } = setup();
    const zero = Buffer.alloc(bs);
    const results = await Promise.all([
      exec(caw(7, 1), Buffer.concat([zero, Buffer.alloc(bs, 1)])),
      exec(caw(7, 1), Buffer.concat([zero, Buffer.alloc(bs, 2)])),
      exec(caw(7, 1), Buffer.concat([zero, Buffer.alloc(bs, 3)])),
    ]);
    expect(results.filter((r) => r.status === GOOD)).toHaveLength(1);
    expect(results.filter((r) => r.status === CHECK_CONDITION && r.sense![2] === 0xe)).toHaveLength(2);
  });
});

describe('COMPARE AND WRITE against plain writes', () => {
  const caw = (lba: number, n: number) => [0x89, 0, ...be(lba, 8), 0, 0, 0, n, 0, 0];

  it('waits for an overlapping write already in flight, and later writes wait for it', async () => {
    const { dev, exec, bs } = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const realWrite = dev.write.bind(dev);
    let slow = true;
    dev.write = async (offset, data, opts) => {
      if (slow) {
        slow = false;
        await gate;
      }
      return realWrite(offset, data, opts);
    };
    const order: string[] = [];
    const plain = exec(rw10(0x2a, 7, 1), Buffer.alloc(bs, 9)).then((r) => {
      order.push('write');
      return r;
    });
    await new Promise((r) => setTimeout(r, 5));
    // Compares against the old zeroes: must see the in-flight write land first, so it miscompares.
    const c = exec(caw(7, 1), Buffer.concat([Buffer.alloc(bs), Buffer.alloc(bs, 1)])).then((r) => {
      order.push('caw');
      return r;
    });
    await new Promise((r) => setTimeout(r, 5));
    expect(order).toEqual([]);
    release();
    const [w, cr] = await Promise.all([plain, c]);
    expectGood(w);
    expectSense(cr, 0xe, 0x1d);
    expect(order).toEqual(['write', 'caw']);
    expect((await exec(rw10(0x28, 7, 1))).dataIn!.equals(Buffer.alloc(bs, 9))).toBe(true);
  });

  it('a write issued while a COMPARE AND WRITE holds the range lands after it', async () => {
    const { dev, exec, bs } = setup();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const realRead = dev.read.bind(dev);
    dev.read = async (offset, into) => {
      await gate;
      return realRead(offset, into);
    };
    const c = exec(caw(3, 1), Buffer.concat([Buffer.alloc(bs), Buffer.alloc(bs, 1)]));
    await new Promise((r) => setTimeout(r, 5));
    const w = exec(rw10(0x2a, 3, 1), Buffer.alloc(bs, 2));
    const other = exec(rw10(0x2a, 100, 1), Buffer.alloc(bs, 2)); // not overlapping: not held up
    expectGood(await other);
    release();
    expectGood(await c);
    expectGood(await w);
    dev.read = realRead;
    expect((await exec(rw10(0x28, 3, 1))).dataIn!.equals(Buffer.alloc(bs, 2))).toBe(true);
  });
});

describe('dispatch seams', () => {
  it('the reservation hook turns a conflicting command into RESERVATION CONFLICT', async () => {
    const dev = new MemoryBlockStore({ size: MiB, blockSize: 512 });
    const luns = new Map([[0, lunOf(dev)]]);
    const t = new ScsiLogicalUnits(() => luns, { conflictsWithReservation: (_c, _l, d) => d.access === 'write' });
    const cdb = Buffer.alloc(16);
    Buffer.from(rw10(0x2a, 0, 1)).copy(cdb);
    expect((await t.execute({ cdb, lun: 0, nexus, dataOut: Buffer.alloc(512), expectedDataInLength: 0 })).status).toBe(RESERVATION_CONFLICT);
    cdb[0] = 0x28;
    expect((await t.execute({ cdb, lun: 0, nexus, dataOut: Buffer.alloc(0), expectedDataInLength: 512 })).status).toBe(GOOD);
  });
});
