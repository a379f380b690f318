/**
 * The agent reports each backup to the array (EventService.ReportAgentEvent): a completed or
 * failed backup is an event of the transaction volume on the array's stream, and a report the
 * array does not take costs a warning, never the backup.
 */
import { hostname } from 'node:os';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupManager } from '../../../agent/backup/BackupManager.js';
import type { ArrayPort } from '../../../agent/backup/ArrayPort.js';
import { ApiError, type ArrayClient } from '../../../proto/ArrayClient.js';
import { makeTempDir } from '../../support/arraylab.js';
import { registerAttached, startLab, type Lab } from './harness.js';
import { RecordingHost } from './RecordingHost.js';

let L: Lab;

beforeAll(async () => {
  L = await startLab();
});

afterAll(async () => {
  await L?.stop();
});

const agentEvents = async (volume: string) => (await L.array.listEvents({ kinds: ['agent'] })).filter((e) => e.subject.name === volume);

describe('backup reports on the array event stream', () => {
  it('a completed backup: agent.backup.completed with the backup volume, type, generation and host', async () => {
    await L.mk(['re-tv', 're-bv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 're-tv', { generations: 1 });
    await m.registerBackup('re-bv');
    const r = await m.backup(['re-tv']);
    expect(r.ok, r.volumes[0]!.error).toBe(true);
    const events = await agentEvents('re-tv');
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      kind: 'agent.backup.completed',
      subject: { kind: 'volume', name: 're-tv' },
      message: `backup of re-tv to re-bv (opc, generation 1) completed (agent on ${hostname()})`,
      fields: { host: hostname(), backupVolume: 're-bv', type: 'opc', generation: '1', sessionId: r.volumes[0]!.generation!.sessionId },
    });
  });

  it('a failed backup: agent.backup.failed with the reason', async () => {
    await L.mk(['rf-tv']);
    const { m, host } = await L.manager();
    await registerAttached(m, host, 'rf-tv');
    const r = await m.backup(['rf-tv']);
    expect(r.ok).toBe(false);
    const events = await agentEvents('rf-tv');
    expect(events.map((e) => e.kind)).toEqual(['agent.backup.failed']);
    expect(events[0]!.fields.error).toBe(r.volumes[0]!.error);
    expect(events[0]!.message).toBe(`backup of rf-tv failed (agent on ${hostname()}): ${r.volumes[0]!.error}`);
  });

  it('a report the array refuses is a warning; the backup still succeeds', async () => {
    await L.mk(['rw-tv', 'rw-bv']);
    const warnings: Array<{ msg: string; err: string; volume: string }> = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => warnings.push(JSON.parse(line)) });
    // The harness's client, but its reports fail as an array with its events off answers.
    const array: ArrayPort = Object.create(L.array as ArrayClient, {
      reportAgentEvent: { value: () => Promise.reject(new ApiError('FAILED_PRECONDITION', 'the event stream is off on this array (api.events: off)')) },
    });
    const host = new RecordingHost();
    const m = await BackupManager.open(makeTempDir('agent-state-'), { array, tape: L.tape, host, log, pollMs: 20 });
    try {
      await registerAttached(m, host, 'rw-tv', { generations: 1 });
      await m.registerBackup('rw-bv');
      const r = await m.backup(['rw-tv']);
      expect(r.ok, r.volumes[0]!.error).toBe(true);
      expect(r.volumes[0]!.generation).toMatchObject({ backupVolume: 'rw-bv', status: 'held' });
      const w = warnings.find((x) => x.msg.startsWith('could not report the backup to the array'));
      expect(w).toMatchObject({ volume: 'rw-tv', err: expect.stringContaining('api.events: off') });
      expect(await agentEvents('rw-tv')).toEqual([]);
    } finally {
      await m.close();
    }
  });

  it('the array refuses what no agent sends: another kind, or a volume it does not have', async () => {
    await expect(L.array.reportAgentEvent({ kind: 'volume.deleted' as 'agent.backup.failed', volume: 're-tv' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/not an agent event; report agent\.backup\.completed or agent\.backup\.failed/),
    });
    await expect(L.array.reportAgentEvent({ kind: 'agent.backup.completed', volume: 'no-such' })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringMatching(/no volume named no-such on this array/),
    });
  });
});
