/**
 * tape-error faults on the tape library (the array's fault engine as its TapeFaultHook): a
 * write, restore or verify that hits one fails with a message naming the cartridge, the fault
 * and what is left; a failed write leaves the cartridge as it was (no record, no half record,
 * the same space used, also after a reopen), and the next write after the fault is removed works.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { StorageArray } from '../../../emulator/array/StorageArray.js';
import { arrayTapeVolumes } from '../../../emulator/tape/arrayVolumes.js';
import { TapeLibrary } from '../../../emulator/tape/TapeLibrary.js';
import { TapeError } from '../../../emulator/tape/types.js';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'arraylab-tapefault-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

let n = 0;
async function setup() {
  const array = await StorageArray.open({ backend: 'memory', logger, copyClock: 'manual' });
  cleanups.push(() => array.close());
  const dir = path.join(tmp, `lib${++n}`);
  const open = async () => {
    const lib = await TapeLibrary.open({ dir, volumes: arrayTapeVolumes(array), logger, faults: array.faults });
    cleanups.push(() => lib.close());
    array.tapeExists = (label) => lib.list().some((c) => c.label === label);
    return lib;
  };
  const lib = await open();
  await array.createVolume({ name: 'v', sizeBytes: 8 * MiB });
  await array.createVolume({ name: 'w', sizeBytes: 8 * MiB });
  // Three 1 MiB extents of data apart from each other: a record of three extents.
  const h = array.openExport('v', { protocol: 'nbd', connectionId: 'c1', remoteAddress: '127.0.0.1:1', readOnly: false })!;
  for (const [i, off] of [0, 3, 6].entries()) await h.device.write(off * MiB, Buffer.alloc(MiB, 0x11 * (i + 1)));
  await h.device.flush();
  h.close();
  await lib.add('T1', 64 * MiB);
  return { array, lib, open };
}

async function failure(p: Promise<unknown>): Promise<TapeError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TapeError);
  return err as TapeError;
}

describe('copy-error faults seen by tape', () => {
  it('the destination of an error-suspended session is refused with the array reason, also with a point in time', async () => {
    const { array, lib } = await setup();
    const ec = await array.copy.startEc('v', 'w');
    while ((await array.copy.step(1000)) > 0);
    expect(array.copy.get(ec.id).state).toBe('equivalent');
    await array.faults.add({ kind: 'copy-error', target: `session:${ec.id}`, ops: ['write'], once: true });
    const h = array.openExport('v', { protocol: 'nbd', connectionId: 'c2', remoteAddress: '127.0.0.1:2', readOnly: false })!;
    await h.device.write(0, Buffer.alloc(4096, 0x5a)); // the mirrored half fails; the host write stands
    h.close();
    const reason = array.copy.get(ec.id).error!;
    expect(array.copy.get(ec.id).state).toBe('error-suspended');
    for (const pointInTime of [undefined, new Date(Date.now() - 1000).toISOString()]) {
      const err = await failure(lib.write({ volume: 'w', cartridge: 'T1', ...(pointInTime ? { pointInTime } : {}) }));
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toBe(`cannot write volume w to tape: volume w is the destination of a copy session the array error-suspended: ${reason}`);
    }
    expect(lib.get('T1').records).toEqual([]);
  });
});

describe('tape-error faults', () => {
  it('a write that fails half way keeps nothing: no record, the same space used, also after a reopen', async () => {
    const { array, lib, open } = await setup();
    const used = lib.get('T1').cartridge.usedBytes;
    const f = await array.faults.add({ kind: 'tape-error', target: 'tape:T1', ops: ['write'], every: 2 }); // the 2nd extent
    const err = await failure(lib.write({ volume: 'v', cartridge: 'T1' }));
    expect(err.code).toBe('INTERNAL');
    expect(err.message).toBe(
      `tape write of volume v to cartridge T1 failed: tape write error on cartridge T1 (injected by fault ${f.id}); remove the fault or use another cartridge; nothing of the record was kept (the cartridge is as before)`,
    );
    expect(lib.get('T1')).toMatchObject({ records: [], cartridge: { usedBytes: used, recordCount: 0 } });
    await lib.close();
    const again = await open();
    expect(again.get('T1')).toMatchObject({ records: [], cartridge: { usedBytes: used, recordCount: 0 } });
    array.faults.remove(f.id);
    expect((await again.write({ volume: 'v', cartridge: 'T1' })).record).toBe(1);
    expect((await again.verify({ cartridge: 'T1' }))[0]).toMatchObject({ ok: true });
  });

  it('an all-zero volume (a record of no extents) is checked too', async () => {
    const { array, lib } = await setup();
    await array.faults.add({ kind: 'tape-error', target: 'tape:T1', ops: ['write'], once: true });
    await failure(lib.write({ volume: 'w', cartridge: 'T1' }));
    expect(lib.get('T1').records).toEqual([]);
    expect((await lib.write({ volume: 'w', cartridge: 'T1' })).record).toBe(1); // once: fired
  });

  it('a restore whose tape read fails stops with the reason; a verify fails (not a bad record); both work once the fault is gone', async () => {
    const { array, lib } = await setup();
    await lib.write({ volume: 'v', cartridge: 'T1' });
    const f = await array.faults.add({ kind: 'tape-error', target: 'tape:T1', ops: ['read'] });
    const r = await failure(lib.restore({ cartridge: 'T1', record: 1, volume: 'w' }));
    expect(r.code).toBe('INTERNAL');
    expect(r.message).toBe(
      `restore of cartridge T1 record 1 onto volume w failed: tape read error on cartridge T1 (injected by fault ${f.id}); remove the fault or use another cartridge; w holds part of the record; restore it again`,
    );
    const v = await failure(lib.verify({ cartridge: 'T1' }));
    expect(v.message).toMatch(/^tape verify of cartridge T1 record 1 failed: tape read error on cartridge T1 \(injected by fault f\d+\).*; verify it again$/);
    // Writes are not read faults: the cartridge still takes records.
    expect((await lib.write({ volume: 'v', cartridge: 'T1' })).record).toBe(2);
    array.faults.remove(f.id);
    const done = await lib.restore({ cartridge: 'T1', record: 1, volume: 'w' });
    expect(done.sha256).toBe(lib.get('T1').records[0]!.sha256);
    expect((await lib.verify({ cartridge: 'T1' })).every((c) => c.ok)).toBe(true);
    expect(array.faults.events().map((e) => `${e.kind} ${e.target} ${e.op}`)).toContain('tape-error tape:T1 read');
  });
});
