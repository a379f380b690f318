/**
 * The agent never reports a backup that did not happen as described (issue 13), against the
 * real array with a RecordingHost:
 *   - no device found: no backup "with a lock" that locked nothing; --lock none is the only
 *     way without one, and PREP says what was done;
 *   - generations the array broke (a full snap pool) or lost (sessions cancelled out of band)
 *     show as such in history and status, restore refuses them with the array's reason,
 *     resource-match records them, doctor's data (status) names them;
 *   - restore --to another volume refuses registered, busy or wrongly sized targets;
 *   - tape: one generation numbering for disk and tape, --to tape keeps held generations, tape
 *     records carry the image's point in time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerAttached, rejects, startLab, type Lab } from './harness.js';

let L: Lab;

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
});

describe('a transaction volume without a device here', () => {
  it('is not backed up "with a lock" that locked nothing: registration warns, the backup fails naming the fix; --lock none backs up and says so', async () => {
    await L.mk(['nd-tv', 'nd-bv']);
    const { m, host } = await L.manager();
    const info = await L.array.getVolume('nd-tv');
    const reg = await m.registerTransaction('nd-tv', { lock: 'freeze' });
    expect(reg.warnings).toEqual([
      expect.stringContaining(
        `nd-tv cannot be frozen yet: no block device of nd-tv was found on this host (looked by its WWN ${info.wwn}, its serial ${info.serial}`,
      ),
    ]);
    expect(reg.warnings[0]).toMatch(/--device-map.*--lock none/);
    await m.registerBackup('nd-bv');
    const r = await m.backup(['nd-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
    expect(r.volumes[0]!.error).toMatch(
      /^cannot back up nd-tv: the agent must freeze it \(--lock freeze\), but no block device of nd-tv was found on this host/,
    );
    expect(r.volumes[0]!.generation).toBeUndefined();
    expect(await m.history('nd-tv')).toEqual([]);
    expect(host.callsOf('lockTransaction')).toEqual([]);
    // --flush-only needs a device too.
    expect((await m.backup(['nd-tv'], { flushOnly: true })).volumes[0]!.error).toMatch(/the agent must flush it, but no block device/);

    // --lock none: an explicit choice; no warning, hooks still run, PREP says none.
    const none = await m.registerTransaction('nd-tv', { lock: 'none' });
    expect(none).toMatchObject({ lock: 'none', warnings: [] });
    host.hookVerdicts.set('backup-pre', 'ok');
    const r2 = await m.backup(['nd-tv']);
    host.hookVerdicts.delete('backup-pre');
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect(r2.volumes[0]!.generation).toMatchObject({ prep: 'none', status: 'held' });
    expect(r2.volumes[0]!.hooks.map((h) => h.phase)).toEqual(['backup-pre', 'backup-post']);
    expect(host.callsOf('lockTransaction')).toEqual([]);
    expect((await rejects(m.registerTransaction('nd-tv', { lock: 'none', flushOnly: true }))).code).toBe('INVALID_ARGUMENT');
  });

  it('PREP is what pre-processing did: unmount, freeze, flush, or not-mounted for a device with nothing mounted', async () => {
    await L.mk(['pr-tv', 'pr-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'pr-tv', { generations: 1 });
    await m.registerBackup('pr-bv');
    const preps: string[] = [];
    const once = async (opts: { flushOnly?: boolean } = {}) => {
      const r = await m.backup(['pr-tv'], opts);
      expect(r.ok, r.volumes[0]!.error).toBe(true);
      preps.push(r.volumes[0]!.generation!.prep);
    };
    await once(); // not mounted
    host.mounts.set('/dev/fake-pr-tv', [{ mountPoint: '/mnt/pr', fsType: 'ext4', source: '/dev/fake-pr-tv', mountOptions: 'rw', superOptions: 'rw' }]);
    await once(); // unmounted
    await once({ flushOnly: true });
    await m.registerTransaction('pr-tv', { lock: 'freeze' });
    await once();
    expect(preps).toEqual(['not-mounted', 'unmount', 'flush', 'freeze']);
    expect((await m.history('pr-tv')).map((g) => g.prep)).toEqual(['freeze', 'flush', 'unmount', 'not-mounted']);
  });
});

describe('registration', () => {
  it('lowering --generations says which generations go, and when; raising it says nothing', async () => {
    await L.mk(['lg-tv', 'lg-b1', 'lg-b2', 'lg-b3']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'lg-tv', { generations: 3 });
    for (const b of ['lg-b1', 'lg-b2', 'lg-b3']) await m.registerBackup(b);
    for (let i = 0; i < 3; i++) expect((await m.backup(['lg-tv'])).ok).toBe(true);
    const h = await m.history('lg-tv');
    const lower = await m.registerTransaction('lg-tv', { generations: 1 });
    expect(lower.notes).toEqual([
      `lg-tv now keeps 1 generation and holds 3: generation 3 (#1 of ${h[2]!.at}, on lg-b1), generation 2 (#2 of ${h[1]!.at}, on lg-b2), generation 1 (#3 of ${h[0]!.at}, on lg-b3) will be released at the next backup, before its copy`,
    ]);
    expect((await m.registerTransaction('lg-tv', { generations: 2 })).notes).toEqual([]);
    // Nothing was released by saying so: the next backup does it.
    expect((await m.history('lg-tv')).filter((g) => g.status === 'held')).toHaveLength(3);
    expect((await m.backup(['lg-tv'])).ok).toBe(true);
    expect((await m.history('lg-tv')).filter((g) => g.status === 'held').map((g) => g.number)).toEqual([4, 3]);
  });
});

describe('generation health', () => {
  it('an OPC generation whose session was cancelled on the array before its copy finished is lost, not a finished copy', async () => {
    await L.mk(['oc-tv'], '256MiB');
    // The backup volume may hold 4 MiB: the copy of 16 stops there and retries, still copying
    // when it is cancelled below, however fast the copy engine is.
    await L.mk(['oc-b1'], '256MiB', { allocLimitBytes: 4 << 20 });
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'oc-tv', { generations: 1, defaultType: 'opc' });
    await m.registerBackup('oc-b1');
    await L.write('oc-tv', 0x62, 0, '16M');
    const r = await m.backup(['oc-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    const id = (await L.array.listCopies()).find((x) => x.source === 'oc-tv' && x.type === 'opc')!.id;
    await L.array.cancelCopy(id); // out of band: the copy never finished
    const why = `its OPC session ${id} was cancelled on the array before its copy finished: oc-b1 holds only part of oc-tv generation #1`;
    expect((await m.history('oc-tv'))[0]).toMatchObject({ number: 1, status: 'lost', error: why });
    expect((await rejects(m.restore('oc-tv'))).message).toContain(why);
    const rm = await m.resourceMatch();
    expect(rm.repaired.join('\n')).toContain(`oc-tv generation #1 marked lost: ${why}`);
    expect(rm.repaired.join('\n')).not.toMatch(/the image on oc-b1 is kept/);
    expect((await m.history('oc-tv'))[0]).toMatchObject({ status: 'lost', generation: 0 });
  });

  it("a SnapOPC+ generation error-suspended by a full pool shows as error with the array's reason; restore is refused with it; resource-match records it", async () => {
    await L.mk(['gh-tv']);
    await L.mk(['gh-s1'], '64MiB', { allocLimitBytes: 1 << 20 });
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'gh-tv', { defaultType: 'snapopcplus' });
    await m.registerBackup('gh-s1');
    await L.write('gh-tv', 0x11, 0, '8M');
    const r = await m.backup(['gh-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    await L.write('gh-tv', 0x12, 0, '8M'); // 8 MiB of before-images into a 1 MiB pool
    const h = await m.history('gh-tv');
    expect(h[0]).toMatchObject({ number: 1, generation: 1, status: 'error' });
    expect(h[0]!.error).toMatch(/^the array error-suspended session \S+: snap volume gh-s1 .*full/);
    const st = await m.status();
    expect(st.transactionVolumes[0]!.unhealthy).toEqual([expect.stringMatching(/^generation 1 \(#1\): error: the array error-suspended session/)]);
    expect(st.transactionVolumes[0]!.heldGenerations).toBe(1);

    const e = await rejects(m.restore('gh-tv'));
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(
      /^cannot restore gh-tv generation 1 \(#1\): it is error on the array: the array error-suspended session \S+: snap volume gh-s1.*; run arraylab-agent resource-match to record it$/,
    );
    expect(host.callsOf('lockTransaction').length).toBe(1); // only the backup's

    const rm = await m.resourceMatch();
    expect(rm.repaired.join('\n')).toMatch(/gh-tv generation #1 marked error: the array error-suspended session/);
    expect((await m.history('gh-tv'))[0]).toMatchObject({ status: 'error', generation: 0 });
    // The broken generation's session was the only one: it is gone, and its volume serves again.
    expect((await L.array.listCopies()).filter((c) => c.source === 'gh-tv')).toEqual([]);
    expect((await m.status()).backupVolumes[0]!.inUseBy).toBe('');
    expect((await m.status()).transactionVolumes[0]!.unhealthy).toEqual([]);
  });

  it('sessions cancelled on the array, or a pair resumed out of band, make their generations lost', async () => {
    await L.mk(['gl-q', 'gl-qb'], '32MiB'); // a size of their own: backup volumes serve any volume of their size
    await L.mk(['gl-e', 'gl-e1', 'gl-e2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'gl-q', { defaultType: 'quickopc' });
    await m.registerBackup('gl-qb');
    await registerAttached(m, host, 'gl-e', { generations: 1 });
    await m.registerBackup('gl-e1');
    await m.registerBackup('gl-e2');
    const q = await m.backup(['gl-q']);
    const qid = q.volumes[0]!.generation!.sessionId;
    await L.waitCopy(qid, (s) => s?.state === 'tracking');
    await L.array.cancelCopy(qid);
    await L.write('gl-qb', 0x66, 0, '64k'); // overwritten out of band, now that nothing protects it
    expect((await m.history('gl-q'))[0]).toMatchObject({
      status: 'lost',
      error: expect.stringMatching(/its QuickOPC session \S+ was cancelled on the array: gl-qb is no longer protected/),
    });
    const e = await rejects(m.restore('gl-q'));
    expect(e.message).toMatch(/it is lost on the array: its QuickOPC session/);

    await m.startSync('gl-e', { wait: true });
    const b = await m.backup(['gl-e']);
    const eid = b.volumes[0]!.generation!.sessionId;
    expect((await m.history('gl-e'))[0]).toMatchObject({ status: 'held', sessionId: eid });
    await L.array.resumeCopy(eid); // out of band: the backup volume follows the source again
    expect((await m.history('gl-e'))[0]!.error).toMatch(/its EC pair \S+ was resumed on the array \(now (copying|equivalent)\): gl-e1 follows gl-e again/);
    expect((await m.status()).transactionVolumes.find((t) => t.volume === 'gl-e')!.unhealthy[0]).toMatch(/^generation 1 \(#1\): lost:/);
    const rm = await m.resourceMatch();
    expect(rm.repaired.join('\n')).toMatch(/gl-e generation #1 marked lost/);
    expect(rm.repaired.join('\n')).toMatch(/gl-q generation #1 marked lost/);
  });
});

describe('restore onto another volume', () => {
  it('refuses a registered transaction volume (unless --force), a target open elsewhere or mounted here (unless --force), and a target of another size (always)', async () => {
    await L.mk(['ro-a', 'ro-ab', 'ro-b', 'ro-free']);
    await L.mk(['ro-big'], '128MiB');
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'ro-a');
    await registerAttached(m, host, 'ro-b');
    await m.registerBackup('ro-ab');
    await L.write('ro-a', 0x21, 0, '1M');
    await L.write('ro-b', 0x22, 0, '1M');
    expect((await m.backup(['ro-a'])).ok).toBe(true);

    const e1 = await rejects(m.restore('ro-a', { to: 'ro-b' }));
    expect(e1.message).toBe(
      'cannot restore ro-a generation 1 (#1) onto ro-b: ro-b is a registered transaction volume, whose data the restore would overwrite; choose another --to volume, or pass --force',
    );
    await L.expectPattern('ro-b', 0x22, 0, '1M');

    const e2 = await rejects(m.restore('ro-a', { to: 'ro-big', force: true }));
    expect(e2.message).toMatch(
      /^cannot restore ro-a generation 1 \(#1\) onto ro-big: ro-big is 128 MiB with 512-byte blocks, the generation 64 MiB with 512-byte blocks; restore onto a volume of the same size/,
    );

    const client = await L.holdOpen('ro-free');
    try {
      const e3 = await rejects(m.restore('ro-a', { to: 'ro-free' }));
      expect(e3.message).toMatch(
        /^cannot restore ro-a generation 1 \(#1\) onto ro-free: ro-free is exported read-write to 1 connected client \(arraylab export list\); dismount it there first or pass --force$/,
      );
    } finally {
      await client.stop();
    }
    host.deviceMap.set('ro-free', '/dev/fake-ro-free');
    host.mounts.set('/dev/fake-ro-free', [{ mountPoint: '/mnt/free', fsType: 'ext4', source: '/dev/fake-ro-free', mountOptions: 'rw', superOptions: 'rw' }]);
    const e4 = await rejects(m.restore('ro-a', { to: 'ro-free' }));
    expect(e4.message).toMatch(/onto ro-free: it is mounted on this host at \/mnt\/free; unmount it first, or pass --force/);
    const r = await m.restore('ro-a', { to: 'ro-free', force: true });
    expect(r.target).toBe('ro-free');
    await L.expectPattern('ro-free', 0x21, 0, '1M');
    // --force on a registered transaction volume: done, as asked.
    await m.restore('ro-a', { to: 'ro-b', force: true });
    await L.expectPattern('ro-b', 0x21, 0, '1M');
  });
});

describe('tape generations', () => {
  it('history and restore number generations alike, tape-only ones included; --to tape stages on an unused volume; records keep the point in time', async () => {
    await L.mk(['tg-tv', 'tg-b1', 'tg-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'tg-tv', { generations: 1 });
    await m.registerBackup('tg-b1');
    await m.registerBackup('tg-b2');
    await L.write('tg-tv', 0x41, 0, '1M');
    const r1 = await m.backup(['tg-tv'], { to: 'both' });
    expect(r1.ok, r1.volumes[0]!.error).toBe(true);
    const g1 = r1.volumes[0]!.generation!;
    // The tape copy keeps the image's instant on the array's clock (the OPC's start), which the
    // tape's own record says too, not the instant it was written.
    expect(g1.tape).toMatchObject({ status: 'ok' });
    expect(Math.abs(Date.parse(g1.tape!.pointInTime) - Date.parse(g1.at))).toBeLessThan(2000);
    const rec = (await L.array.getCartridge(g1.tape!.cartridge)).records.find((x) => x.record === g1.tape!.record)!;
    expect(rec.imageAt).toBe(g1.tape!.pointInTime);
    expect(rec.createdAt).toBe(g1.tape!.at);

    // N=1 is held on tg-b1; --to tape stages on tg-b2 and keeps generation #1 on disk.
    await L.write('tg-tv', 0x42, 0, '1M');
    const r2 = await m.backup(['tg-tv'], { to: 'tape' });
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect(r2.volumes[0]!.generation).toMatchObject({ number: 2, backupVolume: 'tg-b2', status: 'tape-only', generation: 1 });
    const h = await m.history('tg-tv');
    expect(h.map((g) => [g.number, g.generation, g.status])).toEqual([
      [2, 1, 'tape-only'],
      [1, 2, 'held'],
    ]);
    await L.expectPattern('tg-b1', 0x41, 0, '1M');

    // --generation N means history's N, from disk and from tape.
    await L.write('tg-tv', 0x43, 0, '1M');
    const e = await rejects(m.restore('tg-tv', { generation: 1 }));
    expect(e.message).toBe(
      'cannot restore tg-tv generation 1 (#2) from disk: it is tape-only (its backup volume was reused) and only its tape copy is left; restore it with --from tape',
    );
    const t1 = await m.restore('tg-tv', { generation: 1, fromTape: true });
    expect(t1.generation.number).toBe(2);
    await L.expectPattern('tg-tv', 0x42, 0, '1M');
    const t2 = await m.restore('tg-tv', { generation: 2, fromTape: true });
    expect(t2.generation.number).toBe(1);
    await L.expectPattern('tg-tv', 0x41, 0, '1M');
    const d2 = await m.restore('tg-tv', { generation: 2 });
    expect(d2).toMatchObject({ from: 'disk', generation: { number: 1 } });
  });

  it('--complete-after disk returns with the tape copy pending; it ends ok in the background', async () => {
    await L.mk(['tb-tv', 'tb-b1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'tb-tv');
    await m.registerBackup('tb-b1');
    await L.write('tb-tv', 0x51, 0, '4M');
    expect((await rejects(m.backup(['tb-tv'], { completeAfter: 'disk' }))).message).toMatch(/--complete-after disk applies to --to both/);
    const r = await m.backup(['tb-tv'], { to: 'both', completeAfter: 'disk' });
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    expect(r.volumes[0]!.generation!.tape).toMatchObject({ status: 'pending', pid: process.pid });
    // While it runs the backup volume stays claimed: a second backup cannot take it.
    await m.settled();
    const h = await m.history('tb-tv');
    expect(h[0]!.tape).toMatchObject({ status: 'ok', pointInTime: expect.stringMatching(/^\d{4}-/) });
  });
});
