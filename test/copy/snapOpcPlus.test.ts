import { describe, expect, it, vi } from 'vitest';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, errCode, makeVolume, memVolume, put, readTags, rig, rng, SimStore, tagged, tagsOf } from './support.js';

describe('SnapOPC+', () => {
  it('each generation reads as the source at its start; only before-images are stored', async () => {
    const { engine, dev, vols } = rig(['a', 's1', 's2', 's3']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const g1 = await engine.startSnapOpcPlus('a', 's1');
    expect(g1).toMatchObject({ state: 'snap', generation: 1 });
    await put(dev.a!, 0, 1);
    const g2 = await engine.startSnapOpcPlus('a', 's2');
    await put(dev.a!, 0, 2);
    await put(dev.a!, 4, 3);
    await engine.startSnapOpcPlus('a', 's3');
    await put(dev.a!, 0, 4);
    expect(await readTags(dev.s1!, 0, 5)).toEqual([100, 101, 102, 103, 104]);
    expect(await readTags(dev.s2!, 0, 5)).toEqual([1, 101, 102, 103, 104]);
    expect(await readTags(dev.s3!, 0, 5)).toEqual([2, 101, 102, 103, 3]);
    expect(await readTags(dev.a!, 0, 5)).toEqual([4, 101, 102, 103, 3]);
    // g1 saved unit 0 only; g2 saved units 0 and 1; the rest read through.
    expect(vols.s1!.store.allocatedBytes).toBe(4 * BS);
    expect(vols.s2!.store.allocatedBytes).toBe(8 * BS);
    expect(engine.get(g2.id).copiedBlocks).toBe(2);
    expect(await errCode(put(dev.s1!, 0, 9))).toBe('EPERM');
  });

  it('a ninth generation drops the oldest, or is refused when told to', async () => {
    const names = ['a', ...Array.from({ length: 10 }, (_, i) => `s${i}`)];
    const { engine, dev } = rig(names);
    for (let i = 0; i < 8; i++) {
      await put(dev.a!, 0, 10 + i);
      await engine.startSnapOpcPlus('a', `s${i}`);
    }
    await expect(engine.startSnapOpcPlus('a', 's8', { refuseIfFull: true })).rejects.toThrow(/already has 8 SnapOPC\+ generations/);
    await put(dev.a!, 0, 18);
    const g9 = await engine.startSnapOpcPlus('a', 's8');
    expect(g9.generation).toBe(9);
    expect(engine.list().map((s) => s.destination)).toEqual(['s1', 's2', 's3', 's4', 's5', 's6', 's7', 's8']);
    expect(engine.events.some((e) => e.kind === 'dropped')).toBe(true);
    for (let i = 1; i < 9; i++) expect(await readTags(dev[`s${i}`]!, 0, 1)).toEqual([10 + i]);
  });

  it('cancelling a generation with older ones behind it needs force, which removes them too', async () => {
    const { engine, dev } = rig(['a', 's1', 's2', 's3']);
    await put(dev.a!, 0, 1);
    const g1 = await engine.startSnapOpcPlus('a', 's1');
    await put(dev.a!, 0, 2);
    const g2 = await engine.startSnapOpcPlus('a', 's2');
    await put(dev.a!, 0, 3);
    const g3 = await engine.startSnapOpcPlus('a', 's3');
    await expect(engine.cancel(g2.id)).rejects.toThrow(/1 older generation.*force/);
    await engine.cancel(g2.id, { force: true });
    expect(engine.list().map((s) => s.id)).toEqual([g3.id]);
    expect(
      engine.events
        .filter((e) => e.kind === 'cancelled')
        .map((e) => e.sessionId)
        .sort(),
    ).toEqual([g1.id, g2.id].sort());
    await put(dev.a!, 0, 4);
    expect(await readTags(dev.s3!, 0, 1)).toEqual([3]);
  });

  it('a full snap volume error-suspends its generation only; the source and other generations are unharmed', async () => {
    const journal = new MemoryJournal();
    let n = 0;
    const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, newId: () => `g${++n}` });
    const a = memVolume('a', 64);
    const big = memVolume('big', 64, 1);
    const tiny = makeVolume('tiny', new SimStore(64 * BS, rng(1), 8), 2); // room for two units
    for (const v of [a, big, tiny]) engine.addVolume(v);
    const da = client(a);
    for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
    await engine.startSnapOpcPlus('a', 'big');
    await engine.startSnapOpcPlus('a', 'tiny');
    const events: string[] = [];
    engine.onEvent((e) => events.push(`${e.kind}:${e.message}`));
    for (let b = 0; b < 64; b += 4) await put(da, b, 1000 + b); // every unit: the third save fails
    expect(engine.get('g2').state).toBe('error-suspended');
    expect(engine.get('g2').error).toMatch(/snap volume tiny .* is full.*cancel it and use a larger snap volume/);
    expect(events.filter((e) => e.startsWith('error:'))).toHaveLength(1);
    expect(await errCode(client(tiny).read(0, Buffer.alloc(BS)))).toBe('EIO');
    expect(engine.get('g1').state).toBe('snap');
    expect(await readTags(client(big))).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
    expect((await readTags(da)).filter((t, b) => t !== (b % 4 === 0 ? 1000 + b : 100 + b))).toEqual([]);
    await expect(engine.cancel('g2')).rejects.toThrow(/older generation/); // g1 reads through g2's saves
    await engine.cancel('g1');
    await engine.cancel('g2');
    expect(engine.list()).toEqual([]);
  });

  describe('write-behind', () => {
    /** An engine whose journal commits wait for open() while closed. */
    function gated() {
      let closed = false;
      let waiting: Array<() => void> = [];
      let failNext = false;
      const journal = new MemoryJournal(undefined, async () => {
        if (closed) await new Promise<void>((r) => waiting.push(r));
        if (failNext) {
          failNext = false;
          throw new Error('journal I/O error');
        }
      });
      let n = 0;
      const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, newId: () => `g${++n}` });
      const vols = { a: memVolume('a', 64), s1: memVolume('s1', 64, 1), s2: memVolume('s2', 64, 2) };
      for (const v of Object.values(vols)) engine.addVolume(v);
      const gate = {
        close: () => void (closed = true),
        open: () => {
          closed = false;
          const w = waiting;
          waiting = [];
          for (const r of w) r();
        },
        failNext: () => void (failNext = true),
        get waiting() {
          return waiting.length;
        },
      };
      return { engine, journal, vols, gate, da: client(vols.a), ds1: client(vols.s1) };
    }
    const settle = async () => {
      for (let i = 0; i < 50; i++) await Promise.resolve();
    };
    const storeTag = async (v: { store: { read(o: number, b: Buffer): Promise<void> } }, b: number) => {
      const buf = Buffer.alloc(BS);
      await v.store.read(b * BS, buf);
      return tagsOf(buf)[0];
    };

    it('acknowledges a first write before its before-image is durable; reads, generation reads, flush and FUA stay exact', async () => {
      const { engine, vols, gate, da, ds1 } = gated();
      for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
      await engine.startSnapOpcPlus('a', 's1');
      gate.close();
      const buf = tagged(7);
      await da.write(0, buf); // acknowledged while the round's journal commit is blocked
      buf.fill(0); // the caller owns its buffer again
      await settle();
      expect(gate.waiting).toBe(1); // the round's commit is still blocked
      expect(await storeTag(vols.a, 0)).toBe(100); // W1: the source store has not received it
      expect(await readTags(da, 0, 2)).toEqual([7, 101]); // read your own write
      expect(await readTags(ds1, 0, 2)).toEqual([100, 101]); // the generation is point-in-time
      await put(da, 0, 8); // same block: held behind the first (W2)
      await put(da, 1, 9); // same unit
      expect(await readTags(da, 0, 3)).toEqual([8, 9, 102]);
      let flushed = false;
      const f = da.flush().then(() => (flushed = true));
      let fua = false;
      const w = da.write(8 * BS, tagged(10), { fua: true }).then(() => (fua = true));
      await settle();
      expect([flushed, fua]).toEqual([false, false]);
      gate.open();
      await Promise.all([f, w]);
      expect(await storeTag(vols.a, 0)).toBe(8);
      expect(await storeTag(vols.a, 8)).toBe(10);
      expect(await readTags(ds1, 0, 9)).toEqual([100, 101, 102, 103, 104, 105, 106, 107, 108]);
      expect(await readTags(da, 0, 9)).toEqual([8, 9, 102, 103, 104, 105, 106, 107, 10]);
    });

    it('block status reports data where a write is held', async () => {
      const { engine, gate, da } = gated();
      await engine.startSnapOpcPlus('a', 's1');
      expect((await da.blockStatus(20 * BS, BS))[0]!.flags).not.toBe(0); // a hole
      gate.close();
      await put(da, 20, 5);
      expect((await da.blockStatus(20 * BS, BS))[0]).toEqual({ length: BS, flags: 0 });
      gate.open();
      await da.flush();
      expect((await da.blockStatus(20 * BS, BS))[0]!.flags).toBe(0);
      expect(await readTags(da, 20, 1)).toEqual([5]);
    });

    it('a cut waits for held writes: an acknowledged write is in the next generation', async () => {
      const { engine, gate, da, vols } = gated();
      for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
      await engine.startSnapOpcPlus('a', 's1');
      gate.close();
      await put(da, 4, 5);
      const g2 = engine.startSnapOpcPlus('a', 's2');
      await settle();
      gate.open();
      await g2;
      await put(da, 4, 6);
      expect(await readTags(client(vols.s2), 4, 1)).toEqual([5]);
      expect(await readTags(client(vols.s1), 4, 1)).toEqual([104]);
      expect(await readTags(da, 4, 1)).toEqual([6]);
    });

    it('held payload copies are reused once applied: every held write and read stays exact', async () => {
      const { engine, vols, gate, da } = gated();
      for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
      const want = Array.from({ length: 64 }, (_, b) => 100 + b);
      for (const [i, snap] of ['s1', 's2'].entries()) {
        await engine.startSnapOpcPlus('a', snap); // a new newest generation: every unit saves again
        gate.close();
        for (let k = 0; k < 3; k++) {
          for (let b = k; b < 64; b += 3) {
            want[b] = 1000 * (i + 1) + 10 * k + b;
            await put(da, b, want[b]!); // held behind the round (and, from k = 1, behind earlier ones: W2)
          }
        }
        expect(await readTags(da)).toEqual(want); // overlaid from the held copies
        gate.open();
        await da.flush();
        const stored: number[] = [];
        for (let b = 0; b < 64; b++) stored.push((await storeTag(vols.a, b))!);
        expect(stored).toEqual(want);
      }
      expect(await readTags(client(vols.s1))).toEqual(Array.from({ length: 64 }, (_, b) => 100 + b));
      expect(await readTags(client(vols.s2))).toEqual(Array.from({ length: 64 }, (_, b) => 1000 + 10 * (b % 3) + b));
    });

    it('a flush or a FUA write does not wait for a round to gather', async () => {
      // Fake timers never fire unless advanced: a round left gathering would hang these.
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
      try {
        const { engine, vols, da } = gated();
        for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
        await engine.startSnapOpcPlus('a', 's1');
        await put(da, 0, 1); // unit 0's round
        await da.flush();
        await put(da, 40, 2); // unit 1: its round may gather
        await da.flush();
        expect(await storeTag(vols.a, 40)).toBe(2);
        await engine.startSnapOpcPlus('a', 's2');
        await put(da, 0, 3);
        await da.write(40 * BS, tagged(4), { fua: true });
        expect(await storeTag(vols.a, 40)).toBe(4);
        await vi.advanceTimersByTimeAsync(100);
        await da.flush();
        expect(await readTags(client(vols.s2), 0, 1)).toEqual([1]);
        expect(await readTags(client(vols.s2), 40, 1)).toEqual([2]);
      } finally {
        vi.useRealTimers();
      }
    });

    it('a round whose journal commit fails drops its held writes and reports it on the next flush', async () => {
      const { engine, gate, da, vols, ds1 } = gated();
      for (let b = 0; b < 64; b++) await put(da, b, 100 + b);
      await engine.startSnapOpcPlus('a', 's1');
      gate.close();
      await put(da, 0, 7);
      gate.failNext();
      gate.open();
      await settle();
      expect(await storeTag(vols.a, 0)).toBe(100); // never applied over a before-image that is not durable
      await expect(da.flush()).rejects.toThrow(/journal I\/O error/);
      await da.flush(); // reported once
      expect(await readTags(ds1, 0, 1)).toEqual([100]);
      await put(da, 0, 8); // saves again
      await da.flush();
      expect(await readTags(da, 0, 1)).toEqual([8]);
      expect(await readTags(ds1, 0, 1)).toEqual([100]);
    });
  });
});
