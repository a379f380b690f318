/**
 * A background copy that keeps failing (its destination is full: ENOSPC) shows the error in
 * the session's info, is retried with exponential back-off (1 s doubling, capped at 60 s)
 * rather than every second, announces it with one 'error' event per failure episode, and
 * clears the error (one 'state' event) when a retry works.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BlockDeviceError, type WriteOptions, type ZeroOptions } from '../../emulator/block/BlockDevice.js';
import { MemoryBlockStore } from '../../emulator/block/MemoryBlockStore.js';
import { CopyEngine } from '../../emulator/copy/CopyEngine.js';
import { MemoryJournal } from '../../emulator/copy/SessionJournal.js';
import { BS, client, makeVolume, memVolume, put } from './support.js';

/** A store whose disk is full while `full` is set. */
class FullStore extends MemoryBlockStore {
  full = true;
  writes = 0;
  override async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.check();
    return super.write(offset, data, opts);
  }
  override async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check();
    return super.writeZeroes(offset, length, opts);
  }
  private check(): void {
    this.writes++;
    if (this.full) throw new BlockDeviceError('ENOSPC', 'no space left on the device holding volume b');
  }
}

describe('a background copy that keeps failing', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setImmediate', 'clearImmediate', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('shows the error, backs off 1 s doubling to 60 s with one event, and clears it when a retry works', async () => {
    const engine = new CopyEngine({ journal: new MemoryJournal(), newId: () => 's1' });
    const a = memVolume('a', 16, 0);
    const store = new FullStore({ size: 16 * BS, blockSize: BS });
    const b = makeVolume('b', store, 1);
    engine.addVolume(a);
    engine.addVolume(b);
    for (let i = 0; i < 16; i++) await put(client(a), i, 1 + i);
    const events: string[] = [];
    engine.onEvent((e) => events.push(`${e.kind}: ${e.message}`));
    const t0 = Date.now();
    await engine.startOpc('a', 'b');

    await vi.advanceTimersByTimeAsync(10);
    const info = engine.get('s1');
    expect(info.state).toBe('copying');
    expect(info.error).toBe(
      'background copy of a -> b failed: no space left on the device holding volume b; retrying with back-off (1 s doubling to 60 s) until it works: fix the cause, or cancel the session',
    );
    expect(info.errorSince).toBe(new Date(t0).toISOString());
    expect(Date.parse(info.retryAt!) - Date.now()).toBeGreaterThan(900);

    // Five minutes of failures: retries after 1, 2, 4, 8, 16, 32, 60, 60, 60... seconds.
    const retries: number[] = [];
    let last = store.writes;
    for (let t = 0; t < 300; t++) {
      await vi.advanceTimersByTimeAsync(1000);
      if (store.writes !== last) retries.push(Math.round((Date.now() - t0) / 1000));
      last = store.writes;
    }
    const gaps = retries.map((t, i) => t - (retries[i - 1] ?? 0));
    expect(gaps.slice(0, 7)).toEqual([1, 2, 4, 8, 16, 32, 60]);
    expect(gaps.slice(7).every((g) => g === 60)).toBe(true);
    expect(events.filter((e) => e.startsWith('error'))).toHaveLength(1);
    expect(engine.get('s1').errorSince).toBe(new Date(t0).toISOString());

    // Space again: the next retry copies, the error clears, one event says so, and the OPC ends.
    store.full = false;
    await vi.advanceTimersByTimeAsync(61_000);
    expect(events.filter((e) => e.startsWith('state'))).toEqual([
      expect.stringMatching(/^state: background copy of a -> b works again \(it had failed \d+ times since /),
    ]);
    expect(engine.list()).toEqual([]);
    expect(events.at(-1)).toBe('completed: opc a -> b finished copying');
    await engine.close();
  });
});
