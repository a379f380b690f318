/**
 * arraylab-agent on real filesystems under the array's injected faults (issue 15): whatever a
 * fault does to a backup, the agent reports it as it happened and leaves the host as it found
 * it (needs root, fsfreeze, mkfs.ext4; see test/agent/e2e/README.md):
 *
 *   flaky plan   a seeded plan failing 1 % of the transaction volume's reads and 1 % of the
 *                backup volumes' writes, with a writer running: over several --lock freeze
 *                backups, each one reported ok is in history (held) and fscks clean, each
 *                failed one says why and is not in history; the filesystem is never left
 *                frozen or unmounted, and backup-pre and backup-post ran every time.
 *   copy-error   the EC pair of a synchronized backup goes error-suspended under a writer (a
 *                mirrored write fails): the backup fails with the array's reason at once, no
 *                generation, the filesystem is writable; resumed once the fault is gone, the
 *                next backup works and its copy holds the files.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BackupReport, HistoryEntry, SyncView } from '../../agent/types.js';
import { ArrayClient } from '../../proto/ArrayClient.js';
import { checkRecords, EXT4, mountAt, openBackupCopy, sh, useAgentLab, writeCompletes } from '../support/agentLab.js';
import { waitFor } from '../support/wait.js';

describe('arraylab-agent under injected faults (real ext4)', () => {
  const env = useAgentLab();

  /** Hooks that append their phase to a log outside the filesystem. */
  function hooks(agent: ReturnType<typeof env.newAgent>): string {
    const log = join(env.work, `hooks-${Date.now()}.log`);
    agent.hook('backup-pre', `echo pre >> ${log}; exit 0`);
    agent.hook('backup-post', `echo post >> ${log}; exit 0`);
    return log;
  }
  const phases = (log: string): string[] => {
    try {
      return readFileSync(log, 'utf8').trim().split('\n').filter(Boolean);
    } catch {
      return [];
    }
  };

  it('a seeded plan failing 1 % of reads and of backup-volume writes: truthful reports, never left frozen or unmounted', async () => {
    const agent = env.newAgent();
    const tv = await env.mountFs('ff-ext4', EXT4, agent);
    for (const b of ['ff-b1', 'ff-b2']) await env.createVolume(b, EXT4.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze', '--generations', '2']);
    for (const b of ['ff-b1', 'ff-b2']) await agent.json(['register', 'backup', b]);
    const log = hooks(agent);
    const plan = join(env.work, 'flaky.yaml');
    sh([
      'sh',
      '-c',
      `cat > ${plan} <<'EOF'
name: agent-flaky
seed: 4242
faults:
  - {kind: error, target: 'volume:${tv.volume}', ops: [read], probability: 0.01}
  - {kind: error, target: 'volume:ff-b1', ops: [write], probability: 0.01}
  - {kind: error, target: 'volume:ff-b2', ops: [write], probability: 0.01}
EOF`,
    ]);
    await env.arraylab(['fault', 'apply', plan]);
    const writer = env.startWriter(join(tv.mnt, 'records'));
    try {
      await writer.progress(10);
      let reported = 0;
      let failed = 0;
      for (let i = 0; i < 4; i++) {
        // A reader beside the backup: the filesystem's files from the array (caches dropped),
        // and the device itself with O_DIRECT; some of these reads fail.
        sh(['sh', '-c', 'echo 3 > /proc/sys/vm/drop_caches']);
        const reader = spawn(
          'sh',
          [
            '-c',
            `cat "$1"/records > /dev/null 2>&1; dd if="$2" of=/dev/null bs=64k iflag=direct conv=noerror status=none 2>/dev/null; true`,
            'reader',
            tv.mnt,
            tv.dev.loop,
          ],
          { stdio: 'ignore' },
        );
        const read = new Promise((resolve) => reader.once('exit', resolve));
        const r = await agent.run(['backup', tv.volume, '--type', 'opc'], { timeoutMs: 120_000 });
        await read;
        const v = (r.json as BackupReport).volumes[0]!;
        expect(r.code === 0, `exit status and report agree: ${r.stderr}`).toBe(v.ok);
        expect(await writeCompletes(tv.mnt, 5000), 'the filesystem must not be left frozen').toBe(true);
        expect(mountAt(tv.mnt), 'the filesystem must still be mounted').toBeDefined();
        const history = await agent.json<HistoryEntry[]>(['history', tv.volume]);
        if (v.ok) {
          reported++;
          expect(v.generation).toMatchObject({ status: 'held', prep: 'freeze' });
          expect(history.find((h) => h.number === v.generation!.number)).toMatchObject({ status: 'held', backupVolume: v.generation!.backupVolume });
          // The copy is the frozen image: it fscks clean (read through an overlay, never changed).
          const copy = await openBackupCopy(env, v.generation!.backupVolume, EXT4, { fsckFirst: true });
          expect(copy.fsckBefore!.code, copy.fsckBefore!.out).toBe(0);
          expect(checkRecords(readFileSync(join(copy.mnt, 'records'))), 'every record in the copy is whole').toMatchObject({
            stoppedAt: '',
            tail: Buffer.alloc(0),
          });
          expect((await copy.finish()).code).toBe(0);
        } else {
          failed++;
          expect(v.error, 'a failed backup says why').toMatch(/\S/);
          // What it made, if anything, is not a held generation.
          if (v.generation !== undefined) expect(history.find((h) => h.number === v.generation!.number)?.status).not.toBe('held');
        }
        expect(phases(log).slice(-2), 'backup-pre and backup-post both ran').toEqual(['pre', 'post']);
        await writer.progress(5);
      }
      expect(reported + failed).toBe(4);
    } finally {
      await writer.stop();
      await env.arraylab(['fault', 'clear']);
    }
    const faults = JSON.parse(await env.arraylab(['fault', 'events', '--json'])).events as Array<{ target: string }>;
    expect(
      faults.some((e) => e.target === `volume:${tv.volume}`),
      'reads of the transaction volume failed during the run',
    ).toBe(true);
  });

  it('a copy-error fault error-suspends the EC pair: the backup fails with the array reason, nothing frozen; resumed, the next one works', async () => {
    const agent = env.newAgent();
    const tv = await env.mountFs('fc-ext4', EXT4, agent);
    await env.createVolume('fc-b1', EXT4.size);
    await env.createVolume('fc-b2', EXT4.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze', '--generations', '1']);
    for (const b of ['fc-b1', 'fc-b2']) await agent.json(['register', 'backup', b]);
    const log = hooks(agent);
    const sync = await agent.json<SyncView>(['start-sync', tv.volume, '--wait']);
    const id = (await env.arraylab(['fault', 'add', 'copy-error', '--session', sync.sessionId, '--ops', 'write', '--once'])).trim();
    const writer = env.startWriter(join(tv.mnt, 'records'));
    const client = new ArrayClient(env.lab.apiAddress);
    try {
      // The writer's next mirrored write fails on the backup volume; the write itself stands.
      const s = await waitFor(
        () => client.getCopy(sync.sessionId),
        (x) => x.state === 'error-suspended',
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      expect(s.error).toMatch(new RegExp(`a mirrored write failed: .*\\(fault ${id}\\)`));
      const r = await agent.run(['backup', tv.volume, '--wait-equivalent', '30']);
      expect(r.code).toBe(1);
      const v = (r.json as BackupReport).volumes[0]!;
      expect(v).toMatchObject({ ok: false, code: 'FAILED_PRECONDITION' });
      expect(v.error).toContain(s.error);
      expect(r.ms).toBeLessThan(15_000); // error-suspended is not waited for
      expect(await agent.json<HistoryEntry[]>(['history', tv.volume])).toEqual([]);
      expect(await writeCompletes(tv.mnt, 5000)).toBe(true);
      expect(phases(log)).toEqual([]); // refused before any pre-processing

      await env.arraylab(['fault', 'remove', id]);
      await env.arraylab(['copy', 'resume', sync.sessionId, '--force']);
      await waitFor(
        () => client.getCopy(sync.sessionId),
        (x) => x.state === 'equivalent',
        { timeoutMs: 60_000, intervalMs: 100 },
      );
      const ok = await agent.run(['backup', tv.volume]);
      expect(ok.code, ok.stderr).toBe(0);
      expect((ok.json as BackupReport).volumes[0]!.generation).toMatchObject({ status: 'held', type: 'ec', backupVolume: 'fc-b1', prep: 'freeze' });
      expect(phases(log)).toEqual(['pre', 'post']);
    } finally {
      await writer.stop();
      client.close();
    }
    const copy = await openBackupCopy(env, 'fc-b1', EXT4, { fsckFirst: true });
    expect(copy.fsckBefore!.code, copy.fsckBefore!.out).toBe(0);
    expect(checkRecords(readFileSync(join(copy.mnt, 'records'))).records).toBeGreaterThan(0);
    expect((await copy.finish()).code).toBe(0);
  });
});
