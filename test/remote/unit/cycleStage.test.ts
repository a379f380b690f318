/**
 * The remote end's cycle stage (consistency mode): what is staged reaches the volume only when
 * applied, in order, whole; a stage file survives a restart (a committed cycle is applied
 * then); a torn last record is never applied; reset drops it; a cycle too large is refused.
 */
import { mkdtempSync, rmSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryBlockStore } from '../../../emulator/block/MemoryBlockStore.js';
import { CycleStage } from '../../../emulator/remote/CycleStage.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function volume(): MemoryBlockStore {
  return new MemoryBlockStore({ size: 1024 * 1024, blockSize: 512 });
}

const fill = (n: number, v: number) => Buffer.alloc(n, v);

describe.each([
  ['in memory', () => undefined],
  [
    'in a file',
    () => {
      const d = mkdtempSync(path.join(tmpdir(), 'stage-'));
      dirs.push(d);
      return d;
    },
  ],
])('CycleStage %s', (_name, dir) => {
  it('holds writes aside until applied, then applies them in order and drops them at reset', async () => {
    const vol = volume();
    const stage = await CycleStage.open('p1', dir());
    await stage.write(0, fill(4096, 1));
    await stage.write(2048, fill(4096, 2)); // overlaps the first: order matters
    await stage.writeZeroes(8192, 512);
    await vol.write(8192, fill(512, 9));
    await stage.flush();
    const before = Buffer.alloc(16384);
    await vol.read(0, before);
    expect(before.subarray(0, 8192).every((b) => b === 0)).toBe(true); // nothing applied yet
    await stage.apply(vol);
    const after = Buffer.alloc(16384);
    await vol.read(0, after);
    expect(after.subarray(0, 2048).every((b) => b === 1)).toBe(true);
    expect(after.subarray(2048, 6144).every((b) => b === 2)).toBe(true);
    expect(after.subarray(8192, 8704).every((b) => b === 0)).toBe(true);
    await stage.reset();
    expect(stage.size).toBe(0);
    await stage.close(true);
  });
});

describe('CycleStage file', () => {
  it('survives a restart (a committed cycle is applied then) and never applies a torn last record', async () => {
    const d = mkdtempSync(path.join(tmpdir(), 'stage-'));
    dirs.push(d);
    const s1 = await CycleStage.open('p2', d);
    await s1.write(0, fill(1024, 7));
    await s1.write(4096, fill(1024, 8));
    await s1.flush();
    await s1.close();
    const file = path.join(d, 'p2.stage');
    truncateSync(file, statSync(file).size - 100); // the second record torn
    const s2 = await CycleStage.open('p2', d);
    const vol = volume();
    await s2.apply(vol);
    const got = Buffer.alloc(8192);
    await vol.read(0, got);
    expect(got.subarray(0, 1024).every((b) => b === 7)).toBe(true);
    expect(got.subarray(4096, 5120).every((b) => b === 0)).toBe(true);
    await s2.close(true);
  });
});
