import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlockDeviceError, type BlockDevice, type ClientInfo } from '../../emulator/block/BlockDevice.js';
import { FileBlockStore } from '../../emulator/block/FileBlockStore.js';
import { identityFromUuid, SERIAL_PATTERN, WWN_PATTERN } from '../../emulator/array/identity.js';
import { MetadataStore, SCHEMA_VERSION } from '../../emulator/array/MetadataStore.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-array-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});

let dirs = 0;
function freshDir(): string {
  return path.join(tmp, `data${++dirs}`);
}

async function memoryArray(): Promise<StorageArray> {
  const a = await StorageArray.open({ backend: 'memory', logger });
  open.push(a);
  return a;
}

async function fileArray(dataDir: string): Promise<StorageArray> {
  const a = await StorageArray.open({ backend: 'file', dataDir, logger });
  open.push(a);
  return a;
}

let conn = 0;
function client(over: Partial<ClientInfo> = {}): ClientInfo {
  return { protocol: 'nbd', connectionId: `c${++conn}`, remoteAddress: '127.0.0.1:5000', readOnly: false, ...over };
}

async function arrayError(p: Promise<unknown> | (() => unknown)): Promise<ArrayError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ArrayError);
  return err as ArrayError;
}

describe('StorageArray (memory backend)', () => {
  it('creates, lists, shows, resizes and deletes volumes', async () => {
    const a = await memoryArray();
    const v = await a.createVolume({ name: 'vol2', sizeBytes: 64 * MiB, description: 'second' });
    expect(v).toMatchObject({
      name: 'vol2',
      sizeBytes: 64 * MiB,
      blockSize: 512,
      provisioning: 'thin',
      readOnly: false,
      description: 'second',
      allocatedBytes: 0,
    });
    expect(Date.parse(v.createdAt)).toBeGreaterThan(0);
    await a.createVolume({ name: 'vol1', sizeBytes: 8 * MiB, blockSize: 4096, provisioning: 'thick', readOnly: true });
    expect(a.listVolumes().map((x) => x.name)).toEqual(['vol1', 'vol2']);
    expect(a.getVolume('vol1')).toMatchObject({ blockSize: 4096, provisioning: 'thick', readOnly: true, allocatedBytes: 8 * MiB });
    expect(a.listExports()).toEqual([
      { name: 'vol1', description: '' },
      { name: 'vol2', description: 'second' },
    ]);
    expect(a.describeExport('vol2')).toEqual({ name: 'vol2', description: 'second', size: 64 * MiB, blockSize: 512, readOnly: false, thin: true });
    expect(a.describeExport('nope')).toBeUndefined();

    const grown = await a.resizeVolume('vol2', 128 * MiB);
    expect(grown.sizeBytes).toBe(128 * MiB);
    expect(grown.uuid).toBe(v.uuid);
    expect(a.describeExport('vol2')!.size).toBe(128 * MiB);
    expect((await a.resizeVolume('vol2', 128 * MiB)).sizeBytes).toBe(128 * MiB); // same size: no-op

    await a.deleteVolume('vol2');
    expect(a.listVolumes().map((x) => x.name)).toEqual(['vol1']);
    expect(a.openExport('vol2', client())).toBeUndefined();
    // the name is free again, with a new identity
    const again = await a.createVolume({ name: 'vol2', sizeBytes: MiB });
    expect(again.uuid).not.toBe(v.uuid);
  });

  it('validates requests with messages that name the fix', async () => {
    const a = await memoryArray();
    let e = await arrayError(a.createVolume({ name: 'bad name', sizeBytes: MiB }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/invalid volume name "bad name": use 1 to 63 letters/);
    e = await arrayError(a.createVolume({ name: '-x', sizeBytes: MiB }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: 1000 }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toBe('invalid size 1000 bytes for volume v: not a multiple of the 512-byte block size; the nearest valid sizes are 512 or 1024 bytes');
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: 100, blockSize: 4096 }));
    expect(e.message).toMatch(/nearest valid sizes are 4096 bytes$/);
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: 0 }));
    expect(e.message).toMatch(/positive whole number of bytes/);
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: 1.5 }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: MiB, blockSize: 1024 as 512 }));
    expect(e.message).toBe('invalid block size 1024 for volume v: use 512 or 4096');
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: MiB, provisioning: 'fat' as 'thin' }));
    expect(e.message).toMatch(/use thin or thick/);

    await a.createVolume({ name: 'v', sizeBytes: MiB });
    e = await arrayError(a.createVolume({ name: 'v', sizeBytes: MiB }));
    expect(e.code).toBe('ALREADY_EXISTS');
    expect(e.message).toMatch(/^volume v already exists \(uuid [0-9a-f-]{36}\); choose another name, or delete it first$/);

    e = await arrayError(() => a.getVolume('ghost'));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toBe('no volume named "ghost"; list volumes with "arraylab volume list"');
    expect((await arrayError(a.resizeVolume('ghost', MiB))).code).toBe('NOT_FOUND');
    expect((await arrayError(a.deleteVolume('ghost'))).code).toBe('NOT_FOUND');

    e = await arrayError(a.resizeVolume('v', MiB / 2));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toBe('cannot shrink volume v from 1 MiB to 512 KiB: shrinking loses data; create a new volume and copy');
    e = await arrayError(a.resizeVolume('v', MiB + 1));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/nearest valid sizes are 1048576 or 1049088 bytes/);
  });

  it('creates concurrently without duplicate names', async () => {
    const a = await memoryArray();
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => a.createVolume({ name: 'dup', sizeBytes: MiB })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(a.listVolumes()).toHaveLength(1);
  });

  it('refuses to delete a volume while a client has it open, and allows it after', async () => {
    const a = await memoryArray();
    await a.createVolume({ name: 'vol1', sizeBytes: MiB });
    const h = a.openExport('vol1', client())!;
    expect(h.name).toBe('vol1');
    let e = await arrayError(a.deleteVolume('vol1'));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toBe('cannot delete volume vol1: it is open by 1 connected client (nbd 127.0.0.1:5000); disconnect it first');
    const h2 = a.openExport('vol1', client({ protocol: 'iscsi', remoteAddress: '10.0.0.2:3260', initiator: 'iqn.2024-01.org.example:host' }))!;
    e = await arrayError(a.deleteVolume('vol1'));
    expect(e.message).toBe(
      'cannot delete volume vol1: it is open by 2 connected clients (nbd 127.0.0.1:5000, iscsi iqn.2024-01.org.example:host at 10.0.0.2:3260); disconnect them first',
    );
    expect(a.listConnections().map((c) => c.client.protocol)).toEqual(['nbd', 'iscsi']);
    h.close();
    h2.close();
    h2.close(); // a second close is harmless
    expect(a.listConnections()).toEqual([]);
    await a.deleteVolume('vol1');
    expect(a.listVolumes()).toEqual([]);
  });

  it('notifies open handles of a resize', async () => {
    const a = await memoryArray();
    await a.createVolume({ name: 'vol1', sizeBytes: MiB });
    const h1 = a.openExport('vol1', client())!;
    const h2 = a.openExport('vol1', client())!;
    const seen: number[] = [];
    h1.onResize((n) => seen.push(n));
    const off = h2.onResize((n) => seen.push(-n));
    h2.onResize(() => {
      throw new Error('a broken listener must not stop the others');
    });
    await a.resizeVolume('vol1', 2 * MiB);
    off();
    await a.resizeVolume('vol1', 3 * MiB);
    expect(seen).toEqual([2 * MiB, -2 * MiB, 3 * MiB]);
    expect(h1.device.size).toBe(3 * MiB);
    // the device grew under the open handle: the new space is writable
    await h1.device.write(3 * MiB - 512, Buffer.alloc(512, 1));
    h1.close();
    h2.close();
  });

  it('shares one device between connections and enforces read-only', async () => {
    const a = await memoryArray();
    await a.createVolume({ name: 'rw', sizeBytes: MiB });
    await a.createVolume({ name: 'ro', sizeBytes: MiB, readOnly: true });
    const w = a.openExport('rw', client())!;
    const r = a.openExport('rw', client({ readOnly: true }))!;
    expect(w.readOnly).toBe(false);
    expect(r.readOnly).toBe(true);
    expect(r.device.readOnly).toBe(true);
    await w.device.write(4096, Buffer.alloc(4096, 0x42));
    await w.device.flush();
    const got = Buffer.alloc(4096);
    await r.device.read(4096, got);
    expect(got.every((b) => b === 0x42)).toBe(true);
    await expect(r.device.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EPERM' });
    await expect(r.device.trim(0, 512)).rejects.toBeInstanceOf(BlockDeviceError);
    expect(a.getVolume('rw').allocatedBytes).toBe(4096);

    const ro = a.openExport('ro', client())!;
    expect(ro.readOnly).toBe(true);
    await expect(ro.device.writeZeroes(0, 512)).rejects.toMatchObject({ code: 'EPERM' });
    expect(a.describeExport('ro')!.readOnly).toBe(true);
    for (const h of [w, r, ro]) h.close();
  });

  it('routes every open handle through the volume layer stack', async () => {
    const a = await memoryArray();
    await a.createVolume({ name: 'vol1', sizeBytes: MiB });
    const h = a.openExport('vol1', client())!;
    const vol = a.volumeObject('vol1');
    const writes: number[] = [];
    const layer = vol.pushLayer(
      (below: BlockDevice): BlockDevice =>
        Object.assign(Object.create(below) as BlockDevice, {
          write: (off: number, data: Buffer) => {
            writes.push(off);
            return below.write(off, data);
          },
        }),
    );
    await h.device.write(512, Buffer.alloc(512, 1)); // opened before the layer, still sees it
    expect(writes).toEqual([512]);
    vol.popLayer(layer);
    await h.device.write(1024, Buffer.alloc(512, 1));
    expect(writes).toEqual([512]);
    h.close();
  });

  it('gives every volume a unique, well-formed, stable identity', async () => {
    const a = await memoryArray();
    const vols = await Promise.all(Array.from({ length: 100 }, (_, i) => a.createVolume({ name: `v${i}`, sizeBytes: MiB })));
    for (const key of ['uuid', 'wwn', 'serial'] as const) expect(new Set(vols.map((v) => v[key])).size).toBe(100);
    for (const v of vols) {
      expect(v.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(v.wwn).toMatch(WWN_PATTERN);
      expect(v.wwn).toHaveLength(32);
      expect(v.wwn[0]).toBe('6'); // NAA IEEE Registered Extended
      expect(v.serial).toMatch(SERIAL_PATTERN);
      expect(identityFromUuid(v.uuid)).toEqual({ uuid: v.uuid, wwn: v.wwn, serial: v.serial });
      expect(a.getVolume(v.name)).toMatchObject({ uuid: v.uuid, wwn: v.wwn, serial: v.serial });
    }
    // 100 thin volumes of 10 GiB cost almost nothing
    await Promise.all(vols.map((v) => a.resizeVolume(v.name, 10 * 1024 * MiB)));
    expect(a.listVolumes().reduce((s, v) => s + v.allocatedBytes, 0)).toBe(0);
  });

  it('refuses work after close', async () => {
    const a = await memoryArray();
    await a.createVolume({ name: 'v', sizeBytes: MiB });
    await a.close();
    await a.close();
    expect((await arrayError(a.createVolume({ name: 'w', sizeBytes: MiB }))).message).toMatch(/shutting down/);
    expect(a.openExport('v', client())).toBeUndefined();
  });
});

describe('StorageArray (file backend)', () => {
  it('finds everything again after a restart', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    expect(fs.existsSync(path.join(dir, 'arraylab.db'))).toBe(true);
    const thin = await a.createVolume({ name: 'thin1', sizeBytes: 32 * MiB, description: 'a thin one' });
    const thick = await a.createVolume({ name: 'thick1', sizeBytes: 4 * MiB, blockSize: 4096, provisioning: 'thick', readOnly: true });
    const h = a.openExport('thin1', client())!;
    const data = Buffer.alloc(64 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    await h.device.write(MiB, data);
    await a.resizeVolume('thin1', 48 * MiB);
    await h.device.write(40 * MiB, data);
    h.close();
    const before = a.listVolumes();
    expect(before.find((v) => v.name === 'thin1')!.allocatedBytes).toBe(2 * data.length);
    await a.close();

    const b = await fileArray(dir);
    expect(b.listVolumes()).toEqual(before);
    expect(b.getVolume('thin1')).toMatchObject({ uuid: thin.uuid, wwn: thin.wwn, serial: thin.serial, sizeBytes: 48 * MiB });
    expect(b.getVolume('thick1')).toMatchObject({ uuid: thick.uuid, provisioning: 'thick', readOnly: true, allocatedBytes: 4 * MiB });
    const h2 = b.openExport('thin1', client())!;
    const got = Buffer.alloc(data.length);
    await h2.device.read(40 * MiB, got);
    expect(got.equals(data)).toBe(true);
    const ext = await h2.device.blockStatus(0, 48 * MiB);
    expect(ext[0]).toEqual({ length: MiB, flags: 3 });
    expect(ext[1]).toEqual({ length: data.length, flags: 0 });
    h2.close();

    await b.deleteVolume('thin1');
    expect(fs.readdirSync(path.join(dir, 'volumes')).filter((f) => f.startsWith(thin.uuid))).toEqual([]);
    await b.close();
    const c = await fileArray(dir);
    expect(c.listVolumes().map((v) => v.name)).toEqual(['thick1']);
  });

  it('keeps flushed writes across a restart without a clean close of the volume', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    await a.createVolume({ name: 'v', sizeBytes: 8 * MiB });
    const h = a.openExport('v', client())!;
    await h.device.write(0, Buffer.alloc(4096, 9), { fua: true });
    await h.device.write(8192, Buffer.alloc(4096, 8));
    await a.flushAll();
    // Read what is durable now, as a restarted array would, without closing this one.
    const uuid = a.getVolume('v').uuid;
    const store = await FileBlockStore.open({
      dataPath: path.join(dir, 'volumes', `${uuid}.data`),
      mapPath: path.join(dir, 'volumes', `${uuid}.map`),
      readOnly: true,
    });
    expect(store.allocatedBytes).toBe(8192);
    await store.close();
    h.close();
  });

  it('removes orphan files left by an interrupted create or delete', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    const kept = await a.createVolume({ name: 'kept', sizeBytes: MiB });
    await a.close();
    const volumesDir = path.join(dir, 'volumes');
    // a create that crashed after making its files but before recording the row
    const orphan = '00000000-0000-4000-8000-000000000001';
    const s = await FileBlockStore.create({
      dataPath: path.join(volumesDir, `${orphan}.data`),
      mapPath: path.join(volumesDir, `${orphan}.map`),
      size: MiB,
      blockSize: 512,
    });
    await s.close();
    // a delete that crashed after dropping the row, with only the data file left
    fs.writeFileSync(path.join(volumesDir, '00000000-0000-4000-8000-000000000002.data'), 'x');
    fs.writeFileSync(path.join(volumesDir, 'README'), 'not ours');

    const b = await fileArray(dir);
    expect(b.listVolumes().map((v) => v.name)).toEqual(['kept']);
    expect(fs.readdirSync(volumesDir).sort()).toEqual([`${kept.uuid}.data`, `${kept.uuid}.map`, 'README'].sort());
  });

  it('adopts the size of a resize that grew the store but did not reach the database', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    const v = await a.createVolume({ name: 'v', sizeBytes: MiB });
    await a.close();
    const s = await FileBlockStore.open({ dataPath: path.join(dir, 'volumes', `${v.uuid}.data`), mapPath: path.join(dir, 'volumes', `${v.uuid}.map`) });
    await s.resize(4 * MiB);
    await s.close();
    const b = await fileArray(dir);
    expect(b.getVolume('v').sizeBytes).toBe(4 * MiB);
    await b.close();
    const c = await fileArray(dir);
    expect(c.getVolume('v').sizeBytes).toBe(4 * MiB);
  });

  it('a database write that fails (SQLITE_FULL) leaves delete, create, rename and set undone, RESOURCE_EXHAUSTED', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    await a.createVolume({ name: 'v', sizeBytes: MiB });
    await a.createVolume({ name: 'w', sizeBytes: MiB });
    const db = (a as unknown as { db: MetadataStore }).db;
    const diskFullOnce = (method: 'deleteVolume' | 'insertVolume' | 'renameVolume' | 'setVolumeAllocLimit') =>
      vi.spyOn(db, method).mockImplementationOnce(() => {
        throw new Database.SqliteError('database or disk is full', 'SQLITE_FULL');
      });
    const full = (what: string) => `cannot ${what}: the array's data directory ${dir} is full (SQLITE_FULL); free space there and retry`;
    const before = a.getVolume('v');
    const files = fs.readdirSync(path.join(dir, 'volumes')).sort();

    diskFullOnce('deleteVolume');
    expect(await arrayError(a.deleteVolume('v'))).toMatchObject({ code: 'RESOURCE_EXHAUSTED', message: full('delete volume v') });
    diskFullOnce('insertVolume');
    expect(await arrayError(a.createVolume({ name: 'x', sizeBytes: MiB }))).toMatchObject({ code: 'RESOURCE_EXHAUSTED', message: full('create volume x') });
    diskFullOnce('renameVolume');
    expect(await arrayError(a.renameVolume('v', 'v2', { newIdentity: true }))).toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: full('rename volume v to v2'),
    });
    diskFullOnce('setVolumeAllocLimit');
    expect(await arrayError(a.setVolumeAllocLimit('v', 4096))).toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      message: full('set the allocation limit of volume v'),
    });

    // Nothing of them happened: v is whole (listed, usable, in the copy engine), x left no files.
    expect(a.listVolumes().map((v) => v.name)).toEqual(['v', 'w']);
    expect(a.getVolume('v')).toEqual(before);
    expect(fs.readdirSync(path.join(dir, 'volumes')).sort()).toEqual(files);
    const h = a.openExport('v', client())!;
    await h.device.write(0, Buffer.alloc(8192, 7)); // no allocation limit of 4096 bytes
    h.close();
    const opc = await a.startCopy({ type: 'opc', source: 'v', destination: 'w' });
    await a.cancelCopy(opc.id);
    await a.close();
    const b = await fileArray(dir);
    expect(b.listVolumes().map((v) => v.name)).toEqual(['v', 'w']);
    await b.deleteVolume('v');
    expect(b.listVolumes().map((v) => v.name)).toEqual(['w']);
  });

  it('reports a volume whose files are missing instead of hiding it', async () => {
    const dir = freshDir();
    const a = await fileArray(dir);
    const v = await a.createVolume({ name: 'v', sizeBytes: MiB });
    await a.close();
    fs.rmSync(path.join(dir, 'volumes', `${v.uuid}.map`));
    const e = await arrayError(StorageArray.open({ backend: 'file', dataDir: dir, logger }));
    expect(e.code).toBe('INTERNAL');
    expect(e.message).toMatch(/cannot open volume v \(uuid .*restore .* from a backup/);
  });

  it('refuses a second array on the same data directory', async () => {
    const dir = freshDir();
    await fileArray(dir);
    const e = await arrayError(StorageArray.open({ backend: 'file', dataDir: dir, logger }));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(/is in use by another arraylab process/);
  });

  it('needs a data directory, and records the schema version', async () => {
    const e = await arrayError(StorageArray.open({ backend: 'file', logger }));
    expect(e.message).toMatch(/needs a data directory/);
    const dir = freshDir();
    const a = await fileArray(dir);
    await a.close();
    const db = new MetadataStore(path.join(dir, 'arraylab.db'));
    expect(db.schemaVersion).toBe(SCHEMA_VERSION);
    db.close();
  });
});
