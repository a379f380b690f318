import { describe, expect, it } from 'vitest';
import { BS, drain, put, readTags, rig, tagged } from './support.js';

describe('OPC', () => {
  it('the destination reads as the source at the start instant before any physical copy', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const s = await engine.startOpc('a', 'b', { rate: 0 });
    expect(s.state).toBe('copying');
    expect(s.copiedBlocks).toBe(0);
    expect(s.totalBlocks).toBe(16);
    expect(await readTags(dev.b!)).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
  });

  it('copy-on-write: a source write to an uncopied unit first saves the old data (partial unit)', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startOpc('a', 'b', { rate: 0 });
    await put(dev.a!, 5, 999); // block 5 = second block of unit 1
    expect(await readTags(dev.a!, 4, 4)).toEqual([104, 999, 106, 107]);
    expect(await readTags(dev.b!, 4, 4)).toEqual([104, 105, 106, 107]);
    expect(engine.get('s1').copiedBlocks).toBe(1);
  });

  it('a partial-unit write to the destination lands on the point-in-time data', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startOpc('a', 'b', { rate: 0 });
    await put(dev.b!, 9, 7);
    await put(dev.a!, 10, 8);
    expect(await readTags(dev.b!, 8, 4)).toEqual([108, 7, 110, 111]);
    expect(await readTags(dev.a!, 8, 4)).toEqual([108, 109, 8, 111]);
  });

  it('background copy finishes the session, which then ends', async () => {
    const { engine, dev, vols } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startOpc('a', 'b');
    expect(await engine.step(5)).toBe(5);
    expect(engine.get('s1').copiedBlocks).toBe(5);
    await put(dev.a!, 63, 1);
    await drain(engine);
    expect(engine.list()).toEqual([]);
    expect(engine.events.map((e) => e.kind)).toEqual(['started', 'completed']);
    // Physically copied: the raw destination store holds the image.
    expect(await readTags(vols.b!.store, 60, 4)).toEqual([160, 161, 162, 163]);
    expect(await readTags(dev.b!)).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
  });

  it('reads spanning copied and uncopied units and unaligned to units', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startOpc('a', 'b', { rate: 0 });
    await put(dev.a!, 6, 1); // unit 1 copied
    for (let b = 0; b < 64; b++) if (b % 3 === 0) await put(dev.a!, b, 5000 + b);
    expect(await readTags(dev.b!, 3, 11)).toEqual([103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113]);
  });

  it('rate limiting with timers: 0 copies nothing, setRate starts the copy', async () => {
    const { MemoryJournal } = await import('../../emulator/copy/SessionJournal.js');
    const { CopyEngine } = await import('../../emulator/copy/CopyEngine.js');
    const { memVolume } = await import('./support.js');
    const engine = new CopyEngine({ journal: new MemoryJournal(), defaultUnitSize: 16384 });
    const a = memVolume('a', 64);
    const b = memVolume('b', 64, 1);
    engine.addVolume(a);
    engine.addVolume(b);
    const s = await engine.startOpc('a', 'b', { rate: 0 });
    await new Promise((r) => setTimeout(r, 80));
    expect(engine.get(s.id).copiedBlocks).toBe(0);
    await engine.setRate(s.id, 16384 * 100); // 100 units/s: 5 per 50 ms tick
    await new Promise((r) => setTimeout(r, 120));
    const mid = engine.list()[0];
    expect(mid?.copiedBlocks ?? 16).toBeGreaterThan(0);
    expect(mid?.copiedBlocks ?? 0).toBeLessThan(16);
    await engine.setRate(s.id, Number.POSITIVE_INFINITY);
    for (let i = 0; i < 100 && engine.list().length > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(engine.list()).toEqual([]);
    await engine.close();
  });

  it('refusals: destination in a session, smaller destination, source that is a destination', async () => {
    const { engine } = rig(['a', 'b', 'c']);
    const { memVolume } = await import('./support.js');
    engine.addVolume(memVolume('small', 32, 9));
    await engine.startOpc('a', 'b', { rate: 0 });
    await expect(engine.startOpc('c', 'b')).rejects.toThrow(/destination b is already the destination of opc session s1.*cancel/);
    await expect(engine.startOpc('c', 'a')).rejects.toThrow(/destination a is already the source of opc session s1/);
    await expect(engine.startOpc('b', 'c')).rejects.toThrow(/source b is the destination of opc session s1/);
    await expect(engine.startOpc('a', 'small')).rejects.toThrow(/smaller than source a/);
    await expect(engine.startOpc('a', 'a')).rejects.toThrow(/both a/);
    await expect(engine.startOpc('a', 'nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(engine.startOpc('a', 'c', { unitSize: 1000 })).rejects.toThrow(/granularity/);
    // A source may feed several OPC sessions.
    await engine.startOpc('a', 'c', { rate: 0 });
    expect(engine.list().map((s) => s.destination)).toEqual(['b', 'c']);
  });

  it('hot path: a write to a copied unit does no copy and no journal commit', async () => {
    const { engine, dev, journal, vols } = rig(['a', 'b']);
    await engine.startOpc('a', 'b', { rate: 0 });
    await put(dev.a!, 0, 1); // copy-on-write of unit 0: one commit
    const syncs = journal.syncs;
    const destBytes = vols.b!.store.allocatedBytes;
    for (let i = 0; i < 10; i++) await put(dev.a!, i % 4, 10 + i);
    expect(journal.syncs).toBe(syncs);
    expect(vols.b!.store.allocatedBytes).toBe(destBytes);
    expect(engine.tapOf('a').sources.length).toBe(1);
  });

  it('progress: copied and total units, rate, ETA from the set rate, events', async () => {
    const { engine } = rig(['a', 'b']);
    const s = await engine.startOpc('a', 'b', { rate: 16384 });
    expect(s).toMatchObject({ copiedBlocks: 0, totalBlocks: 16, rate: 16384, etaSeconds: 16, unitSize: 16384 });
    await engine.stepOne(s.id, 4);
    expect(engine.get(s.id).etaSeconds).toBe(12);
    expect(engine.events[0]).toMatchObject({ sessionId: s.id, kind: 'started', state: 'copying' });
  });

  it('cancel detaches: the destination becomes a plain volume', async () => {
    const { engine, dev } = rig(['a', 'b']);
    await put(dev.a!, 0, 1);
    await engine.startOpc('a', 'b', { rate: 0 });
    await engine.cancel('s1');
    expect(engine.list()).toEqual([]);
    await put(dev.b!, 0, 2);
    expect(await readTags(dev.b!, 0, 1)).toEqual([2]);
    expect(await readTags(dev.a!, 0, 1)).toEqual([1]);
  });

  it('trim and write-zeroes on the source copy the old data first', async () => {
    const { engine, dev } = rig(['a', 'b']);
    await dev.a!.write(0, tagged(3, 8));
    await engine.startOpc('a', 'b', { rate: 0 });
    await dev.a!.trim(0, 2 * BS);
    await dev.a!.writeZeroes(4 * BS, 4 * BS);
    expect(await readTags(dev.a!, 0, 8)).toEqual([0, 0, 3, 3, 0, 0, 0, 0]);
    expect(await readTags(dev.b!, 0, 8)).toEqual([3, 3, 3, 3, 3, 3, 3, 3]);
  });

  it('concurrent copy-on-write and background copy of one unit are serialised', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startOpc('a', 'b', { rate: 0 });
    await Promise.all([engine.stepOne('s1', 4), put(dev.a!, 1, 1), put(dev.a!, 2, 2), put(dev.a!, 5, 5), dev.b!.write(6 * BS, tagged(6))]);
    expect(await readTags(dev.b!, 0, 8)).toEqual([100, 101, 102, 103, 104, 105, 6, 107]);
    expect(await readTags(dev.a!, 0, 8)).toEqual([100, 1, 2, 103, 104, 5, 106, 107]);
  });
});

describe('ended sessions', () => {
  it('a finished OPC is known as completed the moment it is gone, before its commit, and a cancelled one as cancelled', async () => {
    const { engine, journal } = rig(['a', 'b', 'c']);
    const done = await engine.startOpc('a', 'b', { rate: 0 });
    // Hold the commit that removes the session: readers see it gone while its event waits.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const commit = journal.commitStaged.bind(journal);
    journal.commitStaged = async () => {
      journal.commitStaged = commit;
      await gate;
      return commit();
    };
    const finishing = drain(engine);
    for (let i = 0; i < 100 && engine.list().some((x) => x.id === done.id); i++) await new Promise((r) => setImmediate(r));
    expect(engine.list().map((x) => x.id)).not.toContain(done.id);
    expect(engine.events.some((e) => e.sessionId === done.id && e.kind === 'completed')).toBe(false); // not yet announced
    expect(engine.endedAs(done.id)).toBe('completed');
    release();
    await finishing;
    const gone = await engine.startOpc('a', 'c', { rate: 0 });
    await engine.cancel(gone.id);
    expect(engine.endedAs(gone.id)).toBe('cancelled');
    expect(engine.endedAs('no-such-session')).toBeUndefined();
  });
});

describe('QuickOPC', () => {
  it('tracks after the copy; a restart copies only changed units and rolls back the destination', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const s = await engine.startQuickOpc('a', 'b');
    await drain(engine);
    expect(engine.get(s.id).state).toBe('tracking');
    await put(dev.a!, 0, 1); // unit 0 changed on the source
    await put(dev.b!, 40, 2); // unit 10 changed on the destination
    expect(await readTags(dev.b!, 0, 1)).toEqual([100]);
    expect(engine.get(s.id).copiedBlocks).toBe(16);
    const r = await engine.startQuickOpc('a', 'b', { rate: 0 });
    expect(r.id).toBe(s.id);
    expect(r.state).toBe('copying');
    expect(r.copiedBlocks).toBe(14); // only units 0 and 10 to copy
    expect(await readTags(dev.b!, 0, 1)).toEqual([1]);
    expect(await readTags(dev.b!, 40, 1)).toEqual([140]);
    await engine.stepOne(s.id, 100);
    expect(engine.get(s.id).state).toBe('tracking');
    expect(await readTags(dev.b!)).toEqual(await readTags(dev.a!));
  });

  it('refuses a restart while still copying', async () => {
    const { engine } = rig(['a', 'b']);
    await engine.startQuickOpc('a', 'b', { rate: 0 });
    await expect(engine.startQuickOpc('a', 'b')).rejects.toThrow(/still copying/);
  });
});

describe('QuickOPC reverse (restore)', () => {
  it('copies back only the changed units, at once, and the next start turns the pair round again', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const s = await engine.startQuickOpc('a', 'b');
    await drain(engine);
    // The transaction volume is damaged after the backup; the backup volume is untouched.
    await put(dev.a!, 0, 1);
    await put(dev.a!, 41, 2);
    const r = await engine.reverse(s.id);
    expect(r).toMatchObject({ id: s.id, source: 'b', destination: 'a', state: 'copying', reversed: true, copiedBlocks: 14 });
    // Restored as of the reverse instant, before any physical copy.
    const image = Array.from({ length: 64 }, (_, b) => 100 + b);
    expect(await readTags(dev.a!)).toEqual(image);
    await drain(engine);
    expect(engine.get(s.id).state).toBe('tracking');
    expect(await readTags(dev.a!)).toEqual(image);
    // Work goes on; the next backup a -> b reverses back and copies only unit 5.
    await put(dev.a!, 20, 3);
    const again = await engine.startQuickOpc('a', 'b', { rate: 0 });
    expect(again).toMatchObject({ id: s.id, source: 'a', destination: 'b', state: 'copying', copiedBlocks: 15 });
    expect(again.reversed).toBeFalsy();
    expect(await readTags(dev.b!, 20, 1)).toEqual([3]);
  });

  it('is refused while copying, for OPC, and while a volume is in another session', async () => {
    const { engine } = rig(['a', 'b', 'c']);
    const q = await engine.startQuickOpc('a', 'b', { rate: 0 });
    await expect(engine.reverse(q.id)).rejects.toThrow(/it is copying; wait until it is tracking/);
    const o = await engine.startOpc('b', 'c', { rate: 0 }).catch((e: Error) => e);
    expect(String(o)).toMatch(/destination of quickopc session/);
    await drain(engine);
    await engine.startOpc('a', 'c', { rate: 0 });
    await expect(engine.reverse(q.id)).rejects.toThrow(/volume a is also in opc session/);
    const other = engine.list().find((x) => x.type === 'opc')!;
    await expect(engine.reverse(other.id)).rejects.toThrow(/only EC, QuickOPC and REC sessions reverse/);
  });
});
