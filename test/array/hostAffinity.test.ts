/**
 * Host affinity in the array: the lab default (every initiator sees every volume at its
 * default LUN), hosts with initiators and LUN maps, the refusals, what volume deletes and
 * renames do to the maps, change notifications, and persistence across a restart.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { canonicalIscsiName, checkIscsiName, IscsiNameError } from '../../emulator/array/iscsiNames.js';
import { MetadataStore, SCHEMA_VERSION } from '../../emulator/array/MetadataStore.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';
import { ArrayError } from '../../emulator/array/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const WEB1 = 'iqn.1994-05.com.redhat:web1';
const WEB2 = 'iqn.1994-05.com.redhat:web2';
const DB1 = 'iqn.2026-01.lab.example:db1';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-hosts-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});
let dirs = 0;
const freshDir = () => path.join(tmp, `data${++dirs}`);

async function openArray(opts: { dataDir?: string; requireHostAffinity?: boolean } = {}): Promise<StorageArray> {
  const a = await StorageArray.open(
    opts.dataDir
      ? { backend: 'file', dataDir: opts.dataDir, logger, requireHostAffinity: opts.requireHostAffinity ?? false }
      : { backend: 'memory', logger, requireHostAffinity: opts.requireHostAffinity ?? false },
  );
  open.push(a);
  return a;
}

async function withVolumes(a: StorageArray, ...names: string[]): Promise<void> {
  for (const name of names) await a.createVolume({ name, sizeBytes: MiB });
}

function refusal(fn: () => unknown): ArrayError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ArrayError) return err;
    throw err;
  }
  throw new Error('expected an ArrayError, but the call succeeded');
}

describe('iSCSI names', () => {
  it('accepts the iqn., eui. and naa. forms and folds them to lower case', () => {
    expect(checkIscsiName('iqn.1994-05.com.redhat:web1')).toBe('iqn.1994-05.com.redhat:web1');
    expect(checkIscsiName('IQN.1994-05.COM.RedHat:Web1')).toBe('iqn.1994-05.com.redhat:web1');
    expect(checkIscsiName('iqn.2026-11.lab.arraylab')).toBe('iqn.2026-11.lab.arraylab');
    expect(checkIscsiName('iqn.1986-03.com.sun:01:0003ba2d0f67.46e47e5d')).toBe('iqn.1986-03.com.sun:01:0003ba2d0f67.46e47e5d');
    expect(checkIscsiName('eui.02004567A425678D')).toBe('eui.02004567a425678d');
    expect(checkIscsiName('naa.52004567BA64678D')).toBe('naa.52004567ba64678d');
    expect(checkIscsiName('naa.6a21ab000000000000000000000000ff')).toBe('naa.6a21ab000000000000000000000000ff');
  });

  it('refuses everything else, saying what is wrong and which forms to use', () => {
    const reason = (name: unknown) => {
      try {
        checkIscsiName(name);
      } catch (err) {
        expect(err).toBeInstanceOf(IscsiNameError);
        return (err as Error).message;
      }
      throw new Error(`${String(name)} was accepted`);
    };
    expect(reason('web1')).toBe(
      '"web1" is not an iSCSI name; use iqn.YYYY-MM.reversed.domain[:name] (e.g. iqn.1994-05.com.redhat:web1), eui. and 16 hex digits, or naa. and 16 or 32 hex digits',
    );
    expect(reason('iqn.com.redhat:web1')).toMatch(/^"iqn.com.redhat:web1" is not an iqn. name: it needs a date YYYY-MM after "iqn."; use iqn\./);
    expect(reason('iqn.1994-13.com.redhat:x')).toMatch(/month 13 is not 01 to 12; use/);
    expect(reason('iqn.1994-05.com.redhat:web_1')).toMatch(/only letters, digits, '.', '-' and ':' may follow the date/);
    expect(reason('iqn.1994-05..com:x')).toMatch(/is not an iqn. name/);
    expect(reason('iqn.1994-05.com.redhat:')).toMatch(/is not an iqn. name/);
    expect(reason('eui.0200')).toMatch(/needs exactly 16 hex digits after "eui."/);
    expect(reason('naa.52004567BA64678D00')).toMatch(/needs exactly 16 or 32 hex digits after "naa."/);
    expect(reason('')).toMatch(/^"" is not an iSCSI name/);
    expect(reason(42)).toMatch(/^42 is not an iSCSI name/);
    expect(reason(`iqn.2026-01.lab.x:${'a'.repeat(220)}`)).toMatch(/longer than the 223 bytes an iSCSI name may have; use a shorter name$/);
    expect(canonicalIscsiName('iqn.2026-01.lab.x:ok')).toBe('iqn.2026-01.lab.x:ok');
    expect(canonicalIscsiName('not a name')).toBeUndefined();
  });
});

describe('host affinity off (the lab default)', () => {
  it('shows every volume to every initiator, numbered in creation order', async () => {
    const a = await openArray();
    await withVolumes(a, 'zeta', 'alpha', 'mid');
    expect(a.hosts.hostAffinity).toBe(false);
    const all = [
      { lun: 0, exportName: 'zeta' },
      { lun: 1, exportName: 'alpha' },
      { lun: 2, exportName: 'mid' },
    ];
    expect(a.hosts.lunsFor(WEB1)).toEqual(all);
    expect(a.hosts.lunsFor('iqn.2026-01.anyone.at.all:x')).toEqual(all);
    expect(a.hosts.defaultLuns().map((l) => [l.lun, l.volume])).toEqual([
      [0, 'zeta'],
      [1, 'alpha'],
      [2, 'mid'],
    ]);
  });

  it('keeps the other volumes at their LUNs when one is deleted, and gives the freed number to the next new volume', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1', 'v2');
    await a.deleteVolume('v1');
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'v0' },
      { lun: 2, exportName: 'v2' },
    ]);
    await withVolumes(a, 'v3', 'v4');
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'v0' },
      { lun: 1, exportName: 'v3' },
      { lun: 2, exportName: 'v2' },
      { lun: 3, exportName: 'v4' },
    ]);
  });

  it('follows a rename: same LUN, new export name', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1');
    await a.renameVolume('v1', 'renamed', { newIdentity: true });
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'v0' },
      { lun: 1, exportName: 'renamed' },
    ]);
  });

  it('with requireHostAffinity, shows nothing to anyone until hosts are defined', async () => {
    const a = await openArray({ requireHostAffinity: true });
    await withVolumes(a, 'v0');
    expect(a.hosts.hostAffinity).toBe(true);
    expect(a.hosts.lunsFor(WEB1)).toEqual([]);
    a.hosts.createHost('web', [WEB1]);
    a.hosts.mapVolume('web', 'v0', 7);
    expect(a.hosts.lunsFor(WEB1)).toEqual([{ lun: 7, exportName: 'v0' }]);
  });
});

describe('hosts', () => {
  it('once a host exists, its initiators see exactly its LUN map and an unknown initiator sees none', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1', 'v2');
    const created = a.hosts.createHost('web', [WEB1, 'IQN.1994-05.COM.REDHAT:WEB2']);
    expect(created).toEqual({ name: 'web', initiators: [WEB1, WEB2], luns: [], createdAt: expect.any(String), credentials: {} });
    expect(a.hosts.hostAffinity).toBe(true);
    expect(a.hosts.lunsFor(WEB1)).toEqual([]);
    expect(a.hosts.mapVolume('web', 'v2', 5)).toMatchObject({ lun: 5 });
    expect(a.hosts.mapVolume('web', 'v0').lun).toBe(0); // lowest free
    expect(a.hosts.mapVolume('web', 'v1').lun).toBe(1);
    const seen = [
      { lun: 0, exportName: 'v0' },
      { lun: 1, exportName: 'v1' },
      { lun: 5, exportName: 'v2' },
    ];
    expect(a.hosts.lunsFor(WEB1)).toEqual(seen);
    expect(a.hosts.lunsFor('iqn.1994-05.com.redhat:WEB2')).toEqual(seen); // names compare without case
    expect(a.hosts.lunsFor(DB1)).toEqual([]);
    expect(a.hosts.lunsFor('garbage')).toEqual([]);
    expect(a.hosts.hostOf(WEB2)).toBe('web');
    expect(a.hosts.hostOf(DB1)).toBeUndefined();

    a.hosts.createHost('db', [DB1]);
    a.hosts.mapVolume('db', 'v1', 0); // a volume may be in several hosts, at its own LUN in each
    expect(a.hosts.lunsFor(DB1)).toEqual([{ lun: 0, exportName: 'v1' }]);
    expect(a.hosts.listHosts().map((h) => [h.name, h.luns.map((l) => `${l.lun}:${l.volume}`)])).toEqual([
      ['db', ['0:v1']],
      ['web', ['0:v0', '1:v1', '5:v2']],
    ]);

    expect(a.hosts.unmapVolume('web', 'v1')).toMatchObject({ lun: 1 });
    expect(a.hosts.lunsFor(WEB1).map((l) => l.lun)).toEqual([0, 5]);
  });

  it('refuses bad hosts, taken initiators, taken LUNs and double maps with errors that name the fix', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1');
    a.hosts.createHost('web', [WEB1]);
    a.hosts.mapVolume('web', 'v0', 3);

    let e = refusal(() => a.hosts.createHost('web', [WEB2]));
    expect(e.code).toBe('ALREADY_EXISTS');
    expect(e.message).toBe('host web already exists; choose another name, or add an initiator to it with "arraylab host add-initiator web IQN"');

    e = refusal(() => a.hosts.createHost('other', ['IQN.1994-05.com.redhat:web1']));
    expect(e.code).toBe('ALREADY_EXISTS');
    expect(e.message).toBe(
      `initiator ${WEB1} already belongs to host web; an initiator is in one host only: remove it there first ("arraylab host remove-initiator web ${WEB1}")`,
    );
    e = refusal(() => a.hosts.createHost('other', [WEB2, WEB2.toUpperCase()]));
    expect(e).toMatchObject({ code: 'INVALID_ARGUMENT', message: `host other: initiator ${WEB2} is given twice; give each initiator once` });
    e = refusal(() => a.hosts.createHost('other', ['web2']));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/^initiator of host other: "web2" is not an iSCSI name; use iqn\./);
    e = refusal(() => a.hosts.createHost('other', []));
    expect(e).toMatchObject({ code: 'INVALID_ARGUMENT', message: 'host other needs at least one initiator name; give --initiator IQN' });
    e = refusal(() => a.hosts.createHost('bad name', [WEB2]));
    expect(e).toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^invalid host name "bad name": use 1 to 63 letters/) });
    expect(a.hosts.listHosts().map((h) => h.name)).toEqual(['web']); // nothing half-made

    e = refusal(() => a.hosts.mapVolume('web', 'v1', 3));
    expect(e).toMatchObject({
      code: 'ALREADY_EXISTS',
      message: 'LUN 3 of host web already maps volume v0; choose another --lun, or leave --lun out for the lowest free one',
    });
    e = refusal(() => a.hosts.mapVolume('web', 'v0', 4));
    expect(e).toMatchObject({
      code: 'ALREADY_EXISTS',
      message: 'volume v0 is already mapped to host web at LUN 3; a volume appears once per host: unmap it first ("arraylab host unmap web v0") to move it',
    });
    for (const lun of [-1, 16384, 1.5, Number.NaN]) {
      e = refusal(() => a.hosts.mapVolume('web', 'v1', lun));
      expect(e.code).toBe('INVALID_ARGUMENT');
      expect(e.message).toMatch(/^LUN .* is out of range; use a whole number from 0 to 16383, or leave it out for the lowest free one$/);
    }
    expect(a.hosts.mapVolume('web', 'v1', 16383).lun).toBe(16383);
    e = refusal(() => a.hosts.mapVolume('nohost', 'v1'));
    expect(e).toMatchObject({ code: 'NOT_FOUND', message: 'no host named "nohost"; list hosts with "arraylab host list"' });
    e = refusal(() => a.hosts.mapVolume('web', 'novol'));
    expect(e).toMatchObject({ code: 'NOT_FOUND', message: 'no volume named "novol"; list volumes with "arraylab volume list"' });
    a.hosts.unmapVolume('web', 'v1');
    e = refusal(() => a.hosts.unmapVolume('web', 'v1'));
    expect(e).toMatchObject({ code: 'NOT_FOUND', message: 'volume v1 is not mapped to host web; see its LUNs with "arraylab host show web"' });
  });

  it('removes a host with LUNs only with force, and then falls back to the lab default', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1');
    a.hosts.createHost('web', [WEB1]);
    a.hosts.mapVolume('web', 'v1');
    const e = refusal(() => a.hosts.deleteHost('web'));
    expect(e).toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: 'cannot remove host web: it has 1 LUN mapped (LUN 0 v1); unmap it first with "arraylab host unmap web VOLUME", or pass --force',
    });
    expect(a.hosts.lunsFor(WEB1)).toEqual([{ lun: 0, exportName: 'v1' }]);
    expect(a.hosts.deleteHost('web', { force: true })).toEqual({ unmapped: [{ lun: 0, volume: 'v1', volumeUuid: a.getVolume('v1').uuid }] });
    expect(a.hosts.listHosts()).toEqual([]);
    expect(a.hosts.hostAffinity).toBe(false);
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'v0' },
      { lun: 1, exportName: 'v1' },
    ]);
    a.hosts.createHost('empty', [WEB2]);
    expect(a.hosts.deleteHost('empty')).toEqual({ unmapped: [] }); // no LUNs: no force needed
  });

  it('adds and removes initiators, but not the last one', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0');
    a.hosts.createHost('web', [WEB1]);
    a.hosts.createHost('db', [DB1]);
    a.hosts.mapVolume('web', 'v0');
    expect(a.hosts.addInitiator('web', WEB2).initiators).toEqual([WEB1, WEB2]);
    expect(a.hosts.lunsFor(WEB2)).toEqual([{ lun: 0, exportName: 'v0' }]);
    expect(refusal(() => a.hosts.addInitiator('web', DB1)).message).toMatch(/^initiator iqn.2026-01.lab.example:db1 already belongs to host db; /);
    expect(a.hosts.removeInitiator('web', WEB1.toUpperCase()).initiators).toEqual([WEB2]);
    expect(a.hosts.lunsFor(WEB1)).toEqual([]);
    expect(refusal(() => a.hosts.removeInitiator('web', WEB2))).toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: `cannot remove ${WEB2} from host web: it is the host's only initiator; add another first, or remove the host with "arraylab host remove web"`,
    });
    expect(refusal(() => a.hosts.removeInitiator('web', WEB1))).toMatchObject({
      code: 'NOT_FOUND',
      message: `host web has no initiator "${WEB1}"; its initiators are ${WEB2}`,
    });
  });

  it('drops a deleted volume from every LUN map and follows renames by UUID', async () => {
    const a = await openArray();
    await withVolumes(a, 'v0', 'v1');
    a.hosts.createHost('web', [WEB1]);
    a.hosts.createHost('db', [DB1]);
    a.hosts.mapVolume('web', 'v0', 10);
    a.hosts.mapVolume('web', 'v1', 11);
    a.hosts.mapVolume('db', 'v1', 0);
    await a.renameVolume('v1', 'shared');
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 10, exportName: 'v0' },
      { lun: 11, exportName: 'shared' },
    ]);
    expect(a.hosts.getHost('db').luns).toEqual([{ lun: 0, volume: 'shared', volumeUuid: a.getVolume('shared').uuid }]);
    await a.deleteVolume('shared');
    expect(a.hosts.lunsFor(WEB1)).toEqual([{ lun: 10, exportName: 'v0' }]);
    expect(a.hosts.getHost('db').luns).toEqual([]);
    // The number is free again in both hosts.
    await withVolumes(a, 'v2');
    expect(a.hosts.mapVolume('web', 'v2', 11).lun).toBe(11);
    expect(a.hosts.deleteHost('db')).toEqual({ unmapped: [] });
  });

  it('tells its listeners after every change, including volume creates, renames and deletes', async () => {
    const a = await openArray();
    let calls = 0;
    const off = a.hosts.onChange(() => calls++);
    a.hosts.onChange(() => {
      throw new Error('a broken listener does not stop the others');
    });
    await withVolumes(a, 'v0', 'v1'); // 2
    a.hosts.createHost('web', [WEB1]); // 3
    a.hosts.addInitiator('web', WEB2); // 4
    a.hosts.removeInitiator('web', WEB2); // 5
    a.hosts.mapVolume('web', 'v0'); // 6
    a.hosts.unmapVolume('web', 'v0'); // 7
    await a.renameVolume('v1', 'v9'); // 8
    await a.deleteVolume('v9'); // 9
    a.hosts.deleteHost('web'); // 10
    expect(calls).toBe(10);
    // Refusals change nothing and tell no one.
    refusal(() => a.hosts.mapVolume('web', 'v0'));
    expect(calls).toBe(10);
    off();
    a.hosts.createHost('again', [WEB1]);
    expect(calls).toBe(10);
  });
});

describe('persistence', () => {
  it('keeps hosts, initiators, LUN maps and default LUNs across a restart', async () => {
    const dataDir = freshDir();
    let a = await openArray({ dataDir });
    await withVolumes(a, 'v0', 'v1', 'v2');
    await a.deleteVolume('v0');
    a.hosts.createHost('web', [WEB1, WEB2]);
    a.hosts.createHost('db', [DB1]);
    a.hosts.mapVolume('web', 'v2', 42);
    a.hosts.mapVolume('web', 'v1');
    a.hosts.mapVolume('db', 'v2');
    const before = a.hosts.listHosts();
    const defaults = a.hosts.defaultLuns();
    const arrayId = a.arrayId;
    expect(arrayId).toMatch(/^[0-9a-f]{12}$/);
    await a.close();

    a = await openArray({ dataDir });
    expect(a.hosts.listHosts()).toEqual(before);
    expect(a.hosts.defaultLuns()).toEqual(defaults);
    expect(defaults.map((l) => [l.lun, l.volume])).toEqual([
      [1, 'v1'],
      [2, 'v2'],
    ]);
    expect(a.hosts.lunsFor(WEB2)).toEqual([
      { lun: 0, exportName: 'v1' },
      { lun: 42, exportName: 'v2' },
    ]);
    expect(a.arrayId).toBe(arrayId);

    // A rename, then a restart: the maps still follow the volume.
    await a.renameVolume('v2', 'data', { newIdentity: true });
    await a.close();
    a = await openArray({ dataDir });
    expect(a.hosts.lunsFor(DB1)).toEqual([{ lun: 0, exportName: 'data' }]);
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'v1' },
      { lun: 42, exportName: 'data' },
    ]);
  });

  it('gives volumes of an older database default LUNs in creation order when it migrates', async () => {
    const dataDir = freshDir();
    let a = await openArray({ dataDir });
    await withVolumes(a, 'first', 'second', 'third');
    await a.close();
    // Make it look like a database from before host affinity: no default LUNs recorded.
    const raw = new Database(path.join(dataDir, 'arraylab.db'));
    raw.exec('DELETE FROM default_luns');
    raw.close();
    a = await openArray({ dataDir });
    expect(a.hosts.lunsFor(WEB1)).toEqual([
      { lun: 0, exportName: 'first' },
      { lun: 1, exportName: 'second' },
      { lun: 2, exportName: 'third' },
    ]);
  });

  it('stores persistent reservations by WWN and drops them with the LU', async () => {
    const dataDir = freshDir();
    let a = await openArray({ dataDir });
    await withVolumes(a, 'v0', 'v1', 'v2');
    const [w0, w1, w2] = ['v0', 'v1', 'v2'].map((n) => a.getVolume(n).wwn) as [string, string, string];
    a.reservations.save(w0, Buffer.from('state of v0'));
    a.reservations.save(w1, Buffer.from('state of v1'));
    a.reservations.save(w2, Buffer.from('old'));
    a.reservations.save(w2, Buffer.from('state of v2'));
    expect(a.reservations.load(w2)).toEqual(Buffer.from('state of v2'));
    expect(a.reservations.load('6a21ab0ffffffffffffffffffffffff0')).toBeUndefined();
    expect(() => a.reservations.save(w0, Buffer.alloc(1024 * 1024 + 1))).toThrow(/more than the 1048576 the array stores/);
    await a.close();

    a = await openArray({ dataDir });
    expect(a.reservations.load(w0)).toEqual(Buffer.from('state of v0'));
    await a.deleteVolume('v0'); // gone with the volume
    expect(a.reservations.load(w0)).toBeUndefined();
    await a.renameVolume('v1', 'v1b'); // same LU: kept
    expect(a.reservations.load(w1)).toEqual(Buffer.from('state of v1'));
    await a.renameVolume('v1b', 'v1c', { newIdentity: true }); // a different LU to hosts: dropped
    expect(a.reservations.load(w1)).toBeUndefined();
    a.reservations.save(w2, undefined);
    expect(a.reservations.load(w2)).toBeUndefined();
  });

  it('migrates a version-3 database to the host affinity schema, keeping its volumes', async () => {
    const file = path.join(`${freshDir()}.db`);
    new MetadataStore(file).close();
    // Take it back to what migration 3 left.
    const raw = new Database(file);
    raw.exec(`
      DROP TRIGGER scsi_reservations_volume_deleted; DROP TRIGGER scsi_reservations_identity_renewed;
      DROP TABLE scsi_reservations; DROP TABLE default_luns; DROP TABLE host_luns; DROP TABLE host_initiators;
      DROP TRIGGER owners_volume_gone; DROP TABLE users; DROP TABLE tenants; DROP TABLE owners; DROP TABLE audit; DROP TABLE host_credentials;
      DROP TABLE hosts; DROP TABLE array_properties; DROP TABLE faults; DROP TABLE remotes; ALTER TABLE volumes DROP COLUMN write_cache;
      UPDATE schema_version SET version = 3;
      INSERT INTO volumes (uuid, name, wwn, serial, size_bytes, block_size, provisioning, created_at)
        VALUES ('00000000-0000-4000-8000-000000000001', 'old', '6a21ab00000000000000000000000001', 'ALB000000000001', 1048576, 512, 'thin', '2025-01-01T00:00:00.000Z');
    `);
    raw.close();
    const db = new MetadataStore(file);
    try {
      expect(db.schemaVersion).toBe(SCHEMA_VERSION); // through 4 (host affinity) and every later migration
      expect(db.listVolumes().map((v) => v.name)).toEqual(['old']);
      expect(db.arrayId).toMatch(/^[0-9a-f]{12}$/);
      const tables = db.sqlite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>;
      expect(tables.map((t) => t.name)).toEqual(
        expect.arrayContaining(['hosts', 'host_initiators', 'host_luns', 'default_luns', 'scsi_reservations', 'array_properties', 'host_credentials']),
      );
      // The schema's own checks back HostAffinity's: LUN range, one volume per host, real volumes only.
      db.sqlite.exec("INSERT INTO hosts (name, created_at) VALUES ('h', 'now')");
      const map = db.sqlite.prepare('INSERT INTO host_luns (host_id, lun, volume_uuid) VALUES (1, ?, ?)');
      expect(() => map.run(16384, '00000000-0000-4000-8000-000000000001')).toThrow(/CHECK constraint/);
      expect(() => map.run(0, '00000000-0000-4000-8000-00000000dead')).toThrow(/FOREIGN KEY constraint/);
      map.run(0, '00000000-0000-4000-8000-000000000001');
      expect(() => map.run(1, '00000000-0000-4000-8000-000000000001')).toThrow(/UNIQUE constraint/);
      db.deleteVolume('00000000-0000-4000-8000-000000000001');
      expect(db.sqlite.prepare('SELECT count(*) AS n FROM host_luns').get()).toEqual({ n: 0 });
    } finally {
      db.close();
    }
  });
});
