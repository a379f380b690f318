/**
 * backup-pre hooks through `arraylab-agent backup`, on a mounted ext4 and xfs volume with
 * lock=freeze (so that "nothing left locked" means: still mounted read-write, and writable):
 *
 *   exit 0        the backup goes on
 *   exit 100/255  the user's own code: the backup fails saying so, the volume is flagged for a
 *                 resource match, and resource-match clears the flag
 *   exit 7        reported as a reserved code
 *   hangs         killed at --hook-timeout 2 (its whole process group), the backup fails
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { FILESYSTEMS, mountAt, sleep, startAgentLab, writeCompletes, type Agent, type AgentLab, type FsKind, type MountedFs } from '../../support/agentLab.js';
import type { AgentStatus, BackupReport, DeviceMapping, ResourceMatchReport } from '../../../agent/types.js';

describe.each(FILESYSTEMS)('backup-pre hooks on $type', (fs: FsKind) => {
  let env: AgentLab;
  let agent: Agent;
  let tv: MountedFs;
  const bv = `${fs.type}-hooks-b1`;

  // One volume per filesystem for all the cases (each failing case ends with a resource-match).
  beforeAll(async () => {
    env = await startAgentLab();
    agent = env.newAgent({ hookTimeoutS: 2 });
    tv = await env.mountFs(`${fs.type}-hooks`, fs, agent);
    await env.createVolume(bv, fs.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze']);
    await agent.json(['register', 'backup', bv]);
  });
  afterEach(() => {
    rmSync(join(agent.hooksDir, 'backup-pre'), { force: true });
  });
  afterAll(async () => {
    if (!env) return;
    try {
      await env.cleanup();
    } finally {
      await env.close();
    }
  });

  async function expectNothingLocked(): Promise<AgentStatus> {
    const m = mountAt(tv.mnt);
    expect(m, `${tv.mnt} should still be mounted`).toBeDefined();
    expect(m!.mountOptions).toBe(tv.mount.mountOptions);
    expect(await writeCompletes(tv.mnt, 3000), `${tv.mnt} is not writable (left frozen?)`).toBe(true);
    const st = await agent.json<AgentStatus>(['status']);
    expect(st.outstandingLocks).toEqual([]);
    return st;
  }

  /** The backup fails because of the hook; returns the outcome. */
  async function failingBackup(): Promise<BackupReport['volumes'][number]> {
    const r = await agent.run(['backup', tv.volume]);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    const report = r.json as BackupReport;
    expect(report.ok).toBe(false);
    const v = report.volumes[0]!;
    expect(v.ok).toBe(false);
    expect(v.hooks[0]?.phase).toBe('backup-pre');
    // The human output names the failure too.
    return v;
  }

  async function expectFlaggedThenMatched(before: AgentStatus): Promise<void> {
    const t = before.transactionVolumes.find((x) => x.volume === tv.volume)!;
    expect(t.needsResourceMatch, 'a failed pre-processing should flag the volume for a resource match').not.toBe('');
    const r = await agent.run(['resource-match']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const match = r.json as ResourceMatchReport;
    expect(match.remaining).toEqual([]);
    const after = await agent.json<AgentStatus>(['status']);
    expect(after.transactionVolumes.find((x) => x.volume === tv.volume)!.needsResourceMatch).toBe('');
  }

  it('devices shows the mapped volume', async () => {
    const devices = await agent.json<DeviceMapping[]>(['devices']);
    expect(devices).toContainEqual({ volume: tv.volume, device: tv.dev.loop, how: 'map' });
  });

  it('exit 0: the backup goes on', async () => {
    agent.hook('backup-pre', 'echo "pre $1 $2 $ARRAYLAB_VOLUME $ARRAYLAB_MOUNTPOINT"; exit 0');
    const r = await agent.run(['backup', tv.volume]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const v = (r.json as BackupReport).volumes[0]!;
    expect(v.ok).toBe(true);
    expect(v.hooks[0]).toMatchObject({ phase: 'backup-pre', verdict: 'ok', exitCode: 0 });
    expect(v.hooks[0]!.output).toContain(`pre backup-pre ${tv.volume} ${tv.volume} ${tv.mnt}`);
    await expectNothingLocked();
  });

  it.each([100, 255])("exit %i: the backup fails with the script's own code, flagged, nothing left locked", async (code) => {
    agent.hook('backup-pre', `echo "application refused" >&2; exit ${code}`);
    const v = await failingBackup();
    expect(v.hooks[0]).toMatchObject({ verdict: 'user-error', exitCode: code });
    expect(v.error).toContain(String(code));
    expect(v.hooks[0]!.message).toContain(String(code));
    expect(v.generation, 'no generation comes of an aborted backup').toBeUndefined();
    await expectFlaggedThenMatched(await expectNothingLocked());
  });

  it('exit 7: reported as a reserved code', async () => {
    agent.hook('backup-pre', 'exit 7');
    const v = await failingBackup();
    expect(v.hooks[0]).toMatchObject({ verdict: 'reserved-code', exitCode: 7 });
    expect(v.hooks[0]!.message).toMatch(/reserved/i);
    expect(v.error).toMatch(/reserved/i);
    await expectNothingLocked();
  });

  it('a hanging script is killed at --hook-timeout 2 with its children; the backup fails', async () => {
    const pidFile = join(env.work, `hang-${fs.type}.pid`);
    agent.hook('backup-pre', `sleep 600 & echo $! > ${pidFile}; wait`);
    const started = Date.now();
    const v = await failingBackup();
    const took = Date.now() - started;
    expect(v.hooks[0]!.verdict).toBe('timeout');
    expect(v.error).toMatch(/time/i);
    expect(took, 'the agent should give up on the hook after 2 s').toBeLessThan(15_000);
    expect(took).toBeGreaterThanOrEqual(2000);
    const sleeper = Number(readFileSync(pidFile, 'utf8'));
    for (let i = 0; i < 50 && existsSync(`/proc/${sleeper}`); i++) await sleep(100);
    expect(existsSync(`/proc/${sleeper}`), `the hook's child ${sleeper} outlived the timeout`).toBe(false);
    await expectNothingLocked();
  });
});
