/**
 * Control operations are all or nothing (J7): when the journal's commit fails (here: the
 * array database's SQLITE_FULL, injected once), the operation fails with RESOURCE_EXHAUSTED
 * naming itself, the data directory and the fix, and nothing changed: not the engine's
 * sessions, roles and events, not the database, not after the next commit, not after a
 * restart. The same operation works once there is space again.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MetadataStore } from '../../emulator/array/MetadataStore.js';
import { SqliteSessionJournal } from '../../emulator/array/SqliteSessionJournal.js';
import type { Volume } from '../../emulator/array/Volume.js';
import { BlockDeviceError, type BlockDevice } from '../../emulator/block/BlockDevice.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { CopyError, type SessionInfo } from '../../emulator/copy/CopySession.js';
import { client, drain, memVolume, put, readTags } from './support.js';

const VOLUMES = ['a', 'b', 'c', 'd', ...Array.from({ length: 9 }, (_, i) => `s${i + 1}`)];
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

interface Array {
  dir: string;
  db: MetadataStore;
  journal: SqliteSessionJournal;
  engine: CopyEngine;
  vols: Record<string, Volume>;
  dev: Record<string, BlockDevice>;
}

/** An engine on the real SQLite journal (a database in a temp data directory) and memory volumes. */
function array(): Array {
  const dir = mkdtempSync(join(tmpdir(), 'arraylab-commit-'));
  dirs.push(dir);
  const db = new MetadataStore(join(dir, 'arraylab.db'));
  let n = 0;
  const journal = new SqliteSessionJournal(db);
  const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, newId: () => `id${++n}` });
  const vols: Record<string, Volume> = {};
  const dev: Record<string, BlockDevice> = {};
  VOLUMES.forEach((name, i) => {
    vols[name] = memVolume(name, 16, i);
    engine.addVolume(vols[name]!);
    dev[name] = client(vols[name]!);
  });
  return { dir, db, journal, engine, vols, dev };
}

/** What must not change: sessions, roles and host access of every volume, events, the database. */
function state(x: Array) {
  return {
    sessions: x.engine.list().map(({ etaSeconds: _, ...s }) => s),
    roles: VOLUMES.map((v) => {
      const tap = x.engine.tapOf(v);
      let attach = 'ok';
      try {
        tap.checkAttach();
      } catch (err) {
        attach = (err as { code?: string }).code ?? 'error';
      }
      return { v, sources: tap.sources.map((r) => r.sessionId), dest: tap.dest?.sessionId, readOnly: tap.readOnly, attach };
    }),
    events: x.engine.events.length,
    rows: x.db.listCopySessions(),
  };
}

/** The next copy-journal commit fails as on a full disk. */
function diskFullOnce(db: MetadataStore): void {
  vi.spyOn(db, 'commitCopyJournal').mockImplementationOnce(() => {
    throw new Database.SqliteError('database or disk is full', 'SQLITE_FULL');
  });
}

/**
 * Runs op with a failing commit: it must fail RESOURCE_EXHAUSTED as `cannot <what>: ...`
 * and change nothing, even after the next commit and a restart; then it works.
 */
async function allOrNothing(x: Array, what: RegExp, op: () => Promise<unknown>): Promise<void> {
  const before = state(x);
  diskFullOnce(x.db);
  const err = await op().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CopyError);
  expect((err as CopyError).code).toBe('RESOURCE_EXHAUSTED');
  const message = (err as Error).message;
  expect(message).toMatch(what);
  expect(message.endsWith(`: the array's data directory ${x.dir} is full (SQLITE_FULL); free space there and retry`)).toBe(true);
  expect(state(x)).toEqual(before);
  // The next commit does not carry the failed one's records.
  await x.journal.sync();
  expect(x.db.listCopySessions()).toEqual(before.rows);
  // A restart recovers what the engine had before.
  const again = new CopyEngine({ journal: new SqliteSessionJournal(x.db), clock: 'manual' });
  for (const v of Object.values(x.vols)) again.addVolume(fresh(v));
  const recovered = await again.recover();
  expect(recovered.map((s) => [s.id, s.type, s.state, s.source, s.destination]).sort()).toEqual(
    x.engine
      .list()
      .map((s) => [s.id, s.type, s.state, s.source, s.destination])
      .sort(),
  );
  await again.close();
  await op(); // with space again
}

/** The same volume for a second engine (its own layer stack). */
function fresh(v: Volume): Volume {
  return memVolume(v.name, 16, VOLUMES.indexOf(v.name));
}

async function ecPair(x: Array, to: 'equivalent' | 'suspended' | 'split' = 'equivalent'): Promise<string> {
  for (let b = 0; b < 16; b++) await put(x.dev.a!, b, 100 + b);
  const { id } = await x.engine.startEc('a', 'b');
  await drain(x.engine);
  if (to === 'suspended') await x.engine.suspend(id);
  if (to === 'split') await x.engine.split(id);
  return id;
}

describe('a control operation whose commit fails (SQLITE_FULL) changes nothing', () => {
  it('starts of every type', async () => {
    const x = array();
    await allOrNothing(x, /^cannot start OPC a -> b: /, () => x.engine.startOpc('a', 'b', { rate: 0 }));
    await allOrNothing(x, /^cannot start QuickOPC a -> c: /, () => x.engine.startQuickOpc('a', 'c', { rate: 0 }));
    await allOrNothing(x, /^cannot start EC d -> s1: /, () => x.engine.startEc('d', 's1', { rate: 0 }));
    await allOrNothing(x, /^cannot start SnapOPC\+ d -> s2: /, () => x.engine.startSnapOpcPlus('d', 's2'));
    // The failed EC start left no role behind: its destination is usable (the phantom session made it unattachable).
    expect(
      x.engine
        .list()
        .map((s) => s.type)
        .sort(),
    ).toEqual(['ec', 'opc', 'quickopc', 'snapopcplus'].sort());
  });

  it('a 9th SnapOPC+ generation, which drops the oldest in the same commit', async () => {
    const x = array();
    for (let i = 1; i <= 8; i++) await x.engine.startSnapOpcPlus('a', `s${i}`);
    const oldest = x.engine.list()[0]!.id;
    await allOrNothing(x, /^cannot start SnapOPC\+ a -> s9: /, () => x.engine.startSnapOpcPlus('a', 's9'));
    expect(x.engine.list().map((s) => s.id)).not.toContain(oldest);
  });

  it('a QuickOPC restart and a QuickOPC reverse (restore)', async () => {
    const x = array();
    const { id } = await x.engine.startQuickOpc('a', 'b');
    await drain(x.engine);
    await put(x.dev.a!, 3, 7);
    await allOrNothing(x, /^cannot start QuickOPC a -> b: /, () => x.engine.startQuickOpc('a', 'b'));
    await drain(x.engine);
    await allOrNothing(x, new RegExp(`^cannot reverse QuickOPC session ${id} \\(a -> b\\): `), () => x.engine.reverse(id));
    expect(x.engine.get(id)).toMatchObject({ source: 'b', destination: 'a', reversed: true });
  });

  it('EC suspend, resume, split, rejoin, reverse, restore from clone', async () => {
    const x = array();
    const id = await ecPair(x);
    const pair = (verb: string) => new RegExp(`^cannot ${verb} EC session ${id} \\(a -> b\\): `);
    await allOrNothing(x, pair('suspend'), () => x.engine.suspend(id));
    await put(x.dev.a!, 1, 9);
    await allOrNothing(x, pair('resume'), () => x.engine.resume(id));
    await drain(x.engine);
    await allOrNothing(x, pair('split'), () => x.engine.split(id));
    await allOrNothing(x, pair('rejoin'), () => x.engine.rejoin(id));
    await drain(x.engine);
    await x.engine.split(id);
    await allOrNothing(x, pair('reverse'), () => x.engine.reverse(id));
    expect(x.engine.get(id)).toMatchObject({ source: 'b', destination: 'a', state: 'split' });
    await x.engine.reverse(id);
    await allOrNothing(x, pair('restore from clone'), () => x.engine.restoreFromClone(id));
    expect(x.engine.get(id)).toMatchObject({ source: 'b', destination: 'a', state: 'copying', reversed: true });
  });

  it('cancel (EC, and SnapOPC+ with force) and a rate change', async () => {
    const x = array();
    const id = await ecPair(x);
    await allOrNothing(x, new RegExp(`^cannot set the rate of EC session ${id} \\(a -> b\\): `), () => x.engine.setRate(id, 4096));
    expect(x.engine.get(id).rate).toBe(4096);
    await allOrNothing(x, new RegExp(`^cannot cancel EC session ${id} \\(a -> b\\): `), () => x.engine.cancel(id));
    expect(x.engine.list().map((s) => s.id)).not.toContain(id);
    await x.engine.startSnapOpcPlus('c', 's1');
    const newer = await x.engine.startSnapOpcPlus('c', 's2');
    await allOrNothing(x, /^cannot cancel SnapOPC\+ session id\d+ \(c -> s2\): /, () => x.engine.cancel(newer.id, { force: true }));
    expect(x.engine.list().filter((s) => s.source === 'c')).toEqual([]);
  });

  it('consistency group starts and cuts', async () => {
    const x = array();
    await allOrNothing(x, /^cannot start EC a -> b, start EC c -> d at one instant: /, () =>
      x.engine.group([
        { op: 'ec', source: 'a', destination: 'b' },
        { op: 'ec', source: 'c', destination: 'd' },
      ]),
    );
    await drain(x.engine);
    const ids = x.engine.list().map((s) => s.id);
    await allOrNothing(x, /^cannot suspend EC session .* \(a -> b\), suspend EC session .* \(c -> d\) at one instant: /, () =>
      x.engine.group(ids.map((id) => ({ op: 'suspend' as const, id }))),
    );
    expect(x.engine.list().map((s: SessionInfo) => s.state)).toEqual(['suspended', 'suspended']);
  });

  it("a host write whose tracking bit cannot be recorded fails ENOSPC with the engine's reason, and works once there is space", async () => {
    const x = array();
    await x.engine.startQuickOpc('a', 'b');
    await drain(x.engine); // tracking: the first write to a unit records its bit before it is issued (J3)
    diskFullOnce(x.db);
    const err = await put(x.dev.a!, 3, 7).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BlockDeviceError);
    expect(err).toMatchObject({
      code: 'ENOSPC',
      message: `write refused: the array's data directory ${x.dir} is full (SQLITE_FULL); free space there and retry`,
    });
    expect((await readTags(x.dev.a!, 3, 1))[0]).not.toBe(7); // not written: its bit was not durable
    await put(x.dev.a!, 3, 7);
    expect(await readTags(x.dev.a!, 3, 1)).toEqual([7]);
  });

  it('a refusal half way through a group (a bad unit size for its second member) leaves nothing either', async () => {
    const x = array();
    const before = state(x);
    await expect(
      x.engine.group([
        { op: 'ec', source: 'a', destination: 'b' },
        { op: 'opc', source: 'c', destination: 'd', unitSize: 1000 },
      ]),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(state(x)).toEqual(before);
    await x.journal.sync();
    expect(x.db.listCopySessions()).toEqual([]);
  });
});
