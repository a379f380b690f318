import { describe, expect, it } from 'vitest';
import { BlockDeviceError, type WriteOptions } from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, drain, errCode, makeVolume, memVolume, put, readTags, rig, tagged } from './support.js';

class FlakyStore extends MemoryBlockStore {
  failWrites = 0;
  override async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (this.failWrites > 0) {
      this.failWrites--;
      throw new BlockDeviceError('EIO', 'injected medium error');
    }
    return super.write(offset, data, opts);
  }
}

async function equivalentPair() {
  const r = rig(['a', 'b']);
  for (let b = 0; b < 64; b++) await put(r.dev.a!, b, 100 + b);
  const s = await r.engine.startEc('a', 'b');
  await drain(r.engine);
  expect(r.engine.get(s.id).state).toBe('equivalent');
  return { ...r, id: s.id };
}

describe('EC', () => {
  it('the destination is not accessible while copying (EACCES naming the session and the fix)', async () => {
    const { engine, dev } = rig(['a', 'b']);
    await engine.startEc('a', 'b', { rate: 0 });
    const err = await dev.b!.read(0, Buffer.alloc(BS)).catch((e: Error) => e);
    expect(err).toMatchObject({ code: 'EACCES' });
    expect((err as Error).message).toMatch(/EC session s1.*wait until the pair is equivalent/);
    expect(await errCode(put(dev.b!, 0, 1))).toBe('EACCES');
    expect(await errCode(dev.b!.blockStatus(0, BS))).toBe('EACCES');
  });

  it('initial copy mirrors writes to copied units; equivalent mirrors before acknowledging; destination read-only', async () => {
    const { engine, dev } = rig(['a', 'b']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    await engine.startEc('a', 'b', { rate: 0 });
    await engine.stepOne('s1', 3);
    await put(dev.a!, 1, 1); // copied unit: mirrored
    await put(dev.a!, 60, 2); // not yet copied: the copier takes it
    expect(engine.get('s1').state).toBe('copying');
    await drain(engine);
    expect(engine.get('s1').state).toBe('equivalent');
    await put(dev.a!, 30, 3);
    expect(await readTags(dev.b!)).toEqual(await readTags(dev.a!));
    const err = await put(dev.b!, 0, 9).catch((e: Error) => e);
    expect(err).toMatchObject({ code: 'EPERM' });
    expect((err as Error).message).toMatch(/read-only destination of EC session s1.*suspend or split/);
  });

  it('suspend is refused before equivalent with the manual wording', async () => {
    const { engine } = rig(['a', 'b']);
    await engine.startEc('a', 'b', { rate: 0 });
    await expect(engine.suspend('s1')).rejects.toThrow(/backup cannot run before the pair is equivalent/);
  });

  it('suspend freezes the destination; resume copies only changed units (both sides)', async () => {
    const { engine, dev, id } = await equivalentPair();
    await engine.suspend(id);
    expect(engine.get(id).state).toBe('suspended');
    await put(dev.a!, 0, 1);
    await put(dev.a!, 1, 2);
    await put(dev.b!, 40, 3); // the frozen copy is usable; the change is recorded
    expect(await readTags(dev.b!, 0, 2)).toEqual([100, 101]);
    expect(engine.get(id).copiedBlocks).toBe(14);
    await engine.resume(id);
    expect(engine.get(id).state).toBe('copying');
    expect(await engine.step(100)).toBe(2);
    expect(engine.get(id).state).toBe('equivalent');
    expect(await readTags(dev.b!)).toEqual(await readTags(dev.a!));
  });

  it('reverse swaps direction; restore-from-clone copies the clone back', async () => {
    const { engine, dev, id } = await equivalentPair();
    await engine.split(id);
    expect(engine.get(id).state).toBe('split');
    await put(dev.a!, 0, 1); // damage on the original
    await put(dev.b!, 8, 2); // the clone is used independently too
    await engine.restoreFromClone(id);
    const i = engine.get(id);
    expect([i.source, i.destination, i.reversed, i.state]).toEqual(['b', 'a', true, 'copying']);
    expect(await errCode(dev.a!.read(0, Buffer.alloc(BS)))).toBe('EACCES');
    await drain(engine);
    expect(engine.get(id).state).toBe('equivalent');
    expect(await readTags(dev.a!, 0, 12)).toEqual([100, 101, 102, 103, 104, 105, 106, 107, 2, 109, 110, 111]);
    // and back: suspend, reverse, resume
    await engine.suspend(id);
    await engine.reverse(id);
    await engine.resume(id);
    await drain(engine);
    expect(engine.get(id)).toMatchObject({ source: 'a', destination: 'b', state: 'equivalent' });
  });

  it('split and rejoin with a differential resync', async () => {
    const { engine, dev, id } = await equivalentPair();
    await engine.split(id);
    await put(dev.b!, 20, 5);
    await engine.rejoin(id);
    expect(engine.get(id).copiedBlocks).toBe(15);
    await drain(engine);
    expect(await readTags(dev.b!, 20, 1)).toEqual([120]);
    await expect(engine.rejoin(id)).rejects.toThrow(/not split/);
  });

  it('several EC pairs from one source (multi-copy): each mirrors or tracks on its own; a suspended one resumes with only its changes', async () => {
    const { engine, dev } = rig(['a', 'b', 'c']);
    for (let b = 0; b < 64; b++) await put(dev.a!, b, 100 + b);
    const first = await engine.startEc('a', 'b');
    await drain(engine);
    await engine.suspend(first.id);
    const second = await engine.startEc('a', 'c');
    await drain(engine);
    expect(engine.get(second.id).state).toBe('equivalent');
    await put(dev.a!, 5, 7);
    expect((await readTags(dev.c!, 5, 1))[0]).toBe(7); // mirrored to the equivalent pair
    expect((await readTags(dev.b!, 5, 1))[0]).toBe(105); // the suspended one keeps its image
    await engine.resume(first.id);
    const s = engine.get(first.id);
    expect(s.copiedBlocks).toBe(s.totalBlocks - 1); // only the changed unit is copied again
    await drain(engine);
    expect(await readTags(dev.b!)).toEqual(await readTags(dev.a!));
    expect(engine.get(first.id).state).toBe('equivalent');
  });

  it('refuses reverse while another session uses a volume', async () => {
    const { engine } = rig(['a', 'b', 'd']);
    await engine.startEc('a', 'b');
    await engine.startOpc('a', 'd', { rate: 0 });
    await engine.stepOne('s1', 100);
    expect(engine.get('s1').state).toBe('equivalent');
    await engine.suspend('s1');
    await expect(engine.reverse('s1')).rejects.toThrow(/also in opc session/);
  });

  it('partial-unit writes while suspended are tracked per unit', async () => {
    const { engine, dev, id } = await equivalentPair();
    await engine.suspend(id);
    await dev.a!.writeZeroes(3 * BS, 2 * BS); // spans units 0 and 1
    await engine.resume(id);
    expect(engine.get(id).copiedBlocks).toBe(14);
    await drain(engine);
    expect(await readTags(dev.b!, 0, 8)).toEqual([100, 101, 102, 0, 0, 105, 106, 107]);
    expect(tagged(0).length).toBe(BS);
  });

  it('a failed mirrored write fails the host write and sends the pair back to copying for that unit', async () => {
    const engine = new CopyEngine({ journal: new MemoryJournal(), clock: 'manual', defaultUnitSize: 16384, newId: () => 'e1' });
    const a = memVolume('a', 64);
    const flaky = new FlakyStore({ size: 64 * BS, blockSize: 4096 });
    const b = makeVolume('b', flaky, 1);
    engine.addVolume(a);
    engine.addVolume(b);
    const da = client(a);
    await engine.startEc('a', 'b');
    await drain(engine);
    flaky.failWrites = 1;
    expect(await errCode(put(da, 9, 7))).toBe('EIO');
    expect(engine.get('e1')).toMatchObject({ state: 'copying', copiedBlocks: 15 });
    expect(engine.events.at(-1)?.message).toMatch(/mirrored write failed.*resyncing/);
    await drain(engine);
    expect(engine.get('e1').state).toBe('equivalent');
    expect(await readTags(client(b))).toEqual(await readTags(da));
  });
  describe('the mirrored write path (hot path: no await before both writes when the units are free and their intent durable)', () => {
    /** A store whose writes wait for a gate (while gated) and can fail. */
    class GatedStore extends MemoryBlockStore {
      gate: Promise<void> | undefined;
      fail: BlockDeviceError | undefined;
      issued = 0;
      override async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
        this.issued++;
        if (this.gate !== undefined) await this.gate;
        if (this.fail !== undefined) throw this.fail;
        return super.write(offset, data, opts);
      }
    }

    async function gatedPair(intentRegion = 16384) {
      const journal = new MemoryJournal();
      const engine = new CopyEngine({ journal, clock: 'manual', defaultUnitSize: 16384, intentRegion, newId: () => 'e1' });
      const sa = new GatedStore({ size: 64 * BS, blockSize: 4096 });
      const sb = new GatedStore({ size: 64 * BS, blockSize: 4096 });
      const a = makeVolume('a', sa, 0);
      const b = makeVolume('b', sb, 1);
      engine.addVolume(a);
      engine.addVolume(b);
      const da = client(a);
      await engine.startEc('a', 'b');
      await drain(engine);
      expect(engine.get('e1').state).toBe('equivalent');
      return { engine, journal, sa, sb, da, db: client(b) };
    }

    it('the first write to a region after a flush issues neither write before its intent is durable (J3)', async () => {
      const { journal, sa, sb, da } = await gatedPair();
      await da.flush(); // J5: intent clears
      const syncs = journal.syncs;
      const [ia, ib] = [sa.issued, sb.issued];
      const w = put(da, 5, 1);
      expect([sa.issued, sb.issued]).toEqual([ia, ib]); // waiting for the journal commit
      await w;
      expect(journal.syncs).toBe(syncs + 1);
      expect([sa.issued, sb.issued]).toEqual([ia + 1, ib + 1]);
      await put(da, 6, 2); // same unit, intent durable: no commit
      expect(journal.syncs).toBe(syncs + 1);
    });

    it('a write to a unit that another write holds waits for it; both are mirrored in order', async () => {
      const { sa, sb, da, db } = await gatedPair();
      await put(da, 4, 9); // intent of unit 1 durable
      let open!: () => void;
      sa.gate = new Promise((r) => (open = r));
      const first = put(da, 4, 1);
      const second = put(da, 4, 2); // unit 1 is locked by the first
      await Promise.resolve();
      const issued = sb.issued;
      open();
      sa.gate = undefined;
      await Promise.all([first, second]);
      expect(sb.issued).toBe(issued + 1); // the second was issued after the first finished
      expect(await readTags(db, 4, 1)).toEqual([2]);
      expect(await readTags(db)).toEqual(await readTags(da));
    });

    it('a mirror that fails while the host write is still running: the write fails only once both settled, no unhandled rejection', async () => {
      const { engine, sa, sb, da, db } = await gatedPair();
      await put(da, 9, 3);
      let open!: () => void;
      sa.gate = new Promise((r) => (open = r));
      sb.fail = new BlockDeviceError('EIO', 'injected destination error');
      let settled = false;
      const w = put(da, 9, 7).finally(() => (settled = true));
      await new Promise((r) => setImmediate(r)); // a macrotask: a rejection nobody handles yet is reported now
      expect(settled).toBe(false); // the host's own write is still running
      open();
      sa.gate = undefined;
      sb.fail = undefined;
      expect(await errCode(w)).toBe('EIO');
      expect(engine.get('e1')).toMatchObject({ state: 'copying', copiedBlocks: 15 });
      await drain(engine);
      expect(engine.get('e1').state).toBe('equivalent');
      expect(await readTags(db)).toEqual(await readTags(da));
    });

    it("both writes fail: the host gets its own volume's error", async () => {
      const { engine, sa, sb, da } = await gatedPair();
      sa.fail = new BlockDeviceError('ENOSPC', 'source full');
      sb.fail = new BlockDeviceError('EIO', 'destination error');
      expect(await errCode(put(da, 20, 1))).toBe('ENOSPC');
      sa.fail = sb.fail = undefined;
      expect(engine.get('e1').state).toBe('copying');
      await drain(engine);
      expect(engine.get('e1').state).toBe('equivalent');
    });
  });
});
