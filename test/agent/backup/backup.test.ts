/**
 * BackupManager against the real array: registration, generation rotation per type, the
 * no-volume error, one operation per volume, sets of volumes, hooks, always-undo, records
 * surviving a reopen. Host steps go to a RecordingHost.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupManager } from '../../../agent/backup/BackupManager.js';
import { RecordingHost } from './RecordingHost.js';
import { registerAttached, rejects, silent, startLab, type Lab } from './harness.js';

let L: Lab;

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
});

describe('registration', () => {
  it('refuses unknown volumes, a second role, and bad generation counts', async () => {
    await L.mk(['rg-tv', 'rg-bv']);
    const { m } = await L.manager();
    const e1 = await rejects(m.registerTransaction('rg-nope'));
    expect(e1.code).toBe('NOT_FOUND');
    expect(e1.message).toMatch(/no volume named rg-nope on the array/);
    expect((await rejects(m.registerBackup('rg-nope'))).code).toBe('NOT_FOUND');

    const tv = await m.registerTransaction('rg-tv', { generations: 2, lock: 'freeze' });
    expect(tv).toMatchObject({ volume: 'rg-tv', generations: 2, lock: 'freeze', defaultType: 'opc', flushOnly: false, needsResourceMatch: '' });
    const bv = await m.registerBackup('rg-bv');
    expect(bv).toMatchObject({ volume: 'rg-bv', sizeBytes: 64 << 20, inUseBy: '' });

    const e2 = await rejects(m.registerBackup('rg-tv'));
    expect(e2.code).toBe('ALREADY_EXISTS');
    expect(e2.message).toMatch(/rg-tv is registered as a transaction volume; a volume has one role/);
    expect((await rejects(m.registerTransaction('rg-bv'))).code).toBe('ALREADY_EXISTS');

    const e3 = await rejects(m.registerTransaction('rg-tv', { generations: 9, defaultType: 'snapopcplus' }));
    expect(e3.code).toBe('INVALID_ARGUMENT');
    expect(e3.message).toMatch(/at most 8 generations/);
    expect((await rejects(m.registerTransaction('rg-tv', { generations: 0 }))).code).toBe('INVALID_ARGUMENT');
    // The refused changes left the record as it was.
    expect((await m.status()).transactionVolumes.find((t) => t.volume === 'rg-tv')).toMatchObject({ generations: 2, lock: 'freeze' });

    const r = await m.backup(['rg-bv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toMatch(/rg-bv is a backup volume/);
    const r2 = await m.backup(['rg-unknown']);
    expect(r2.volumes[0]).toMatchObject({ ok: false, code: 'NOT_FOUND' });
    expect(r2.volumes[0]!.error).toMatch(/register it with: arraylab-agent register transaction rg-unknown/);
  });
});

describe('snapshot generations', () => {
  it('OPC, N=2 over 3 backup volumes: the oldest is released before the copy and its volume reused', async () => {
    await L.mk(['op-tv', 'op-b1', 'op-b2', 'op-b3']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'op-tv', { generations: 2 });
    for (const b of ['op-b1', 'op-b2', 'op-b3']) await m.registerBackup(b);
    const bvs: string[] = [];
    for (const p of [0x11, 0x22, 0x33]) {
      await L.write('op-tv', p);
      const r = await m.backup(['op-tv']);
      expect(r.ok, r.volumes[0]!.error).toBe(true);
      bvs.push(r.volumes[0]!.generation!.backupVolume);
      await L.expectPattern(r.volumes[0]!.generation!.backupVolume, p);
    }
    expect(bvs[0]).toBe('op-b1');
    expect(bvs[1]).toBe('op-b2');
    expect(bvs[2]).toBe('op-b1'); // reused, the third volume stays free
    const h = await m.history('op-tv');
    expect(h.map((g) => [g.number, g.generation, g.status])).toEqual([
      [3, 1, 'held'],
      [2, 2, 'held'],
      [1, 0, 'released'],
    ]);
    const st = await m.status();
    expect(st.backupVolumes.find((b) => b.volume === 'op-b3')!.inUseBy).toBe('');
    expect(st.backupVolumes.find((b) => b.volume === 'op-b1')!.inUseBy).toBe('op-tv');
    expect(st.transactionVolumes.find((t) => t.volume === 'op-tv')!.heldGenerations).toBe(2);
    expect(st.outstandingLocks).toEqual([]);
    // Pre- and post-processing ran for every backup, in order.
    const seq = host.calls
      .filter((c) => c.volume === 'op-tv' || c.volume.startsWith('op-b'))
      .map((c) => (c.method === 'runHook' ? (c.args[0] as { phase: string }).phase : c.method));
    expect(seq.slice(0, 4)).toEqual(['backup-pre', 'lockTransaction', 'unlock', 'backup-post']);
  });

  it('OPC, N=2 over 2 backup volumes: 2 volumes serve 2 generations', async () => {
    await L.mk(['o2-tv', 'o2-b1', 'o2-b2']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'o2-tv', { generations: 2 });
    await m.registerBackup('o2-b1');
    await m.registerBackup('o2-b2');
    for (let i = 0; i < 4; i++) {
      await L.write('o2-tv', 0x40 + i);
      const r = await m.backup(['o2-tv']);
      expect(r.ok, r.volumes[0]!.error).toBe(true);
      expect(r.volumes[0]!.generation!).toMatchObject({ number: i + 1, generation: 1, backupVolume: i % 2 === 0 ? 'o2-b1' : 'o2-b2' });
    }
    await L.expectPattern('o2-b2', 0x43);
    await L.expectPattern('o2-b1', 0x42);
    expect((await m.history('o2-tv')).filter((g) => g.status === 'held').map((g) => g.number)).toEqual([4, 3]);
  });

  it('QuickOPC reuse restarts the same session and copies only the change', async () => {
    await L.mk(['qo-tv', 'qo-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'qo-tv', { generations: 1, defaultType: 'quickopc' });
    await m.registerBackup('qo-bv');
    await L.write('qo-tv', 0x51, 0, '8M');
    const r1 = await m.backup(['qo-tv']);
    expect(r1.ok, r1.volumes[0]!.error).toBe(true);
    const id = r1.volumes[0]!.generation!.sessionId;
    await L.waitCopy(id, (s) => s?.state === 'tracking');
    // Hold the background copy so what the restart has to copy can be seen.
    await L.array.setCopyRate(id, 0);
    await L.write('qo-tv', 0x52, 0, '64k');
    const r2 = await m.backup(['qo-tv']);
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect(r2.volumes[0]!.generation).toMatchObject({ number: 2, sessionId: id, backupVolume: 'qo-bv', type: 'quickopc' });
    const s = await L.array.getCopy(id);
    expect(s.state).toBe('copying');
    expect(s.totalBlocks - s.copiedBlocks).toBe(1); // one 64 KiB unit changed: differential
    await L.array.setCopyRate(id, undefined);
    await L.waitCopy(id, (x) => x?.state === 'tracking');
    await L.expectPattern('qo-bv', 0x52, 0, '64k');
    await L.expectPattern('qo-bv', 0x51, 65536, '1M');
    expect((await m.history('qo-tv')).map((g) => g.status)).toEqual(['held', 'released']);
  });

  it('SnapOPC+ rotation: N=2 over 2 snap volumes keeps the two newest generations readable', async () => {
    await L.mk(['sn-tv']);
    await L.mk(['sn-s1', 'sn-s2'], '64MiB', { allocLimitBytes: 16 << 20 });
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'sn-tv', { generations: 2, defaultType: 'snapopcplus' });
    await m.registerBackup('sn-s1');
    await m.registerBackup('sn-s2');
    const gens = [];
    for (const p of [0x61, 0x62, 0x63]) {
      await L.write('sn-tv', p);
      const r = await m.backup(['sn-tv']);
      expect(r.ok, r.volumes[0]!.error).toBe(true);
      gens.push(r.volumes[0]!.generation!);
    }
    expect(gens.map((g) => g.backupVolume)).toEqual(['sn-s1', 'sn-s2', 'sn-s1']);
    await L.write('sn-tv', 0x64);
    await L.expectPattern('sn-s2', 0x62);
    await L.expectPattern('sn-s1', 0x63);
    const snaps = (await L.array.listCopies()).filter((c) => c.source === 'sn-tv');
    expect(snaps.map((c) => c.id).sort()).toEqual([gens[1]!.sessionId, gens[2]!.sessionId].sort());
    expect(snaps.every((c) => c.type === 'snapopcplus')).toBe(true);
  });

  it('no unused backup volume: RESOURCE_EXHAUSTED naming the size and the fix', async () => {
    await L.mk(['nv-tv']);
    await L.mk(['nv-small'], '32MiB');
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'nv-tv');
    await m.registerBackup('nv-small');
    const r = await m.backup(['nv-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.code).toBe('RESOURCE_EXHAUSTED');
    expect(r.volumes[0]!.error).toBe(
      'no unused backup volume of 64 MiB for nv-tv (0 generations held, 0 registered backup volumes of that size); register one with: arraylab-agent register backup VOL',
    );
    expect(host.callsOf('lockTransaction')).toEqual([]); // refused before anything was locked
  });
});

describe('one operation per volume', () => {
  it('a second backup of the same volume (another manager on the same store) is refused while the first runs', async () => {
    await L.mk(['cc-tv', 'cc-b1', 'cc-b2']);
    const host = new RecordingHost();
    const { m: m1, stateDir } = await L.manager({ host });
    const host2 = new RecordingHost();
    host2.deviceMap.set('cc-tv', '/dev/fake-cc-tv');
    const { m: m2 } = await L.manager({ stateDir, host: host2 });
    await registerAttached(m1, host, 'cc-tv', { generations: 2 });
    await m1.registerBackup('cc-b1');
    await m1.registerBackup('cc-b2');
    const gate = host.gate('lockTransaction', 'cc-tv');
    const first = m1.backup(['cc-tv']);
    await gate.entered;
    const second = await m2.backup(['cc-tv']);
    expect(second.volumes[0]!.code).toBe('ABORTED');
    expect(second.volumes[0]!.error).toMatch(
      new RegExp(`^cc-tv is in a backup started by pid ${process.pid} at \\S+; wait for it or, if that process is gone, run arraylab-agent resource-match$`),
    );
    expect((await m2.status()).transactionVolumes[0]!.busy).toMatch(/^backup by pid \d+/);
    gate.release();
    const r = await first;
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    // Once it is over, the other manager may back up.
    const again = await m2.backup(['cc-tv']);
    expect(again.ok, again.volumes[0]!.error).toBe(true);
    expect(again.volumes[0]!.generation!.number).toBe(2);
  });

  it('a row of a live process refuses; once that process is gone the row is taken over and flagged', async () => {
    await L.mk(['st-tv', 'st-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'st-tv');
    await m.registerBackup('st-bv');
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      m.store.claimOperation(['st-tv'], 'other-agent', sleeper.pid!, 'backup', '2026-01-01T00:00:00.000Z', () => true);
      const r = await m.backup(['st-tv']);
      expect(r.volumes[0]!.error).toMatch(new RegExp(`st-tv is in a backup started by pid ${sleeper.pid} at 2026-01-01T00:00:00.000Z`));
    } finally {
      const gone = new Promise((res) => sleeper.once('exit', res));
      sleeper.kill('SIGKILL');
      await gone;
    }
    const r = await m.backup(['st-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    const tv = (await m.status()).transactionVolumes.find((t) => t.volume === 'st-tv')!;
    expect(tv.needsResourceMatch).toMatch(new RegExp(`a backup started by pid ${sleeper.pid} .* did not finish`));
    const rm = await m.resourceMatch();
    expect(rm.remaining).toEqual([]);
    expect((await m.status()).transactionVolumes.find((t) => t.volume === 'st-tv')!.needsResourceMatch).toBe('');
  });
});

describe('sets of volumes', () => {
  it('one consistency group; a volume whose lock fails is reported and the others get generations', async () => {
    await L.mk(['set-a', 'set-b', 'set-c', 'set-ba', 'set-bb', 'set-bc']);
    const { m, host } = await L.manager();
    for (const v of ['set-a', 'set-b', 'set-c']) await registerAttached(m, host, v);
    for (const v of ['set-ba', 'set-bb', 'set-bc']) await m.registerBackup(v);
    host.failOn('lockTransaction', 'set-b', 'cannot unmount /mnt/b: target is busy (pid 4242 has files open); stop the writer or use --lock freeze');
    const r = await m.backup(['set-a', 'set-b', 'set-c']);
    expect(r.ok).toBe(false);
    expect(r.volumes.map((v) => [v.volume, v.ok])).toEqual([
      ['set-a', true],
      ['set-b', false],
      ['set-c', true],
    ]);
    expect(r.volumes[1]!.error).toMatch(/pre-processing of set-b failed: cannot unmount \/mnt\/b: target is busy/);
    const a = r.volumes[0]!.generation!;
    const c = r.volumes[2]!.generation!;
    const [sa, sc] = [await L.array.getCopy(a.sessionId).catch(() => undefined), await L.array.getCopy(c.sessionId).catch(() => undefined)];
    // Both started in one group (OPC sessions may already have completed and gone).
    if (sa && sc) expect(sa.group).toBe(sc.group);
    expect(a.at).toBe(c.at);
    expect(await m.history('set-b')).toEqual([]);
    // set-b's backup volume stayed free.
    expect((await m.status()).backupVolumes.filter((b) => b.inUseBy === '').map((b) => b.volume)).toContain('set-bb');
  });
});

describe('hooks and post-processing', () => {
  it('a failed pre hook aborts, undoes, flags the volume; resource-match clears the flag', async () => {
    await L.mk(['hk-tv', 'hk-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'hk-tv');
    await m.registerBackup('hk-bv');
    host.hookVerdicts.set('backup-pre', 'user-error');
    const r = await m.backup(['hk-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toMatch(
      /backup of hk-tv aborted: hook \/hooks\/backup-pre exited 101.*needs a resource match: run arraylab-agent resource-match/,
    );
    expect(r.volumes[0]!.hooks.map((h) => h.verdict)).toEqual(['user-error']);
    expect(host.callsOf('lockTransaction')).toEqual([]);
    let st = await m.status();
    expect(st.transactionVolumes[0]!.needsResourceMatch).toMatch(/backup-pre hook failed/);
    expect(st.outstandingLocks).toEqual([]);
    expect(await m.history('hk-tv')).toEqual([]);

    host.hookVerdicts.delete('backup-pre');
    const rm = await m.resourceMatch();
    expect(rm.repaired.join('\n')).toMatch(/hk-tv is consistent again/);
    st = await m.status();
    expect(st.transactionVolumes[0]!.needsResourceMatch).toBe('');

    // A failed post hook: the generation is made, the volume flagged, the error says so.
    host.hookVerdicts.set('backup-post', 'reserved-code');
    const r2 = await m.backup(['hk-tv']);
    expect(r2.ok).toBe(false);
    expect(r2.volumes[0]!.generation!.number).toBe(1);
    expect(r2.volumes[0]!.error).toMatch(/generation 1 was made, but post-processing failed: backup-post hook failed/);
    expect(r2.volumes[0]!.needsResourceMatch).toMatch(/backup-post/);
  });

  it('post-processing runs although the copy fails (backup volume deleted on the array mid-way)', async () => {
    await L.mk(['pp-tv', 'pp-bv']);
    const { m, host } = await L.manager();
    host.deviceMap.set('pp-tv', '/dev/fake-tv');
    host.deviceMap.set('pp-bv', '/dev/fake-bv');
    host.mounts.set('/dev/fake-tv', [{ mountPoint: '/mnt/pp', fsType: 'ext4', source: '/dev/fake-tv', mountOptions: 'rw,relatime', superOptions: 'rw' }]);
    await registerAttached(m, host, 'pp-tv');
    await m.registerBackup('pp-bv');
    let locksWhileLocked = -1;
    host.onCall = async (c) => {
      if (c.method === 'lockTransaction' && c.volume === 'pp-tv') {
        locksWhileLocked = m.store.listLocks().length; // the backup volume's lock is on record first
        await L.array.deleteVolume('pp-bv');
      }
    };
    const r = await m.backup(['pp-tv']);
    host.onCall = undefined;
    expect(locksWhileLocked).toBe(1);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toMatch(/cannot start opc pp-tv -> pp-bv: .*pp-bv/);
    const seq = host.calls
      .filter((c) => c.method !== 'devices')
      .map((c) => `${c.method === 'runHook' ? (c.args[0] as { phase: string }).phase : c.method}:${c.volume}`);
    expect(seq).toEqual([
      'backup-pre:pp-tv',
      'lockBackup:pp-bv',
      'lockTransaction:pp-tv',
      'unlock:pp-tv',
      'invalidate:pp-bv',
      'unlock:pp-bv',
      'backup-post:pp-tv',
    ]);
    expect(host.callsOf('unlock', 'pp-tv')[0]!.args[0]).toMatchObject({ action: 'unmounted', mounts: [{ mountPoint: '/mnt/pp' }] });
    expect((await m.status()).outstandingLocks).toEqual([]);
    expect(await m.history('pp-tv')).toEqual([]);
  });

  it('a failed unlock leaves the record for resource-match, which undoes it', async () => {
    await L.mk(['ul-tv', 'ul-bv']);
    const { m, host } = await L.manager();
    host.deviceMap.set('ul-tv', '/dev/fake-ul');
    await registerAttached(m, host, 'ul-tv', { lock: 'freeze' });
    await m.registerBackup('ul-bv');
    host.failOn('unlock', 'ul-tv', 'cannot thaw /mnt/ul: device gone');
    const r = await m.backup(['ul-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.generation!.number).toBe(1); // the data part is done
    expect(r.volumes[0]!.needsResourceMatch).toMatch(/cannot unlock ul-tv: cannot thaw/);
    expect((await m.status()).outstandingLocks.map((l) => l.volume)).toEqual(['ul-tv']);
    host.clearFailures();
    const rm = await m.resourceMatch();
    expect(rm.remaining).toEqual([]);
    expect(rm.repaired.join('\n')).toMatch(/undid the none of ul-tv/);
    const st = await m.status();
    expect(st.outstandingLocks).toEqual([]);
    expect(st.transactionVolumes[0]!.needsResourceMatch).toBe('');
  });
});

describe('the store', () => {
  it('keeps every record across a reopen', async () => {
    await L.mk(['ro-tv', 'ro-bv']);
    const { m, host, stateDir } = await L.manager();
    await registerAttached(m, host, 'ro-tv', { lock: 'freeze', generations: 1, flushOnly: true });
    await m.registerBackup('ro-bv');
    const r = await m.backup(['ro-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    const before = { h: await m.history(), s: await m.status() };
    await m.close();
    const host2 = new RecordingHost();
    host2.deviceMap.set('ro-tv', '/dev/fake-ro-tv');
    const m2 = await BackupManager.open(stateDir, { array: L.array, tape: L.tape, host: host2, log: silent });
    try {
      expect(await m2.history()).toEqual(before.h);
      expect(await m2.status()).toEqual(before.s);
      expect(before.h[0]).toMatchObject({ number: 1, prep: 'flush', status: 'held', backupVolume: 'ro-bv' });
      const r2 = await m2.backup(['ro-tv']);
      expect(r2.volumes[0]!.generation!.number).toBe(2);
    } finally {
      await m2.close();
    }
  });
});
