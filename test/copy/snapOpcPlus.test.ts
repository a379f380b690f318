import { describe, expect, it } from 'vitest';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, errCode, makeVolume, memVolume, put, readTags, rig, rng, SimStore } from './support.js';

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
    expect(engine.events.filter((e) => e.kind === 'cancelled').map((e) => e.sessionId).sort()).toEqual([g1.id, g2.id].sort());
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
});
