/**
 * The fault engine through StorageArray, in process: faults on a volume's host I/O (error,
 * bad blocks, pause, delay, corrupt, lying flush, disconnect), triggers and flags, events,
 * seeded replay, validation messages, and persistence across a restart (file backend).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BlockDeviceError, type BlockDevice, type HandleEvent } from '../../../emulator/block/BlockDevice.js';
import { StorageArray } from '../../../emulator/array/StorageArray.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-fault-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const open: StorageArray[] = [];
afterEach(async () => {
  await Promise.allSettled(open.splice(0).map((a) => a.close()));
});

async function openArray(dataDir?: string): Promise<StorageArray> {
  const a = await StorageArray.open({ backend: dataDir ? 'file' : 'memory', ...(dataDir ? { dataDir } : {}), logger });
  open.push(a);
  return a;
}

let conn = 0;
function attach(a: StorageArray, name: string): { device: BlockDevice; events: HandleEvent[]; close: () => void } {
  const h = a.openExport(name, { protocol: 'nbd', connectionId: `c${++conn}`, remoteAddress: '127.0.0.1:1', readOnly: false })!;
  const events: HandleEvent[] = [];
  h.onEvent?.((e) => events.push(e));
  return { device: h.device, events, close: () => h.close() };
}

async function errorOf(p: Promise<unknown>): Promise<BlockDeviceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BlockDeviceError);
  return err as BlockDeviceError;
}

describe('fault engine', () => {
  it('fails reads in an LBA range with the errno and sense given, and only there; removing it heals', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    const f = await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], lba: '100-199', errno: 'ENOSPC', sense: '07/27/07' });
    expect(f.id).toMatch(/^f\d+$/);
    const buf = Buffer.alloc(4096);
    await device.read(0, buf); // blocks 0-7: outside
    const err = await errorOf(device.read(99 * 512, Buffer.alloc(1024))); // blocks 99-100
    expect(err.code).toBe('ENOSPC');
    expect(err.sense).toEqual({ key: 7, asc: 0x27, ascq: 7 });
    expect(err.lba).toBe(99);
    await device.write(150 * 512, Buffer.alloc(512, 1)); // writes are not in ops
    await device.read(200 * 512, buf);
    expect(a.faults.events().map((e) => [e.faultId, e.op, e.offset])).toEqual([[f.id, 'read', 99 * 512]]);
    a.faults.remove(f.id);
    await device.read(99 * 512, Buffer.alloc(1024));
  });

  it('bad blocks fail reads until rewritten, unless permanent', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    await a.faults.add({ kind: 'bad-blocks', target: 'volume:vol1', lba: '10,12' });
    await a.faults.add({ kind: 'bad-blocks', target: 'volume:vol1', lba: '20', permanent: true });
    const e = await errorOf(device.read(8 * 512, Buffer.alloc(8 * 512)));
    expect([e.code, e.lba]).toEqual(['EIO', 10]);
    expect(e.message).toMatch(/block 10 of volume vol1.*rewrite it/);
    await device.write(10 * 512, Buffer.alloc(512, 7));
    expect((await errorOf(device.read(8 * 512, Buffer.alloc(8 * 512)))).lba).toBe(12);
    await device.writeZeroes(12 * 512, 512);
    const back = Buffer.alloc(512);
    await device.read(10 * 512, back);
    expect(back[0]).toBe(7);
    await device.write(20 * 512, Buffer.alloc(512, 1));
    expect((await errorOf(device.read(20 * 512, Buffer.alloc(512)))).lba).toBe(20);
  });

  it('triggers: every Nth, after N, once; a flag gates a fault', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    const outcomes = async (n: number): Promise<string> => {
      let s = '';
      for (let i = 0; i < n; i++)
        s += await device.read(0, Buffer.alloc(512)).then(
          () => '.',
          () => 'x',
        );
      return s;
    };
    const every = await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], every: 3 });
    expect(await outcomes(7)).toBe('..x..x.');
    a.faults.remove(every.id);
    const after = await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], after: 2 });
    expect(await outcomes(4)).toBe('..xx');
    a.faults.remove(after.id);
    await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], once: true });
    expect(await outcomes(3)).toBe('x..');
    await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], flag: 'broken' });
    expect(await outcomes(2)).toBe('..');
    a.faults.setFlag('broken', true);
    expect(await outcomes(2)).toBe('xx');
    a.faults.setFlag('broken', false);
    expect(await outcomes(1)).toBe('.');
  });

  it('a seeded probability replays the same injections; a plan applied again starts over', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    const plan =
      'name: flaky\nseed: 42\nfaults:\n  - kind: error\n    target: volume:vol1\n    ops: [read]\n    probability: 0.3\n  - kind: corrupt\n    target: volume:vol1\n    probability: 0.2\n';
    const run = async (): Promise<string> => {
      await a.faults.applyPlan(plan, 'test');
      const since = a.faults.events().at(-1)?.seq ?? 0;
      const out: string[] = [];
      for (let i = 0; i < 60; i++) {
        const buf = Buffer.alloc(512);
        out.push(
          await device.read(i * 512, buf).then(
            () => buf.toString('hex').replace(/^0+$/, '0'),
            (e: BlockDeviceError) => e.code,
          ),
        );
      }
      return JSON.stringify({ out, events: a.faults.events(since).map((e) => [e.faultId.length, e.kind, e.op, e.offset]) });
    };
    const first = await run();
    expect(first).toMatch(/EIO/);
    expect(first).toMatch(/"corrupt"/);
    expect(await run()).toBe(first);
    expect(a.faults.list()).toHaveLength(2); // the plan's faults were replaced, not added again
  });

  it('pause holds operations until the fault is removed; --drain waits for those in flight', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    const p = await a.faults.add({ kind: 'pause', target: 'volume:vol1' }, { drain: true });
    let done = false;
    const read = device.read(0, Buffer.alloc(512)).then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    a.faults.remove(p.id);
    await read;
    expect(done).toBe(true);
  });

  it('delay holds each operation for the time given', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    await a.faults.add({ kind: 'delay', target: 'volume:vol1', ms: 60, ops: ['write'] });
    const t0 = performance.now();
    await device.write(0, Buffer.alloc(512));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(55);
    const t1 = performance.now();
    await device.read(0, Buffer.alloc(512));
    expect(performance.now() - t1).toBeLessThan(50);
  });

  it('disconnect drops every connection of the export at once and refuses reconnects for a while', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const c1 = attach(a, 'vol1');
    const c2 = attach(a, 'vol1');
    await a.faults.add({ kind: 'disconnect', target: 'export:vol1', refuseMs: 200 });
    expect(c1.events).toEqual([{ kind: 'disconnect', reason: expect.stringMatching(/fault f\d+ dropped/) }]);
    expect(c2.events).toHaveLength(1);
    c1.close();
    c2.close();
    expect(() => attach(a, 'vol1')).toThrow(/refuses connections for 1 s more/);
    await new Promise((r) => setTimeout(r, 250));
    attach(a, 'vol1').close();
    // With --ops: only the connection of a matching request, when its trigger fires.
    const c3 = attach(a, 'vol1');
    const c4 = attach(a, 'vol1');
    await a.faults.add({ kind: 'disconnect', target: 'export:vol1', ops: ['write'], every: 2 });
    expect([c3.events, c4.events]).toEqual([[], []]);
    await c3.device.write(0, Buffer.alloc(512));
    expect((await errorOf(c3.device.write(0, Buffer.alloc(512)))).code).toBe('ESHUTDOWN');
    expect([c3.events.length, c4.events.length]).toEqual([1, 0]);
  });

  it('lying flush acknowledges a flush without doing it and drops FUA', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const { device } = attach(a, 'vol1');
    await a.faults.add({ kind: 'lying-flush', target: 'volume:vol1' });
    await device.write(0, Buffer.alloc(512, 1), { fua: true });
    await device.flush();
    expect(a.faults.events().map((e) => e.op)).toEqual(['write', 'flush']);
  });

  it('refuses bad faults with one line naming the problem and an example', async () => {
    const a = await openArray();
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    await expect(a.faults.add({ kind: 'explode', target: 'volume:vol1' })).rejects.toThrow(/unknown fault kind 'explode'; the kinds are error, bad-blocks/);
    await expect(a.faults.add({ kind: 'error', target: 'volume:nope' })).rejects.toThrow(/there is no volume nope; 'arraylab volume list'/);
    await expect(a.faults.add({ kind: 'error', target: 'volume:vol1', probability: 1.5 })).rejects.toThrow(
      /probability must be a number from 0 to 1, not 1.5; for example: arraylab fault add error/,
    );
    await expect(a.faults.add({ kind: 'error', target: 'volume:vol1', lba: '20-10' })).rejects.toThrow(/ends before it starts/);
    await expect(a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['fly'] })).rejects.toThrow(/unknown operation 'fly'/);
    await expect(a.faults.add({ kind: 'delay', target: 'volume:vol1', ms: 5, mibs: 3 })).rejects.toThrow(/option 'mibs' does not apply/);
    await expect(a.faults.add({ kind: 'error', target: 'volume:vol1', every: 2, once: true })).rejects.toThrow(/at most one trigger/);
    await expect(a.faults.add({ kind: 'copy-error', target: 'session:99' })).rejects.toThrow(/no copy session 99/);
    await expect(a.faults.applyPlan('faults: 3', 'p.yaml')).rejects.toThrow(/p.yaml: faults must be a list/);
    await expect(a.faults.add({ kind: 'disconnect', target: 'export:vol1', once: true })).rejects.toThrow(/a trigger or --lba needs --ops/);
    expect(a.faults.list()).toEqual([]);
  });

  it('keeps faults across a restart unless transient; triggers start over', async () => {
    const dir = path.join(tmp, 'keep');
    let a = await openArray(dir);
    await a.createVolume({ name: 'vol1', sizeBytes: 4 * MiB });
    const kept = await a.faults.add({ kind: 'error', target: 'volume:vol1', ops: ['read'], lba: '0-0' });
    await a.faults.add({ kind: 'delay', target: 'volume:vol1', ms: 1, transient: true });
    await a.close();
    open.length = 0;
    a = await openArray(dir);
    expect(a.faults.list().map((f) => f.id)).toEqual([kept.id]);
    const { device } = attach(a, 'vol1');
    expect((await errorOf(device.read(0, Buffer.alloc(512)))).code).toBe('EIO');
    const next = await a.faults.add({ kind: 'pause', target: 'volume:vol1' });
    expect(Number(next.id.slice(1))).toBeGreaterThan(Number(kept.id.slice(1)) + 1); // ids are not reused
    a.faults.clear();
  });
});
