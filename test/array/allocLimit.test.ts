/**
 * Allocation limits of thin volumes through StorageArray: set at create and later, refused
 * for thick volumes and bad sizes, enforced on clients' writes with a message naming the
 * volume and the fix, kept across a restart (migration 3), and in the database schema.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BlockDeviceError, type BlockDevice } from '../../emulator/block/BlockDevice.js';
import { MetadataStore, SCHEMA_VERSION } from '../../emulator/array/MetadataStore.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';

const logger = pino({ level: 'silent' });
const KiB = 1024;
const MiB = 1024 * KiB;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-alloclimit-array-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});
let dirs = 0;
const freshDir = () => path.join(tmp, `data${++dirs}`);

async function openArray(backend: 'file' | 'memory', dataDir?: string): Promise<StorageArray> {
  const a = await StorageArray.open({ backend, ...(dataDir ? { dataDir } : {}), logger });
  open.push(a);
  return a;
}

function device(a: StorageArray, name: string): { device: BlockDevice; close: () => void } {
  const h = a.openExport(name, { protocol: 'nbd', connectionId: `c-${name}-${Math.random()}`, remoteAddress: '127.0.0.1:1', readOnly: false })!;
  return { device: h.device, close: () => h.close() };
}

async function failure<E>(p: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
  return err as E;
}

describe.each(['memory', 'file'] as const)('StorageArray allocation limit (%s backend)', (backend) => {
  it('is set at create, shown, enforced on writes with the volume named, and changed or removed later', async () => {
    const a = await openArray(backend, backend === 'file' ? freshDir() : undefined);
    const v = await a.createVolume({ name: 'snap1', sizeBytes: 64 * MiB, allocLimitBytes: MiB });
    expect(v).toMatchObject({ name: 'snap1', provisioning: 'thin', allocLimitBytes: MiB, allocatedBytes: 0 });
    expect((await a.createVolume({ name: 'plain', sizeBytes: MiB })).allocLimitBytes).toBeNull();
    expect(a.listVolumes().map((x) => [x.name, x.allocLimitBytes])).toEqual([
      ['plain', null],
      ['snap1', MiB],
    ]);

    const d = device(a, 'snap1');
    await d.device.write(0, Buffer.alloc(MiB, 0x11));
    const err = await failure(d.device.write(32 * MiB, Buffer.alloc(64 * KiB, 0x22)), BlockDeviceError);
    expect(err.code).toBe('ENOSPC');
    expect(err.message).toBe(
      "volume snap1 has reached its allocation limit of 1 MiB (1 MiB allocated, the write needs 64 KiB more); raise it with 'arraylab volume set snap1 --alloc-limit SIZE', trim data, or use a larger volume",
    );
    await d.device.write(0, Buffer.alloc(64 * KiB, 0x33)); // overwrite: fine
    expect(a.getVolume('snap1').allocatedBytes).toBe(MiB);

    // Raise it: the write goes through. Lower it below the allocation: new blocks fail.
    expect((await a.setVolumeAllocLimit('snap1', 2 * MiB)).allocLimitBytes).toBe(2 * MiB);
    await d.device.write(32 * MiB, Buffer.alloc(64 * KiB, 0x22));
    await a.setVolumeAllocLimit('snap1', 512 * KiB);
    expect((await failure(d.device.write(40 * MiB, Buffer.alloc(512)), BlockDeviceError)).code).toBe('ENOSPC');
    await d.device.trim(0, MiB); // frees: 64 KiB left allocated
    await d.device.write(40 * MiB, Buffer.alloc(512, 1));
    // Remove it.
    expect((await a.setVolumeAllocLimit('snap1', null)).allocLimitBytes).toBeNull();
    await d.device.write(0, Buffer.alloc(8 * MiB, 0x44));
    d.close();
  });

  it('refuses a limit on a thick volume, above the size, not a block multiple, or not positive', async () => {
    const a = await openArray(backend, backend === 'file' ? freshDir() : undefined);
    const thick = await failure(a.createVolume({ name: 't', sizeBytes: MiB, provisioning: 'thick', allocLimitBytes: 512 * KiB }), ArrayError);
    expect(thick.code).toBe('INVALID_ARGUMENT');
    expect(thick.message).toBe('volume t is thick: all its space is allocated at creation, so it cannot have an allocation limit; use a thin volume');
    const big = await failure(a.createVolume({ name: 'b', sizeBytes: MiB, allocLimitBytes: 2 * MiB }), ArrayError);
    expect(big.message).toBe('allocation limit 2 MiB of volume b is larger than its size (1 MiB); give at most 1048576 bytes, or none for no limit');
    const odd = await failure(a.createVolume({ name: 'o', sizeBytes: MiB, blockSize: 4096, allocLimitBytes: 5000 }), ArrayError);
    expect(odd.message).toBe(
      'invalid allocation limit 5000 bytes for volume o: not a multiple of the 4096-byte block size; the nearest valid limits are 4096 or 8192 bytes',
    );
    const zero = await failure(a.createVolume({ name: 'z', sizeBytes: MiB, allocLimitBytes: 0 }), ArrayError);
    expect(zero.message).toMatch(/^invalid allocation limit 0 for volume z: give a positive size/);
    expect(a.listVolumes()).toEqual([]);

    await a.createVolume({ name: 't', sizeBytes: MiB, provisioning: 'thick' });
    expect((await failure(a.setVolumeAllocLimit('t', 512 * KiB), ArrayError)).code).toBe('INVALID_ARGUMENT');
    expect((await failure(a.setVolumeAllocLimit('nope', 512 * KiB), ArrayError)).code).toBe('NOT_FOUND');
    await a.createVolume({ name: 'v', sizeBytes: MiB });
    expect((await failure(a.setVolumeAllocLimit('v', MiB + 512), ArrayError)).code).toBe('INVALID_ARGUMENT');
    expect(a.getVolume('v').allocLimitBytes).toBeNull();
    // Growing the volume keeps the limit.
    await a.setVolumeAllocLimit('v', MiB);
    expect(await a.resizeVolume('v', 4 * MiB)).toMatchObject({ sizeBytes: 4 * MiB, allocLimitBytes: MiB });
  });
});

describe('allocation limit persistence', () => {
  it('survives a restart: the limit is back and enforced', async () => {
    const dir = freshDir();
    let a = await openArray('file', dir);
    await a.createVolume({ name: 'snap1', sizeBytes: 16 * MiB, allocLimitBytes: MiB });
    await a.createVolume({ name: 'snap2', sizeBytes: 16 * MiB });
    await a.setVolumeAllocLimit('snap2', 2 * MiB);
    const d = device(a, 'snap1');
    await d.device.write(0, Buffer.alloc(MiB, 0x11));
    await d.device.flush();
    d.close();
    await a.close();

    a = await openArray('file', dir);
    expect(a.getVolume('snap1')).toMatchObject({ allocLimitBytes: MiB, allocatedBytes: MiB });
    expect(a.getVolume('snap2').allocLimitBytes).toBe(2 * MiB);
    const d2 = device(a, 'snap1');
    expect((await failure(d2.device.write(8 * MiB, Buffer.alloc(512)), BlockDeviceError)).code).toBe('ENOSPC');
    d2.close();
    await a.setVolumeAllocLimit('snap2', null);
    await a.close();
    a = await openArray('file', dir);
    expect(a.getVolume('snap2').allocLimitBytes).toBeNull();
  });

  it('migration 3 adds the column to a version-2 database; existing volumes have no limit', () => {
    const file = path.join(`${freshDir()}.db`);
    const raw = new Database(file);
    // The schema as migrations 1 and 2 left it.
    raw.exec(`
      CREATE TABLE schema_version (version INTEGER NOT NULL);
      INSERT INTO schema_version (version) VALUES (2);
      CREATE TABLE volumes (
        uuid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, wwn TEXT NOT NULL UNIQUE, serial TEXT NOT NULL UNIQUE,
        size_bytes INTEGER NOT NULL CHECK (size_bytes > 0 AND size_bytes % block_size = 0),
        block_size INTEGER NOT NULL CHECK (block_size IN (512, 4096)),
        provisioning TEXT NOT NULL CHECK (provisioning IN ('thin', 'thick')),
        read_only INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1)),
        description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE copy_sessions (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, record TEXT NOT NULL) STRICT;
      CREATE TABLE copy_bitmaps (
        session_id TEXT NOT NULL REFERENCES copy_sessions (id) ON DELETE CASCADE, bitmap TEXT NOT NULL,
        chunk_index INTEGER NOT NULL CHECK (chunk_index >= 0), bits BLOB NOT NULL,
        PRIMARY KEY (session_id, bitmap, chunk_index)
      ) STRICT, WITHOUT ROWID;
      INSERT INTO volumes VALUES ('00000000-0000-4000-8000-000000000001', 'old', '6a21ab0' || '0000000000000000000000001', 'ALB000000000001', 1048576, 512, 'thin', 0, '', '2025-01-01T00:00:00.000Z');
      INSERT INTO volumes VALUES ('00000000-0000-4000-8000-000000000002', 'thick', '6a21ab0' || '0000000000000000000000002', 'ALB000000000002', 1048576, 512, 'thick', 0, '', '2025-01-01T00:00:00.000Z');
    `);
    raw.close();
    const db = new MetadataStore(file);
    expect(db.schemaVersion).toBe(SCHEMA_VERSION); // migrated from 2 through every later migration
    expect(db.listVolumes().map((v) => [v.name, v.allocLimitBytes])).toEqual([
      ['old', null],
      ['thick', null],
    ]);
    db.setVolumeAllocLimit('00000000-0000-4000-8000-000000000001', 512 * KiB);
    expect(db.listVolumes()[0]!.allocLimitBytes).toBe(512 * KiB);
    // The table's own checks back the array's: thin only, a block multiple, at most the size.
    expect(() => db.setVolumeAllocLimit('00000000-0000-4000-8000-000000000002', 512 * KiB)).toThrow(/CHECK constraint/);
    expect(() => db.setVolumeAllocLimit('00000000-0000-4000-8000-000000000001', 1000)).toThrow(/CHECK constraint/);
    expect(() => db.setVolumeAllocLimit('00000000-0000-4000-8000-000000000001', 2 * MiB)).toThrow(/CHECK constraint/);
    db.close();
  });
});
