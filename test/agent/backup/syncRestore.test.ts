/**
 * BackupManager against the real array: synchronized backups (EC), restore (OPC, reversed
 * QuickOPC, host copy of a snap volume, tape), tape copies, resource match of vanished sessions.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../../agent/types.js';
import { requireTool } from '../../support/tools.js';
import { startLab, type Lab } from './harness.js';

const run = promisify(execFile);
let L: Lab;

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
});

async function rejects(p: Promise<unknown>): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(AgentError);
    return err as AgentError;
  }
  throw new Error('expected a rejection');
}

describe('synchronized backup', () => {
  it('is refused before equivalency, accepted after; the oldest goes after the copy (N+1 volumes)', async () => {
    await L.mk(['sy-tv', 'sy-b1', 'sy-b2'], '256MiB');
    const { m, host } = await L.manager();
    await m.registerTransaction('sy-tv', { generations: 1 });
    await m.registerBackup('sy-b1');
    await m.registerBackup('sy-b2');
    await L.write('sy-tv', 0x70, 0, '256M'); // enough to copy that the pair is still copying below
    await L.write('sy-tv', 0x71, 0, '4M');
    host.deviceMap.set('sy-b1', '/dev/fake-sy-b1');
    // Right after the EC start (post-processing unlocks the backup volume): hold the copy.
    host.onCall = async (c) => {
      if (c.method === 'unlock' && c.volume === 'sy-b1') {
        const ec = (await L.array.listCopies()).find((x) => x.source === 'sy-tv' && x.type === 'ec')!;
        await L.array.setCopyRate(ec.id, 0);
      }
    };
    const view = await m.startSync('sy-tv');
    host.onCall = undefined;
    expect(view).toMatchObject({ transactionVolume: 'sy-tv', backupVolume: 'sy-b1' });
    expect(host.calls.filter((c) => c.method === 'lockBackup' || c.method === 'unlock').map((c) => `${c.method}:${c.volume}`)).toEqual(['lockBackup:sy-b1', 'unlock:sy-b1']);
    expect((await rejects(m.startSync('sy-tv'))).code).toBe('ALREADY_EXISTS');
    const early = await m.backup(['sy-tv']);
    expect(early.volumes[0]!.code).toBe('FAILED_PRECONDITION');
    expect(early.volumes[0]!.error).toMatch(/^cannot back up sy-tv: its copy to sy-b1 is not yet equivalent \(copying, \d+%\); wait for equivalency \(arraylab-agent status\) and retry$/);
    expect(host.callsOf('lockTransaction')).toEqual([]);
    expect((await m.status()).transactionVolumes[0]!.sync).toMatchObject({ state: 'copying', backupVolume: 'sy-b1' });

    await L.array.setCopyRate(view.sessionId, undefined);
    await L.waitCopy(view.sessionId, (s) => s?.state === 'equivalent');
    const r1 = await m.backup(['sy-tv']);
    expect(r1.ok, r1.volumes[0]!.error).toBe(true);
    expect(r1.volumes[0]!.generation).toMatchObject({ number: 1, type: 'ec', backupVolume: 'sy-b1', sessionId: '', generation: 1 });
    await expect(L.array.getCopy(view.sessionId)).rejects.toThrow(); // the pair ended at the cut
    await L.write('sy-tv', 0x72, 0, '4M');
    await L.expectPattern('sy-b1', 0x71, 0, '4M'); // the image of the cut
    await expect(L.expectPattern('sy-b1', 0x72, 0, '4M')).rejects.toThrow();
    expect((await m.status()).transactionVolumes[0]!.sync).toBeNull();

    // Second cycle: sy-b1 holds generation 1, so start-sync takes sy-b2; after the backup,
    // generation 1 is released (N=1) and sy-b1 is free again.
    const v2 = await m.startSync('sy-tv');
    expect(v2.backupVolume).toBe('sy-b2');
    await L.waitCopy(v2.sessionId, (s) => s?.state === 'equivalent');
    const r2 = await m.backup(['sy-tv']);
    expect(r2.ok, r2.volumes[0]!.error).toBe(true);
    expect((await m.history('sy-tv')).map((g) => [g.number, g.status, g.backupVolume])).toEqual([
      [2, 'held', 'sy-b2'],
      [1, 'released', 'sy-b1'],
    ]);
    expect((await m.status()).backupVolumes.find((b) => b.volume === 'sy-b1')!.inUseBy).toBe('');
    await L.expectPattern('sy-b2', 0x72, 0, '4M');

    // cancel-sync ends the pair and frees its volume.
    const v3 = await m.startSync('sy-tv');
    await m.cancelSync('sy-tv');
    await expect(L.array.getCopy(v3.sessionId)).rejects.toThrow();
    expect((await m.status()).backupVolumes.find((b) => b.volume === v3.backupVolume)!.inUseBy).toBe('');
    expect((await rejects(m.cancelSync('sy-tv'))).code).toBe('NOT_FOUND');
  });

  it('with N=1 and one backup volume the second sync cycle fails clearly', async () => {
    await L.mk(['s1-tv', 's1-b1']);
    const { m } = await L.manager();
    await m.registerTransaction('s1-tv', { generations: 1 });
    await m.registerBackup('s1-b1');
    const v = await m.startSync('s1-tv');
    await L.waitCopy(v.sessionId, (s) => s?.state === 'equivalent');
    expect((await m.backup(['s1-tv'])).ok).toBe(true);
    const e = await rejects(m.startSync('s1-tv'));
    expect(e.code).toBe('RESOURCE_EXHAUSTED');
    expect(e.message).toMatch(/^no unused backup volume of 64 MiB for s1-tv \(1 generation held, 1 registered backup volume of that size\); a synchronized backup needs N\+1 backup volumes for N generations: register one with: arraylab-agent register backup VOL$/);
  });
});

describe('restore', () => {
  it('OPC generation: the transaction volume reads as the backup again', async () => {
    await L.mk(['rs-tv', 'rs-b1', 'rs-b2']);
    const { m, host } = await L.manager();
    await m.registerTransaction('rs-tv', { generations: 2 });
    await m.registerBackup('rs-b1');
    await m.registerBackup('rs-b2');
    await L.write('rs-tv', 0x81, 0, '2M');
    expect((await m.backup(['rs-tv'])).ok).toBe(true);
    await L.write('rs-tv', 0x82, 0, '2M');
    expect((await m.backup(['rs-tv'])).ok).toBe(true);
    await L.write('rs-tv', 0x83, 0, '2M'); // after the backups
    await L.expectPattern('rs-tv', 0x83, 0, '2M');

    const r = await m.restore('rs-tv', { generation: 2 });
    expect(r).toMatchObject({ volume: 'rs-tv', target: 'rs-tv', from: 'disk', method: 'array-opc', generation: { number: 1, generation: 2, backupVolume: 'rs-b1' } });
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
    expect(e.message).toMatch(/rs-tv has 2 held generation\(s\); --generation 3 is not one of them/);
  });

  it('QuickOPC generation: a reversed session restores differentially and the next backup is differential again', async () => {
    await L.mk(['rq-tv', 'rq-bv']);
    const { m } = await L.manager();
    await m.registerTransaction('rq-tv', { defaultType: 'quickopc' });
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
    const qemuImg = requireTool('qemu-img');
    await L.mk(['rp-tv', 'rp-s1']);
    const { m, host } = await L.manager();
    await m.registerTransaction('rp-tv', { defaultType: 'snapopcplus' });
    await m.registerBackup('rp-s1');
    await L.write('rp-tv', 0xa1, 0, '2M');
    expect((await m.backup(['rp-tv'])).ok).toBe(true);
    await L.write('rp-tv', 0xa2, 0, '2M');
    const e = await rejects(m.restore('rp-tv'));
    expect(e.message).toMatch(/a snap volume cannot be a copy source on the array, so the host copies it, but rp-s1 has no block device on this host; attach it \(NBD or iSCSI\) or add it to the device map/);
    expect(host.callsOf('lockTransaction', 'rp-tv').length).toBe(1); // only the backup's: refused before locking
    // "Devices" here are NBD URIs, copied by qemu-img: a real copy through the array.
    host.deviceMap.set('rp-s1', L.lab.nbdUri('rp-s1'));
    host.deviceMap.set('rp-tv', L.lab.nbdUri('rp-tv'));
    host.copyImpl = async (from, to) => {
      await run(qemuImg, ['convert', '-n', '-f', 'raw', '-O', 'raw', from, to]);
    };
    const r = await m.restore('rp-tv');
    expect(r.method).toBe('host-copy');
    await L.expectPattern('rp-tv', 0xa1, 0, '2M');
    expect(host.callsOf('invalidate', 'rp-tv').length).toBe(1);
  });
});

describe('tape', () => {
  it('--to both records the tape copy; --to tape frees the staging volume; a tape failure keeps the disk generation', async () => {
    await L.mk(['tp-tv', 'tp-bv']);
    const { m } = await L.manager();
    await m.registerTransaction('tp-tv');
    await m.registerBackup('tp-bv');
    await L.write('tp-tv', 0xb1, 0, '1M');
    const both = await m.backup(['tp-tv'], { to: 'both' });
    expect(both.ok, both.volumes[0]!.error).toBe(true);
    expect(both.volumes[0]!.generation).toMatchObject({ status: 'held', tape: { status: 'ok', error: '' } });

    await L.write('tp-tv', 0xb2, 0, '1M');
    const only = await m.backup(['tp-tv'], { to: 'tape' });
    expect(only.ok, only.volumes[0]!.error).toBe(true);
    expect(only.volumes[0]!.generation).toMatchObject({ number: 2, status: 'tape-only', generation: 0, tape: { status: 'ok' } });
    expect((await m.status()).backupVolumes[0]!.inUseBy).toBe('');

    await L.write('tp-tv', 0xb3, 0, '1M');
    const bad = await m.backup(['tp-tv'], { to: 'both', cartridge: 'BROKEN' });
    expect(bad.ok).toBe(false);
    expect(bad.volumes[0]!.error).toMatch(/the tape copy of tp-tv generation 3 failed: .*BROKEN.*; the disk generation is kept/);
    const h = await m.history('tp-tv');
    expect(h[0]).toMatchObject({ number: 3, status: 'held', tape: { status: 'failed' } });

    // Restore generation 2 from tape.
    await L.write('tp-tv', 0xb4, 0, '1M');
    const r = await m.restore('tp-tv', { fromTape: true, generation: 1 });
    expect(r).toMatchObject({ method: 'tape', from: 'tape', generation: { number: 2 } });
    await L.expectPattern('tp-tv', 0xb2, 0, '1M');
  });
});

describe('resource match', () => {
  it('keeps an OPC generation whose session ended, fails a QuickOPC one whose session vanished, flags deleted volumes', async () => {
    await L.mk(['rm-a', 'rm-ab', 'rm-q', 'rm-qb', 'rm-x', 'rm-xb']);
    const { m } = await L.manager();
    await m.registerTransaction('rm-a');
    await m.registerTransaction('rm-q', { defaultType: 'quickopc' });
    await m.registerTransaction('rm-x');
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
    expect(text).toMatch(/rm-a generation 1: its OPC session \S+ has ended; the image on rm-ab is kept/);
    expect(text).toMatch(/rm-q generation 1 marked failed: its QuickOPC session \S+ is gone: the differential base is lost/);
    expect(text).toMatch(/rm-x generation 1 marked failed: its backup volume rm-xb no longer exists on the array/);
    expect(rm.remaining).toEqual([expect.stringMatching(/^backup volume rm-xb no longer exists on the array; recreate it .*unregister rm-xb$/)]);
    const h = await m.history();
    expect(h.find((g) => g.transactionVolume === 'rm-a')).toMatchObject({ status: 'held', sessionId: '' });
    expect(h.find((g) => g.transactionVolume === 'rm-q')).toMatchObject({ status: 'failed' });
    const st = await m.status();
    expect(st.backupVolumes.find((b) => b.volume === 'rm-xb')!.needsResourceMatch).toMatch(/no longer exists/);
    expect(st.backupVolumes.find((b) => b.volume === 'rm-qb')!.inUseBy).toBe('');
  });
});
