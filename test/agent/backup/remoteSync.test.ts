/**
 * BackupManager with backup volumes on a remote array (issue 16): `register backup REMOTE:VOL`,
 * start-sync over REC (sync mode), backup suspending the REC pair, generations held as suspended
 * REC pairs and rotated with Suspend/Resume, a halted pair refused with the array's reason, and
 * restore refused (not supported yet). Two arrays of the tier's kind: the lab's, and site-b
 * registered on it as a remote.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerAttached, rejects, startLab, type Lab, type RemoteSite } from './harness.js';

let L: Lab;
let B: RemoteSite;

beforeAll(async () => {
  L = await startLab();
  B = await L.addRemote('site-b');
});

afterAll(async () => {
  await L?.stop();
});

describe('register backup REMOTE:VOL', () => {
  it('takes the size from the remote array; refuses an unknown remote or volume, naming the fix', async () => {
    await L.mk(['rg-tv']);
    await B.mk(['rg-b1']);
    await B.mk(['rg-small'], '32MiB');
    const { m } = await L.manager();
    expect(await m.registerBackup('site-b:rg-b1')).toMatchObject({ volume: 'site-b:rg-b1', sizeBytes: 64 << 20, inUseBy: '' });
    expect(await m.registerBackup('site-b:rg-small')).toMatchObject({ sizeBytes: 32 << 20 });

    const unknown = await rejects(m.registerBackup('site-c:rg-b1'));
    expect(unknown.code).toBe('FAILED_PRECONDITION');
    expect(unknown.message).toBe(
      'cannot register site-c:rg-b1: the array knows no remote array named site-c (its remote list: site-b); add it on the array with: arraylab remote add site-c --api HOST:PORT, then register site-c:rg-b1 again',
    );
    const missing = await rejects(m.registerBackup('site-b:nope'));
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toBe(
      `cannot register site-b:nope: remote array site-b (${B.apiAddress}) has no volume named nope; create it there (arraylab --api ${B.apiAddress} volume create nope --size SIZE) or check the name`,
    );
    expect((await rejects(m.registerBackup('site-b:'))).code).toBe('INVALID_ARGUMENT');
    expect((await m.status()).backupVolumes.map((b) => b.volume).sort()).toEqual(['site-b:rg-b1', 'site-b:rg-small']);
  });

  it('serves synchronized backups only: a snapshot backup does not take a remote volume', async () => {
    await L.mk(['rs-tv']);
    await B.mk(['rs-b1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rs-tv');
    await m.registerBackup('site-b:rs-b1');
    const r = await m.backup(['rs-tv'], { type: 'opc' });
    expect(r.volumes[0]!.code).toBe('RESOURCE_EXHAUSTED');
    expect(r.volumes[0]!.error).toMatch(/^no unused backup volume of 64 MiB for rs-tv \(0 generations held, 0 registered backup volumes of that size\)/);
    expect((await L.array.listCopies()).filter((c) => c.source === 'rs-tv')).toEqual([]);
  });
});

describe('synchronized backup to a remote array (REC)', () => {
  it('start-sync starts REC sync; backup suspends it at the backup instant; generations rotate with Suspend/Resume; cancel-sync ends it on both arrays', async () => {
    await L.mk(['rc-tv']);
    await B.mk(['rc-b1', 'rc-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rc-tv', { generations: 1 });
    await m.registerBackup('site-b:rc-b1');
    await m.registerBackup('site-b:rc-b2');
    await L.write('rc-tv', 0x41, 0, '8M');

    const v1 = await m.startSync('rc-tv', { wait: true });
    expect(v1).toMatchObject({ backupVolume: 'site-b:rc-b1', start: 'full', state: 'equivalent', totalUnits: 1024 });
    const rec = await L.array.getCopy(v1.sessionId);
    expect(rec).toMatchObject({
      type: 'rec',
      state: 'equivalent',
      source: 'rc-tv',
      destination: 'site-b:rc-b1',
      remote: { role: 'source', peer: 'site-b', mode: 'sync', split: 'auto', recovery: 'auto' },
    });
    expect(await B.array.getCopy(v1.sessionId)).toMatchObject({ state: 'equivalent', destination: 'rc-b1', remote: { role: 'remote-end' } });
    // The remote backup volume has no device here: nothing is locked on this host for it.
    expect(host.callsOf('lockBackup')).toEqual([]);
    expect((await m.status()).transactionVolumes[0]!.sync).toMatchObject({ backupVolume: 'site-b:rc-b1', state: 'equivalent' });
    expect((await m.status()).backupVolumes.find((b) => b.volume === 'site-b:rc-b1')!.inUseBy).toBe('rc-tv');

    // A REC backup cannot go to this array's tape library.
    const tape = await m.backup(['rc-tv'], { to: 'both' });
    expect(tape.volumes[0]!.error).toBe(
      "rc-tv is mirrored to the remote backup volume site-b:rc-b1, which this array's tape library cannot read; back it up with --to disk (or without --to), or use a local backup volume for tape copies",
    );

    const r1 = await m.backup(['rc-tv']);
    expect(r1.ok, r1.volumes[0]!.error).toBe(true);
    expect(r1.volumes[0]!.generation).toMatchObject({
      number: 1,
      generation: 1,
      type: 'ec',
      backupVolume: 'site-b:rc-b1',
      status: 'held',
      sessionId: v1.sessionId,
    });
    expect(await L.array.getCopy(v1.sessionId)).toMatchObject({ state: 'suspended' });
    expect((await L.array.getCopy(v1.sessionId)).imageAt).not.toBe('');
    expect((await B.array.getCopy(v1.sessionId)).state).toBe('suspended');
    // After the backup the transaction volume changes; the remote keeps the backup instant.
    await L.write('rc-tv', 0x42, 0, '4M');
    await B.expectPattern('rc-b1', 0x41, 0, '8M');
    await expect(B.expectPattern('rc-b1', 0x42, 0, '4M')).rejects.toThrow();

    // Second cycle: rc-b1 holds generation 1, so start-sync takes rc-b2 (new REC pair); after
    // the backup generation 1 is released (N=1) and rc-b1 keeps its suspended pair.
    const v2 = await m.startSync('rc-tv', { wait: true });
    expect(v2).toMatchObject({ backupVolume: 'site-b:rc-b2', start: 'full', state: 'equivalent' });
    const r2 = await m.backup(['rc-tv']);
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect((await m.history('rc-tv')).map((g) => [g.number, g.generation, g.status, g.backupVolume])).toEqual([
      [2, 1, 'held', 'site-b:rc-b2'],
      [1, 0, 'released', 'site-b:rc-b1'],
    ]);
    expect(await L.array.getCopy(v1.sessionId)).toMatchObject({ type: 'rec', state: 'suspended', destination: 'site-b:rc-b1' });
    await B.expectPattern('rc-b2', 0x42, 0, '4M');
    await B.expectPattern('rc-b2', 0x41, 4 << 20, '4M');

    // Third cycle: start-sync resumes rc-b1's REC pair: only the units changed since backup 1
    // (4 MiB = 64 units, plus the 64 KiB written now) are copied.
    await L.write('rc-tv', 0x43, 16 << 20, '64k');
    const v3 = await m.startSync('rc-tv', { wait: true });
    expect(v3).toMatchObject({ backupVolume: 'site-b:rc-b1', sessionId: v1.sessionId, start: 'resume', unitsToCopy: 65, state: 'equivalent' });
    const r3 = await m.backup(['rc-tv']);
    expect(r3.ok, r3.volumes[0]!.error).toBe(true);
    expect((await m.history('rc-tv')).map((g) => [g.number, g.generation, g.status, g.backupVolume])).toEqual([
      [3, 1, 'held', 'site-b:rc-b1'],
      [2, 0, 'released', 'site-b:rc-b2'],
      [1, 0, 'released', 'site-b:rc-b1'],
    ]);
    await B.expectPattern('rc-b1', 0x42, 0, '4M');
    await B.expectPattern('rc-b1', 0x41, 4 << 20, '4M');
    await B.expectPattern('rc-b1', 0x43, 16 << 20, '64k');

    // Restore from a remote backup volume is refused before anything is touched.
    const rs = await rejects(m.restore('rc-tv'));
    expect(rs.code).toBe('FAILED_PRECONDITION');
    expect(rs.message).toMatch(
      /^cannot restore rc-tv generation 1 \(#3\): restore from a remote backup volume is not supported yet; its image is on rc-b1 of remote array site-b/,
    );
    expect(host.callsOf('lockTransaction', 'rc-tv')).toHaveLength(3); // the three backups' only
    expect(await L.array.getCopy(v1.sessionId)).toMatchObject({ state: 'suspended' });

    // A held generation whose REC pair is resumed out of band is lost, as with EC.
    await L.array.resumeCopy(v1.sessionId, { force: true });
    expect((await m.history('rc-tv'))[0]).toMatchObject({ number: 3, status: 'lost' });
    expect((await m.history('rc-tv'))[0]!.error).toMatch(/^its REC pair \S+ was resumed on the array \(now (copying|equivalent)\)/);
    await L.array.suspendCopy(v1.sessionId).catch(() => undefined);

    // cancel-sync ends the REC pair on both arrays.
    const v4 = await m.startSync('rc-tv', { wait: true });
    expect(v4.backupVolume).toBe('site-b:rc-b2');
    await m.cancelSync('rc-tv');
    await expect(L.array.getCopy(v4.sessionId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(B.array.getCopy(v4.sessionId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('a halted pair is refused with the halt reason; once the link is back it resyncs by itself and the backup goes on', async () => {
    await L.mk(['rh-tv']);
    await B.mk(['rh-b1', 'rh-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rh-tv', { generations: 1 });
    await m.registerBackup('site-b:rh-b1');
    await m.registerBackup('site-b:rh-b2');
    await L.write('rh-tv', 0x51, 0, '4M');
    const v = await m.startSync('rh-tv', { wait: true });

    const fault = await L.array.addFault({ kind: 'link-down', target: 'remote:site-b' });
    await L.waitCopy(v.sessionId, (s) => s?.state === 'halt');
    const halted = await L.array.getCopy(v.sessionId);
    expect(halted.remote?.haltReason).toBe('link-down');
    await L.write('rh-tv', 0x52, 0, '1M'); // split auto: writes go on, tracked

    const r = await m.backup(['rh-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.code).toBe('FAILED_PRECONDITION');
    expect(r.volumes[0]!.error).toBe(
      `cannot back up rh-tv: its REC pair to site-b:rh-b1 (session ${v.sessionId}) is halted (link-down: ${halted.remote!.haltDetail}), so site-b:rh-b1 holds the image of the halt, not of now; restore the link to the remote array; the pair resyncs by itself (recovery auto) and a backup is possible once it is equivalent (backup --wait-equivalent SECONDS waits for it)`,
    );
    expect(halted.remote!.haltDetail).not.toBe('');
    expect(host.callsOf('lockTransaction')).toEqual([]); // refused before anything was locked
    expect(await m.history('rh-tv')).toEqual([]);
    expect((await L.array.getCopy(v.sessionId)).state).toBe('halt'); // not suspended by the agent

    // A wait that ends before the link returns is refused the same way, saying it waited.
    const late = await m.backup(['rh-tv'], { waitEquivalentSeconds: 0.3 });
    expect(late.volumes[0]!.error).toMatch(/is halted \(link-down: .*\) after waiting 0.3 s/);

    // The link returns while backup --wait-equivalent waits: the pair resyncs and is cut.
    setTimeout(() => void L.array.removeFault(fault.id), 300);
    const ok = await m.backup(['rh-tv'], { waitEquivalentSeconds: 30 });
    expect(ok.ok, ok.volumes[0]!.error).toBe(true);
    expect(ok.volumes[0]!.generation).toMatchObject({ number: 1, backupVolume: 'site-b:rh-b1', status: 'held' });
    await B.expectPattern('rh-b1', 0x52, 0, '1M');
    await B.expectPattern('rh-b1', 0x51, 1 << 20, '3M');
  });

  it('never records a backup whose cut found the pair halted (the link lost after the equivalency check)', async () => {
    await L.mk(['rx-tv']);
    await B.mk(['rx-b1', 'rx-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rx-tv', { generations: 1 });
    await m.registerBackup('site-b:rx-b1');
    await m.registerBackup('site-b:rx-b2');
    await L.write('rx-tv', 0x61, 0, '2M');
    const v = await m.startSync('rx-tv', { wait: true });
    // Between the equivalency check and the cut (while the transaction volume is locked), the
    // link goes down and the pair halts.
    let faultId = '';
    host.onCall = async (c) => {
      if (c.method !== 'lockTransaction') return;
      faultId = (await L.array.addFault({ kind: 'link-down', target: 'remote:site-b' })).id;
      await L.waitCopy(v.sessionId, (s) => s?.state === 'halt');
    };
    const r = await m.backup(['rx-tv']);
    host.onCall = undefined;
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.code).toBe('FAILED_PRECONDITION');
    expect(r.volumes[0]!.error).toMatch(
      new RegExp(
        `^the REC pair rx-tv -> site-b:rx-b1 \\(session ${v.sessionId}\\) halted before the cut \\(link-down: .+\\), so site-b:rx-b1 holds the image of the halt, not of this backup; no generation was made; the pair is now suspended: once the link is back, resume it \\(arraylab copy resume ${v.sessionId}\\)`,
      ),
    );
    expect(r.volumes[0]!.generation).toBeUndefined();
    expect(await m.history('rx-tv')).toEqual([]);
    // Post-processing ran all the same.
    expect(host.callsOf('unlock', 'rx-tv')).toHaveLength(1);
    await L.array.removeFault(faultId);
    await L.array.resumeCopy(v.sessionId, { force: true });
    await L.waitCopy(v.sessionId, (s) => s?.state === 'equivalent');
    const ok = await m.backup(['rx-tv']);
    expect(ok.ok, ok.volumes[0]!.error).toBe(true);
    expect(ok.volumes[0]!.generation).toMatchObject({ number: 1, backupVolume: 'site-b:rx-b1' });
  });
});
