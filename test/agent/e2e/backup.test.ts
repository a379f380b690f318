/**
 * arraylab-agent backs up a busy, mounted ext4 or xfs filesystem on an array volume:
 *
 *   lock=unmount  the backup-pre hook quiesces the writer (it must let go of the filesystem for
 *                 the unmount), backup-post resumes it; the copy holds exactly what was written
 *                 before the quiesce.
 *   lock=freeze   the writer keeps running (it blocks while frozen); the copy holds every
 *                 record fsynced before the command and ends on a record boundary.
 *   --flush-only  the writer keeps running; the copy is crash-consistent: after journal replay
 *                 it holds every record fsynced before the command.
 *
 * Every copy passes fsck -n, and is a prefix of the live file. Afterwards the transaction
 * volume is mounted again, read-write, with the same options. Then restore brings back exactly
 * the backup's files (sha256 of each) and, with nothing mounted, the same blocks (qemu-img
 * compare over NBD).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  checkRecords,
  FILESYSTEMS,
  fileChecksums,
  mountAt,
  openBackupCopy,
  RECORD_BYTES,
  sh,
  shTry,
  useAgentLab,
  type Agent,
  type FsKind,
  type MountedFs,
  type Writer,
} from '../../support/agentLab.js';
import type { BackupReport, RestoreReport } from '../../../agent/types.js';

/** Hook bodies that quiesce / resume the writer: it closes its file, so umount can go on. */
function quiesceHooks(agent: Agent, writer: Writer, mnt: string): void {
  agent.hook(
    'backup-pre',
    `kill -USR1 ${writer.pid} || exit 101
i=0
while ls -l /proc/${writer.pid}/fd 2>/dev/null | grep -q -F -- '${mnt}/'; do
  i=$((i+1)); [ $i -gt 200 ] && { echo "writer ${writer.pid} still has files open on ${mnt}" >&2; exit 102; }
  sleep 0.05
done
exit 0`,
  );
  agent.hook('backup-post', `kill -USR2 ${writer.pid} || exit 103`);
}

function expectRemounted(tv: MountedFs): void {
  const now = mountAt(tv.mnt);
  expect(now, `${tv.mnt} is not mounted after the backup`).toBeDefined();
  expect({ fsType: now!.fsType, mountOptions: now!.mountOptions, superOptions: now!.superOptions }).toEqual({
    fsType: tv.mount.fsType,
    mountOptions: tv.mount.mountOptions,
    superOptions: tv.mount.superOptions,
  });
  expect(now!.mountOptions.split(',')).toContain('rw');
}

describe.each(FILESYSTEMS)('arraylab-agent backup of a busy $type filesystem', (fs: FsKind) => {
  const env = useAgentLab();

  async function setUp(name: string, lock: 'unmount' | 'freeze') {
    const agent = env.newAgent();
    const tv = await env.mountFs(`${fs.type}-${name}`, fs, agent);
    const bv = `${fs.type}-${name}-b1`;
    await env.createVolume(bv, fs.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', lock]);
    await agent.json(['register', 'backup', bv]);
    const writer = env.startWriter(join(tv.mnt, 'records'));
    await writer.progress(40);
    return { agent, tv, bv, writer };
  }

  /** Runs the backup; checks the report and the remount; returns the backup volume used. */
  async function backup(agent: Agent, tv: MountedFs, bv: string, prep: 'unmount' | 'freeze' | 'flush', extra: string[] = []) {
    const r = await agent.run(['backup', tv.volume, ...extra]);
    expect(r.code, `backup exited ${r.code}: ${r.stderr}\n${r.stdout}`).toBe(0);
    const report = r.json as BackupReport;
    expect(report.ok).toBe(true);
    expect(report.volumes).toHaveLength(1);
    const v = report.volumes[0]!;
    expect(v.ok, v.error).toBe(true);
    expect(v.generation).toMatchObject({ transactionVolume: tv.volume, backupVolume: bv, generation: 1, status: 'held', prep });
    expectRemounted(tv);
    return { report, doneAt: Date.now() };
  }

  /** Reads the writer's file on the backup volume and checks the filesystem around it. */
  async function readCopy(bv: string, fsckFirst: boolean): Promise<Buffer> {
    const copy = await openBackupCopy(env, bv, fs, { fsckFirst });
    if (copy.fsckBefore) expect(copy.fsckBefore.code, copy.fsckBefore.out).toBe(0);
    const buf = readFileSync(join(copy.mnt, 'records'));
    const after = await copy.finish();
    expect(after.code, after.out).toBe(0);
    return buf;
  }

  /** The copy's records are a prefix of the live file's. */
  function expectPrefix(copy: Buffer, liveFile: string, allowTail: boolean) {
    const c = checkRecords(copy);
    const live = readFileSync(liveFile);
    expect(c.records).toBeGreaterThan(0);
    expect(copy.subarray(0, c.records * RECORD_BYTES).equals(live.subarray(0, c.records * RECORD_BYTES)), 'the copy is not a prefix of the live file').toBe(
      true,
    );
    if (allowTail) {
      // A crash-consistent copy may end in a record being written: zeroes or the start of it.
      const t = c.tail;
      const liveTail = live.subarray(c.records * RECORD_BYTES, c.records * RECORD_BYTES + t.length);
      expect(
        t.every((b) => b === 0) || t.equals(liveTail),
        `the copy ends in ${t.length} bytes that are neither zeroes nor the live file's: ${c.stoppedAt}`,
      ).toBe(true);
    } else {
      expect({ tailBytes: c.tail.length, stoppedAt: c.stoppedAt }).toEqual({ tailBytes: 0, stoppedAt: '' });
    }
    return c;
  }

  it('lock=unmount: hooks quiesce the writer; the copy holds exactly what it wrote before', async () => {
    const { agent, tv, bv, writer } = await setUp('unmount', 'unmount');
    quiesceHooks(agent, writer, tv.mnt);
    const syncedBefore = writer.synced();

    const { report } = await backup(agent, tv, bv, 'unmount');
    expect(report.volumes[0]!.hooks.map((h) => [h.phase, h.verdict])).toEqual([
      ['backup-pre', 'ok'],
      ['backup-post', 'ok'],
    ]);
    const quietAt = Number(/^quiet (\d+)$/m.exec(writer.output())?.[1]);
    expect(quietAt).toBeGreaterThanOrEqual(syncedBefore);
    // backup-post resumed it, on the remounted filesystem.
    await writer.waitFor(/^resumed /);
    await writer.progress(20);

    const copy = await readCopy(bv, true);
    const c = expectPrefix(copy, writer.file, false);
    expect(c.records, 'the copy should hold exactly the records written before the quiesce').toBe(quietAt);
  });

  it('lock=freeze: the writer keeps running; the copy holds every record fsynced before', async () => {
    const { agent, tv, bv, writer } = await setUp('freeze', 'freeze');
    const syncedBefore = writer.synced();
    const { doneAt } = await backup(agent, tv, bv, 'freeze');
    await writer.progress(20);
    expect(writer.output()).not.toMatch(/quiet/);

    // A frozen ext4 has an empty journal; a frozen xfs leaves its log to replay (as after a crash).
    const copy = await readCopy(bv, fs.type === 'ext4');
    const c = expectPrefix(copy, writer.file, false);
    expect(c.records).toBeGreaterThanOrEqual(syncedBefore);
    expect(c.lastTime, 'the copy holds a record written after the backup command ended').toBeLessThanOrEqual(doneAt);
  });

  it('--flush-only: the writer keeps running; the copy is crash-consistent and holds every record fsynced before', async () => {
    const { agent, tv, bv, writer } = await setUp('flush', 'unmount');
    const syncedBefore = writer.synced();
    const { doneAt } = await backup(agent, tv, bv, 'flush', ['--flush-only']);
    await writer.progress(20);

    const copy = await readCopy(bv, false);
    const c = expectPrefix(copy, writer.file, true);
    expect(c.records).toBeGreaterThanOrEqual(syncedBefore);
    expect(c.lastTime).toBeLessThanOrEqual(doneAt);
  });

  it('restore returns exactly the backed-up files, and with nothing mounted the same blocks', async () => {
    const { agent, tv, bv, writer } = await setUp('restore', 'unmount');
    quiesceHooks(agent, writer, tv.mnt);
    writeFileSync(join(tv.mnt, 'kept.txt'), 'as of the backup\n');
    writeFileSync(join(tv.mnt, 'changed.txt'), 'as of the backup\n');
    sh(['sync', '-f', tv.mnt]);
    await backup(agent, tv, bv, 'unmount');
    await writer.waitFor(/^resumed /);

    // Change the live filesystem after the backup, then stop everything writing to it.
    await writer.progress(40);
    writeFileSync(join(tv.mnt, 'changed.txt'), 'changed after the backup\n');
    writeFileSync(join(tv.mnt, 'new.txt'), 'made after the backup\n');
    rmSync(join(tv.mnt, 'kept.txt'));
    await writer.stop();
    sh(['sync', '-f', tv.mnt]);

    const r = await agent.run(['restore', tv.volume]);
    expect(r.code, `restore exited ${r.code}: ${r.stderr}\n${r.stdout}`).toBe(0);
    const report = r.json as RestoreReport;
    expect(report).toMatchObject({ volume: tv.volume, target: tv.volume, from: 'disk' });
    expect(report.generation).toMatchObject({ backupVolume: bv, number: 1 });
    expectRemounted(tv);

    const restored = fileChecksums(tv.mnt);
    expect(restored.has('new.txt')).toBe(false);
    const copy = await openBackupCopy(env, bv, fs, { fsckFirst: true });
    expect(copy.fsckBefore!.code, copy.fsckBefore!.out).toBe(0);
    const backedUp = fileChecksums(copy.mnt);
    expect((await copy.finish()).code).toBe(0);
    expect(backedUp.has('kept.txt') && backedUp.has('records')).toBe(true);
    expect(Object.fromEntries(restored)).toEqual(Object.fromEntries(backedUp));

    // The agent's remount changed the superblock (mount count, time): restore again with the
    // volume unmounted (left alone by the lock), then compare blocks.
    tv.unmount();
    const again = await agent.run(['restore', tv.volume]);
    expect(again.code, again.stderr).toBe(0);
    expect(mountAt(tv.mnt)).toBeUndefined();
    const cmp = shTry(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', env.lab.nbdUri(tv.volume), env.lab.nbdUri(bv)]);
    expect(cmp.code, cmp.out).toBe(0);
    expect(cmp.out).toMatch(/Images are identical/);
  });
});
