/**
 * Generation rotation through the arraylab-agent CLI, on volumes with no local device (so
 * pre-processing does nothing and each case is quick). Before each backup the transaction
 * volume gets a new data pattern over NBD, so every backup volume can be checked to hold the
 * generation history says it holds.
 *
 *   opc, snapopcplus  --generations 2, 2 backup volumes: the 3rd backup releases the oldest
 *                     first and reuses its volume (history: 2 held + 1 released)
 *   synchronized      start-sync; backup refused until equivalent; then backup; N+1 volumes
 *                     needed, so with 1 volume a second start-sync fails naming the fix
 *   none              no backup volume registered: backup fails naming the fix
 */
import { describe, expect, it } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import { shTry, sleep, useAgentLab, type Agent } from '../../support/agentLab.js';
import type { AgentStatus, BackupReport, HistoryEntry, RestoreReport, SyncView } from '../../../agent/types.js';
import { until } from '../../support/wait.js';

const SIZE = '16MiB';
const SYNC_SIZE = '256MiB';
const MiB = 1 << 20;

describe('generations through arraylab-agent', () => {
  const env = useAgentLab();
  /** How this file waits: every 50 ms, for at most 30 s. */
  const PACE = { timeoutMs: 30_000, intervalMs: 50 };

  /** Fills the first 4 MiB of a volume with one byte over NBD. */
  function fill(volume: string, pattern: number, bytes = 4 * MiB): void {
    const r = shTry(['qemu-io', '-f', 'raw', '-c', `write -P ${pattern} 0 ${bytes}`, env.lab.nbdUri(volume)]);
    expect(r.code, r.out).toBe(0);
  }

  /** Whether the first 4 MiB of a volume read as the pattern (read-only over NBD). */
  function holds(volume: string, pattern: number): boolean {
    const r = shTry(['qemu-io', '-r', '-f', 'raw', '-c', `read -P ${pattern} 0 ${4 * MiB}`, env.lab.nbdUri(volume)]);
    return r.code === 0 && !/verification failed|error/i.test(r.out);
  }

  async function backupOk(agent: Agent, tv: string, extra: string[] = []): Promise<HistoryEntry> {
    const r = await agent.run(['backup', tv, ...extra]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const v = (r.json as BackupReport).volumes[0]!;
    expect(v.ok, v.error).toBe(true);
    return v.generation!;
  }

  async function setUp(tv: string, type: 'opc' | 'snapopcplus', gens: number, backups: number, size = SIZE): Promise<{ agent: Agent; bvs: string[] }> {
    const agent = env.newAgent();
    await env.createVolume(tv, size);
    // No filesystem here (the volumes are filled over NBD): nothing to lock on this host.
    await agent.json(['register', 'transaction', tv, '--lock', 'none', '--generations', String(gens), '--type', type]);
    const bvs: string[] = [];
    for (let i = 1; i <= backups; i++) {
      const bv = `${tv}-b${i}`;
      await env.createVolume(bv, size);
      await agent.json(['register', 'backup', bv]);
      bvs.push(bv);
    }
    return { agent, bvs };
  }

  it.each(['opc', 'snapopcplus'] as const)('%s: 2 generations on 2 volumes; the 3rd backup reuses the oldest', async (type) => {
    const tv = `rot-${type}`;
    const { agent, bvs } = await setUp(tv, type, 2, 2);
    if (type === 'snapopcplus') {
      // The restore of a snap generation is a host copy (a snap volume cannot be a copy source
      // on the array): the agent needs both on block devices. Snap volumes are read-only.
      agent.map(tv, (await env.attach(tv)).loop);
      for (const bv of bvs) agent.map(bv, (await env.attach(bv, { readOnly: true })).loop);
    }
    const gens: HistoryEntry[] = [];
    for (const pattern of [0x11, 0x22, 0x33]) {
      fill(tv, pattern);
      gens.push(await backupOk(agent, tv));
    }
    expect(gens.map((g) => g.number)).toEqual([1, 2, 3]);
    expect(gens.map((g) => g.type)).toEqual([type, type, type]);
    expect(new Set([gens[0]!.backupVolume, gens[1]!.backupVolume])).toEqual(new Set(bvs));
    expect(gens[2]!.backupVolume, "the 3rd backup should reuse the oldest generation's volume").toBe(gens[0]!.backupVolume);

    const history = await agent.json<HistoryEntry[]>(['history', tv]);
    expect(history.map((h) => [h.number, h.generation, h.status, h.backupVolume])).toEqual([
      [3, 1, 'held', gens[0]!.backupVolume],
      [2, 2, 'held', gens[1]!.backupVolume],
      [1, 0, 'released', gens[0]!.backupVolume],
    ]);
    // Each volume holds the image of its generation, as of its backup.
    expect(holds(gens[2]!.backupVolume, 0x33), `${gens[2]!.backupVolume} should hold backup #3`).toBe(true);
    expect(holds(gens[1]!.backupVolume, 0x22), `${gens[1]!.backupVolume} should hold backup #2`).toBe(true);
    const st = await agent.json<AgentStatus>(['status']);
    expect(st.transactionVolumes.find((t) => t.volume === tv)!.heldGenerations).toBe(2);

    // Restore of relative generation 2 brings back backup #2.
    fill(tv, 0x44);
    const r = await agent.json<RestoreReport>(['restore', tv, '--generation', '2']);
    expect(r.generation.number).toBe(2);
    expect(holds(tv, 0x22), `${tv} should read as backup #2 after the restore`).toBe(true);
  });

  it('synchronized: refused before equivalent; N+1 volumes; the second start-sync names the fix', async () => {
    const tv = 'rot-sync';
    const { agent } = await setUp(tv, 'opc', 1, 1, SYNC_SIZE);
    fill(tv, 0x55, 160 * MiB);

    // Hold the EC pair in "copying": set its rate to 0 the moment the array says it started
    // (160 MiB to copy, about 0.4 s unthrottled here, leaves time for that).
    const array = new ArrayClient(env.lab.apiAddress);
    env.onCleanup(() => array.close());
    const held = new Set<string>();
    const watch = array.watchCopies({}, (e) => {
      const s = e.session;
      if (s && s.type === 'ec' && s.source === tv && !held.has(s.id)) {
        held.add(s.id);
        void array.setCopyRate(s.id, 0);
      }
    });
    env.onCleanup(async () => {
      watch.cancel();
      await watch.done.catch(() => undefined);
    });

    const sync = await agent.json<SyncView>(['start-sync', tv]);
    expect(sync).toMatchObject({ transactionVolume: tv, backupVolume: `${tv}-b1` });
    await until('the watcher to hold the pair', () => held.has(sync.sessionId), PACE);
    await sleep(200);
    watch.cancel();
    const s = await array.getCopy(sync.sessionId);
    expect(s.state, 'the pair should still be copying (rate 0)').toBe('copying');

    const refused = await agent.run(['backup', tv]);
    expect(refused.code).toBe(1);
    expect(refused.stdout + refused.stderr).toMatch(/equivalent/);

    await array.setCopyRate(sync.sessionId, undefined);
    await until('the pair to become equivalent', async () => (await array.getCopy(sync.sessionId)).state === 'equivalent', PACE);
    const g1 = await backupOk(agent, tv);
    expect(g1).toMatchObject({ number: 1, type: 'ec', backupVolume: `${tv}-b1`, status: 'held' });
    expect(holds(`${tv}-b1`, 0x55)).toBe(true);

    // Generations 1 and the only volume holds it: a new pair has nowhere to go.
    const second = await agent.run(['start-sync', tv]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/register backup/);

    await env.createVolume(`${tv}-b2`, SYNC_SIZE);
    await agent.json(['register', 'backup', `${tv}-b2`]);
    fill(tv, 0x66);
    const sync2 = await agent.json<SyncView>(['start-sync', tv]);
    expect(sync2.backupVolume).toBe(`${tv}-b2`);
    await until('the second pair to become equivalent', async () => (await array.getCopy(sync2.sessionId)).state === 'equivalent', PACE);
    const g2 = await backupOk(agent, tv);
    expect(g2).toMatchObject({ number: 2, type: 'ec', backupVolume: `${tv}-b2` });
    const history = await agent.json<HistoryEntry[]>(['history', tv]);
    // The oldest is released after the copy: 1 held + 1 released.
    expect(history.map((h) => [h.number, h.generation, h.status])).toEqual([
      [2, 1, 'held'],
      [1, 0, 'released'],
    ]);
    expect(holds(`${tv}-b2`, 0x66)).toBe(true);
  });

  it('no backup volume registered: backup fails naming the fix', async () => {
    const agent = env.newAgent();
    await env.createVolume('rot-none', SIZE);
    await agent.json(['register', 'transaction', 'rot-none', '--lock', 'none']);
    const r = await agent.run(['backup', 'rot-none']);
    expect(r.code).toBe(1);
    const out = r.stdout + r.stderr;
    expect(out).toMatch(/rot-none/);
    expect(out).toMatch(/register backup/);
  });

  it('a set of volumes: each failure is reported and the rest go on', async () => {
    const agent = env.newAgent();
    await env.createVolume('set-a', SIZE);
    await env.createVolume('set-a-b1', SIZE);
    await env.createVolume('set-b', SIZE);
    await agent.json(['register', 'transaction', 'set-a', '--lock', 'none']);
    await agent.json(['register', 'transaction', 'set-b', '--lock', 'none']);
    await agent.json(['register', 'backup', 'set-a-b1']);
    fill('set-a', 0x21);
    const r = await agent.run(['backup', 'set-a', 'set-b']);
    expect(r.code, 'a set with a failed volume exits 1').toBe(1);
    const report = r.json as BackupReport;
    expect(report.ok).toBe(false);
    const byName = Object.fromEntries(report.volumes.map((v) => [v.volume, v]));
    expect(byName['set-a']).toMatchObject({ ok: true, generation: { backupVolume: 'set-a-b1' } });
    expect(byName['set-b']!.ok).toBe(false);
    expect(byName['set-b']!.error).toMatch(/register backup/);
    expect(holds('set-a-b1', 0x21)).toBe(true);
  });

  it('a second backup of a volume while one runs is refused', async () => {
    const agent = env.newAgent();
    await env.createVolume('busy', SIZE);
    await env.createVolume('busy-b1', SIZE);
    await env.createVolume('busy-b2', SIZE);
    await agent.json(['register', 'transaction', 'busy', '--lock', 'none', '--generations', '2']);
    await agent.json(['register', 'backup', 'busy-b1']);
    await agent.json(['register', 'backup', 'busy-b2']);
    const ran = `${env.work}/busy.hook-ran`;
    const go = `${env.work}/busy.go`;
    agent.hook('backup-pre', `touch ${ran}; i=0; while [ ! -e ${go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 0`);
    const first = agent.spawn(['backup', 'busy']);
    await until('the first backup to reach its hook', () => existsSync(ran), PACE);
    const second = await agent.run(['backup', 'busy']);
    writeFileSync(go, '');
    expect(second.code).toBe(1);
    expect(second.stdout + second.stderr).toMatch(/busy|in progress|already|running/i);
    const r = await first.done;
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const history = await agent.json<HistoryEntry[]>(['history', 'busy']);
    expect(history.map((h) => [h.number, h.status])).toEqual([[1, 'held']]);
  });
});
