/**
 * The agent under the array's injected faults (issue 15), against the real array with a
 * RecordingHost. It never reports a backup that did not happen as described:
 *   - a copy-error fault puts the EC pair of a synchronized backup in error-suspended; the
 *     backup fails with the array's reason (at once, also with --wait-equivalent), history
 *     records no generation, nothing is locked; fixed and resumed, the next backup works;
 *   - the pair goes error-suspended after the checks, while the volume is being frozen: the
 *     array refuses the cut with its reason, post-processing thaws and runs backup-post, and
 *     no generation is recorded;
 *   - a seeded fault plan (1 % of reads of the transaction volume, writes of a backup volume
 *     and the pair's copy writes failing) over many backup cycles: every failed backup says
 *     why and records no generation, every reported one holds the image it claims, and every
 *     freeze is thawed, every backup-pre has its backup-post.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveSettings } from '../../../agent/config.js';
import { runDoctor } from '../../../agent/doctor.js';
import type { MountEntry } from '../../../agent/types.js';
import { registerAttached, rejects, startLab, type Lab } from './harness.js';
import type { RecordingHost } from './RecordingHost.js';

let L: Lab;

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
});

/** A transaction volume mounted on the RecordingHost (so --lock freeze freezes), and two backup volumes. */
async function setup(prefix: string, size = '64MiB') {
  await L.mk([`${prefix}-tv`, `${prefix}-b1`, `${prefix}-b2`], size);
  const { m, host, stateDir } = await L.manager();
  const device = `/dev/fake-${prefix}-tv`;
  host.deviceMap.set(`${prefix}-tv`, device);
  const mount: MountEntry = { mountPoint: `/mnt/${prefix}`, fsType: 'ext4', source: device, mountOptions: 'rw', superOptions: 'rw' };
  host.mounts.set(device, [mount]);
  await registerAttached(m, host, `${prefix}-tv`, { lock: 'freeze', generations: 1 });
  await m.registerBackup(`${prefix}-b1`);
  await m.registerBackup(`${prefix}-b2`);
  return { m, host, stateDir, tv: `${prefix}-tv` };
}

/** Every freeze (lock) of the volume was undone (unlocked), in order. */
function expectAllThawed(host: RecordingHost, volume: string): void {
  const seq = host.calls.filter((c) => (c.method === 'lockTransaction' || c.method === 'unlock') && c.volume === volume).map((c) => c.method);
  const locks = seq.filter((x) => x === 'lockTransaction').length;
  expect(seq.filter((x) => x === 'unlock').length, seq.join(',')).toBe(locks);
  for (let i = 0; i < seq.length; i += 2) expect(seq.slice(i, i + 2)).toEqual(['lockTransaction', 'unlock']);
}

describe('a copy-error fault on the EC pair of a synchronized backup', () => {
  it('fails the backup at once with the array reason and records no generation; resumed once fixed, the next backup works', async () => {
    const { m, host, stateDir, tv } = await setup('cf');
    const v = await m.startSync(tv, { wait: true });
    const f = await L.array.addFault({ kind: 'copy-error', target: `session:${v.sessionId}`, ops: ['write'], once: true });
    await L.write(tv, 0x21, 0, '64K'); // a mirrored write: its copy to the backup volume fails; the host's write stands
    const s = await L.array.getCopy(v.sessionId);
    expect(s.state).toBe('error-suspended');
    expect(s.error).toMatch(new RegExp(`is error-suspended: a mirrored write failed: .*\\(fault ${f.id}\\)`));
    await L.expectPattern(tv, 0x21, 0, '64K');

    const began = Date.now();
    const r = await m.backup([tv], { waitEquivalentSeconds: 30 });
    expect(Date.now() - began).toBeLessThan(10_000); // error-suspended never becomes equivalent by itself
    expect(r.ok).toBe(false);
    expect(r.volumes[0]).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
    expect(r.volumes[0]!.error).toContain(s.error);
    expect(r.volumes[0]!.error).toMatch(
      /^cannot back up cf-tv: the array error-suspended its EC pair to cf-b1: EC session .*; resume it once the cause is fixed \(arraylab copy resume \S+\) and wait for equivalency, or cancel-sync and start-sync again$/,
    );
    expect(r.volumes[0]!.generation).toBeUndefined();
    expect(await m.history(tv)).toEqual([]);
    expect(host.callsOf('lockTransaction')).toEqual([]); // refused before anything was locked
    expect((await m.status()).transactionVolumes.find((t) => t.volume === tv)!.sync).toMatchObject({ state: 'error-suspended' });
    // doctor says what the next backup needs.
    const settings = { ...resolveSettings({ stateDir }), hooksDir: '' };
    const doctor = await runDoctor({ settings, array: L.array, host, status: () => m.status() });
    expect(doctor.find((c) => c.name === 'sync pairs')).toMatchObject({
      ok: false,
      detail: `cf-tv -> cf-b1 is error-suspended (arraylab copy show ${v.sessionId} says why)`,
      fix: expect.stringMatching(/^error-suspended: fix the cause, then arraylab copy resume SESSION/),
    });

    await L.array.removeFault(f.id);
    await L.array.resumeCopy(v.sessionId, { force: true });
    await L.waitCopy(v.sessionId, (x) => x?.state === 'equivalent');
    const ok = await m.backup([tv]);
    expect(ok.ok, ok.volumes[0]!.error).toBe(true);
    expect(ok.volumes[0]!.generation).toMatchObject({ number: 1, type: 'ec', status: 'held' });
    await L.expectPattern(`${tv.slice(0, -3)}-b1`, 0x21, 0, '64K');
    const after = await runDoctor({ settings, array: L.array, host, status: () => m.status() });
    expect(after.find((c) => c.name === 'sync pairs')).toMatchObject({ ok: true, detail: 'no synchronized backups' });
    expectAllThawed(host, tv);
  });

  it('that fires while the volume is being frozen: the cut is refused with the reason, post-processing thaws, no generation', async () => {
    const { m, host, tv } = await setup('cg');
    const v = await m.startSync(tv, { wait: true });
    let reason = '';
    host.onCall = async (c) => {
      if (c.method !== 'lockTransaction' || c.volume !== tv) return;
      // Writes still in flight as the freeze begins: the first mirrored one fails.
      await L.array.addFault({ kind: 'copy-error', target: `session:${v.sessionId}`, ops: ['write'], once: true });
      await L.write(tv, 0x31, 0, '64K');
      reason = (await L.array.getCopy(v.sessionId)).error;
    };
    const r = await m.backup([tv]);
    host.onCall = undefined;
    expect(reason).toMatch(/error-suspended: a mirrored write failed/);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toContain(`cannot suspend the EC pair ${tv} -> cg-b1: `);
    expect(r.volumes[0]!.error).toContain(reason);
    expect(r.volumes[0]!.generation).toBeUndefined();
    expect(await m.history(tv)).toEqual([]);
    expect(r.volumes[0]!.hooks.map((h) => h.phase)).toEqual(['backup-pre', 'backup-post']);
    const unlock = host.callsOf('unlock', tv);
    expect(unlock).toHaveLength(1);
    expect(unlock[0]!.args[0]).toMatchObject({ action: 'frozen', role: 'transaction' }); // thawed
    expectAllThawed(host, tv);
    expect((await m.status()).transactionVolumes.find((t) => t.volume === tv)!.needsResourceMatch).toBe('');
  });
});

describe('a copy-error fault on the copy of an OPC backup', () => {
  it('the generation is error once the array error-suspends its copy, and stays error after the session is cancelled out of band', async () => {
    await L.mk(['oe-tv', 'oe-b1'], '256MiB');
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'oe-tv', { generations: 1, defaultType: 'opc' });
    await m.registerBackup('oe-b1');
    await L.write('oe-tv', 0x61, 0, '4M');
    // Set before the backup, on the volume: the OPC the agent starts fails at its first copy
    // write to oe-b1, however fast the copy would be (its id is not known before it exists).
    await L.array.addFault({ kind: 'copy-error', target: 'volume:oe-b1', ops: ['write'], once: true });
    const r = await m.backup(['oe-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true); // the point-in-time copy was made: the truth then
    const id = (await L.array.listCopies()).find((x) => x.source === 'oe-tv' && x.type === 'opc')!.id;
    await L.waitCopy(id, (s) => s?.state === 'error-suspended');
    const reason = (await L.array.getCopy(id)).error;
    expect(reason).toMatch(/OPC session .* is error-suspended: the background copy failed: .*cancel the session/);
    expect((await m.history('oe-tv'))[0]).toMatchObject({ number: 1, status: 'error', error: `the array error-suspended session ${id}: ${reason}` });

    // An operator cancels it on the array (as its reason says): the array forgets the session,
    // and an OPC session that is gone would read as a finished copy. The agent remembers.
    await L.array.cancelCopy(id);
    const h = (await m.history('oe-tv'))[0]!;
    expect(h.status).toBe('error');
    expect(h.error).toBe(`the array error-suspended session ${id}: ${reason}; the session has since ended, so oe-b1 may hold only part of oe-tv generation #1`);
    const e = await rejects(m.restore('oe-tv'));
    expect(e.message).toContain('it is error on the array: the array error-suspended session');
    const rm = await m.resourceMatch();
    expect(rm.repaired.join('\n')).toMatch(/oe-tv generation #1 marked error: the array error-suspended session/);
    expect(rm.repaired.join('\n')).not.toMatch(/the image on oe-b1 is kept/);
    expect((await m.history('oe-tv'))[0]).toMatchObject({ status: 'error', generation: 0 });
    // The next backup works (the volume serves again).
    expect((await m.backup(['oe-tv'])).ok).toBe(true);
  });
});

describe('an api-error fault on the copy of a backup that reuses the oldest generation', () => {
  it('the failed backup does not lose the generation it released for nothing, and says what it released when it did', async () => {
    await L.mk(['ap-tv', 'ap-b1', 'ap-s1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'ap-tv', { generations: 1 });
    await m.registerBackup('ap-b1');
    await L.write('ap-tv', 0x71, 0, '1M');
    expect((await m.backup(['ap-tv'])).ok).toBe(true);
    await L.waitCopy((await m.history('ap-tv'))[0]!.sessionId, (s) => s === undefined); // the OPC finished

    // The second backup releases generation 1 to reuse ap-b1, then the array refuses the copy.
    const f = await L.array.addFault({ kind: 'api-error', target: 'api', ops: ['StartCopy'], code: 'FAILED_PRECONDITION', once: true });
    const r = await m.backup(['ap-tv']);
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toBe(
      `cannot start opc ap-tv -> ap-b1: StartCopy failed: injected FAILED_PRECONDITION (fault ${f.id}); remove it with 'arraylab fault remove ${f.id}'`,
    );
    // Nothing touched ap-b1: generation 1 is still held and restorable.
    expect((await m.history('ap-tv')).map((g) => [g.number, g.status, g.generation])).toEqual([[1, 'held', 1]]);
    await L.expectPattern('ap-b1', 0x71, 0, '1M');

    // A call that failed without the array saying no (UNAVAILABLE: it may have run all the
    // same): the generation is not claimed as held, and the error says why.
    await L.array.addFault({ kind: 'api-error', target: 'api', ops: ['StartCopy'], code: 'UNAVAILABLE', once: true });
    const u = await m.backup(['ap-tv']);
    expect(u.volumes[0]!.error).toMatch(
      /; generation #1 \(opc on ap-b1, of \S+\) was released before the copy to reuse its volume; the array did not answer whether it started the copy there, so take it as gone$/,
    );
    expect((await m.history('ap-tv')).map((g) => [g.number, g.status])).toEqual([[1, 'released']]);
    expect((await m.backup(['ap-tv'])).ok).toBe(true); // ap-b1 is free: the next backup takes it

    // SnapOPC+: releasing the oldest generation cancels its session, which drops its image:
    // a copy refused after that must say the generation is gone.
    await registerAttached(m, host, 'ap-tv', { generations: 1, defaultType: 'snapopcplus' });
    await m.unregister('ap-b1', { force: true });
    await m.registerBackup('ap-s1');
    await m.backup(['ap-tv']); // releases the OPC generation: ap-b1 is no longer registered
    const snap = (await m.history('ap-tv')).find((g) => g.status === 'held')!;
    expect(snap).toMatchObject({ type: 'snapopcplus', backupVolume: 'ap-s1' });
    await L.array.addFault({ kind: 'api-error', target: 'api', ops: ['StartCopy'], code: 'RESOURCE_EXHAUSTED', once: true });
    const r2 = await m.backup(['ap-tv']);
    expect(r2.ok).toBe(false);
    expect(r2.volumes[0]!.error).toMatch(
      new RegExp(
        `; generation #${snap.number} \\(snapopcplus on ap-s1, of ${snap.at}\\) was released before the copy to reuse its volume, and is gone with it`,
      ),
    );
    expect((await m.history('ap-tv')).find((g) => g.number === snap.number)!.status).toBe('released');
    await L.array.clearFaults();
  });
});

describe('tape-error and copy-error faults around synchronized backups and restores', () => {
  it('start-sync --wait fails at once with the reason when the initial copy is error-suspended', async () => {
    const { m, host, tv } = await setup('sw', '256MiB');
    await L.write(tv, 0x91, 0, '4M');
    host.deviceMap.set('sw-b1', '/dev/fake-sw-b1');
    // Set before the pair exists, on the volume: its initial copy fails at its first read.
    await L.array.addFault({ kind: 'copy-error', target: `volume:${tv}`, ops: ['read'], once: true });
    const began = Date.now();
    const e = await rejects(m.startSync(tv, { wait: true }));
    expect(Date.now() - began).toBeLessThan(10_000);
    expect(e.code).toBe('FAILED_PRECONDITION');
    expect(e.message).toMatch(
      /^cannot wait for sw-tv -> sw-b1 to be equivalent: the array error-suspended its EC pair to sw-b1: EC session .* the background copy failed: injected copy read error on volume sw-tv/,
    );
    await L.array.clearFaults();
  });

  it('a tape restore whose tape read fails reports it, and post-processing mounts the volume back and runs restore-post', async () => {
    const { m, host, tv } = await setup('tr');
    await L.write(tv, 0x81, 0, '1M');
    const b = await m.backup([tv], { to: 'both' });
    expect(b.ok, b.volumes[0]!.error).toBe(true);
    const f = await L.array.addFault({ kind: 'tape-error', target: 'tape:T00001', ops: ['read'] });
    const e = await rejects(m.restore(tv, { fromTape: true }));
    expect(e.message).toMatch(
      new RegExp(`^restore of tr-tv generation #1 onto tr-tv failed: .*tape read error on cartridge T00001 \\(injected by fault ${f.id}\\)`),
    );
    const mine = host.calls.filter((c) => c.volume === tv && (c.method === 'lockTransaction' || c.method === 'unlock')).map((c) => c.method);
    expect(mine.slice(-2)).toEqual(['lockTransaction', 'unlock']); // unmounted for the restore, mounted back
    expect(
      host
        .callsOf('runHook', tv)
        .map((c) => (c.args[0] as { phase: string }).phase)
        .slice(-2),
    ).toEqual(['restore-pre', 'restore-post']);
    await L.array.removeFault(f.id);
    const r = await m.restore(tv, { fromTape: true });
    expect(r.from).toBe('tape');
    await L.expectPattern(tv, 0x81, 0, '1M');
  });
});

describe('an api-error fault on WriteTape', () => {
  it('backup --to tape keeps the disk generation, records the tape copy as failed, and says so', async () => {
    const { m, tv } = await setup('wt');
    await L.write(tv, 0x99, 0, '1M');
    const f = await L.array.addFault({ kind: 'api-error', target: 'api', ops: ['WriteTape'], code: 'RESOURCE_EXHAUSTED', once: true });
    const r = await m.backup([tv], { to: 'tape' });
    expect(r.ok).toBe(false);
    expect(r.volumes[0]!.error).toBe(
      `the tape copy of wt-tv generation #1 failed: WriteTape failed: injected RESOURCE_EXHAUSTED (fault ${f.id}); remove it with 'arraylab fault remove ${f.id}'; the disk generation is kept; back up again with --to tape to retry`,
    );
    expect((await m.history(tv))[0]).toMatchObject({ number: 1, status: 'held', tape: { status: 'failed' } });
    const again = await m.backup([tv], { to: 'tape' });
    expect(again.ok, again.volumes[0]!.error).toBe(true);
  });
});

describe('an api-error fault on ListCopies', () => {
  it('history says the array state could not be read, and restore says why, not that the array is unreachable', async () => {
    await L.mk(['al-tv', 'al-b1']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'al-tv', { generations: 1 });
    await m.registerBackup('al-b1');
    expect((await m.backup(['al-tv'])).ok).toBe(true);
    const f = await L.array.addFault({ kind: 'api-error', target: 'api', ops: ['ListCopies'], code: 'FAILED_PRECONDITION' });
    expect((await m.history('al-tv'))[0]).toMatchObject({ status: 'held', error: "not checked: the array's volumes and sessions could not be read" });
    const e = await rejects(m.restore('al-tv'));
    expect(e.message).toBe(
      `cannot restore al-tv: the array's volumes and sessions could not be read (ListCopies failed: injected FAILED_PRECONDITION (fault ${f.id}); remove it with 'arraylab fault remove ${f.id}'), so neither the generation nor the target can be checked; fix that and retry`,
    );
    await L.array.removeFault(f.id);
    expect((await m.history('al-tv'))[0]!.error).toBe('');
  });
});

describe('backups under a seeded fault plan', () => {
  it('every failure says why and records nothing, every success holds its image, every freeze is thawed', async () => {
    const { m, host, tv } = await setup('fp');
    const v = await m.startSync(tv, { wait: true });
    const plan = [
      'name: agent-flaky',
      'seed: 20261206',
      'faults:',
      `  - {kind: error, target: 'volume:${tv}', ops: [read], probability: 0.01}`,
      `  - {kind: error, target: 'volume:fp-b1', ops: [write], probability: 0.01}`,
      `  - {kind: error, target: 'volume:fp-b2', ops: [write], probability: 0.01}`,
      `  - {kind: copy-error, target: 'session:${v.sessionId}', ops: [read, write], probability: 0.05}`,
    ].join('\n');
    const faults = await L.array.applyFaultPlan(plan, 'agent-flaky.yaml');
    expect(faults).toHaveLength(4);
    let ok = 0;
    let failed = 0;
    for (let cycle = 0; cycle < 12; cycle++) {
      const pattern = 0x40 + cycle;
      for (let i = 0; i < 8; i++) await L.write(tv, pattern, i * 1024 * 1024, '1M'); // 8 mirrored writes
      const before = (await m.history(tv)).length;
      const r = await m.backup([tv], { resync: true });
      const out = r.volumes[0]!;
      const pre = out.hooks.filter((h) => h.phase === 'backup-pre').length;
      expect(out.hooks.filter((h) => h.phase === 'backup-post').length).toBe(pre); // post-processing always ran
      if (r.ok) {
        ok++;
        expect(out.generation).toMatchObject({ type: 'ec', status: 'held', generation: 1 });
        await L.expectPattern(out.generation!.backupVolume, pattern, 0, '8M'); // the image it claims
      } else {
        failed++;
        expect(out.error, 'a failed backup says why').toMatch(/\S/);
        const after = await m.history(tv);
        // No generation of this backup (older ones may be released only by a successful one).
        expect(after.filter((g) => g.status === 'held').length).toBeLessThanOrEqual(Math.max(before, 1));
        expect(after.every((g) => g.number <= before || g.status !== 'held')).toBe(true);
      }
      expectAllThawed(host, tv);
      // The pair back to equivalent for the next cycle (a resync may itself fail under the plan).
      for (let tries = 0; tries < 20; tries++) {
        const sync = (await m.status()).transactionVolumes.find((t) => t.volume === tv)!.sync;
        if (sync === null) {
          await m.startSync(tv, { wait: true }).catch(() => undefined);
          continue;
        }
        const s = await L.array.getCopy(sync.sessionId);
        if (s.state === 'equivalent') break;
        if (s.state === 'error-suspended' || s.state === 'suspended') await L.array.resumeCopy(s.id, { force: true });
        await L.waitCopy(s.id, (x) => x?.state !== 'copying');
      }
    }
    const fired = (await L.array.listFaults()).filter((f) => f.label === 'plan:agent-flaky').reduce((n, f) => n + f.fired, 0);
    expect(fired, 'the plan injected faults').toBeGreaterThan(0);
    expect(ok + failed).toBe(12);
    expect(ok, 'some backups still succeed').toBeGreaterThan(0);
    expect(failed, 'some backups fail').toBeGreaterThan(0);
    await L.array.clearFaults();
  });
});
