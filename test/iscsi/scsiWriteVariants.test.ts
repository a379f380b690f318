/**
 * ORWRITE, WRITE ATOMIC, READ DEFECT DATA, WRITE SAME with 0 blocks and exact data-out sizes,
 * and the physical block exponent, through ScsiLogicalUnits.execute over a MemoryBlockStore.
 */
import { describe, expect, it, vi } from 'vitest';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { ScsiLogicalUnits } from '../../emulator/iscsi/scsi/scsiTarget.js';
import { CHECK_CONDITION, GOOD, type LunDevice, type Nexus, type ScsiResult } from '../../emulator/iscsi/scsi/types.js';

const MiB = 1024 * 1024;
const nexus: Nexus = {
  initiatorPort: 'iqn.1994-05.com.redhat:host1,i,0x023d00000001',
  targetPort: 'iqn.2026-01.dev.arraylab:array1,t,0x0001',
  relativePort: 1,
};

function setup(opts: { size?: number; blockSize?: 512 | 4096; thin?: boolean; readOnly?: boolean } = {}) {
  const dev = new MemoryBlockStore({ size: opts.size ?? 4 * MiB, blockSize: opts.blockSize ?? 512, thin: opts.thin ?? true });
  const lu: LunDevice = {
    device: dev,
    identity: { wwn: '600140512345678900000000000000aa', serial: 'AL0001', vendor: 'ARRAYLAB', product: 'VOLUME', revision: '0.1' },
    readOnly: opts.readOnly ?? false,
    writeCacheEnabled: true,
  };
  const t = new ScsiLogicalUnits(() => new Map([[0, lu]]));
  const exec = (cdb: number[], dataOut: Buffer = Buffer.alloc(0)): Promise<ScsiResult> => {
    const padded = Buffer.alloc(Math.max(16, cdb.length));
    Buffer.from(cdb).copy(padded);
    return t.execute({ cdb: padded, lun: 0, nexus, dataOut, expectedDataInLength: 0 });
  };
  const bs = dev.blockSize;
  const read = async (lba: number, n: number): Promise<Buffer> => expectGood(await exec(rw16(0x88, lba, n)));
  return { dev, t, exec, read, bs, blocks: dev.size / bs };
}

function be(n: number, bytes: number): number[] {
  const out: number[] = [];
  for (let i = bytes - 1; i >= 0; i--) out.push(Math.floor(n / 2 ** (8 * i)) % 256);
  return out;
}
const rw10 = (op: number, lba: number, n: number, b1 = 0) => [op, b1, ...be(lba, 4), 0, ...be(n, 2), 0];
const rw16 = (op: number, lba: number, n: number, b1 = 0) => [op, b1, ...be(lba, 8), ...be(n, 4), 0, 0];
/** WRITE ATOMIC(16): TRANSFER LENGTH in bytes 12-13, ATOMIC BOUNDARY in 10-11. */
const atomic16 = (lba: number, n: number, b1 = 0, boundary = 0) => [0x9c, b1, ...be(lba, 8), ...be(boundary, 2), ...be(n, 2), 0, 0];
const orwrite = (lba: number, n: number, b1 = 0) => rw16(0x8b, lba, n, b1);
const caw = (lba: number, n: number) => [0x89, 0, ...be(lba, 8), 0, 0, 0, n, 0, 0];

function expectGood(r: ScsiResult): Buffer {
  expect(r.sense ? [...r.sense].map((b) => b.toString(16)) : undefined).toBeUndefined();
  expect(r.status).toBe(GOOD);
  return r.dataIn ?? Buffer.alloc(0);
}
function expectSense(r: ScsiResult, key: number, asc: number, ascq = 0): Buffer {
  expect(r.status).toBe(CHECK_CONDITION);
  const s = r.sense!;
  expect({ key: s[2]! & 0x0f, asc: s[12], ascq: s[13] }).toEqual({ key, asc, ascq });
  return s;
}
/** The CDB byte a sense-key-specific field pointer names. */
function fieldByte(s: Buffer): number {
  expect(s[15]! & 0xc0).toBe(0xc0); // SKSV, C/D = CDB
  return s.readUInt16BE(16);
}
const ILLEGAL = 0x5;
const DATA_PROTECT = 0x7;
const INVALID_FIELD_IN_CDB = 0x24;
const LBA_OUT_OF_RANGE = 0x21;
const INVALID_FIELD_IN_COMMAND_IU = [0x0e, 0x03] as const;

function filled(len: number, byte: number): Buffer {
  return Buffer.alloc(len, byte);
}
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}
/** Lets every pending callback and I/O of the memory store run. */
const settle = () => new Promise((r) => setImmediate(r));

describe('ORWRITE(16)', () => {
  it('ORs the data-out into the stored blocks, at the start and at the end of the LUN', async () => {
    const { exec, read, bs, blocks } = setup();
    for (const lba of [0, blocks - 3]) {
      expectGood(await exec(rw16(0x8a, lba, 3), filled(3 * bs, 0x00)));
      expectGood(await exec(orwrite(lba, 3), filled(3 * bs, 0xa5)));
      expect((await read(lba, 3)).equals(filled(3 * bs, 0xa5))).toBe(true);
      expectGood(await exec(orwrite(lba, 3), filled(3 * bs, 0x5a)));
      expect((await read(lba, 3)).equals(filled(3 * bs, 0xff))).toBe(true);
    }
    // Unaligned views (a data-out that is a slice of a larger buffer) take the byte path.
    const stored = pattern(2 * bs, 1);
    expectGood(await exec(rw16(0x8a, 100, 2), stored));
    const big = pattern(2 * bs + 1, 9);
    const odd = big.subarray(1);
    expectGood(await exec(orwrite(100, 2), odd));
    const want = Buffer.from(stored.map((b, i) => b | odd[i]!));
    expect((await read(100, 2)).equals(want)).toBe(true);
  });

  it('0 blocks is GOOD; past the end is LBA OUT OF RANGE; ORPROTECT is refused; the length is bounded', async () => {
    const { exec, blocks, bs } = setup();
    expectGood(await exec(orwrite(0, 0)));
    expectSense(await exec(orwrite(blocks + 1, 0)), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(orwrite(2 ** 63, 1), filled(bs, 1)), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(orwrite(blocks - 1, 2), filled(2 * bs, 1)), ILLEGAL, LBA_OUT_OF_RANGE);
    for (let p = 1; p < 8; p++) {
      const s = expectSense(await exec(orwrite(0, 1, p << 5), filled(bs, 1)), ILLEGAL, INVALID_FIELD_IN_CDB);
      expect(fieldByte(s)).toBe(1);
    }
    expectGood(await exec(orwrite(0, 1, 0x18), filled(bs, 1))); // DPO, FUA
    const big = setup({ size: 64 * MiB });
    const s = expectSense(await big.exec(orwrite(0, (32 * MiB) / 512 + 1)), ILLEGAL, INVALID_FIELD_IN_CDB);
    expect(fieldByte(s)).toBe(10);
  });

  it('a read-only LUN gets WRITE PROTECTED; a short data-out is refused and writes nothing', async () => {
    const ro = setup({ readOnly: true });
    expectSense(await ro.exec(orwrite(0, 1), filled(ro.bs, 1)), DATA_PROTECT, 0x27);
    const { exec, read, bs } = setup();
    const r = await exec(orwrite(0, 2), filled(bs, 0xff));
    expectSense(r, ILLEGAL, ...INVALID_FIELD_IN_COMMAND_IU);
    expect((await read(0, 2)).equals(Buffer.alloc(2 * bs))).toBe(true);
  });

  it('is a read-modify-write no other ORWRITE or WRITE can split: racing ORWRITEs lose no bit', async () => {
    const { dev, exec, read, bs } = setup();
    // Every device read yields to the event loop first, so unlocked read-modify-writes would interleave.
    const devRead = dev.read.bind(dev);
    vi.spyOn(dev, 'read').mockImplementation(async (offset, into) => {
      await settle();
      return devRead(offset, into);
    });
    const bits = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80];
    for (const r of await Promise.all(bits.map((b) => exec(orwrite(8, 4), filled(4 * bs, b))))) expectGood(r);
    expect((await read(8, 4)).equals(filled(4 * bs, 0xff))).toBe(true);
    // A plain WRITE that arrives while an ORWRITE holds the range lands after it, not under it.
    const or = exec(orwrite(8, 4), filled(4 * bs, 0x0f));
    await Promise.resolve();
    const w = exec(rw10(0x2a, 8, 4), filled(4 * bs, 0x30));
    expectGood(await or);
    expectGood(await w);
    expect((await read(8, 4)).equals(filled(4 * bs, 0x30))).toBe(true);
  });
});

describe('WRITE ATOMIC(16)', () => {
  it('writes 8..2048 blocks aligned to the 4 KiB physical block on a 512-byte LUN', async () => {
    const { exec, read, bs, blocks } = setup();
    for (const [lba, n] of [
      [0, 8],
      [64, 256],
      [blocks - 2048, 2048],
    ] as const) {
      const data = pattern(n * bs, n);
      expectGood(await exec(atomic16(lba, n), data));
      expect((await read(lba, n)).equals(data)).toBe(true);
    }
    expectGood(await exec(atomic16(0, 8, 0x18), pattern(8 * bs, 3))); // DPO, FUA
    expectGood(await exec(atomic16(0, 0))); // 0 blocks: nothing to do
  });

  it('refuses misaligned LBAs, lengths off the granularity and above the maximum, boundaries and WRPROTECT', async () => {
    const { exec, read, bs } = setup();
    const cases: [number[], Buffer, number][] = [
      [atomic16(1, 8), pattern(8 * bs, 1), 2], // ATOMIC ALIGNMENT 8
      [atomic16(0, 1), pattern(bs, 1), 12], // ATOMIC TRANSFER LENGTH GRANULARITY 8
      [atomic16(0, 2056), pattern(2056 * bs, 1), 12], // MAXIMUM ATOMIC TRANSFER LENGTH 2048
      [atomic16(0, 8, 0, 8), pattern(8 * bs, 1), 11], // ATOMIC BOUNDARY: no boundaries supported
      [atomic16(0, 8, 0x20), pattern(8 * bs, 1), 1], // WRPROTECT: no protection information
    ];
    for (const [cdb, data, byte] of cases) {
      const s = expectSense(await exec(cdb, data), ILLEGAL, INVALID_FIELD_IN_CDB);
      expect(fieldByte(s)).toBe(byte);
    }
    expect((await read(0, 16)).equals(Buffer.alloc(16 * bs))).toBe(true); // nothing was written
    // A 4096-byte LUN has one logical block per physical block: any LBA, any length up to 256.
    const k = setup({ blockSize: 4096 });
    expectGood(await k.exec(atomic16(1, 1), pattern(4096, 2)));
    expectGood(await k.exec(atomic16(3, 256), pattern(256 * 4096, 2)));
    expectSense(await k.exec(atomic16(0, 257), pattern(257 * 4096, 2)), ILLEGAL, INVALID_FIELD_IN_CDB);
  });

  it('range and protection: LBA OUT OF RANGE (also for 0 blocks), WRITE PROTECTED, short data-out', async () => {
    const { exec, read, bs, blocks } = setup();
    expectSense(await exec(atomic16(blocks + 8, 0)), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(atomic16(2 ** 63, 8), pattern(8 * bs, 1)), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(atomic16(blocks - 8, 16), pattern(16 * bs, 1)), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(atomic16(0, 16), pattern(8 * bs, 1)), ILLEGAL, ...INVALID_FIELD_IN_COMMAND_IU);
    expect((await read(0, 16)).equals(Buffer.alloc(16 * bs))).toBe(true);
    const ro = setup({ readOnly: true });
    expectSense(await ro.exec(atomic16(0, 8), pattern(8 * ro.bs, 1)), DATA_PROTECT, 0x27);
  });

  it('no read sees part of it: a read in flight finishes first, a read issued meanwhile sees all of it', async () => {
    const { dev, exec, read, bs } = setup();
    const n = 64;
    const before = pattern(n * bs, 1);
    const after = pattern(n * bs, 2);
    expectGood(await exec(rw16(0x8a, 0, n), before));
    // Hold the device read of a READ in flight, and the device write of the WRITE ATOMIC.
    let releaseRead!: () => void;
    const readGate = new Promise<void>((r) => (releaseRead = r));
    const devRead = dev.read.bind(dev);
    const readSpy = vi.spyOn(dev, 'read').mockImplementationOnce(async (offset, into) => {
      await readGate;
      return devRead(offset, into);
    });
    let releaseWrite!: () => void;
    const writeGate = new Promise<void>((r) => (releaseWrite = r));
    const devWrite = dev.write.bind(dev);
    const writeSpy = vi.spyOn(dev, 'write').mockImplementationOnce(async (offset, data, opts) => {
      await writeGate;
      return devWrite(offset, data, opts);
    });
    const early = exec(rw16(0x88, 8, 8));
    await settle();
    const atomic = exec(atomic16(0, n), after);
    await settle();
    expect(writeSpy).not.toHaveBeenCalled(); // waits for the read in flight on its range
    releaseRead();
    expect(expectGood(await early).equals(before.subarray(8 * bs, 16 * bs))).toBe(true);
    await settle();
    expect(writeSpy).toHaveBeenCalledTimes(1);
    const late = exec(rw16(0x88, 0, n)); // issued while the atomic write is under way
    await settle();
    expect(readSpy).toHaveBeenCalledTimes(1); // the late read has not reached the device yet
    releaseWrite();
    expectGood(await atomic);
    expect(expectGood(await late).equals(after)).toBe(true);
    expect((await read(0, n)).equals(after)).toBe(true);
  });
});

describe('READ DEFECT DATA', () => {
  it('(10): an empty list with PLISTV/GLISTV for the lists asked for and the requested format', async () => {
    const { exec } = setup();
    const rdd10 = (b2: number, alloc: number) => [0x37, 0, b2, 0, 0, 0, 0, ...be(alloc, 2), 0];
    expect([...expectGood(await exec(rdd10(0x00, 32)))]).toEqual([0, 0x00, 0, 0]);
    expect([...expectGood(await exec(rdd10(0x18 | 0x05, 32)))]).toEqual([0, 0x1d, 0, 0]);
    expect([...expectGood(await exec(rdd10(0x08 | 0x03, 32)))]).toEqual([0, 0x0b, 0, 0]);
    expect(expectGood(await exec(rdd10(0x10, 2))).length).toBe(2); // ALLOCATION LENGTH
    for (const format of [6, 7]) {
      const s = expectSense(await exec(rdd10(0x10 | format, 32)), ILLEGAL, INVALID_FIELD_IN_CDB);
      expect(fieldByte(s)).toBe(2);
    }
    expect(fieldByte(expectSense(await exec([0x37, 0, 0x20, 0, 0, 0, 0, 0, 32, 0]), ILLEGAL, INVALID_FIELD_IN_CDB))).toBe(2);
  });

  it('(12): an 8-byte header, generation code 0, no descriptors at any index', async () => {
    const { exec } = setup();
    const rdd12 = (b1: number, index: number, alloc: number) => [0xb7, b1, ...be(index, 4), ...be(alloc, 4), 0, 0];
    expect([...expectGood(await exec(rdd12(0x00, 0, 32)))]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect([...expectGood(await exec(rdd12(0x18 | 0x04, 1000, 32)))]).toEqual([0, 0x1c, 0, 0, 0, 0, 0, 0]);
    expect(expectGood(await exec(rdd12(0, 0, 4))).length).toBe(4);
    expect(fieldByte(expectSense(await exec(rdd12(0x06, 0, 32)), ILLEGAL, INVALID_FIELD_IN_CDB))).toBe(1);
  });
});

describe('WRITE SAME: 0 blocks and the data-out size', () => {
  it('NUMBER OF LOGICAL BLOCKS 0 runs from the LBA to the end of the medium, (10) and (16)', async () => {
    const { exec, read, bs, blocks } = setup();
    const block = pattern(bs, 4);
    expectGood(await exec(rw10(0x41, blocks - 16, 0), block));
    const tail = await read(blocks - 17, 17);
    expect(tail.subarray(0, bs).equals(Buffer.alloc(bs))).toBe(true); // the block before is untouched
    for (let i = 1; i < 17; i++) expect(tail.subarray(i * bs, (i + 1) * bs).equals(block)).toBe(true);
    // (16) with UNMAP and a zero block deallocates the rest of a thin LUN.
    expectGood(await exec(rw16(0x93, blocks - 16, 0, 0x08), Buffer.alloc(bs)));
    expect((await read(blocks - 16, 16)).equals(Buffer.alloc(16 * bs))).toBe(true);
    // At the last LBA + 1 there is nothing left to write; past it is out of range.
    expectGood(await exec(rw10(0x41, blocks, 0), block));
    expectSense(await exec(rw10(0x41, blocks + 1, 0), block), ILLEGAL, LBA_OUT_OF_RANGE);
    expectSense(await exec(rw16(0x93, 2 ** 63, 0), block), ILLEGAL, LBA_OUT_OF_RANGE);
  });

  it('UNMAP on a thin LUN deallocates whatever the block holds; on a thick LUN the block is written', async () => {
    for (const thin of [true, false]) {
      const { exec, read, bs, blocks } = setup({ thin });
      const ones = filled(bs, 0xff);
      expectGood(await exec(rw10(0x2a, blocks - 4, 4), filled(4 * bs, 0xff)));
      expectGood(await exec(rw10(0x41, blocks - 4, 0, 0x08), ones));
      expect((await read(blocks - 4, 4)).equals(thin ? Buffer.alloc(4 * bs) : filled(4 * bs, 0xff))).toBe(true);
      if (thin) {
        const st = expectGood(await exec([0x9e, 0x12, ...be(blocks - 4, 8), ...be(24, 4), 0, 0]));
        expect(st[8 + 12]).toBe(1); // deallocated
      }
    }
  });

  it('0 blocks is bounded by MAXIMUM WRITE SAME LENGTH like any count', async () => {
    const { exec, bs } = setup({ size: 1024 * MiB + 4 * MiB });
    const s = expectSense(await exec(rw16(0x93, 0, 0), pattern(bs, 1)), ILLEGAL, INVALID_FIELD_IN_CDB);
    expect(fieldByte(s)).toBe(10);
    expectGood(await exec(rw16(0x93, (4 * MiB) / bs, 0), pattern(bs, 1))); // exactly 1 GiB left
  });

  it('a data-out other than exactly one block (none with NDOB) is refused and writes nothing', async () => {
    const { exec, read, bs } = setup();
    for (const [cdb, data] of [
      [rw10(0x41, 0, 4, 0x08), pattern(bs / 2, 1)],
      [rw10(0x41, 0, 4, 0x08), pattern(2 * bs, 1)],
      [rw16(0x93, 0, 4), pattern(bs + 512, 1)],
      [rw16(0x93, 0, 4, 0x01), pattern(bs, 1)], // NDOB takes no data
    ] as const) {
      expectSense(await exec(cdb, data), ILLEGAL, ...INVALID_FIELD_IN_COMMAND_IU);
    }
    expect((await read(0, 4)).equals(Buffer.alloc(4 * bs))).toBe(true);
    const ro = setup({ readOnly: true });
    expectSense(await ro.exec(rw10(0x41, 0, 1, 0x08)), DATA_PROTECT, 0x27); // write protection comes first
  });
});

describe('COMPARE AND WRITE data-out size', () => {
  it('refuses more data-out than the verify and write instances, writing nothing', async () => {
    const { exec, read, bs } = setup();
    // Verify 2 blocks of zeroes (they match), write 2 blocks of 0xa6: refused for 1 and 3 blocks.
    const data = Buffer.concat([Buffer.alloc(2 * bs), filled(2 * bs, 0xa6)]);
    expectSense(await exec(caw(0, 1), data), ILLEGAL, ...INVALID_FIELD_IN_COMMAND_IU);
    expectSense(await exec(caw(0, 3), data), ILLEGAL, ...INVALID_FIELD_IN_COMMAND_IU);
    expect((await read(0, 3)).equals(Buffer.alloc(3 * bs))).toBe(true);
    expectGood(await exec(caw(0, 2), data));
    expect((await read(0, 2)).equals(filled(2 * bs, 0xa6))).toBe(true);
  });
});

describe('READ CAPACITY(16) physical block', () => {
  it('reports one logical block per physical block (see capacity.ts: libiscsi 1.19 GET LBA STATUS)', async () => {
    for (const blockSize of [512, 4096] as const) {
      const { exec } = setup({ blockSize });
      const d = expectGood(await exec([0x9e, 0x10, ...be(0, 8), ...be(32, 4), 0, 0]));
      expect(d[13]! & 0x0f).toBe(0);
      expect(d.readUInt16BE(14) & 0x3fff).toBe(0); // LOWEST ALIGNED LOGICAL BLOCK ADDRESS
    }
  });
});

describe('REPORT SUPPORTED OPERATION CODES for the new commands', () => {
  it('lists ORWRITE, WRITE ATOMIC and READ DEFECT DATA with DPO/FUA where they take them', async () => {
    const { exec } = setup();
    const one = async (op: number) => expectGood(await exec([0xa3, 0x0c, 0x01, op, 0, 0, 0, 0, 1, 0, 0, 0]));
    for (const [op, len, b1] of [
      [0x8b, 16, 0x1a],
      [0x9c, 16, 0x18],
      [0x37, 10, 0x00],
      [0xb7, 12, 0x1f],
    ] as const) {
      const d = await one(op);
      expect([d[1]! & 0x07, d.readUInt16BE(2), d[4], d[5]]).toEqual([0x03, len, op, b1]);
    }
  });
});
