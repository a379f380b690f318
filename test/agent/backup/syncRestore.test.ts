/**
 * BackupManager against the real array: synchronized backups (EC), restore (OPC, reversed
 * QuickOPC, host copy of a snap volume, tape), tape copies, resource match of vanished sessions.
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

/** A transaction volume PREFIX-tv (attached, N=1) and two backup volumes PREFIX-b1, -b2. */
async function registerSync(prefix: string, opts: { resyncAfterBackup?: boolean } = {}) {
  const { m, host } = await L.manager();
  await registerAttached(m, host, `${prefix}-tv`, { generations: 1, ...opts });
  await m.registerBackup(`${prefix}-b1`);
  await m.registerBackup(`${prefix}-b2`);
  return { m, host };
}

describe('synchronized backup', () => {
  it('is refused before equivalency, accepted after; suspends and keeps the pair; the next start-sync onto that volume resumes it (only the changes)', async () => {
    await L.mk(['sy-tv', 'sy-b1', 'sy-b2'], '256MiB');
    const { m, host } = await registerSync('sy');
    await L.write('sy-tv', 0x71, 0, '4M');
    host.deviceMap.set('sy-b1', '/dev/fake-sy-b1');
    // Rate 0: the pair starts with no background copy, so it is still copying below, however
    // fast the copy would be; the rate is lifted once the early backup was refused.
    const view = await m.startSync('sy-tv', { rateMiBs: 0 });
    expect(view).toMatchObject({ transactionVolume: 'sy-tv', backupVolume: 'sy-b1', start: 'full', unitsToCopy: 4096, totalUnits: 4096 });
    expect(host.calls.filter((c) => c.method === 'lockBackup' || c.method === 'unlock').map((c) => `${c.method}:${c.volume}`)).toEqual([
      'lockBackup:sy-b1',
      'unlock:sy-b1',
    ]);
    expect((await rejects(m.startSync('sy-tv'))).code).toBe('ALREADY_EXISTS');
    const early = await m.backup(['sy-tv']);
    expect(early.volumes[0]!.code).toBe('FAILED_PRECONDITION');
    expect(early.volumes[0]!.error).toMatch(
      /^cannot back up sy-tv: its copy to sy-b1 is not yet equivalent \(copying, \d+%\); wait for equivalency \(arraylab-agent status, or backup --wait-equivalent SECONDS\) and retry$/,
    );
    expect(host.callsOf('lockTransaction')).toEqual([]);
    expect((await m.status()).transactionVolumes[0]!.sync).toMatchObject({ state: 'copying', backupVolume: 'sy-b1' });

    await L.array.setCopyRate(view.sessionId, undefined);
    await L.waitCopy(view.sessionId, (s) => s?.state === 'equivalent');
    const r1 = await m.backup(['sy-tv']);
    expect(r1.ok, r1.volumes[0]!.error).toBe(true);
    expect(r1.volumes[0]!.generation).toMatchObject({
      number: 1,
      type: 'ec',
      backupVolume: 'sy-b1',
      sessionId: view.sessionId,
      generation: 1,
      prep: 'not-mounted',
    });
    expect(await L.array.getCopy(view.sessionId)).toMatchObject({ state: 'suspended', source: 'sy-tv', destination: 'sy-b1' }); // kept
    await L.write('sy-tv', 0x72, 0, '4M');
    await L.expectPattern('sy-b1', 0x71, 0, '4M'); // the image of the cut
    await expect(L.expectPattern('sy-b1', 0x72, 0, '4M')).rejects.toThrow();
    expect((await m.status()).transactionVolumes[0]!.sync).toBeNull();

    // Second cycle: sy-b1 holds generation 1, so start-sync takes sy-b2 (a new pair, full
    // copy); after the backup, generation 1 is released (N=1): sy-b1 is unused again but keeps
    // its suspended pair.
    const v2 = await m.startSync('sy-tv', { wait: true });
    expect(v2).toMatchObject({ backupVolume: 'sy-b2', start: 'full', state: 'equivalent' });
    const r2 = await m.backup(['sy-tv']);
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect((await m.history('sy-tv')).map((g) => [g.number, g.generation, g.status, g.backupVolume])).toEqual([
      [2, 1, 'held', 'sy-b2'],
      [1, 0, 'released', 'sy-b1'],
    ]);
    expect((await m.status()).backupVolumes.find((b) => b.volume === 'sy-b1')!.inUseBy).toBe('');
    expect(await L.array.getCopy(view.sessionId)).toMatchObject({ state: 'suspended', destination: 'sy-b1' });
    await L.expectPattern('sy-b2', 0x72, 0, '4M');

    // Third cycle: start-sync resumes sy-b1's pair: only the units written since backup 1
    // (4 MiB = 64 units of 64 KiB) are copied, not the 256 MiB of a new pair.
    await L.write('sy-tv', 0x73, 8 << 20, '64k');
    const v3 = await m.startSync('sy-tv', { wait: true });
    expect(v3).toMatchObject({ backupVolume: 'sy-b1', sessionId: view.sessionId, start: 'resume', unitsToCopy: 65, totalUnits: 4096, state: 'equivalent' });
    const r3 = await m.backup(['sy-tv']);
    expect(r3.ok, r3.volumes[0]!.error).toBe(true);
    await L.expectPattern('sy-b1', 0x72, 0, '4M');
    await L.expectPattern('sy-b1', 0x73, 8 << 20, '64k');
    expect(await L.compare('sy-tv', 'sy-b1')).toBe(true);

    // --full: a new pair even where one could be resumed (sy-b2's); cancel-sync ends it and
    // frees its volume.
    const v4 = await m.startSync('sy-tv', { full: true });
    expect(v4).toMatchObject({ backupVolume: 'sy-b2', start: 'full', unitsToCopy: 4096 });
    expect((await L.array.listCopies()).filter((c) => c.destination === 'sy-b2').map((c) => c.id)).toEqual([v4.sessionId]);
    await m.cancelSync('sy-tv');
    await expect(L.array.getCopy(v4.sessionId)).rejects.toThrow();
    expect((await m.status()).backupVolumes.find((b) => b.volume === v4.backupVolume)!.inUseBy).toBe('');
    expect((await rejects(m.cancelSync('sy-tv'))).code).toBe('NOT_FOUND');
  });

  it('--wait-equivalent waits for the pair; --resync-after-backup resumes the mirroring right after the backup', async () => {
    await L.mk(['sw-tv', 'sw-b1', 'sw-b2']);
    const { m } = await registerSync('sw', { resyncAfterBackup: true });
    await L.write('sw-tv', 0x31, 0, '8M');
    const v = await m.startSync('sw-tv', { rateMiBs: 0 });
    expect((await L.array.getCopy(v.sessionId)).state).toBe('copying');
    setTimeout(() => void L.array.setCopyRate(v.sessionId, undefined), 300);
    const r = await m.backup(['sw-tv'], { waitEquivalentSeconds: 30 });
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    // Mirroring resumed at once onto the other volume (sw-b1 holds the generation).
    expect(r.volumes[0]!.resync).toMatchObject({ transactionVolume: 'sw-tv', backupVolume: 'sw-b2', start: 'full' });
    expect((await m.status()).transactionVolumes[0]!.sync).toMatchObject({ backupVolume: 'sw-b2' });
    // --no-resync (resync: false) for one run.
    await L.waitCopy(r.volumes[0]!.resync!.sessionId, (s) => s?.state === 'equivalent');
    const r2 = await m.backup(['sw-tv'], { resync: false });
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect(r2.volumes[0]!.resync).toBeUndefined();
    expect((await m.status()).transactionVolumes[0]!.sync).toBeNull();
    // A pair that never gets there: refused after the wait, saying so.
    await L.write('sw-tv', 0x32, 0, '1M');
    const v3 = await m.startSync('sw-tv', { rateMiBs: 0 });
    expect(v3).toMatchObject({ backupVolume: 'sw-b1', start: 'resume', unitsToCopy: 16, state: 'copying' });
    const late = await m.backup(['sw-tv'], { waitEquivalentSeconds: 0.3 });
    expect(late.volumes[0]!.error).toMatch(/not yet equivalent \(copying, \d+%\) after waiting 0.3 s/);
    // --resync on a volume without a sync pair is refused.
    await m.cancelSync('sw-tv');
    const bad = await m.backup(['sw-tv'], { resync: true });
    expect(bad.volumes[0]!.error).toMatch(/--resync is for synchronized backups, and sw-tv has no sync pair/);
  });

  it('with N=1 and one backup volume the second sync cycle fails clearly', async () => {
    await L.mk(['s1-tv', 's1-b1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 's1-tv', { generations: 1 });
    await m.registerBackup('s1-b1');
    const v = await m.startSync('s1-tv');
    await L.waitCopy(v.sessionId, (s) => s?.state === 'equivalent');
    expect((await m.backup(['s1-tv'])).ok).toBe(true);
    const e = await rejects(m.startSync('s1-tv'));
    expect(e.code).toBe('RESOURCE_EXHAUSTED');
    expect(e.message).toMatch(
      /^no unused backup volume of 64 MiB for s1-tv \(1 generation held, 1 registered backup volume of that size\); a synchronized backup needs N\+1 backup volumes for N generations: register one with: arraylab-agent register backup VOL$/,
    );
  });
});

describe('restore', () => {
  it('OPC generation: the transaction volume reads as the backup again', async () => {
    await L.mk(['rs-tv', 'rs-b1', 'rs-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rs-tv', { generations: 2 });
    await m.registerBackup('rs-b1');
    await m.registerBackup('rs-b2');
    await L.write('rs-tv', 0x81, 0, '2M');
    expect((await m.backup(['rs-tv'])).ok).toBe(true);
    await L.write('rs-tv', 0x82, 0, '2M');
    expect((await m.backup(['rs-tv'])).ok).toBe(true);
    await L.write('rs-tv', 0x83, 0, '2M'); // after the backups
    await L.expectPattern('rs-tv', 0x83, 0, '2M');

    const r = await m.restore('rs-tv', { generation: 2 });
    expect(r).toMatchObject({
      volume: 'rs-tv',
      target: 'rs-tv',
      from: 'disk',
      method: 'array-opc',
      generation: { number: 1, generation: 2, backupVolume: 'rs-b1' },
    });
    await L.expectPattern('rs-tv', 0x81, 0, '2M');
    expect(await L.compare('rs-tv', 'rs-b1')).toBe(true);
    expect(await L.compare('rs-tv', 'rs-b2')).toBe(false);
    // Pre- and post-processing: hook, unmount, invalidate (no device here), remount, hook.
    const phases = host.calls.filter((c) => c.method === 'runHook').map((c) => (c.args[0] as { phase: string }).phase);
    expect(phases.slice(-2)).toEqual(['restore-pre', 'restore-post']);
    expect(host.callsOf('lockTransaction', 'rs-tv').at(-1)!.args[1]).toBe('unmount');
    expect((await L.array.listCopies()).filter((c) => c.source === 'rs-b1' || c.destination === 'rs-tv')).toEqual([]);

    // --to another volume; a backup right after a restore works (no session left in the way).
    await L.mk(['rs-other']);
    const r2 = await m.restore('rs-tv', { to: 'rs-other' });
    expect(r2.target).toBe('rs-other');
    expect(await L.compare('rs-other', 'rs-b2')).toBe(true);
    expect((await m.backup(['rs-tv'])).ok).toBe(true);
    const e = await rejects(m.restore('rs-tv', { generation: 3 }));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toMatch(
      /rs-tv has 2 restorable generations; --generation 3 is not one of them \(1 is the newest; arraylab-agent history rs-tv numbers them\)/,
    );
  });

  it('QuickOPC generation: a reversed session restores differentially and the next backup is differential again', async () => {
    await L.mk(['rq-tv', 'rq-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rq-tv', { defaultType: 'quickopc' });
    await m.registerBackup('rq-bv');
    await L.write('rq-tv', 0x91, 0, '4M');
    const b = await m.backup(['rq-tv']);
    const id = b.volumes[0]!.generation!.sessionId;
    await L.waitCopy(id, (s) => s?.state === 'tracking');
    await L.write('rq-tv', 0x92, 0, '64k');
    const r = await m.restore('rq-tv');
    expect(r.method).toBe('array-reverse');
    await L.expectPattern('rq-tv', 0x91, 0, '4M');
    const s = await L.array.getCopy(id);
    expect(s).toMatchObject({ state: 'tracking', reversed: true });
    // The next backup turns the pair round again.
    await L.write('rq-tv', 0x93, 0, '64k');
    const b2 = await m.backup(['rq-tv']);
    expect(b2.ok, b2.volumes[0]!.error).toBe(true);
    expect(b2.volumes[0]!.generation!.sessionId).toBe(id);
    await L.waitCopy(id, (x) => x?.state === 'tracking');
    await L.expectPattern('rq-bv', 0x93, 0, '64k');
  });

  it('SnapOPC+ generation: the host copies the snap volume; without a device it refuses naming the fix', async () => {
    await L.mk(['rp-tv', 'rp-s1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rp-tv', { defaultType: 'snapopcplus' });
    await m.registerBackup('rp-s1');
    await L.write('rp-tv', 0xa1, 0, '2M');
    expect((await m.backup(['rp-tv'])).ok).toBe(true);
    await L.write('rp-tv', 0xa2, 0, '2M');
    const e = await rejects(m.restore('rp-tv'));
    expect(e.message).toMatch(
      /a snap volume cannot be a copy source on the array, so the host copies it, but rp-s1 has no block device on this host; attach it \(NBD or iSCSI\) or add it to the device map/,
    );
    expect(host.callsOf('lockTransaction', 'rp-tv').length).toBe(1); // only the backup's: refused before locking
    // "Devices" here are the lab's handles on the volumes (harness.ts): a real copy through the array.
    host.deviceMap.set('rp-s1', L.device('rp-s1'));
    host.deviceMap.set('rp-tv', L.device('rp-tv'));
    host.copyImpl = (from, to) => L.copyDevice(from, to);
    const r = await m.restore('rp-tv');
    expect(r.method).toBe('host-copy');
    await L.expectPattern('rp-tv', 0xa1, 0, '2M');
    expect(host.callsOf('invalidate', 'rp-tv').length).toBe(1);
  });
});

describe('tape', () => {
  it('--to both records the tape copy; --to tape frees the staging volume; a tape failure keeps the disk generation', async () => {
    await L.mk(['tp-tv', 'tp-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'tp-tv');
    await m.registerBackup('tp-bv');
    await L.write('tp-tv', 0xb1, 0, '1M');
    const both = await m.backup(['tp-tv'], { to: 'both' });
    expect(both.ok, both.volumes[0]!.error).toBe(true);
    expect(both.volumes[0]!.generation).toMatchObject({ status: 'held', tape: { status: 'ok', error: '' } });

    await L.write('tp-tv', 0xb2, 0, '1M');
    const only = await m.backup(['tp-tv'], { to: 'tape' });
    expect(only.ok, only.volumes[0]!.error).toBe(true);
    // The only volume held generation 1, so it was released to stage the copy; both stay
    // restorable from tape and keep their numbers: 1 = newest.
    expect(only.volumes[0]!.generation).toMatchObject({ number: 2, status: 'tape-only', generation: 1, tape: { status: 'ok' } });
    expect((await m.status()).backupVolumes[0]!.inUseBy).toBe('');

    await L.write('tp-tv', 0xb3, 0, '1M');
    const bad = await m.backup(['tp-tv'], { to: 'both', cartridge: 'BROKEN' });
    expect(bad.ok).toBe(false);
    expect(bad.volumes[0]!.error).toMatch(/the tape copy of tp-tv generation #3 failed: .*BROKEN.*; the disk generation is kept/);
    const h = await m.history('tp-tv');
    expect(h[0]).toMatchObject({ number: 3, status: 'held', tape: { status: 'failed' } });

    expect(h.map((g) => [g.number, g.generation, g.status])).toEqual([
      [3, 1, 'held'],
      [2, 2, 'tape-only'],
      [1, 3, 'tape-only'],
    ]);
    // Restore backup #2 (generation 2, as history numbers it) from tape.
    await L.write('tp-tv', 0xb4, 0, '1M');
    expect((await rejects(m.restore('tp-tv', { fromTape: true, generation: 1 }))).message).toMatch(
      /generation 1 \(#3\) from tape: it has no good tape copy \(its tape copy failed: /,
    );
    const r = await m.restore('tp-tv', { fromTape: true, generation: 2 });
    expect(r).toMatchObject({ method: 'tape', from: 'tape', generation: { number: 2 } });
    await L.expectPattern('tp-tv', 0xb2, 0, '1M');
  });
});

describe('resource match', () => {
  it('keeps an OPC generation whose session ended, fails a QuickOPC one whose session vanished, flags deleted volumes', async () => {
    await L.mk(['rm-a', 'rm-ab', 'rm-q', 'rm-qb', 'rm-x', 'rm-xb']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rm-a');
    await registerAttached(m, host, 'rm-q', { defaultType: 'quickopc' });
    await registerAttached(m, host, 'rm-x');
    for (const b of ['rm-ab', 'rm-qb', 'rm-xb']) await m.registerBackup(b);
    const ra = await m.backup(['rm-a', 'rm-q', 'rm-x']);
    expect(ra.ok, JSON.stringify(ra.volumes.map((v) => v.error))).toBe(true);
    const q = ra.volumes[1]!.generation!;
    await L.waitCopy(q.sessionId, (s) => s?.state === 'tracking');
    await L.waitCopy(ra.volumes[0]!.generation!.sessionId, (s) => s === undefined); // OPC completed
    await L.waitCopy(ra.volumes[2]!.generation!.sessionId, (s) => s === undefined);
    await L.array.cancelCopy(q.sessionId);
    await L.array.deleteVolume('rm-xb');
    const rm = await m.resourceMatch();
    const text = rm.repaired.join('\n');
    expect(text).toMatch(/rm-a generation #1: its OPC session \S+ has ended; the image on rm-ab is kept/);
    expect(text).toMatch(/rm-q generation #1 marked lost: its QuickOPC session \S+ was cancelled on the array: rm-qb is no longer protected/);
    expect(text).toMatch(/rm-x generation #1 marked lost: its backup volume rm-xb no longer exists on the array/);
    expect(rm.remaining).toEqual([expect.stringMatching(/^backup volume rm-xb no longer exists on the array; recreate it .*unregister rm-xb$/)]);
    const h = await m.history();
    expect(h.find((g) => g.transactionVolume === 'rm-a')).toMatchObject({ status: 'held', sessionId: '' });
    expect(h.find((g) => g.transactionVolume === 'rm-q')).toMatchObject({ status: 'lost' });
    const st = await m.status();
    expect(st.backupVolumes.find((b) => b.volume === 'rm-xb')!.needsResourceMatch).toMatch(/no longer exists/);
    expect(st.backupVolumes.find((b) => b.volume === 'rm-qb')!.inUseBy).toBe('');
  });
});
