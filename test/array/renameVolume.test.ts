/**
 * Renaming volumes: MetadataStore's one transaction (volume row and copy-session records
 * together), StorageArray.renameVolume (exports follow, new identity, refusals), volumes in
 * copy sessions (the split clone of an EC pair, SnapOPC+ sources and snap volumes, a copying
 * OPC) across close/reopen, and CopyEngine.renameVolume on its own journal, crash included.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BlockDevice, ClientInfo } from '../../emulator/block/BlockDevice.js';
import { identityFromUuid, SERIAL_PATTERN, WWN_PATTERN } from '../../emulator/array/identity.js';
import { MetadataStore, type VolumeRecord } from '../../emulator/array/MetadataStore.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';
import type { SqliteSessionJournal } from '../../emulator/array/SqliteSessionJournal.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { CopyError } from '../../emulator/copy/CopySession.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { client as clientOf, memVolume, put, readTags } from '../copy/support.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const UNIT = 64 * 1024;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-rename-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});
let dirs = 0;
const freshDir = () => path.join(tmp, `data${++dirs}`);

async function openArray(backend: 'file' | 'memory', dataDir?: string): Promise<StorageArray> {
  const a = await StorageArray.open({ backend, ...(dataDir ? { dataDir } : {}), logger, copyClock: 'manual' });
  open.push(a);
  return a;
}

let conn = 0;
function clientInfo(over: Partial<ClientInfo> = {}): ClientInfo {
  return { protocol: 'nbd', connectionId: `c${++conn}`, remoteAddress: '127.0.0.1:5000', readOnly: false, ...over };
}

function dev(a: StorageArray, name: string, readOnly = false): { device: BlockDevice; close: () => void } {
  const h = a.openExport(name, clientInfo({ readOnly }));
  if (h === undefined) throw new Error(`no export ${name}`);
  return { device: h.device, close: () => h.close() };
}

async function readAll(d: BlockDevice, size = SIZE): Promise<Buffer> {
  const b = Buffer.alloc(size);
  await d.read(0, b);
  return b;
}

async function arrayError(p: Promise<unknown>): Promise<ArrayError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ArrayError);
  return err as ArrayError;
}

async function runCopies(a: StorageArray): Promise<void> {
  while ((await a.copy.step(64)) > 0);
}

function record(name: string): VolumeRecord {
  return {
    name,
    ...identityFromUuid(randomUUID()),
    sizeBytes: MiB,
    blockSize: 512,
    provisioning: 'thin',
    readOnly: false,
    description: '',
    createdAt: '2025-01-01T00:00:00.000Z',
  };
}

describe('MetadataStore.renameVolume', () => {
  const sessionJson = (id: string, source: string, destination: string) =>
    JSON.stringify({ id, type: 'ec', state: 'split', source, destination, unitSize: UNIT, sizeBytes: MiB, rate: 'Infinity', createdAt: 'x' });

  function storeWithSessions(): { db: MetadataStore; a: VolumeRecord; b: VolumeRecord } {
    const db = new MetadataStore(path.join(`${freshDir()}.db`));
    const a = record('a');
    const b = record('b');
    db.insertVolume(a);
    db.insertVolume(b);
    db.insertVolume(record('c'));
    db.commitCopyJournal({
      deletes: [],
      puts: new Map([
        ['s1', sessionJson('s1', 'a', 'b')],
        ['s2', sessionJson('s2', 'c', 'a')],
        ['s3', sessionJson('s3', 'c', 'c2')],
      ]),
      chunks: [{ sessionId: 's1', bitmap: 'diff', index: 0, bits: Buffer.alloc(4096, 1) }],
    });
    return { db, a, b };
  }

  it('renames the row, sets a new WWN and serial, and rewrites every session record that names it', () => {
    const { db, a } = storeWithSessions();
    db.renameVolume(a.uuid, 'a', 'a2', { wwn: identityFromUuid(randomUUID()).wwn, serial: 'ALB00000000000Z' });
    const row = db.listVolumes().find((v) => v.uuid === a.uuid)!;
    expect(row).toMatchObject({ name: 'a2', serial: 'ALB00000000000Z', sizeBytes: MiB });
    expect(row.wwn).not.toBe(a.wwn);
    const records = Object.fromEntries(
      db.listCopySessions().map((s) => [s.id, JSON.parse(s.record) as { source: string; destination: string; rate: unknown }]),
    );
    expect([records.s1!.source, records.s1!.destination]).toEqual(['a2', 'b']);
    expect([records.s2!.source, records.s2!.destination]).toEqual(['c', 'a2']);
    expect([records.s3!.source, records.s3!.destination]).toEqual(['c', 'c2']);
    expect(records.s1!.rate).toBe('Infinity'); // the rest of the record as it was
    expect(db.listCopySessions().find((s) => s.id === 's1')!.chunks).toHaveLength(1); // bitmaps untouched
    db.close();
  });

  it('is one transaction: a failure part-way (a record that does not parse) changes nothing', () => {
    const { db, a } = storeWithSessions();
    // A damaged record after the good ones: the row update and s1's rewrite already ran
    // inside the transaction when it fails.
    db.commitCopyJournal({ deletes: [], puts: new Map([['s9', '{not json']]), chunks: [] });
    expect(() => db.renameVolume(a.uuid, 'a', 'a2', { wwn: `${a.wwn.slice(0, -1)}f`, serial: 'ALB00000000000Y' })).toThrow(/JSON/);
    expect(db.listVolumes().find((v) => v.uuid === a.uuid)).toMatchObject({ name: 'a', wwn: a.wwn, serial: a.serial });
    const s1 = JSON.parse(db.listCopySessions().find((s) => s.id === 's1')!.record) as { source: string };
    expect(s1.source).toBe('a');
    db.close();
  });

  it('refuses a taken name or a stale (uuid, name) pair, changing nothing', () => {
    const { db, a, b } = storeWithSessions();
    expect(() => db.renameVolume(a.uuid, 'a', 'b')).toThrow(/UNIQUE/);
    expect(() => db.renameVolume(b.uuid, 'a', 'z')).toThrow(/no volume a with uuid/);
    expect(db.listVolumes().map((v) => v.name)).toEqual(['a', 'b', 'c']);
    expect((JSON.parse(db.listCopySessions()[0]!.record) as { source: string }).source).toBe('a');
    db.close();
  });
});

describe.each(['memory', 'file'] as const)('StorageArray.renameVolume (%s backend)', (backend) => {
  it('renames the volume and its export; the data, UUID and identity stay unless a new identity is asked for', async () => {
    const a = await openArray(backend, backend === 'file' ? freshDir() : undefined);
    const before = await a.createVolume({ name: 'vol1', sizeBytes: SIZE, description: 'd', allocLimitBytes: 2 * MiB });
    const d = dev(a, 'vol1');
    await d.device.write(0, Buffer.alloc(MiB, 0x5a));
    d.close();

    const renamed = await a.renameVolume('vol1', 'vol2');
    expect(renamed).toEqual({ ...before, name: 'vol2', allocatedBytes: MiB });
    expect(a.listVolumes().map((v) => v.name)).toEqual(['vol2']);
    expect(a.listExports()).toEqual([{ name: 'vol2', description: 'd' }]);
    expect(a.openExport('vol1', clientInfo())).toBeUndefined();
    expect(a.describeExport('vol1')).toBeUndefined();
    expect(a.describeExport('vol2')).toMatchObject({ name: 'vol2', size: SIZE });
    const d2 = dev(a, 'vol2');
    expect((await readAll(d2.device, MiB)).equals(Buffer.alloc(MiB, 0x5a))).toBe(true);
    // The allocation limit's message follows the name.
    await expect(d2.device.write(2 * MiB, Buffer.alloc(1.5 * MiB))).rejects.toThrow(
      /^volume vol2 has reached its allocation limit .*'arraylab volume set vol2 --alloc-limit SIZE'/,
    );
    d2.close();
    expect((await arrayError(a.deleteVolume('vol1'))).code).toBe('NOT_FOUND');

    const fresh = await a.renameVolume('vol2', 'vol3', { newIdentity: true });
    expect(fresh.uuid).toBe(before.uuid);
    expect(fresh.wwn).toMatch(WWN_PATTERN);
    expect(fresh.serial).toMatch(SERIAL_PATTERN);
    expect(fresh.wwn).not.toBe(before.wwn);
    expect(fresh.serial).not.toBe(before.serial);
    // Same name with a new identity: only the identity changes; without: nothing at all.
    const again = await a.renameVolume('vol3', 'vol3', { newIdentity: true });
    expect(again.name).toBe('vol3');
    expect(again.serial).not.toBe(fresh.serial);
    expect(await a.renameVolume('vol3', 'vol3')).toEqual(again);
    // The old name is free again.
    expect((await a.createVolume({ name: 'vol1', sizeBytes: MiB })).name).toBe('vol1');
  });

  it('refuses a bad or taken name, an unknown volume, and a volume with connected clients', async () => {
    const a = await openArray(backend, backend === 'file' ? freshDir() : undefined);
    await a.createVolume({ name: 'a', sizeBytes: MiB });
    await a.createVolume({ name: 'b', sizeBytes: MiB });
    const bad = await arrayError(a.renameVolume('a', 'no/slash'));
    expect(bad.code).toBe('INVALID_ARGUMENT');
    expect(bad.message).toMatch(/^invalid volume name "no\/slash": use 1 to 63 letters/);
    const taken = await arrayError(a.renameVolume('a', 'b'));
    expect(taken.code).toBe('ALREADY_EXISTS');
    expect(taken.message).toMatch(/^cannot rename volume a to b: volume b already exists \(uuid [0-9a-f-]{36}\); choose another name, or delete it first$/);
    expect((await arrayError(a.renameVolume('nope', 'c'))).code).toBe('NOT_FOUND');
    const h = a.openExport('a', { protocol: 'nbd', connectionId: 'x', remoteAddress: '10.0.0.1:4000', readOnly: true })!;
    const busy = await arrayError(a.renameVolume('a', 'c'));
    expect(busy.code).toBe('FAILED_PRECONDITION');
    expect(busy.message).toBe('cannot rename volume a: it is open by 1 connected client (nbd 10.0.0.1:4000); disconnect it first');
    expect((await arrayError(a.renameVolume('a', 'a', { newIdentity: true }))).code).toBe('FAILED_PRECONDITION');
    h.close();
    expect((await a.renameVolume('a', 'c')).name).toBe('c');
    expect(a.listVolumes().map((v) => v.name)).toEqual(['b', 'c']);
  });
});

describe('renaming volumes in copy sessions (file backend)', () => {
  it('the split clone of an EC pair: renamed with a new identity, rejoined, and all of it survives a reopen', async () => {
    const dir = freshDir();
    let a = await openArray('file', dir);
    await a.createVolume({ name: 'db', sizeBytes: SIZE });
    await a.createVolume({ name: 'mirror', sizeBytes: SIZE });
    const s = dev(a, 'db');
    await s.device.write(0, Buffer.alloc(SIZE, 0x11));
    const ec = await a.startCopy({ type: 'ec', source: 'db', destination: 'mirror' });
    await runCopies(a);
    expect(a.getCopy(ec.id).state).toBe('equivalent');
    await a.splitCopy(ec.id);
    const before = a.getVolume('mirror');
    const clone = await a.renameVolume('mirror', 'clone', { newIdentity: true });
    expect(clone.uuid).toBe(before.uuid);
    expect(clone.serial).not.toBe(before.serial);
    expect(a.getCopy(ec.id)).toMatchObject({ state: 'split', source: 'db', destination: 'clone' });
    expect(a.copy.events.at(-1)!.message).toBe('volume mirror renamed to clone: ec db -> clone');
    // The clone is independent and writable under its new name; the source changes too.
    const c = dev(a, 'clone');
    await c.device.write(0, Buffer.alloc(UNIT, 0x22));
    c.close();
    await s.device.write(UNIT, Buffer.alloc(UNIT, 0x33));
    s.close();
    await a.close();

    a = await openArray('file', dir);
    expect(a.listVolumes().map((v) => v.name)).toEqual(['clone', 'db']);
    expect(a.getVolume('clone')).toMatchObject({ uuid: clone.uuid, wwn: clone.wwn, serial: clone.serial });
    expect(a.getCopy(ec.id)).toMatchObject({ state: 'split', source: 'db', destination: 'clone' });
    expect((await arrayError(a.deleteVolume('clone'))).message).toContain(`copy session ${ec.id}`);
    // Rejoin: the differential resync makes the clone equal to the source again.
    await a.resumeCopy(ec.id);
    await runCopies(a);
    expect(a.getCopy(ec.id).state).toBe('equivalent');
    const want = Buffer.alloc(SIZE, 0x11);
    want.fill(0x33, UNIT, 2 * UNIT);
    const r = dev(a, 'clone', true);
    expect((await readAll(r.device)).equals(want)).toBe(true);
    r.close();
  });

  it('a record appended to the journal but not yet committed is written with the new name', async () => {
    const dir = freshDir();
    let a = await openArray('file', dir);
    await a.createVolume({ name: 'src', sizeBytes: SIZE });
    await a.createVolume({ name: 'dst', sizeBytes: SIZE });
    const ec = await a.startCopy({ type: 'ec', source: 'src', destination: 'dst' });
    await runCopies(a);
    await a.splitCopy(ec.id);
    // As if a state change had appended the session's record just before the rename and its
    // commit had not run yet: the record still says 'dst'.
    const journal = (a as unknown as { journal: SqliteSessionJournal }).journal;
    const stale = { ...(await journal.load()).find((j) => j.record.id === ec.id)!.record };
    journal.putSession(stale);
    await a.renameVolume('dst', 'dst2');
    journal.commit();
    await a.close();
    a = await openArray('file', dir);
    expect(a.getCopy(ec.id)).toMatchObject({ source: 'src', destination: 'dst2', state: 'split' });
  });

  it('a client that connects while the rename waits for the copy engine makes it fail, changing nothing', async () => {
    const a = await openArray('file', freshDir());
    await a.createVolume({ name: 'v', sizeBytes: MiB });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // Occupy the engine's control queue, as a long copy step would.
    void (a.copy as unknown as { serially: (op: () => Promise<void>) => Promise<void> }).serially(() => gate);
    const renaming = a.renameVolume('v', 'w');
    await new Promise((r) => setTimeout(r, 20));
    const h = a.openExport('v', clientInfo())!;
    release();
    const err = await arrayError(renaming);
    expect(err.message).toBe('cannot rename volume v: it is open by 1 connected client (nbd 127.0.0.1:5000); disconnect it first');
    expect(a.getVolume('v').name).toBe('v');
    expect(a.copy.tapOf('v').volumeName).toBe('v');
    h.close();
    expect((await a.renameVolume('v', 'w')).name).toBe('w');
    expect(a.copy.tapOf('w').volumeName).toBe('w');
  });

  it('SnapOPC+: renaming the source and a snap volume keeps every generation readable and saving', async () => {
    const dir = freshDir();
    let a = await openArray('file', dir);
    await a.createVolume({ name: 'src', sizeBytes: SIZE });
    await a.createVolume({ name: 'snapA', sizeBytes: SIZE });
    await a.createVolume({ name: 'snapB', sizeBytes: SIZE });
    const s = dev(a, 'src');
    await s.device.write(0, Buffer.alloc(SIZE, 0x01));
    s.close();
    const g1 = await a.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snapA' });
    let w = dev(a, 'src');
    await w.device.write(0, Buffer.alloc(UNIT, 0x02));
    w.close();
    const g2 = await a.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snapB' });
    await a.renameVolume('src', 'prod');
    await a.renameVolume('snapA', 'snap-monday');
    expect(a.getCopy(g1.id)).toMatchObject({ source: 'prod', destination: 'snap-monday', generation: 1 });
    expect(a.getCopy(g2.id)).toMatchObject({ source: 'prod', destination: 'snapB', generation: 2 });
    expect((await arrayError(a.startCopy({ type: 'snapopcplus', source: 'src', destination: 'snapB' }))).code).toBe('NOT_FOUND');
    // The source role works under the new name: this write saves its before-image.
    w = dev(a, 'prod');
    await w.device.write(2 * UNIT, Buffer.alloc(UNIT, 0x03));
    w.close();
    await a.close();

    a = await openArray('file', dir);
    const gen1 = Buffer.alloc(SIZE, 0x01);
    const gen2 = Buffer.alloc(SIZE, 0x01);
    gen2.fill(0x02, 0, UNIT);
    const r1 = dev(a, 'snap-monday', true);
    const r2 = dev(a, 'snapB', true);
    expect((await readAll(r1.device)).equals(gen1)).toBe(true);
    expect((await readAll(r2.device)).equals(gen2)).toBe(true);
    r1.close();
    r2.close();
    // A third generation on the renamed source joins the same chain.
    await a.createVolume({ name: 'snapC', sizeBytes: SIZE });
    const g3 = await a.startCopy({ type: 'snapopcplus', source: 'prod', destination: 'snapC' });
    expect(g3.generation).toBe(3);
  });

  it('OPC still copying: renaming the destination does not disturb the copy', async () => {
    const a = await openArray('file', freshDir());
    await a.createVolume({ name: 'src', sizeBytes: SIZE });
    await a.createVolume({ name: 'dst', sizeBytes: SIZE });
    const s = dev(a, 'src');
    await s.device.write(0, Buffer.alloc(SIZE, 0x44));
    s.close();
    const opc = await a.startCopy({ type: 'opc', source: 'src', destination: 'dst', rate: 0 });
    await a.copy.stepOne(opc.id, 10);
    await a.renameVolume('dst', 'copy1');
    await a.renameVolume('src', 'orig');
    expect(a.getCopy(opc.id)).toMatchObject({ source: 'orig', destination: 'copy1', state: 'copying', copiedBlocks: 10 });
    await a.setCopyRate(opc.id, Number.POSITIVE_INFINITY);
    await runCopies(a);
    expect(a.listCopies()).toEqual([]);
    const d = dev(a, 'copy1', true);
    expect((await readAll(d.device)).equals(Buffer.alloc(SIZE, 0x44))).toBe(true);
    d.close();
  });
});

describe('CopyEngine.renameVolume', () => {
  function rig() {
    const journal = new MemoryJournal();
    let n = 0;
    const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, newId: () => `s${++n}` });
    const vols = { a: memVolume('a', 64, 0), b: memVolume('b', 64, 1) };
    engine.addVolume(vols.a);
    engine.addVolume(vols.b);
    return { journal, engine, vols };
  }

  it('renames in the maps, the tap and the session records, durably in the journal', async () => {
    const { journal, engine, vols } = rig();
    await put(clientOf(vols.a), 0, 7, 64);
    const ec = await engine.startEc('a', 'b');
    await engine.step(1000);
    await engine.split(ec.id);
    // The engine reads names through the volume object; rename it the way the array does.
    let persisted = false;
    await engine.renameVolume('b', 'b2', () => {
      persisted = true;
      vols.b.renamed({ ...vols.b.record, name: 'b2' });
    });
    expect(persisted).toBe(true);
    expect(engine.get(ec.id)).toMatchObject({ source: 'a', destination: 'b2', state: 'split' });
    expect(engine.tapOf('b2').volumeName).toBe('b2');
    expect(() => engine.tapOf('b')).toThrow(CopyError);
    expect(engine.sessionsOfVolume('b2')).toEqual([ec.id]);
    // A crash now: the journal holds the new name, and recovery works on it.
    const after = journal.crash();
    const loaded = await after.load();
    expect(loaded.map((j) => [j.record.source, j.record.destination])).toEqual([['a', 'b2']]);
    const engine2 = new CopyEngine({ journal: after, clock: 'manual' });
    const va = memVolume('a', 64, 0);
    const vb = memVolume('b2', 64, 1);
    engine2.addVolume(va);
    engine2.addVolume(vb);
    expect((await engine2.recover()).map((s) => [s.id, s.destination, s.state])).toEqual([[ec.id, 'b2', 'split']]);
    await engine2.rejoin(ec.id);
    expect(engine2.get(ec.id).state).toBe('copying');
  });

  it('changes nothing when persist throws, and refuses unknown and taken names', async () => {
    const { journal, engine, vols } = rig();
    await put(clientOf(vols.a), 0, 3, 64);
    const opc = await engine.startOpc('a', 'b', { rate: 0 });
    const syncs = journal.syncs;
    await expect(
      engine.renameVolume('b', 'c', () => {
        throw new Error('disk on fire');
      }),
    ).rejects.toThrow('disk on fire');
    expect(engine.get(opc.id).destination).toBe('b');
    expect(engine.tapOf('b').volumeName).toBe('b');
    expect(journal.syncs).toBe(syncs);
    await expect(engine.renameVolume('x', 'y')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(engine.renameVolume('a', 'b')).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    // Still a working session under the old names.
    expect(await readTags(clientOf(vols.b), 0, 4)).toEqual([3, 3, 3, 3]);
  });
});
