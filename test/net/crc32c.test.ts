import { describe, expect, it } from 'vitest';
import { crc32c, crc32cFinal, crc32cUpdate, CRC32C_INIT } from '../../emulator/net/crc32c.js';

/** Bitwise reference implementation: slow, obviously right. */
function reference(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of buf) {
    c ^= b;
    for (let i = 0; i < 8; i++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

describe('crc32c', () => {
  it('matches the RFC 3720 appendix B.4 vectors', () => {
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    const inc = Buffer.alloc(32);
    const dec = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) {
      inc[i] = i;
      dec[i] = 31 - i;
    }
    expect(crc32c(inc)).toBe(0x46dd794e);
    expect(crc32c(dec)).toBe(0x113fdb5c);
  });

  it('matches the standard check value and the empty input', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
  });

  it('agrees with a bitwise reference on random lengths, offsets and split updates', () => {
    const data = Buffer.alloc(4099);
    let x = 12345;
    for (let i = 0; i < data.length; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      data[i] = x >>> 24;
    }
    for (const [s, e] of [
      [0, 4099],
      [1, 4098],
      [3, 11],
      [7, 7],
      [5, 1029],
    ] as const) {
      const want = reference(data.subarray(s, e));
      expect(crc32c(data, s, e)).toBe(want);
      const mid = s + ((e - s) >> 1) + 1;
      if (mid <= e) expect(crc32cFinal(crc32cUpdate(crc32cUpdate(CRC32C_INIT, data, s, mid), data, mid, e))).toBe(want);
    }
  });

  it('runs at a useful speed (micro-benchmark, reported)', () => {
    const buf = Buffer.alloc(1 << 20, 0x5a);
    for (let i = 0; i < 20; i++) crc32c(buf); // warm up
    const rounds = 200;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) crc32c(buf);
    const ns = Number(process.hrtime.bigint() - t0);
    const mbps = (rounds * buf.length) / 1e6 / (ns / 1e9);
    console.log(`crc32c throughput: ${mbps.toFixed(0)} MB/s (1 MiB buffers)`);
    expect(mbps).toBeGreaterThan(100);
  });
});
