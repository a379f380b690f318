import { describe, expect, it } from 'vitest';
import type { WriteOptions } from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, drain, makeVolume, put, readTags } from './support.js';

/** A memory store whose writes can be parked, to hold a write in flight. */
class GatedStore extends MemoryBlockStore {
  parked = false;
  private waiting: Array<() => void> = [];
  constructor(blocks: number) {
    super({ size: blocks * BS, blockSize: 4096 });
  }
  override async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (this.parked) await new Promise<void>((r) => this.waiting.push(r));
    return super.write(offset, data, opts);
  }
  get inFlight(): number {
    return this.waiting.length;
  }
  release(): void {
    this.parked = false;
    const w = this.waiting;
    this.waiting = [];
    for (const r of w) r();
  }
}

const ticks = async (n = 20) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

function setup() {
  let n = 0;
  const engine = new CopyEngine({ journal: new MemoryJournal(), clock: 'manual', defaultUnitSize: 16384, newId: () => `s${++n}` });
  const stores = { a: new GatedStore(16), b: new GatedStore(16), c: new GatedStore(16), d: new GatedStore(16) };
  const dev: Record<string, ReturnType<typeof client>> = {};
  Object.entries(stores).forEach(([name, store], i) => {
    const v = makeVolume(name, store, i);
    engine.addVolume(v);
    dev[name] = client(v);
  });
  return { engine, stores, dev };
}

describe('cuts and consistency groups', () => {
  it('a start waits for writes in flight, and holds new ones until the cut is taken', async () => {
    const { engine, stores, dev } = setup();
    stores.a.parked = true;
    const w1 = put(dev.a!, 0, 1);
    await ticks();
    expect(stores.a.inFlight).toBe(1);
    let started = false;
    const start = engine.startOpc('a', 'b', { rate: 0 }).then(() => (started = true));
    await ticks();
    expect(started).toBe(false); // draining w1
    let w2done = false;
    const w2 = put(dev.a!, 1, 2).then(() => (w2done = true)); // arrives during the hold
    await ticks();
    expect(w2done).toBe(false);
    stores.a.release();
    await Promise.all([w1, start, w2]);
    expect(await readTags(dev.b!, 0, 2)).toEqual([1, 0]); // w1 before the cut, w2 after
    expect(await readTags(dev.a!, 0, 2)).toEqual([1, 2]);
  });

  it('a group starts several sessions at one instant: no later write is in one copy and an earlier one missing from another', async () => {
    const { engine, stores, dev } = setup();
    stores.a.parked = true;
    const w1 = put(dev.a!, 0, 1); // in flight on a
    await ticks();
    const group = engine.group([
      { op: 'opc', source: 'a', destination: 'b', rate: 0 },
      { op: 'opc', source: 'c', destination: 'd', rate: 0 },
    ]);
    await ticks();
    // The host issues w2 on c only after w1 completes (a dependent write).
    const w2 = w1.then(() => put(dev.c!, 0, 2));
    await ticks();
    stores.a.release();
    const infos = await group;
    await w2;
    expect(infos.map((s) => s.state)).toEqual(['copying', 'copying']);
    const inB = (await readTags(dev.b!, 0, 1))[0] === 1;
    const inD = (await readTags(dev.d!, 0, 1))[0] === 2;
    expect(!inD || inB).toBe(true);
    expect([inB, inD]).toEqual([true, false]);
  });

  it('a group suspends several EC pairs at one instant', async () => {
    const { engine, dev } = setup();
    const e1 = await engine.startEc('a', 'b');
    const e2 = await engine.startEc('c', 'd');
    await drain(engine);
    await put(dev.a!, 0, 1);
    await put(dev.c!, 0, 2);
    await engine.group([
      { op: 'suspend', id: e1.id },
      { op: 'suspend', id: e2.id },
    ]);
    await put(dev.a!, 0, 3);
    await put(dev.c!, 0, 4);
    expect([(await readTags(dev.b!, 0, 1))[0], (await readTags(dev.d!, 0, 1))[0]]).toEqual([1, 2]);
    expect(engine.list().map((s) => s.state)).toEqual(['suspended', 'suspended']);
  });

  it('a group is all or nothing: one refused member refuses the whole group', async () => {
    const { engine } = setup();
    const e1 = await engine.startEc('a', 'b', { rate: 0 });
    await expect(
      engine.group([
        { op: 'opc', source: 'c', destination: 'd' },
        { op: 'suspend', id: e1.id },
      ]),
    ).rejects.toThrow(/backup cannot run before the pair is equivalent/);
    await expect(
      engine.group([
        { op: 'opc', source: 'c', destination: 'd' },
        { op: 'opc', source: 'a', destination: 'd' },
      ]),
    ).rejects.toThrow(/destination d|appears twice/);
    expect(engine.list().map((s) => s.id)).toEqual([e1.id]);
  });
});
