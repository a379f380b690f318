/**
 * GetCopyBitmap (ArrayClient.copyBitmap, `arraylab copy bitmap`) in front of a real
 * StorageArray (memory backend, real timers): the letters and counts each session type implies.
 */
import pino from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ArrayApiServer } from '../../emulator/api/ArrayApiServer.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { bitmapText } from '../../emulator/cli/copy.js';
import { ApiError, ArrayClient } from '../../proto/ArrayClient.js';
import type { CopyBitmapView } from '../../proto/views.js';
import { memoryServerStatus } from '../support/serverStatus.js';
import { until } from '../support/wait.js';

const logger = pino({ level: 'silent' });
const MiB = 2 ** 20;
const UNIT = 65536;
const SIZE = 4 * MiB;
const UNITS = SIZE / UNIT;
const PACE = { timeoutMs: 10_000, intervalMs: 20 };

/** UNITS letters: `fill` everywhere except the units given. */
function cells(fill: string, at: Record<number, string> = {}): string {
  return Array.from({ length: UNITS }, (_, u) => at[u] ?? fill).join('');
}

function letters(b: CopyBitmapView, c: string): number {
  return [...b.cells].filter((x) => x === c).length;
}

describe('GetCopyBitmap', () => {
  let array: StorageArray;
  let server: ArrayApiServer;
  let client: ArrayClient;
  let names = 0;
  let src: string;
  let dst: string;

  /** One host write of a whole unit. */
  async function write(volume: string, unit: number, byte: number): Promise<void> {
    const h = array.openExport(volume, { protocol: 'nbd', connectionId: `w${++names}`, remoteAddress: 'x', readOnly: false })!;
    try {
      await h.device.write(unit * UNIT, Buffer.alloc(UNIT, byte));
    } finally {
      h.close();
    }
  }

  beforeAll(async () => {
    array = await StorageArray.open({ backend: 'memory', logger });
    server = new ArrayApiServer({
      array,
      copy: array,
      logger,
      status: () => memoryServerStatus(),
    });
    client = new ArrayClient(await server.listen({ host: '127.0.0.1', port: 0 }), { deadlineMs: 5000 });
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    await array?.close();
  });

  beforeEach(async () => {
    src = `s${++names}`;
    dst = `d${names}`;
    await array.createVolume({ name: src, sizeBytes: SIZE });
    await array.createVolume({ name: dst, sizeBytes: SIZE, provisioning: 'thin' });
    const h = array.openExport(src, { protocol: 'nbd', connectionId: 'fill', remoteAddress: 'x', readOnly: false })!;
    for (let u = 0; u < UNITS; u++) await h.device.write(u * UNIT, Buffer.alloc(UNIT, u + 1));
    h.close();
  });

  afterEach(async () => {
    for (const s of array.listCopies()) await array.cancelCopy(s.id, { force: true }).catch(() => undefined);
  });

  it('OPC: every unit pending at the start; copy-on-write and the copier turn them into copied units', async () => {
    const s = await client.startCopy({ type: 'opc', source: src, destination: dst, rateMiBs: 0 });
    expect(await client.copyBitmap(s.id)).toEqual({
      id: s.id,
      type: 'opc',
      state: 'copying',
      units: UNITS,
      unitBytes: UNIT,
      unitsPerCell: 1,
      cells: cells('P'),
      counts: { copied: 0, pending: UNITS, tracked: 0, beforeImage: 0 },
    });
    await write(src, 5, 0xaa); // copy-on-write of the source
    await write(dst, 10, 0xbb); // the destination brings its unit over first
    const b = await client.copyBitmap(s.id);
    expect(b.cells).toBe(cells('P', { 5: 'C', 10: 'C' }));
    expect(b.counts).toEqual({ copied: 2, pending: UNITS - 2, tracked: 0, beforeImage: 0 });
    // 8 cells of 8 units: a cell with a pending unit shows P.
    expect(await client.copyBitmap(s.id, 8)).toMatchObject({ unitsPerCell: 8, cells: 'PPPPPPPP', counts: b.counts });

    // A slow copier (one unit every ~60 ms): part way, the picture and the counts agree.
    await client.setCopyRate(s.id, 1);
    await until('some units copied by the copier', async () => (await client.copyBitmap(s.id)).counts.copied > 4, PACE);
    const mid = await client.copyBitmap(s.id);
    expect(mid.state).toBe('copying');
    expect(letters(mid, 'C')).toBe(mid.counts.copied);
    expect(letters(mid, 'P')).toBe(mid.counts.pending);
    expect(mid.counts.copied + mid.counts.pending).toBe(UNITS);
    expect(mid.cells[5]).toBe('C');
  });

  it('QuickOPC: tracked units after writes on either side; a restart makes them pending again', async () => {
    const s = await client.startCopy({ type: 'quickopc', source: src, destination: dst });
    await until('tracking', async () => (await client.getCopy(s.id)).state === 'tracking', PACE);
    expect(await client.copyBitmap(s.id)).toMatchObject({
      state: 'tracking',
      cells: cells('C'),
      counts: { copied: UNITS, pending: 0, tracked: 0, beforeImage: 0 },
    });
    await write(src, 2, 0xaa);
    await write(dst, 7, 0xbb);
    const t = await client.copyBitmap(s.id);
    expect(t.cells).toBe(cells('C', { 2: 'T', 7: 'T' }));
    expect(t.counts).toEqual({ copied: UNITS - 2, pending: 0, tracked: 2, beforeImage: 0 });
    // Tracked wins over copied in a cell of several units.
    expect((await client.copyBitmap(s.id, 16)).cells).toBe('TTCCCCCCCCCCCCCC');

    await client.setCopyRate(s.id, 0);
    const r = await client.startCopy({ type: 'quickopc', source: src, destination: dst, rateMiBs: 0 });
    expect(r.id).toBe(s.id);
    const p = await client.copyBitmap(s.id);
    expect(p).toMatchObject({ state: 'copying', cells: cells('C', { 2: 'P', 7: 'P' }), counts: { copied: UNITS - 2, pending: 2, tracked: 0, beforeImage: 0 } });
  });

  it('SnapOPC+: before-images where the source was written since the generation started, nothing elsewhere', async () => {
    const g = await client.startCopy({ type: 'snapopcplus', source: src, destination: dst });
    expect(await client.copyBitmap(g.id)).toMatchObject({
      type: 'snapopcplus',
      state: 'snap',
      cells: cells('.'),
      counts: { copied: 0, pending: 0, tracked: 0, beforeImage: 0 },
    });
    await write(src, 4, 0xaa);
    await write(src, 4, 0xab); // saved once
    await write(src, 63, 0xac);
    // The before-image is durable shortly after the write is acknowledged (write-behind).
    await until('two before-images saved', async () => (await client.copyBitmap(g.id)).counts.beforeImage === 2, PACE);
    const b = await client.copyBitmap(g.id);
    expect(b.cells).toBe(cells('.', { 4: 'B', 63: 'B' }));
    expect(b.counts).toEqual({ copied: 0, pending: 0, tracked: 0, beforeImage: 2 });
    expect((await client.copyBitmap(g.id, 2)).cells).toBe('BB');
    expect((await client.copyBitmap(g.id, 4)).cells).toBe('B..B');

    // A newer generation: the older one keeps its before-images; the newer saves the next ones.
    await array.createVolume({ name: `${dst}n`, sizeBytes: SIZE, provisioning: 'thin' });
    const n = await client.startCopy({ type: 'snapopcplus', source: src, destination: `${dst}n` });
    await write(src, 4, 0xad);
    await until('saved in the newer generation', async () => (await client.copyBitmap(n.id)).counts.beforeImage === 1, PACE);
    expect((await client.copyBitmap(n.id)).cells).toBe(cells('.', { 4: 'B' }));
    expect((await client.copyBitmap(g.id)).cells).toBe(cells('.', { 4: 'B', 63: 'B' }));
  });

  it('EC: pending while copying, copied once equivalent, tracked while suspended, pending again on resume', async () => {
    const s = await client.startCopy({ type: 'ec', source: src, destination: dst, rateMiBs: 0 });
    expect(await client.copyBitmap(s.id)).toMatchObject({ type: 'ec', state: 'copying', cells: cells('P'), counts: { copied: 0, pending: UNITS } });
    await client.setCopyRate(s.id, undefined);
    await until('equivalent', async () => (await client.getCopy(s.id)).state === 'equivalent', PACE);
    expect(await client.copyBitmap(s.id)).toMatchObject({ state: 'equivalent', cells: cells('C'), counts: { copied: UNITS, pending: 0, tracked: 0 } });
    await client.suspendCopy(s.id);
    await write(src, 9, 0xaa);
    await write(dst, 33, 0xbb);
    expect(await client.copyBitmap(s.id)).toMatchObject({
      state: 'suspended',
      cells: cells('C', { 9: 'T', 33: 'T' }),
      counts: { copied: UNITS - 2, pending: 0, tracked: 2, beforeImage: 0 },
    });
    await client.setCopyRate(s.id, 0);
    await client.resumeCopy(s.id);
    expect(await client.copyBitmap(s.id)).toMatchObject({
      state: 'copying',
      cells: cells('C', { 9: 'P', 33: 'P' }),
      counts: { copied: UNITS - 2, pending: 2, tracked: 0, beforeImage: 0 },
    });
  });

  it('cells: 0 is the default 4096, more than 65536 is clamped; an unknown session is NOT_FOUND', async () => {
    // 8 GiB, thin: 131072 units, nothing allocated but the bitmaps.
    await array.createVolume({ name: `${src}big`, sizeBytes: 8 * 1024 * MiB, provisioning: 'thin' });
    await array.createVolume({ name: `${dst}big`, sizeBytes: 8 * 1024 * MiB, provisioning: 'thin' });
    const s = await client.startCopy({ type: 'opc', source: `${src}big`, destination: `${dst}big`, rateMiBs: 0 });
    const d = await client.copyBitmap(s.id);
    expect(d).toMatchObject({ units: 131072, unitsPerCell: 32, counts: { pending: 131072 } });
    expect(d.cells).toBe('P'.repeat(4096));
    const m = await client.copyBitmap(s.id, 1_000_000);
    expect(m).toMatchObject({ unitsPerCell: 2 });
    expect(m.cells.length).toBe(65536);
    const e = await client.copyBitmap('nope').then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ code: 'NOT_FOUND' });
  });

  it('copy bitmap prints rows of 64 cells, each with its first unit, and a legend with the counts', () => {
    const text = bitmapText({
      id: 'abc',
      type: 'quickopc',
      state: 'tracking',
      units: 130,
      unitBytes: UNIT,
      unitsPerCell: 1,
      cells: `${'C'.repeat(64)}${'T'}${'C'.repeat(65)}`,
      counts: { copied: 129, pending: 0, tracked: 1, beforeImage: 0 },
    });
    const lines = text.split('\n');
    expect(lines[0]).toBe('QuickOPC session abc, tracking: 130 units of 65536 bytes, 1 unit per cell');
    expect(lines[1]).toBe(`  0  ${'C'.repeat(64)}`);
    expect(lines[2]).toBe(` 64  T${'C'.repeat(63)}`);
    expect(lines[3]).toBe('128  CC');
    expect(text).toContain('C copied        129 units');
    expect(text).toContain('T tracked       1 units');
  });
});
