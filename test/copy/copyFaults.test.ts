/**
 * Injected faults on a session's own I/O (CopyEngineOptions.faults, which the array's fault
 * engine implements): the session goes error-suspended with the reason, at once, per type:
 *   EC         host writes to the source go on and are recorded; the destination cannot be
 *              used; resume resyncs once the cause is gone (again error-suspended if not);
 *   OPC/QOPC   copying stops; uncopied destination units fail EIO with the reason; cancel;
 *   SnapOPC+   as a full snap volume.
 * The state and reason are journalled (a restart keeps them) and announced ('error' event).
 */
import { describe, expect, it } from 'vitest';
import type { Volume } from '../../emulator/array/Volume.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import type { CopyEvent, CopyFaultHook } from '../../emulator/copy/CopySession.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, drain, errCode, makeVolume, put, readTags, rng, SimStore } from './support.js';

/** A fault set like the array's: per session and op, fires `times` times (Infinity: until removed). */
class Faults implements CopyFaultHook {
  rules: Array<{ session: string; op: 'read' | 'write'; times: number; skip: number }> = [];
  fired = 0;
  /** skip: let that many matching operations through first. */
  add(session: string, op: 'read' | 'write', times = Number.POSITIVE_INFINITY, skip = 0): void {
    this.rules.push({ session, op, times, skip });
  }
  clear(): void {
    this.rules = [];
  }
  copyFault(sessionId: string, op: 'read' | 'write', volume: string, offset: number): void {
    const r = this.rules.find((x) => x.session === sessionId && x.op === op && x.times > 0);
    if (r === undefined) return;
    if (r.skip > 0) {
      r.skip--;
      return;
    }
    r.times--;
    this.fired++;
    throw new Error(`injected copy ${op} error on volume ${volume} at byte ${offset} (fault f1)`);
  }
}

/** Volumes over SimStores and an engine with a fault hook that can be restarted over them. */
class Machine {
  stores = new Map<string, SimStore>();
  journal = new MemoryJournal();
  faults = new Faults();
  engine!: CopyEngine;
  vols = new Map<string, Volume>();
  events: CopyEvent[] = [];
  private n = 0;
  constructor(names: string[]) {
    const rand = rng(11);
    for (const name of names) this.stores.set(name, new SimStore(64 * BS, rand));
  }
  async boot(recover: boolean): Promise<void> {
    this.engine = new CopyEngine({
      journal: this.journal,
      clock: 'manual',
      defaultUnitSize: 16384,
      intentRegion: 16384,
      faults: this.faults,
      newId: () => `s${++this.n}`,
    });
    this.engine.onEvent((e) => this.events.push(e));
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
  /** Every synced journal record and flushed block survives; nothing else is promised. */
  async crash(): Promise<void> {
    void this.engine.close();
    for (const [name, s] of this.stores) this.stores.set(name, s.crash());
    this.journal = this.journal.crash();
    await this.boot(true);
  }
}

async function booted(names: string[]): Promise<Machine> {
  const m = new Machine(names);
  await m.boot(false);
  for (let b = 0; b < 64; b++) await put(m.dev('a'), b, 100 + b);
  await m.dev('a').flush();
  return m;
}

async function equivalent(m: Machine): Promise<string> {
  const s = await m.engine.startEc('a', 'b');
  await drain(m.engine);
  expect(m.engine.get(s.id).state).toBe('equivalent');
  return s.id;
}

describe('copy-error faults: EC', () => {
  it('a mirrored write that fails: the host write stands, the pair is error-suspended, resume resyncs once the fault is gone', async () => {
    const m = await booted(['a', 'b']);
    const id = await equivalent(m);
    m.faults.add(id, 'write');
    await put(m.dev('a'), 5, 7); // succeeds for the host
    const info = m.engine.get(id);
    expect(info.state).toBe('error-suspended');
    expect(info.error).toMatch(
      /EC session s1 \(a -> b\) is error-suspended: a mirrored write failed: injected copy write error on volume b at byte \d+ \(fault f1\)/,
    );
    expect(info.error).toMatch(/fix the cause, then resume the session .*or cancel it/);
    expect(info.retryAt).toBeUndefined();
    expect(m.events.filter((e) => e.kind === 'error')).toEqual([expect.objectContaining({ sessionId: id, state: 'error-suspended', message: info.error })]);
    expect((await readTags(m.dev('a'), 5, 1))[0]).toBe(7);
    // Host writes to the source go on and are recorded; the destination is not usable.
    await put(m.dev('a'), 40, 8);
    expect(m.engine.get(id).totalBlocks - m.engine.get(id).copiedBlocks).toBe(2);
    const err = await m
      .dev('b')
      .read(0, Buffer.alloc(BS))
      .catch((e: Error) => e);
    expect(err).toMatchObject({ code: 'EIO' });
    expect((err as Error).message).toContain(info.error);
    expect(await errCode(put(m.dev('b'), 0, 1))).toBe('EIO');
    // A backup (suspend) is refused with the reason.
    await expect(m.engine.suspend(id)).rejects.toThrow(/backup cannot run: EC session s1 .*error-suspended/);
    // Resume while the cause is still there: the resync fails again.
    await m.engine.resume(id);
    expect(m.engine.get(id).state).toBe('copying');
    await m.engine.stepOne(id, 1000);
    expect(m.engine.get(id).state).toBe('error-suspended');
    // The cause gone: resume resyncs only the changed units, then equivalent and equal.
    m.faults.clear();
    await m.engine.resume(id);
    expect(m.engine.get(id).error).toBeUndefined();
    await drain(m.engine);
    expect(m.engine.get(id).state).toBe('equivalent');
    expect(await readTags(m.dev('b'))).toEqual(await readTags(m.dev('a')));
  });

  it('a resync that fails part-way keeps what it copied: after a crash too, resume copies only the rest', async () => {
    const m = await booted(['a', 'b']);
    const id = await equivalent(m);
    await m.engine.suspend(id);
    for (const u of [1, 5, 9]) await put(m.dev('a'), u * 4, 60 + u); // units 1, 5 and 9 (4 blocks each)
    await m.dev('a').flush();
    await m.engine.resume(id); // the manual clock: nothing is copied until stepOne
    const pending = () => m.engine.get(id).totalBlocks - m.engine.get(id).copiedBlocks;
    expect(pending()).toBe(3);
    m.faults.add(id, 'write', 1, 1); // the resync's second write fails: unit 1 is copied, 5 is not
    await m.engine.stepOne(id, 1000);
    expect(m.engine.get(id).state).toBe('error-suspended');
    expect(pending()).toBe(2);
    await m.crash(); // the copied unit's clear was journalled, after both sides were flushed
    expect(m.engine.get(id)).toMatchObject({ state: 'error-suspended' });
    expect(pending()).toBe(2);
    expect((await readTags(m.stores.get('b')!, 4, 1))[0]).toBe(61); // hosts may not read it now: the store
    m.faults.clear();
    await m.engine.resume(id);
    await drain(m.engine);
    expect(m.engine.get(id).state).toBe('equivalent');
    expect(await readTags(m.dev('b'))).toEqual(await readTags(m.dev('a')));
  });

  it('the initial copy fails (a read of the source): error-suspended, no retry episode, cancel works', async () => {
    const m = await booted(['a', 'b']);
    const s = await m.engine.startEc('a', 'b', { rate: 0 });
    await m.engine.stepOne(s.id, 2);
    m.faults.add(s.id, 'read', 1);
    expect(await m.engine.stepOne(s.id, 2)).toBe(0);
    const info = m.engine.get(s.id);
    expect(info).toMatchObject({ state: 'error-suspended', copiedBlocks: 2 });
    expect(info.error).toMatch(/the background copy failed: injected copy read error on volume a at byte \d+/);
    expect(info.errorSince).toBeUndefined();
    expect(await m.engine.stepOne(s.id, 2)).toBe(0); // stays suspended: nothing is copied
    await m.engine.cancel(s.id);
    expect(m.engine.list()).toEqual([]);
  });

  it('error-suspended survives a crash with the reason, and every unit a mirrored write may have changed is resynced', async () => {
    const m = await booted(['a', 'b']);
    const id = await equivalent(m);
    await put(m.dev('a'), 20, 3); // mirrored, unflushed: its intent is set
    m.faults.add(id, 'write', 1);
    await put(m.dev('a'), 50, 4);
    const before = m.engine.get(id);
    expect(before.state).toBe('error-suspended');
    await m.crash();
    const after = m.engine.get(id);
    expect(after).toMatchObject({ state: 'error-suspended', error: before.error });
    // The unflushed mirrored write's unit (intent) and the failed one's are both to resync.
    expect(after.totalBlocks - after.copiedBlocks).toBe(2);
    await m.engine.resume(id);
    await drain(m.engine);
    expect(await readTags(m.dev('b'))).toEqual(await readTags(m.dev('a')));
  });
});

describe('copy-error faults: OPC and QuickOPC', () => {
  it('the background copy fails: error-suspended; copied units read, uncopied ones fail with the reason; source writes go on', async () => {
    const m = await booted(['a', 'b']);
    const s = await m.engine.startOpc('a', 'b', { rate: 0 });
    await m.engine.stepOne(s.id, 2); // units 0-1: blocks 0-7
    m.faults.add(s.id, 'write');
    await m.engine.stepOne(s.id, 2);
    const info = m.engine.get(s.id);
    expect(info).toMatchObject({ state: 'error-suspended', copiedBlocks: 2 });
    expect(info.error).toMatch(
      /OPC session s1 \(a -> b\) is error-suspended: the background copy failed: injected copy write error on volume b .*cancel the session/,
    );
    expect(await readTags(m.dev('b'), 0, 8)).toEqual(Array.from({ length: 8 }, (_, b) => 100 + b));
    const err = await m
      .dev('b')
      .read(8 * BS, Buffer.alloc(BS))
      .catch((e: Error) => e);
    expect(err).toMatchObject({ code: 'EIO' });
    expect((err as Error).message).toContain(info.error);
    await put(m.dev('a'), 30, 9); // no copy-on-write any more: the host is not failed
    expect((await readTags(m.dev('a'), 30, 1))[0]).toBe(9);
    await put(m.dev('b'), 1, 5); // a copied unit of the destination stays writable
    expect(await errCode(put(m.dev('b'), 30, 5))).toBe('EIO');
    await m.crash();
    expect(m.engine.get(s.id)).toMatchObject({ state: 'error-suspended', error: info.error });
    await m.engine.cancel(s.id);
  });

  it('a copy-on-write that fails: the source write stands, the session is error-suspended', async () => {
    const m = await booted(['a', 'b']);
    const s = await m.engine.startOpc('a', 'b', { rate: 0 });
    m.faults.add(s.id, 'read', 1);
    await put(m.dev('a'), 3, 77);
    expect((await readTags(m.dev('a'), 3, 1))[0]).toBe(77);
    expect(m.engine.get(s.id).error).toMatch(/the copy-on-write of a source write failed: injected copy read error on volume a at byte \d+/);
  });

  it('QuickOPC: a restart or reverse of an error-suspended session is refused with the reason', async () => {
    const m = await booted(['a', 'b']);
    const s = await m.engine.startQuickOpc('a', 'b', { rate: 0 });
    m.faults.add(s.id, 'write', 1);
    await m.engine.stepOne(s.id, 1);
    expect(m.engine.get(s.id).state).toBe('error-suspended');
    await expect(m.engine.startQuickOpc('a', 'b')).rejects.toThrow(/cannot restart: QuickOPC session s1 .*error-suspended/);
    await expect(m.engine.reverse(s.id)).rejects.toThrow(/cannot reverse: QuickOPC session s1/);
  });
});

/**
 * A rig whose journal commits wait while `hold` is set: what a write does before the
 * error-suspended state is durable can be seen (found by the simulation).
 */
function heldJournalRig(names: string[]) {
  const gate = { hold: false, waiting: [] as Array<() => void> };
  const journal = new MemoryJournal(undefined, () => (gate.hold ? new Promise<void>((r) => gate.waiting.push(r)) : Promise.resolve()));
  const faults = new Faults();
  let n = 0;
  const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, faults, newId: () => `s${++n}` });
  const stores: Record<string, MemoryBlockStore> = {};
  const dev: Record<string, ReturnType<typeof client>> = {};
  names.forEach((name, i) => {
    stores[name] = new MemoryBlockStore({ size: 64 * BS, blockSize: 4096 });
    const v = makeVolume(name, stores[name]!, i);
    engine.addVolume(v);
    dev[name] = client(v);
  });
  const release = () => {
    gate.hold = false;
    for (const w of gate.waiting.splice(0)) w();
  };
  return { engine, faults, stores, dev, gate, release };
}

/** Whether the promise settled within a few event-loop turns. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  return done;
}

describe('copy-error faults: nothing relies on an error-suspended state before it is durable', () => {
  it('OPC: a source write that skips the copy-on-write waits until the state is durable (E1)', async () => {
    const { engine, faults, stores, dev, gate, release } = heldJournalRig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const s = await engine.startOpc('a', 'b', { rate: 0 });
    faults.add(s.id, 'read', 1);
    gate.hold = true;
    const first = put(dev.a!, 0, 1); // its copy-on-write fails: error-suspended, not yet durable
    await settled(first);
    expect(engine.get(s.id).state).toBe('error-suspended');
    const second = put(dev.a!, 40, 2); // an uncopied unit: no copy-on-write any more, but only once durable
    expect(await settled(second)).toBe(false);
    expect((await readTags(stores.a!, 40, 1))[0]).toBe(140); // a crash now keeps a copying session: its image intact
    release();
    await Promise.all([first, second]);
    expect((await readTags(dev.a!, 40, 1))[0]).toBe(2);
  });

  it('SnapOPC+: a write that finds no healthy generation left waits until the failure is durable (W7)', async () => {
    const { engine, faults, stores, dev, gate, release } = heldJournalRig(['a', 's1']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await dev.a!.flush();
    const g = await engine.startSnapOpcPlus('a', 's1');
    faults.add(g.id, 'read', 1);
    gate.hold = true;
    const first = put(dev.a!, 0, 1); // its save fails: the only generation is error-suspended, not yet durable
    await settled(first);
    expect(engine.get(g.id).state).toBe('error-suspended');
    const second = put(dev.a!, 40, 2); // nothing to save into: applied only once the failure is durable
    expect(await settled(second)).toBe(false);
    expect((await readTags(stores.a!, 40, 1))[0]).toBe(140);
    release();
    await Promise.all([first, second]);
    expect((await readTags(dev.a!, 40, 1))[0]).toBe(2);
  });
});

describe('copy-error faults: SnapOPC+', () => {
  it('a before-image save that fails error-suspends the generation as a full pool does; the older one takes it', async () => {
    const m = await booted(['a', 's1', 's2']);
    const g1 = await m.engine.startSnapOpcPlus('a', 's1');
    const g2 = await m.engine.startSnapOpcPlus('a', 's2');
    m.faults.add(g2.id, 'write');
    await put(m.dev('a'), 0, 1);
    await m.dev('a').flush();
    expect(m.engine.get(g2.id).state).toBe('error-suspended');
    expect(m.engine.get(g2.id).error).toMatch(/snap volume s2 of SnapOPC\+ generation 2 .*failed: injected copy write error on volume s2.*cancel it/);
    expect(m.engine.get(g1.id).state).toBe('snap');
    expect((await readTags(m.dev('s1'), 0, 1))[0]).toBe(100); // the older generation kept the image
    expect(await errCode(m.dev('s2').read(0, Buffer.alloc(BS)))).toBe('EIO');
  });
});
