/**
 * arraylab-agent on real filesystems never reports a backup that did not happen as described
 * (issue 13), and synchronized backups resume their pair (Suspend/Resume):
 *
 *   no device     a mounted ext4 whose device the agent cannot find is not "frozen": the
 *                 registration warns, the backup fails naming the fix, a writer never blocks;
 *                 --lock none backs up and history's PREP says none.
 *   restore --to  refused onto a registered, mounted transaction volume of another size, and
 *                 onto a mounted volume (unless --force); the filesystems are untouched.
 *   pool full     a SnapOPC+ generation whose snap pool filled shows as error in history and
 *                 doctor, restore refuses it with the array's reason, resource-match records it.
 *   sync          ext4 and xfs: the second start-sync onto a volume resumes its suspended pair
 *                 and copies only the units written since (the session's own count); each
 *                 backup volume fscks clean and holds the files as at its freeze.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BackupReport, DoctorCheck, HistoryEntry, RegisteredTransaction, SyncView } from '../../../agent/types.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import {
  AGENT_CLI,
  EXT4,
  FILESYSTEMS,
  fileChecksums,
  mountAt,
  openBackupCopy,
  sh,
  useAgentLab,
  writeCompletes,
  type Agent,
  type FsKind,
} from '../../support/agentLab.js';

/** The agent CLI as people run it: text output (the harness's flags without --json). */
function runText(agent: Agent, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [AGENT_CLI, ...args, ...agent.flags().filter((f) => f !== '--json')], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** Writes n files of 256 KiB of random data under dir and syncs them. */
function writeFiles(dir: string, prefix: string, n: number): void {
  mkdirSync(dir, { recursive: true });
  for (let i = 0; i < n; i++) sh(['dd', 'if=/dev/urandom', `of=${join(dir, `${prefix}${i}`)}`, 'bs=256k', 'count=1', 'status=none']);
  sh(['sync', '-f', dir]);
}

describe('arraylab-agent tells the truth on real filesystems', () => {
  const env = useAgentLab();

  it('a mounted ext4 the agent cannot find is never reported frozen; --lock none backs it up as none', async () => {
    const agent = env.newAgent();
    const tv = await env.mountFs('nd-ext4', EXT4); // not in the device map: the agent cannot find it
    await env.createVolume('nd-ext4-b1', EXT4.size);
    writeFiles(tv.mnt, 'a', 4);

    const reg = await runText(agent, ['register', 'transaction', tv.volume, '--lock', 'freeze']);
    expect(reg.code).toBe(0);
    expect(reg.stderr).toMatch(
      /^arraylab-agent: warning: nd-ext4 cannot be frozen yet: no block device of nd-ext4 was found on this host \(looked by its WWN \w+, its serial \w+, an NBD export named nd-ext4 or the device map\); .*--device-map.*--lock none/m,
    );
    await agent.json(['register', 'backup', 'nd-ext4-b1']);
    agent.hook('backup-pre', 'echo "quiescing the application"; exit 0');

    const writer = env.startWriter(join(tv.mnt, 'records'));
    await writer.progress(20);
    const r = await agent.run(['backup', tv.volume]);
    expect(r.code).toBe(1);
    const v = (r.json as BackupReport).volumes[0]!;
    expect(v).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
    expect(v.error).toMatch(/^cannot back up nd-ext4: the agent must freeze it \(--lock freeze\), but no block device of nd-ext4 was found on this host/);
    expect(await writeCompletes(tv.mnt, 3000), 'the filesystem must not be frozen').toBe(true);
    const before = writer.synced();
    await writer.progress(before + 10);
    expect(await agent.json<HistoryEntry[]>(['history', tv.volume])).toEqual([]);
    // The text output: one failure line on stderr? No: the report on stdout, exit 1, no logs.
    const text = await runText(agent, ['backup', tv.volume]);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/^nd-ext4: FAILED: cannot back up nd-ext4: the agent must freeze it/);
    expect(text.stderr).toBe('');

    // --lock none: backed up with nothing done on the host, and history says so.
    await agent.json<RegisteredTransaction>(['register', 'transaction', tv.volume, '--lock', 'none']);
    const ok = await runText(agent, ['backup', tv.volume]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^nd-ext4: backed up: generation 1 \(#1, opc, prep none\) on nd-ext4-b1/);
    // Hook output is shown to people too.
    expect(ok.stdout).toMatch(/hook backup-pre: ok .*\n {4}\| quiescing the application/);
    const hist = await agent.json<HistoryEntry[]>(['history', tv.volume]);
    expect(hist.map((h) => [h.number, h.prep, h.status])).toEqual([[1, 'none', 'held']]);
    await writer.stop();
  });

  it('restore --to refuses a registered, mounted transaction volume of another size, and a mounted one unless --force', async () => {
    const agent = env.newAgent();
    const a = await env.mountFs('rt-a', EXT4, agent);
    const b = await env.mountFs('rt-b', { ...EXT4, size: '96MiB' }, agent);
    const c = await env.mountFs('rt-c', EXT4, agent);
    await env.createVolume('rt-a-b1', EXT4.size);
    await agent.json(['register', 'transaction', a.volume, '--lock', 'freeze']);
    await agent.json(['register', 'transaction', b.volume, '--lock', 'freeze']);
    await agent.json(['register', 'backup', 'rt-a-b1']);
    writeFiles(a.mnt, 'a', 3);
    writeFiles(b.mnt, 'b', 3);
    writeFiles(c.mnt, 'c', 3);
    const sumsA = fileChecksums(a.mnt);
    const sumsB = fileChecksums(b.mnt);
    const sumsC = fileChecksums(c.mnt);
    expect((await agent.run(['backup', a.volume])).code).toBe(0);

    const toB = await agent.run(['restore', a.volume, '--to', b.volume]);
    expect(toB.code).toBe(1);
    expect(toB.stderr).toMatch(
      /^arraylab-agent: cannot restore rt-a generation 1 \(#1\) onto rt-b: rt-b is a registered transaction volume, whose data the restore would overwrite; choose another --to volume, or pass --force\n$/,
    );
    const forced = await agent.run(['restore', a.volume, '--to', b.volume, '--force']);
    expect(forced.code).toBe(1);
    expect(forced.stderr).toMatch(/rt-b is 96 MiB with 512-byte blocks, the generation 64 MiB with 512-byte blocks; restore onto a volume of the same size/);
    expect(mountAt(b.mnt), 'rt-b stays mounted').toBeDefined();
    expect(fileChecksums(b.mnt)).toEqual(sumsB);

    const toC = await agent.run(['restore', a.volume, '--to', c.volume]);
    expect(toC.code).toBe(1);
    expect(toC.stderr).toMatch(new RegExp(`onto rt-c: it is mounted on this host at ${c.mnt}; unmount it first, or pass --force`));
    expect(fileChecksums(c.mnt)).toEqual(sumsC);
    // --force: unmounted, restored, mounted back with rt-a's files (a copy of rt-a: same UUID,
    // fine for ext4).
    const r = await agent.run(['restore', a.volume, '--to', c.volume, '--force']);
    expect(r.code, r.stderr).toBe(0);
    expect(mountAt(c.mnt)).toBeDefined();
    expect(fileChecksums(c.mnt)).toEqual(sumsA);
  });

  it("a SnapOPC+ generation whose snap pool filled up: error in history and doctor, restore refused with the array's reason, resource-match records it", async () => {
    const agent = env.newAgent();
    const tv = await env.mountFs('pf-ext4', EXT4, agent);
    await env.arraylab(['volume', 'create', 'pf-snap', '--size', EXT4.size, '--alloc-limit', '2MiB']);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze', '--type', 'snapopcplus']);
    await agent.json(['register', 'backup', 'pf-snap']);
    writeFiles(tv.mnt, 'a', 4);
    expect((await agent.run(['backup', tv.volume])).code).toBe(0);
    // Overwrite what the generation must keep: far more before-images than 2 MiB hold.
    sh([
      'sh',
      '-c',
      `for f in ${tv.mnt}/a*; do dd if=/dev/urandom of=$f bs=256k count=1 conv=notrunc status=none; done; dd if=/dev/urandom of=${tv.mnt}/big bs=1M count=8 status=none; sync -f ${tv.mnt}`,
    ]);

    const hist = await agent.json<HistoryEntry[]>(['history', tv.volume]);
    expect(hist[0]).toMatchObject({ number: 1, generation: 1, status: 'error' });
    expect(hist[0]!.error).toMatch(/the array error-suspended session \S+: snap volume pf-snap .*full/);
    const restore = await agent.run(['restore', tv.volume]);
    expect(restore.code).toBe(1);
    expect(restore.stderr).toMatch(
      /^arraylab-agent: cannot restore pf-ext4 generation 1 \(#1\): it is error on the array: the array error-suspended session \S+: snap volume pf-snap/,
    );
    expect(restore.stderr).not.toMatch(/EIO|input\/output/i);
    expect(mountAt(tv.mnt), 'refused before anything was unmounted').toBeDefined();
    const doctor = await agent.run(['doctor']);
    const gens = (doctor.json as DoctorCheck[]).find((c) => c.name === 'generations')!;
    expect(gens).toMatchObject({ ok: false, fix: expect.stringMatching(/resource-match/) });
    expect(gens.detail).toMatch(/pf-ext4 generation 1 \(#1\): error:/);
    const rm = await agent.run(['resource-match']);
    expect(rm.stdout).toMatch(/pf-ext4 generation #1 marked error/);
    const after = await agent.json<HistoryEntry[]>(['history', tv.volume]);
    expect(after[0]).toMatchObject({ status: 'error', generation: 0 });
  });

  it.each(FILESYSTEMS)('$type: synchronized backups with Suspend/Resume: the resync copies only what changed', async (fs: FsKind) => {
    const agent = env.newAgent();
    const tv = await env.mountFs(`sr-${fs.type}`, fs, agent);
    for (const b of ['b1', 'b2']) {
      await env.createVolume(`${tv.volume}-${b}`, fs.size);
      await agent.json(['register', 'backup', `${tv.volume}-${b}`]);
    }
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze', '--generations', '1']);
    const array = new ArrayClient(env.lab.apiAddress);
    env.onCleanup(() => array.close());

    const backupSync = async (): Promise<{ gen: HistoryEntry; sums: Map<string, string> }> => {
      const sums = fileChecksums(tv.mnt); // nothing writes during the backup: the freeze-instant files
      const r = await agent.run(['backup', tv.volume]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      return { gen: (r.json as BackupReport).volumes[0]!.generation!, sums };
    };

    writeFiles(join(tv.mnt, 'one'), 'f', 4);
    const s1 = await agent.json<SyncView>(['start-sync', tv.volume, '--wait']);
    expect(s1).toMatchObject({ backupVolume: `${tv.volume}-b1`, start: 'full', state: 'equivalent' });
    expect(s1.unitsToCopy).toBe(s1.totalUnits);
    const g1 = await backupSync();
    expect(g1.gen).toMatchObject({ number: 1, type: 'ec', prep: 'freeze', backupVolume: `${tv.volume}-b1` });
    expect(await array.getCopy(s1.sessionId)).toMatchObject({ state: 'suspended' });

    writeFiles(join(tv.mnt, 'two'), 'f', 4);
    const s2 = await agent.json<SyncView>(['start-sync', tv.volume, '--wait']);
    expect(s2).toMatchObject({ backupVolume: `${tv.volume}-b2`, start: 'full' });
    const g2 = await backupSync();

    // b1 was released by the second backup (N=1) but kept its suspended pair: the next
    // start-sync resumes it. What it copies is what the array tracked on the source since the
    // first backup: the files of "two" and "three" and the filesystem's metadata, not all of it.
    writeFiles(join(tv.mnt, 'three'), 'f', 2);
    const tracked = await array.getCopy(s1.sessionId);
    const changed = tracked.totalBlocks - tracked.copiedBlocks;
    const s3 = await agent.json<SyncView>(['start-sync', tv.volume, '--wait']);
    expect(s3).toMatchObject({ backupVolume: `${tv.volume}-b1`, sessionId: s1.sessionId, start: 'resume', state: 'equivalent' });
    expect(s3.unitsToCopy, 'the resync copies exactly the units the array tracked as changed').toBe(changed);
    // 6 files of 256 KiB: at least 24 units of 64 KiB; far below the volume's units.
    expect(s3.unitsToCopy).toBeGreaterThanOrEqual(24);
    expect(s3.unitsToCopy).toBeLessThan(s3.totalUnits / 10);
    console.log(`${fs.type}: start-sync resumed ${s3.unitsToCopy} of ${s3.totalUnits} units (a new pair copied ${s2.unitsToCopy})`);
    const g3 = await backupSync();
    expect(g3.gen).toMatchObject({ number: 3, backupVolume: `${tv.volume}-b1` });

    // Each held backup volume is a clean filesystem with the files as at its freeze.
    for (const { gen, sums } of [g2, g3]) {
      const copy = await openBackupCopy(env, gen.backupVolume, fs, { fsckFirst: fs.type === 'ext4' });
      if (copy.fsckBefore) expect(copy.fsckBefore.code, copy.fsckBefore.out).toBe(0);
      expect(fileChecksums(copy.mnt)).toEqual(sums);
      const done = await copy.finish();
      expect(done.code, done.out).toBe(0);
    }
    const hist = await agent.json<HistoryEntry[]>(['history', tv.volume]);
    expect(hist.map((h) => [h.number, h.generation, h.status, h.backupVolume])).toEqual([
      [3, 1, 'held', `${tv.volume}-b1`],
      [2, 0, 'released', `${tv.volume}-b2`],
      [1, 0, 'released', `${tv.volume}-b1`],
    ]);
    writeFileSync(join(tv.mnt, 'after'), 'still writable\n');
  });
});
