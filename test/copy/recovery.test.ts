import { describe, expect, it } from 'vitest';
import type { Volume } from '../../emulator/array/Volume.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { client, drain, makeVolume, memVolume, put, readTags, rng, SimStore } from './support.js';

/** Volumes over SimStores that can crash, and an engine that can be restarted over them. */
class Machine {
  stores = new Map<string, SimStore>();
  journal = new MemoryJournal();
  engine!: CopyEngine;
  vols = new Map<string, Volume>();
  private n = 0;
  constructor(
    names: string[],
    readonly rand = rng(7),
  ) {
    for (const name of names) this.stores.set(name, new SimStore(64 * 4096, rand));
  }
  async boot(recover: boolean): Promise<void> {
    this.engine = new CopyEngine({ journal: this.journal, clock: 'manual', defaultUnitSize: 16384, intentRegion: 16384, newId: () => `s${++this.n}` });
    let i = 0;
    for (const [name, store] of this.stores) {
      const v = makeVolume(name, store, i++);
      this.vols.set(name, v);
      this.engine.addVolume(v);
    }
    if (recover) await this.engine.recover();
  }
  dev(name: string) {
    return client(this.vols.get(name)!);
  }
  async crash(): Promise<void> {
    void this.engine.close();
    for (const [name, s] of this.stores) this.stores.set(name, s.crash());
    this.journal = this.journal.crash();
    await this.boot(true);
  }
}

describe('recovery from the journal', () => {
  it('OPC: session, copied bitmap and the point-in-time image survive a crash', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    for (let b = 0; b < 64; b++) await put(m.dev('a'), b, 100 + b);
    const s = await m.engine.startOpc('a', 'b', { rate: 0 });
    await put(m.dev('a'), 0, 1); // copy-on-write of unit 0, then an unflushed write
    await m.engine.stepOne(s.id, 3);
    await m.crash();
    expect(m.engine.get(s.id)).toMatchObject({ state: 'copying', copiedBlocks: 4 });
    expect(await readTags(m.dev('b'))).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
    expect((await readTags(m.dev('a'), 0, 1))[0]).toBeOneOf([1, 100]);
    await drain(m.engine);
    expect(await readTags(m.dev('b'))).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
  });

  it('EC: a crash while equivalent resyncs every unit a mirrored write may have left different', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    const s = await m.engine.startEc('a', 'b');
    await drain(m.engine);
    await m.dev('a').flush();
    for (let b = 0; b < 64; b += 9) await put(m.dev('a'), b, 500 + b); // unflushed: 8 units touched
    await m.crash();
    const info = m.engine.get(s.id);
    expect(info.state).toBe('copying');
    expect(info.totalBlocks - info.copiedBlocks).toBe(8);
    await drain(m.engine);
    expect(m.engine.get(s.id).state).toBe('equivalent');
    expect(await readTags(m.dev('b'))).toEqual(await readTags(m.dev('a')));
  });

  it('EC: write intent is kept per region, so a crash resyncs the whole region of a write', async () => {
    const journal = new MemoryJournal();
    const a = memVolume('a', 64);
    const b = memVolume('b', 64, 1);
    const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, intentRegion: 4 * 16384, newId: () => 'r1' });
    engine.addVolume(a);
    engine.addVolume(b);
    await engine.startEc('a', 'b');
    await drain(engine);
    const before = journal.syncs;
    await put(client(a), 20, 1); // unit 5: region 4..7
    await put(client(a), 23, 2); // unit 5 again, and unit 5 is in the same region: no commit
    await put(client(a), 28, 3); // unit 7: same region, no commit
    expect(journal.syncs - before).toBe(1);
    const recovered = new CopyEngine({ journal: journal.crash(), clock: 'manual', defaultUnitSize: 16384, intentRegion: 4 * 16384 });
    recovered.addVolume(memVolume('a', 64));
    recovered.addVolume(memVolume('b', 64, 1));
    await recovered.recover();
    const info = recovered.get('r1');
    expect(info.totalBlocks - info.copiedBlocks).toBe(4);
  });

  it('EC: a flush clears the write intent, so a crash after it needs no resync', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    const s = await m.engine.startEc('a', 'b');
    await drain(m.engine);
    await put(m.dev('a'), 3, 1);
    await m.dev('a').flush();
    await m.dev('a').flush(); // the second makes the first's intent clears durable via the next sync
    await put(m.dev('a'), 40, 2); // one unit with intent
    await m.crash();
    const info = m.engine.get(s.id);
    expect(info.totalBlocks - info.copiedBlocks).toBe(1);
  });

  it('EC suspended: the changed-unit bitmap survives, resume copies exactly those', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    const s = await m.engine.startEc('a', 'b');
    await drain(m.engine);
    await m.engine.suspend(s.id);
    await put(m.dev('a'), 0, 1);
    await put(m.dev('b'), 20, 2);
    await m.crash();
    expect(m.engine.get(s.id)).toMatchObject({ state: 'suspended', copiedBlocks: 14 });
    await m.engine.resume(s.id);
    await drain(m.engine);
    expect(await readTags(m.dev('b'))).toEqual(await readTags(m.dev('a')));
  });

  it('SnapOPC+: generations and their order survive; each still reads its instant', async () => {
    const m = new Machine(['a', 's1', 's2']);
    await m.boot(false);
    await put(m.dev('a'), 0, 1);
    const g1 = await m.engine.startSnapOpcPlus('a', 's1');
    await put(m.dev('a'), 0, 2);
    const g2 = await m.engine.startSnapOpcPlus('a', 's2');
    await put(m.dev('a'), 0, 3);
    await m.crash();
    expect(m.engine.list().map((s) => [s.id, s.generation])).toEqual([
      [g1.id, 1],
      [g2.id, 2],
    ]);
    expect((await readTags(m.dev('s1'), 0, 1))[0]).toBe(1);
    expect((await readTags(m.dev('s2'), 0, 1))[0]).toBe(2);
    await expect(m.engine.cancel(g2.id)).rejects.toThrow(/force/);
  });

  it('QuickOPC: the tracking bitmap survives; the restart after recovery copies only changes', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    const s = await m.engine.startQuickOpc('a', 'b');
    await drain(m.engine);
    await put(m.dev('a'), 5, 1);
    await m.crash();
    expect(m.engine.get(s.id).state).toBe('tracking');
    const r = await m.engine.startQuickOpc('a', 'b', { rate: 0 });
    expect(r.totalBlocks - r.copiedBlocks).toBe(1);
  });

  it('a session whose volume is gone is dropped with an event', async () => {
    const m = new Machine(['a', 'b']);
    await m.boot(false);
    await m.engine.startOpc('a', 'b', { rate: 0 });
    m.stores.delete('b');
    await m.crash();
    expect(m.engine.list()).toEqual([]);
    expect(m.engine.events.at(-1)?.message).toMatch(/dropped at recovery: volume b no longer exists/);
  });
});
