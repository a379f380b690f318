/**
 * The agent killed with -9 in the middle of a backup, on a mounted ext4 volume:
 *
 *   frozen     lock=freeze, --freeze-deadline 5: the array step hangs (its control API is held
 *              at a gate), the agent is killed while the filesystem is frozen; the freeze guard
 *              sees the pipe close and thaws: a write completes within 6 s of the kill. The
 *              records still show the lock; resource-match settles it.
 *   unmounted  lock=unmount: killed while the volume is unmounted; status shows the
 *              outstanding lock, resource-match remounts it with the same options.
 *
 * Why a gate and not SIGSTOP of the array: the volume's block I/O goes to the same process, so a
 * stopped array hangs the filesystem itself (fsfreeze's sync included), not only the copy call.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXT4, mountAt, shTry, sleep, useAgentLab, startApiGate, writeCompletes, type Agent, type ApiGate } from '../../support/agentLab.js';
import type { AgentStatus, BackupReport, ResourceMatchReport } from '../../../agent/types.js';
import { until } from '../../support/wait.js';
import { credentialLinkName, credentialsDir } from '../../../proto/auth/credentials.js';
import { parseHostPort } from '../../../proto/util/address.js';

describe('arraylab-agent killed with -9 mid-backup', () => {
  const env = useAgentLab();

  /**
   * A backup-pre hook that says it ran and waits until the test has closed the gate: the
   * agent's next array call after pre-processing (the copy) then hangs.
   */
  function gateInHook(agent: Agent, gate: ApiGate, name: string): { ran(): boolean; closeGate(): void } {
    const ran = join(env.work, `${name}.hook-ran`);
    const go = join(env.work, `${name}.gate-closed`);
    agent.hook('backup-pre', `touch ${ran}; i=0; while [ ! -e ${go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 0`);
    return {
      ran: () => existsSync(ran),
      closeGate() {
        gate.pause();
        shTry(['touch', go]);
      },
    };
  }

  /** Running (a zombie is not: its parent, the agent, is gone and init may be slow to reap). */
  function alive(pid: number): boolean {
    try {
      return !/^\d+ \(.*\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  }

  /**
   * Through the gate the agent meets the array at another address, for which no local admin
   * credential is linked: it is given the array's (--token-file) for the commands after useArray.
   */
  const viaGate = (args: string[]): string[] => [...args, '--token-file', join(credentialsDir(), credentialLinkName(parseHostPort(env.lab.apiAddress)))];

  /** How this file waits: every 25 ms, 30 s unless a step says otherwise. */
  const PACE = { timeoutMs: 30_000, intervalMs: 25 };

  it('kill -9 while frozen: the guard thaws at once (within the 5 s deadline); resource-match settles the record', async () => {
    const agent = env.newAgent({ freezeDeadlineS: 5 });
    const tv = await env.mountFs('crash-freeze', EXT4, agent);
    await env.createVolume('crash-freeze-b1', EXT4.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze']);
    await agent.json(['register', 'backup', 'crash-freeze-b1']);
    const gate = await startApiGate(env);
    agent.useArray(gate.address);
    const hook = gateInHook(agent, gate, 'freeze');
    const writer = env.startWriter(join(tv.mnt, 'records'));
    await writer.progress(20);

    const child = agent.spawn(viaGate(['backup', tv.volume]));
    await until('the backup-pre hook', hook.ran, PACE);
    hook.closeGate();
    // Frozen: the writer stops making progress.
    await until(
      'the filesystem to freeze',
      async () => {
        const before = writer.synced();
        await sleep(700);
        return writer.synced() === before;
      },
      { ...PACE, timeoutMs: 20_000 },
    );
    expect(await writeCompletes(tv.mnt, 500), 'the filesystem should be frozen now').toBe(false);

    const killedAt = Date.now();
    const result = await child.kill9();
    expect(result.signal).toBe('SIGKILL');
    expect(await writeCompletes(tv.mnt, 6000 - (Date.now() - killedAt)), 'the filesystem is still frozen 6 s after kill -9').toBe(true);
    const thawedIn = Date.now() - killedAt;
    // The guard notices the pipe close: far sooner than the deadline.
    expect(thawedIn, `thawed ${thawedIn} ms after the kill`).toBeLessThan(3000);
    await writer.progress(20);

    gate.resume();
    const st = await agent.json<AgentStatus>(viaGate(['status']));
    const lock = st.outstandingLocks.find((l) => l.volume === tv.volume);
    expect(lock, `status should show the lock the killed agent left: ${JSON.stringify(st.outstandingLocks)}`).toMatchObject({
      role: 'transaction',
      action: 'frozen',
      device: tv.dev.loop,
    });
    if (lock?.freezeGuardPid) expect(alive(lock.freezeGuardPid), `the freeze guard ${lock.freezeGuardPid} should have exited after thawing`).toBe(false);

    const r = await agent.run(viaGate(['resource-match']));
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const match = r.json as ResourceMatchReport;
    expect(match.repaired.join('\n')).toContain(tv.volume);
    expect(match.remaining).toEqual([]);
    const after = await agent.json<AgentStatus>(viaGate(['status']));
    expect(after.outstandingLocks).toEqual([]);
    expect(after.transactionVolumes.find((t) => t.volume === tv.volume)!.needsResourceMatch).toBe('');

    // The killed operation does not block the next one.
    const again = await agent.run(viaGate(['backup', tv.volume]));
    expect(again.code, again.stdout + again.stderr).toBe(0);
    expect((again.json as BackupReport).ok).toBe(true);
  });

  it('an agent stuck past --freeze-deadline: the guard thaws anyway, and the backup is not passed off as a frozen copy', async () => {
    const agent = env.newAgent({ freezeDeadlineS: 3 });
    const tv = await env.mountFs('stuck-freeze', EXT4, agent);
    await env.createVolume('stuck-freeze-b1', EXT4.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'freeze']);
    await agent.json(['register', 'backup', 'stuck-freeze-b1']);
    const gate = await startApiGate(env);
    agent.useArray(gate.address);
    const hook = gateInHook(agent, gate, 'stuck');

    const child = agent.spawn(viaGate(['backup', tv.volume]));
    await until('the backup-pre hook', hook.ran, PACE);
    hook.closeGate();
    await until('the filesystem to freeze', async () => !(await writeCompletes(tv.mnt, 300)), { ...PACE, timeoutMs: 20_000 });
    const frozenAt = Date.now();
    // The agent is alive (its pipe to the guard open) but its array call hangs: the deadline thaws.
    expect(await writeCompletes(tv.mnt, 6000), 'still frozen 6 s after a 3 s deadline').toBe(true);
    const thawedAfter = Date.now() - frozenAt;
    expect(thawedAfter, `thawed ${thawedAfter} ms after the freeze`).toBeLessThan(5000);

    gate.resume();
    const r = await child.done;
    // The copy would be taken after the thaw: not the frozen image the user asked for.
    expect(r.code, `a backup whose freeze ran out before the copy succeeded: ${r.stdout}`).toBe(1);
    expect(r.stdout + r.stderr).toMatch(/deadline/i);
    const st = await agent.json<AgentStatus>(viaGate(['status']));
    expect(st.outstandingLocks).toEqual([]);
    expect(await writeCompletes(tv.mnt, 3000)).toBe(true);
  });

  it('kill -9 while unmounted: status shows the lock; resource-match remounts with the same options', async () => {
    const agent = env.newAgent();
    const tv = await env.mountFs('crash-unmount', EXT4, agent);
    await env.createVolume('crash-unmount-b1', EXT4.size);
    await agent.json(['register', 'transaction', tv.volume, '--lock', 'unmount']);
    await agent.json(['register', 'backup', 'crash-unmount-b1']);
    const gate = await startApiGate(env);
    agent.useArray(gate.address);
    const hook = gateInHook(agent, gate, 'unmount');

    const child = agent.spawn(viaGate(['backup', tv.volume]));
    await until('the backup-pre hook', hook.ran, PACE);
    hook.closeGate();
    await until('the agent to unmount the volume', () => mountAt(tv.mnt) === undefined, { ...PACE, timeoutMs: 20_000 });
    await sleep(300);
    const result = await child.kill9();
    expect(result.signal).toBe('SIGKILL');
    expect(mountAt(tv.mnt), 'left unmounted by the killed agent').toBeUndefined();

    gate.resume();
    const st = await agent.json<AgentStatus>(viaGate(['status']));
    expect(st.outstandingLocks.find((l) => l.volume === tv.volume)).toMatchObject({ role: 'transaction', action: 'unmounted' });

    const r = await agent.run(viaGate(['resource-match']));
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect((r.json as ResourceMatchReport).remaining).toEqual([]);
    const m = mountAt(tv.mnt);
    expect(m, 'resource-match should remount the volume').toBeDefined();
    expect({ source: m!.source, mountOptions: m!.mountOptions, superOptions: m!.superOptions }).toEqual({
      source: tv.mount.source,
      mountOptions: tv.mount.mountOptions,
      superOptions: tv.mount.superOptions,
    });
    const after = await agent.json<AgentStatus>(viaGate(['status']));
    expect(after.outstandingLocks).toEqual([]);
    expect(after.transactionVolumes.find((t) => t.volume === tv.volume)!.needsResourceMatch).toBe('');
    // A second resource-match finds nothing to do.
    const twice = await agent.json<ResourceMatchReport>(viaGate(['resource-match']));
    expect(twice).toEqual({ repaired: [], remaining: [] });
  });
});
