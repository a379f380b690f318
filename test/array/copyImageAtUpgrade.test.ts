/**
 * An array database written before copy sessions kept imageAt (their JSON records lack it)
 * still opens: point-in-time sessions read as of their createdAt, an EC pair has none; the
 * next state change journals the field.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { DATABASE_FILE } from '../../emulator/array/MetadataStore.js';
import { StorageArray } from '../../emulator/array/StorageArray.js';

const logger = pino({ level: 'silent' });
const SIZE = 1024 * 1024;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-imageat-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open = (dataDir: string) => StorageArray.open({ backend: 'file', dataDir, logger, copyClock: 'manual' });

describe('copy session records from before imageAt', () => {
  it('load with createdAt for OPC, QuickOPC and SnapOPC+, and none for EC', async () => {
    const dataDir = path.join(tmp, 'data');
    let a = await open(dataDir);
    for (const n of ['a', 'b', 'c', 'd', 'e', 'f', 'snap']) await a.createVolume({ name: n, sizeBytes: SIZE });
    const opc = await a.startCopy({ type: 'opc', source: 'a', destination: 'b', rate: 0 });
    const q = await a.startCopy({ type: 'quickopc', source: 'c', destination: 'd', rate: 0 });
    const g = await a.startCopy({ type: 'snapopcplus', source: 'a', destination: 'snap' });
    const ec = await a.startCopy({ type: 'ec', source: 'e', destination: 'f' });
    while (a.getCopy(ec.id).state === 'copying') await a.copy.stepOne(ec.id, 1000);
    await a.suspendCopy(ec.id);
    await a.close();

    // What the previous version wrote: the same records without imageAt, and older createdAt.
    const db = new Database(path.join(dataDir, DATABASE_FILE));
    const created = '2025-12-24T18:00:00.000Z';
    const rows = db.prepare('SELECT id, record FROM copy_sessions').all() as Array<{ id: string; record: string }>;
    expect(rows).toHaveLength(4);
    for (const r of rows) {
      const { imageAt: _, ...old } = JSON.parse(r.record) as Record<string, unknown>;
      db.prepare('UPDATE copy_sessions SET record = ? WHERE id = ?').run(JSON.stringify({ ...old, createdAt: created }), r.id);
    }
    db.close();

    a = await open(dataDir);
    try {
      expect(a.getCopy(opc.id)).toMatchObject({ state: 'copying', imageAt: created });
      expect(a.getCopy(q.id)).toMatchObject({ state: 'copying', imageAt: created });
      expect(a.getCopy(g.id)).toMatchObject({ state: 'snap', imageAt: created, generationIndex: 1 });
      expect(a.getCopy(ec.id).state).toBe('suspended');
      expect(a.getCopy(ec.id).imageAt).toBeUndefined();
      // A new suspend instant is kept from now on.
      await a.resumeCopy(ec.id);
      while (a.getCopy(ec.id).state === 'copying') await a.copy.stepOne(ec.id, 1000);
      const s = await a.suspendCopy(ec.id);
      expect(Date.parse(s.imageAt!)).toBeGreaterThan(Date.parse(created));
    } finally {
      await a.close();
    }
  });
});
