import { describe, expect, it } from 'vitest';
import { AllocationMap, CHUNK_BITS, CHUNK_BYTES } from '../../emulator/block/AllocationMap.js';
import { rng } from '../support/rng.js';

describe('AllocationMap', () => {
  it('starts empty and costs no chunks', () => {
    const m = new AllocationMap(20 * 1024 * 1024 * 2); // 20 GiB of 512-byte blocks
    expect(m.allocated).toBe(0);
    expect(m.residentChunks).toBe(0);
    expect(m.test(12345)).toBe(false);
    expect(m.nextSet(0, m.blocks)).toBe(m.blocks);
    expect(m.nextClear(0, m.blocks)).toBe(0);
  });

  it('sets and clears ranges across word and chunk boundaries', () => {
    const m = new AllocationMap(3 * CHUNK_BITS + 100);
    expect(m.set(31, 2)).toBe(2);
    expect(m.test(30)).toBe(false);
    expect(m.test(31)).toBe(true);
    expect(m.test(32)).toBe(true);
    expect(m.test(33)).toBe(false);
    expect(m.set(CHUNK_BITS - 5, 10)).toBe(10);
    expect(m.residentChunks).toBe(2);
    expect(m.set(30, 4)).toBe(2);
    expect(m.allocated).toBe(14);
    expect(m.countRange(0, 64)).toBe(4);
    expect(m.clear(0, CHUNK_BITS)).toBe(9);
    expect(m.residentChunks).toBe(1);
    expect(m.nextSet(0, m.blocks)).toBe(CHUNK_BITS);
    expect(m.runLength(CHUNK_BITS, m.blocks)).toBe(5);
    expect(m.clear(CHUNK_BITS, 5)).toBe(5);
    expect(m.residentChunks).toBe(0);
    expect(m.allocated).toBe(0);
  });

  it('handles whole chunks and full-chunk scans', () => {
    const m = new AllocationMap(4 * CHUNK_BITS);
    m.set(0, 3 * CHUNK_BITS);
    expect(m.allocated).toBe(3 * CHUNK_BITS);
    expect(m.nextClear(0, m.blocks)).toBe(3 * CHUNK_BITS);
    expect(m.runLength(7, m.blocks)).toBe(3 * CHUNK_BITS - 7);
    expect(m.runLength(7, 100)).toBe(93);
    m.clear(CHUNK_BITS, CHUNK_BITS);
    expect(m.residentChunks).toBe(2);
    expect(m.countRange(0, m.blocks)).toBe(2 * CHUNK_BITS);
  });

  it('agrees with a boolean-array model under random operations', () => {
    const next = rng(42);
    const blocks = 2 * CHUNK_BITS + 777;
    const m = new AllocationMap(blocks);
    const model = new Uint8Array(blocks);
    for (let i = 0; i < 3000; i++) {
      const start = Math.floor(next() * blocks);
      const len = Math.min(blocks - start, Math.floor(next() * (next() < 0.2 ? CHUNK_BITS * 1.5 : 200)));
      const op = next();
      if (op < 0.45) {
        let fresh = 0;
        for (let b = start; b < start + len; b++)
          if (!model[b]) {
            model[b] = 1;
            fresh++;
          }
        expect(m.set(start, len)).toBe(fresh);
      } else if (op < 0.9) {
        let gone = 0;
        for (let b = start; b < start + len; b++)
          if (model[b]) {
            model[b] = 0;
            gone++;
          }
        expect(m.clear(start, len)).toBe(gone);
      } else {
        let c = 0;
        for (let b = start; b < start + len; b++) c += model[b]!;
        expect(m.countRange(start, len)).toBe(c);
      }
      if (i % 100 === 0) {
        // full check: runs reconstruct the model
        let b = 0;
        let total = 0;
        while (b < blocks) {
          const on = m.test(b);
          const run = m.runLength(b, blocks);
          expect(run).toBeGreaterThan(0);
          let bad = -1;
          for (let k = b; k < b + run && bad < 0; k++) if (model[k] !== (on ? 1 : 0)) bad = k;
          expect(bad).toBe(-1);
          if (b + run < blocks) expect(model[b + run]).toBe(on ? 0 : 1);
          if (on) total += run;
          b += run;
        }
        expect(m.allocated).toBe(total);
      }
    }
  });

  it('tracks dirty chunks and round-trips through the file layout', () => {
    const m = new AllocationMap(3 * CHUNK_BITS, true);
    m.set(5, 3);
    m.set(2 * CHUNK_BITS + 9, 1);
    expect(m.takeDirty()).toEqual([0, 2]);
    expect(m.hasDirty).toBe(false);
    m.clear(2 * CHUNK_BITS, CHUNK_BITS);
    expect(m.takeDirty()).toEqual([2]);

    const buf = Buffer.alloc(CHUNK_BYTES);
    m.serializeChunk(0, buf);
    expect(buf[0]).toBe(0b11100000); // blocks 5, 6, 7: LSB-first
    const copy = new AllocationMap(3 * CHUNK_BITS);
    copy.loadChunk(0, buf);
    expect(copy.allocated).toBe(3);
    expect(copy.test(6)).toBe(true);
    m.serializeChunk(1, buf);
    expect(buf.every((x) => x === 0)).toBe(true);
  });

  it('ignores stray bits past the end when loading', () => {
    const m = new AllocationMap(100);
    m.loadChunk(0, Buffer.alloc(CHUNK_BYTES, 0xff));
    expect(m.allocated).toBe(100);
    m.grow(200);
    expect(m.test(150)).toBe(false);
    expect(m.runLength(0, 200)).toBe(100);
  });

  it('refuses out-of-range operations', () => {
    const m = new AllocationMap(100);
    expect(() => m.set(90, 11)).toThrow(/outside/);
    expect(() => m.grow(50)).toThrow(/shrink/);
  });
});
