/**
 * The array owns the copy engine: sessions started through StorageArray on the file backend,
 * the point-in-time image on the destination, persistence of sessions and bitmaps across a
 * close/reopen (a kill -9: test/durability/copySessionKill9.test.ts), and the life-cycle refusals
 * (delete, resize, busy destination).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice, ClientInfo } from '../../emulator/block/BlockDevice.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const UNIT = 64 * 1024;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-copywiring-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});

let dirs = 0;
const freshDir = () => path.join(tmp, `data${++dirs}`);

async function fileArray(dataDir: string): Promise<StorageArray> {
  const a = await StorageArray.open({ backend: 'file', dataDir, logger, copyClock: 'manual' });
  open.push(a);
  return a;
}

let conn = 0;
function client(over: Partial<ClientInfo> = {}): ClientInfo {
  return { protocol: 'nbd', connectionId: `c${++conn}`, remoteAddress: '127.0.0.1:5000', readOnly: false, ...over };
}

function dev(a: StorageArray, name: string, readOnly = false): { device: BlockDevice; close: () => void } {
  const h = a.openExport(name, client({ readOnly }))!;
  return { device: h.device, close: () => h.close() };
}

/** Unit u of the source holds byte (u + gen) & 0xff. */
function unitData(u: number, gen: number): Buffer {
  return Buffer.alloc(UNIT, (u + gen) & 0xff);
}

async function fill(d: BlockDevice, gen: number): Promise<void> {
  for (let u = 0; u < SIZE / UNIT; u++) await d.write(u * UNIT, unitData(u, gen));
}

async function readAll(d: BlockDevice): Promise<Buffer> {
  const b = Buffer.alloc(SIZE);
  await d.read(0, b);
  return b;
}

function image(gen: number): Buffer {
  return Buffer.concat(Array.from({ length: SIZE / UNIT }, (_, u) => unitData(u, gen)));
}

async function arrayError(p: Promise<unknown>): Promise<ArrayError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ArrayError);
  return err as ArrayError;
}

async function twoVolumes(a: StorageArray, dstSize = SIZE): Promise<void> {
  await a.createVolume({ name: 'src', sizeBytes: SIZE });
  await a.createVolume({ name: 'dst', sizeBytes: dstSize });
}

describe('StorageArray owns the copy engine (file backend)', () => {
  it('OPC: the destination reads the point-in-time image while the copy is not done', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a);
    const s = dev(a, 'src');
    await fill(s.device, 1);
    s.close();
    const info = await a.startCopy({ type: 'opc', source: 'src', destination: 'dst', rate: 0 });
    expect(info).toMatchObject({ type: 'opc', state: 'copying', source: 'src', destination: 'dst', copiedBlocks: 0, totalBlocks: SIZE / UNIT, rate: 0 });
    const s2 = dev(a, 'src');
    await s2.device.write(3 * UNIT, Buffer.alloc(UNIT, 0xee)); // copy-on-write of unit 3
    await s2.device.write(10 * UNIT + 512, Buffer.alloc(512, 0xdd)); // partial unit
    const d = dev(a, 'dst', true);
    expect((await readAll(d.device)).equals(image(1))).toBe(true);
    expect(a.getCopy(info.id).copiedBlocks).toBe(2);
    expect(a.listCopies().map((x) => x.id)).toEqual([info.id]);
    d.close();
    s2.close();
    // Finish it: the session ends and the destination is a plain volume holding the image.
    await a.setCopyRate(info.id, Number.POSITIVE_INFINITY);
    while ((await a.copy.step(16)) > 0);
    expect(a.listCopies()).toEqual([]);
    const d2 = dev(a, 'dst');
    expect((await readAll(d2.device)).equals(image(1))).toBe(true);
    d2.close();
  });

  it('close and reopen: the session, its state and bitmap are back and the image is exact', async () => {
    const dir = freshDir();
    let a = await fileArray(dir);
    await twoVolumes(a);
    const s = dev(a, 'src');
    await fill(s.device, 7);
    s.close();
    const info = await a.startCopy({ type: 'opc', source: 'src', destination: 'dst', rate: 0, group: 'g1' });
    expect(info.group).toBe('g1');
    await a.copy.stepOne(info.id, 5); // units 0..4 copied in the background
    const s2 = dev(a, 'src');
    await s2.device.write(20 * UNIT, Buffer.alloc(UNIT, 0x11)); // CoW of unit 20
    s2.close();
    const before = a.getCopy(info.id);
    expect(before.copiedBlocks).toBe(6);
    await a.close();

    a = await fileArray(dir);
    const after = a.getCopy(info.id);
    expect(after).toMatchObject({
      id: info.id,
      type: 'opc',
      state: 'copying',
      copiedBlocks: 6,
      totalBlocks: 64,
      rate: 0,
      group: 'g1',
      createdAt: info.createdAt,
    });
    const d = dev(a, 'dst', true);
    expect((await readAll(d.device)).equals(image(7))).toBe(true);
    d.close();
    // The source's new data is there too, and unit 20 is not copied again over it.
    const s3 = dev(a, 'src', true);
    const u20 = Buffer.alloc(UNIT);
    await s3.device.read(20 * UNIT, u20);
    expect(u20.equals(Buffer.alloc(UNIT, 0x11))).toBe(true);
    s3.close();
    // Unthrottled rate survives a reopen (Infinity through encodeRate).
    await a.setCopyRate(info.id, Number.POSITIVE_INFINITY);
    await a.close();
    a = await fileArray(dir);
    expect(a.getCopy(info.id).rate).toBe(Number.POSITIVE_INFINITY);
    while ((await a.copy.step(16)) > 0);
    expect(a.listCopies()).toEqual([]);
    await a.close();
    a = await fileArray(dir);
    expect(a.listCopies()).toEqual([]);
    const d2 = dev(a, 'dst');
    expect((await readAll(d2.device)).equals(image(7))).toBe(true);
    d2.close();
  });

  it('EC state survives a reopen (suspended pair stays suspended)', async () => {
    const dir = freshDir();
    let a = await fileArray(dir);
    await twoVolumes(a);
    const s = dev(a, 'src');
    await fill(s.device, 3);
    s.close();
    const ec = await a.startCopy({ type: 'ec', source: 'src', destination: 'dst' });
    while ((await a.copy.step(16)) > 0);
    expect(a.getCopy(ec.id).state).toBe('equivalent');
    await a.suspendCopy(ec.id);
    await a.close();
    a = await fileArray(dir);
    expect(a.getCopy(ec.id)).toMatchObject({ state: 'suspended', type: 'ec' });
    await a.resumeCopy(ec.id);
    while ((await a.copy.step(16)) > 0);
    expect(a.getCopy(ec.id).state).toBe('equivalent');
    await a.splitCopy(ec.id);
    expect(a.getCopy(ec.id).state).toBe('split');
    await a.resumeCopy(ec.id); // rejoin
    while ((await a.copy.step(16)) > 0);
    expect(a.getCopy(ec.id).state).toBe('equivalent');
    await a.cancelCopy(ec.id);
    expect(a.listCopies()).toEqual([]);
  });

  it('delete is refused while the volume is in a session, allowed after cancel', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a);
    const info = await a.startCopy({ type: 'opc', source: 'src', destination: 'dst', rate: 0 });
    for (const name of ['src', 'dst']) {
      const err = await arrayError(a.deleteVolume(name));
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toMatch(
        new RegExp(`^cannot delete volume ${name}: volume ${name} is in copy session ${info.id} \\(opc, copying\\); cancel the session first$`),
      );
    }
    expect(a.getVolume('dst').name).toBe('dst');
    await a.cancelCopy(info.id);
    await a.deleteVolume('dst');
    await a.deleteVolume('src');
    expect(a.listVolumes()).toEqual([]);
  });

  it('resize is refused for EC and SnapOPC+ volumes, allowed for OPC', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a, 2 * SIZE);
    await a.createVolume({ name: 'snap', sizeBytes: SIZE });
    await a.createVolume({ name: 'src2', sizeBytes: SIZE });
    const ec = await a.startCopy({ type: 'ec', source: 'src', destination: 'dst', rate: 0 });
    for (const name of ['src', 'dst']) {
      const err = await arrayError(a.resizeVolume(name, 4 * SIZE));
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toContain(`cannot resize volume ${name}: it is in EC session ${ec.id}`);
    }
    const snap = await a.startCopy({ type: 'snapopcplus', source: 'src2', destination: 'snap' });
    expect(snap.state).toBe('snap');
    const err = await arrayError(a.resizeVolume('src2', 2 * SIZE));
    expect(err.message).toContain(`SnapOPC+ session ${snap.id}`);
    await a.cancelCopy(ec.id);
    expect((await a.resizeVolume('src', 2 * SIZE)).sizeBytes).toBe(2 * SIZE);
    await a.createVolume({ name: 'o1', sizeBytes: SIZE });
    await a.createVolume({ name: 'o2', sizeBytes: 2 * SIZE });
    await a.startCopy({ type: 'opc', source: 'o1', destination: 'o2', rate: 0 });
    expect((await a.resizeVolume('o2', 3 * SIZE)).sizeBytes).toBe(3 * SIZE);
  });

  it('refuses a destination exported read-write to a connected client, unless forced', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a);
    const ro = dev(a, 'dst', true);
    const rw = dev(a, 'dst');
    const err = await arrayError(a.startCopy({ type: 'ec', source: 'src', destination: 'dst' }));
    expect(err.code).toBe('FAILED_PRECONDITION');
    expect(err.message).toBe('cannot start EC src -> dst: dst is exported read-write to 1 connected client; dismount it first or pass --force');
    const info = await a.startCopy({ type: 'ec', source: 'src', destination: 'dst', force: true, rate: 0 });
    expect(info.state).toBe('copying');
    ro.close();
    rw.close();
  });

  it('resume, rejoin and reverse (EC, QuickOPC) refuse the volume they overwrite while a client writes to it, unless forced', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a);
    const busy = 'is exported read-write to 1 connected client; dismount it first or pass --force';
    /** Expects op refused with `message`, the session as it was; then op with force works. */
    const refusedUnlessForced = async (id: string, message: string, op: (force: boolean) => Promise<unknown>) => {
      const before = a.getCopy(id);
      const err = await arrayError(op(false));
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toBe(message);
      expect(a.getCopy(id)).toEqual(before);
      await op(true);
    };
    const ec = await a.startCopy({ type: 'ec', source: 'src', destination: 'dst' });
    while ((await a.copy.step(16)) > 0);
    await a.suspendCopy(ec.id);
    const ro = dev(a, 'dst', true); // read-only clients do not count
    let rw = dev(a, 'dst');
    await refusedUnlessForced(ec.id, `cannot resume EC src -> dst (session ${ec.id}): dst ${busy}`, (force) => a.resumeCopy(ec.id, { force }));
    expect(a.getCopy(ec.id).state).toBe('copying');
    rw.close();
    while ((await a.copy.step(16)) > 0);
    await a.splitCopy(ec.id);
    rw = dev(a, 'dst');
    await refusedUnlessForced(ec.id, `cannot resume EC src -> dst (session ${ec.id}): dst ${busy}`, (force) => a.resumeCopy(ec.id, { force })); // rejoin
    rw.close();
    ro.close();
    while ((await a.copy.step(16)) > 0);
    await a.suspendCopy(ec.id);
    rw = dev(a, 'dst'); // the destination stays a destination's: reverse overwrites the source
    expect(await a.reverseCopy(ec.id)).toMatchObject({ source: 'dst', destination: 'src', state: 'suspended' });
    await refusedUnlessForced(ec.id, `cannot reverse EC dst -> src (session ${ec.id}): dst ${busy}`, (force) => a.reverseCopy(ec.id, { force }));
    rw.close();
    await a.cancelCopy(ec.id);

    const q = await a.startCopy({ type: 'quickopc', source: 'src', destination: 'dst' });
    while ((await a.copy.step(16)) > 0);
    rw = dev(a, 'src');
    await refusedUnlessForced(q.id, `cannot reverse QuickOPC src -> dst (session ${q.id}): src ${busy}`, (force) => a.reverseCopy(q.id, { force }));
    expect(a.getCopy(q.id)).toMatchObject({ source: 'dst', destination: 'src', reversed: true });
    rw.close();
  });

  it('maps engine refusals to array errors', async () => {
    const a = await fileArray(freshDir());
    await twoVolumes(a, SIZE / 2);
    expect((await arrayError(a.startCopy({ type: 'opc', source: 'src', destination: 'dst' }))).code).toBe('INVALID_ARGUMENT');
    expect((await arrayError(a.startCopy({ type: 'opc', source: 'src', destination: 'nope' }))).code).toBe('NOT_FOUND');
    expect((await arrayError(a.suspendCopy('nope'))).code).toBe('NOT_FOUND');
    expect(() => a.getCopy('nope')).toThrow(ArrayError);
  });

  it('memory backend: sessions work (journal in SQLite :memory:)', async () => {
    const a = await StorageArray.open({ backend: 'memory', logger, copyClock: 'manual' });
    open.push(a);
    await twoVolumes(a);
    const s = dev(a, 'src');
    await fill(s.device, 9);
    const info = await a.startCopy({ type: 'quickopc', source: 'src', destination: 'dst' });
    await s.device.write(0, Buffer.alloc(UNIT, 0x42));
    while ((await a.copy.step(16)) > 0);
    expect(a.getCopy(info.id).state).toBe('tracking');
    const d = dev(a, 'dst', true);
    expect((await readAll(d.device)).equals(image(9))).toBe(true);
    s.close();
    d.close();
  });
});
