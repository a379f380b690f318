/**
 * The instant of each session's destination image (imageAt) and the SnapOPC+ generation
 * numbering the host agent uses (generationIndex: 1 = newest): set at the cut that makes the
 * image, kept across a crash, and derived for journal records written before imageAt existed.
 */
import { describe, expect, it } from 'vitest';
import type { Volume } from '../../emulator/array/Volume.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import type { SessionRecord } from '../../emulator/copy/CopySession.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { client, drain, memVolume, put } from './support.js';

const T0 = Date.parse('2026-03-01T10:00:00.000Z');
const iso = (ms: number) => new Date(ms).toISOString();

/** An engine in manual mode with a clock the test moves (clock.t, in ms). */
function clocked(names: string[], journal = new MemoryJournal()) {
  const clock = { t: T0 };
  let n = 0;
  const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, now: () => clock.t, newId: () => `s${++n}` });
  const vols: Record<string, Volume> = {};
  names.forEach((name, i) => {
    vols[name] = memVolume(name, 64, i);
    engine.addVolume(vols[name]!);
  });
  return { engine, journal, clock, vols };
}

describe('imageAt: the instant the destination holds', () => {
  it('OPC and SnapOPC+: the start instant, not the time it is looked at', async () => {
    const { engine, clock } = clocked(['a', 'b', 'snap']);
    const opc = await engine.startOpc('a', 'b', { rate: 0 });
    expect(opc.imageAt).toBe(iso(T0));
    clock.t += 5000;
    const snap = await engine.startSnapOpcPlus('a', 'snap');
    expect(snap.imageAt).toBe(iso(T0 + 5000));
    clock.t += 60_000;
    expect(engine.get(opc.id).imageAt).toBe(iso(T0));
    expect(engine.get(snap.id).imageAt).toBe(iso(T0 + 5000));
  });

  it('QuickOPC: a restart takes a new instant, and so does a restore (reverse) and the next backup', async () => {
    const { engine, clock, vols } = clocked(['a', 'b']);
    const s = await engine.startQuickOpc('a', 'b');
    await drain(engine);
    expect(engine.get(s.id)).toMatchObject({ state: 'tracking', imageAt: iso(T0) });
    clock.t += 1000;
    await put(client(vols.a!), 3, 7);
    await engine.startQuickOpc('a', 'b');
    expect(engine.get(s.id)).toMatchObject({ state: 'copying', imageAt: iso(T0 + 1000), createdAt: iso(T0) });
    await drain(engine);
    clock.t += 1000;
    expect(await engine.reverse(s.id)).toMatchObject({ source: 'b', destination: 'a', imageAt: iso(T0 + 2000) });
    await drain(engine);
    clock.t += 1000;
    expect(await engine.startQuickOpc('a', 'b')).toMatchObject({ source: 'a', destination: 'b', imageAt: iso(T0 + 3000) });
  });

  it('EC: none while mirroring; the suspend or split instant; a split of a suspended pair keeps the suspend instant', async () => {
    const { engine, clock } = clocked(['a', 'b', 'c', 'd']);
    const s = await engine.startEc('a', 'b');
    expect(s.imageAt).toBeUndefined();
    await drain(engine);
    expect(engine.get(s.id).state).toBe('equivalent');
    expect(engine.get(s.id).imageAt).toBeUndefined();
    clock.t += 1000;
    expect((await engine.suspend(s.id)).imageAt).toBe(iso(T0 + 1000));
    clock.t += 1000;
    expect((await engine.split(s.id)).imageAt).toBe(iso(T0 + 1000));
    clock.t += 1000;
    const resumed = await engine.rejoin(s.id);
    expect(resumed.state).toBe('copying');
    expect(resumed.imageAt).toBeUndefined();
    await drain(engine);
    clock.t += 1000;
    expect((await engine.split(s.id)).imageAt).toBe(iso(T0 + 4000));
    // After a reverse the destination is the original: no image of the new source.
    const r = await engine.reverse(s.id);
    expect(r).toMatchObject({ destination: 'a', reversed: true });
    expect(r.imageAt).toBeUndefined();

    // A group suspend: one instant for every pair.
    const p = await engine.startEc('c', 'd');
    await drain(engine);
    clock.t += 1000;
    const [g] = await engine.group([{ op: 'suspend', id: p.id }]);
    expect(g!.imageAt).toBe(iso(T0 + 5000));
  });

  it('survives a crash and recovery', async () => {
    const { engine, journal, clock } = clocked(['a', 'b', 'c', 'd', 'snap']);
    const q = await engine.startQuickOpc('a', 'b');
    clock.t += 1000;
    const g = await engine.startSnapOpcPlus('a', 'snap');
    const ec = await engine.startEc('c', 'd');
    await drain(engine);
    clock.t += 1000;
    await engine.suspend(ec.id);
    void engine.close();
    const after = clocked(['a', 'b', 'c', 'd', 'snap'], journal.crash());
    after.clock.t = T0 + 99_000;
    await after.engine.recover();
    expect(after.engine.get(q.id).imageAt).toBe(iso(T0));
    expect(after.engine.get(g.id).imageAt).toBe(iso(T0 + 1000));
    expect(after.engine.get(ec.id)).toMatchObject({ state: 'suspended', imageAt: iso(T0 + 2000) });
  });

  it('journal records from before imageAt: createdAt for OPC, QuickOPC and SnapOPC+, none for EC', async () => {
    const journal = new MemoryJournal();
    const created = '2025-12-24T18:00:00.000Z';
    const old = (
      id: string,
      type: SessionRecord['type'],
      state: SessionRecord['state'],
      source: string,
      destination: string,
      extra: Partial<SessionRecord> = {},
    ): SessionRecord => ({
      id,
      type,
      state,
      source,
      destination,
      unitSize: 16384,
      sizeBytes: 64 * 4096,
      rate: 0,
      createdAt: created,
      ...extra,
    });
    // Exactly the fields the previous version journalled (no imageAt).
    journal.putSession(old('o1', 'opc', 'copying', 'a', 'b'));
    journal.putSession(old('q1', 'quickopc', 'copying', 'c', 'd'));
    journal.putSession(old('g1', 'snapopcplus', 'snap', 'a', 'snap', { generation: 4 }));
    journal.putSession(old('e1', 'ec', 'suspended', 'e', 'f'));
    await journal.sync();
    const { engine } = clocked(['a', 'b', 'c', 'd', 'e', 'f', 'snap'], journal);
    await engine.recover();
    expect(engine.get('o1').imageAt).toBe(created);
    expect(engine.get('q1').imageAt).toBe(created);
    expect(engine.get('g1').imageAt).toBe(created);
    expect(engine.get('e1').state).toBe('suspended');
    expect(engine.get('e1').imageAt).toBeUndefined();
  });
});

describe('SnapOPC+ generationIndex: 1 = newest, as the agent counts', () => {
  it('counts from the newest among the current generations; drops and cancels renumber', async () => {
    const names = ['src', ...Array.from({ length: 9 }, (_, i) => `snap${i + 1}`)];
    const { engine } = clocked(names);
    const ids: string[] = [];
    for (let i = 1; i <= 3; i++) ids.push((await engine.startSnapOpcPlus('src', `snap${i}`)).id);
    const view = () => Object.fromEntries(engine.list().map((s) => [s.id, [s.generationIndex, s.generationCount, s.generation]]));
    expect(view()).toEqual({ [ids[0]!]: [3, 3, 1], [ids[1]!]: [2, 3, 2], [ids[2]!]: [1, 3, 3] });
    await engine.cancel(ids[0]!); // the oldest
    expect(view()).toEqual({ [ids[1]!]: [2, 2, 2], [ids[2]!]: [1, 2, 3] });
    for (let i = 4; i <= 9; i++) ids.push((await engine.startSnapOpcPlus('src', `snap${i}`)).id);
    // 8 generations: sequence 2..9, index 8..1; a further start drops sequence 2.
    expect(engine.get(ids[1]!)).toMatchObject({ generation: 2, generationIndex: 8, generationCount: 8 });
    expect(engine.get(ids[8]!)).toMatchObject({ generation: 9, generationIndex: 1, generationCount: 8 });
    await engine.cancel(ids[1]!);
    const g10 = await engine.startSnapOpcPlus('src', 'snap1');
    expect(g10).toMatchObject({ generation: 10, generationIndex: 1, generationCount: 8 });
    expect(engine.get(ids[2]!)).toMatchObject({ generation: 3, generationIndex: 8 });
  });

  it('other session types have none', async () => {
    const { engine } = clocked(['a', 'b']);
    const s = await engine.startOpc('a', 'b', { rate: 0 });
    expect(s.generationIndex).toBeUndefined();
    expect(s.generation).toBeUndefined();
  });
});
