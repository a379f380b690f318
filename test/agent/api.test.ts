/**
 * AgentService over gRPC: the token is required and checked, every method reaches the agent
 * with its arguments, streamed progress arrives before the result, errors keep their code and
 * message, and TLS works with a real certificate made by openssl.
 *
 * The agent behind the server here is a recording AgentCore: this file tests the transport
 * (the real BackupManager is tested in test/agent/backup and end to end in test/agent/e2e).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentApiServer } from '../../agent/api/AgentApiServer.js';
import { AgentClient } from '../../agent/api/AgentClient.js';
import { AgentError, type AgentCore, type BackupReport, type HistoryEntry } from '../../agent/types.js';
import { requireTool } from '../support/tools.js';

const TOKEN = `${'a'.repeat(20)}token`;
const calls: Array<[string, unknown[]]> = [];

const gen: HistoryEntry = {
  generation: 1,
  number: 7,
  transactionVolume: 'tv1',
  backupVolume: 'bv1',
  type: 'opc',
  sessionId: 's1',
  at: '2026-12-05T00:00:00.000Z',
  status: 'held',
  prep: 'freeze',
  tape: null,
  error: '',
};

const core: AgentCore = {
  async registerTransaction(volume, opts) {
    calls.push(['registerTransaction', [volume, opts]]);
    if (volume === 'missing') throw new AgentError('NOT_FOUND', 'no volume named missing on the array; create it first');
    return {
      volume,
      lock: opts?.lock ?? 'unmount',
      resyncAfterBackup: opts?.resyncAfterBackup ?? false,
      flushOnly: opts?.flushOnly ?? false,
      generations: opts?.generations ?? 1,
      defaultType: opts?.defaultType ?? 'opc',
      registeredAt: 'now',
      needsResourceMatch: '',
      warnings: opts?.lock === 'freeze' ? ['no block device of tv1 was found on this host'] : [],
      notes: [],
    };
  },
  async registerBackup(volume) {
    return { volume, sizeBytes: 1 << 20, registeredAt: 'now', inUseBy: '', needsResourceMatch: '' };
  },
  async unregister(volume, opts) {
    calls.push(['unregister', [volume, opts]]);
  },
  async backup(volumes, opts) {
    calls.push(['backup', [volumes, { ...opts, onProgress: typeof opts?.onProgress }]]);
    opts?.onProgress?.({ volume: volumes[0]!, step: 'copy', message: 'copying', doneBytes: 5, totalBytes: 10 });
    const report: BackupReport = {
      ok: false,
      volumes: [
        {
          volume: volumes[0]!,
          ok: true,
          generation: gen,
          hooks: [{ phase: 'backup-pre', script: '/h/backup-pre', verdict: 'ok', exitCode: 0, signal: null, durationMs: 3, output: '', message: 'ok' }],
        },
        {
          volume: volumes[1]!,
          ok: false,
          error: 'lock failed',
          hooks: [
            {
              phase: 'backup-pre',
              script: '/h/backup-pre',
              verdict: 'timeout',
              exitCode: null,
              signal: 'SIGKILL',
              durationMs: 2000,
              output: 'x',
              message: 'timed out',
            },
          ],
          needsResourceMatch: 'pre-processing failed',
        },
      ],
    };
    return report;
  },
  async startSync(volume, opts) {
    calls.push(['startSync', [volume, { ...opts, onProgress: typeof opts?.onProgress }]]);
    return {
      transactionVolume: volume,
      backupVolume: 'bv2',
      sessionId: 's2',
      state: 'copying',
      copiedPercent: 12.5,
      start: 'resume',
      unitsToCopy: 3,
      totalUnits: 16,
    };
  },
  async cancelSync(volume) {
    throw new AgentError('FAILED_PRECONDITION', `${volume} has no sync pair; start one with arraylab-agent start-sync ${volume}`);
  },
  async restore(volume, opts) {
    calls.push(['restore', [volume, { ...opts, onProgress: typeof opts?.onProgress }]]);
    return { volume, target: opts?.to ?? volume, generation: gen, from: opts?.fromTape ? 'tape' : 'disk', method: 'array-opc', hooks: [], notes: ['a note'] };
  },
  async history() {
    return [
      gen,
      {
        ...gen,
        generation: 0,
        number: 6,
        status: 'released',
        tape: { cartridge: 'T1', record: 2, sha256: 'ab', at: 'then', pointInTime: 'before', status: 'ok', error: '' },
      },
    ];
  },
  async status() {
    return {
      transactionVolumes: [
        {
          volume: 'tv1',
          lock: 'freeze',
          resyncAfterBackup: true,
          flushOnly: false,
          generations: 2,
          defaultType: 'opc',
          registeredAt: 'now',
          needsResourceMatch: '',
          device: '/dev/loop1',
          mountPoint: '/mnt',
          sync: null,
          heldGenerations: 1,
          unhealthy: ['generation 2 (#5): lost: its SnapOPC+ session s9 was cancelled on the array'],
          busy: '',
        },
      ],
      backupVolumes: [],
      outstandingLocks: [
        {
          volume: 'tv1',
          role: 'transaction',
          device: '/dev/loop1',
          action: 'frozen',
          mounts: [{ mountPoint: '/mnt', fsType: 'ext4', source: '/dev/loop1', mountOptions: 'rw', superOptions: 'rw' }],
          freezeGuardPid: 42,
          thawDeadline: 'soon',
          at: 'now',
        },
      ],
    };
  },
  async devices() {
    return [{ volume: 'tv1', device: '/dev/loop1', how: 'map' }];
  },
  async resourceMatch() {
    return { repaired: ['thawed /mnt'], remaining: [] };
  },
  async close() {},
};

let server: AgentApiServer;
let port: number;
const log = pino({ level: 'silent' });

beforeAll(async () => {
  server = new AgentApiServer({ core, doctor: async () => [{ name: 'root', ok: true, detail: 'uid 0', fix: '' }], token: TOKEN, log });
  port = await server.listen('127.0.0.1', 0);
});
afterAll(async () => {
  await server.close();
});

describe('AgentService', () => {
  it('refuses a call without the right token, and says how to pass it', async () => {
    const wrong = new AgentClient(`127.0.0.1:${port}`, { token: 'b'.repeat(30) });
    await expect(wrong.status()).rejects.toThrow(/missing or wrong token; pass the agent's token/);
    await expect(wrong.backup(['tv1'])).rejects.toThrow(/missing or wrong token/);
    await wrong.close();
    expect(() => new AgentApiServer({ core, doctor: async () => [], token: 'short', log })).toThrow(/at least 16 characters/);
  });

  it('passes arguments through and returns the records intact', async () => {
    const c = new AgentClient(`127.0.0.1:${port}`, { token: TOKEN });
    calls.length = 0;
    const rec = await c.registerTransaction('tv1', { lock: 'freeze', generations: 3, defaultType: 'snapopcplus' });
    expect(rec).toMatchObject({
      volume: 'tv1',
      lock: 'freeze',
      generations: 3,
      defaultType: 'snapopcplus',
      flushOnly: false,
      warnings: ['no block device of tv1 was found on this host'],
      notes: [],
    });
    expect(calls[0]).toEqual(['registerTransaction', ['tv1', { lock: 'freeze', generations: 3, defaultType: 'snapopcplus' }]]);
    // resync-after-backup: absent leaves the registration as it is; given, it passes.
    await c.registerTransaction('tv1', { lock: 'none', resyncAfterBackup: true });
    expect(calls.at(-1)).toEqual(['registerTransaction', ['tv1', { lock: 'none', resyncAfterBackup: true }]]);
    await c.registerTransaction('tv1', { resyncAfterBackup: false, flushOnly: true });
    expect(calls.at(-1)).toEqual(['registerTransaction', ['tv1', { flushOnly: true, resyncAfterBackup: false }]]);
    const st = await c.status();
    expect(st.transactionVolumes[0]!.sync).toBeNull();
    expect(st.transactionVolumes[0]).toMatchObject({ resyncAfterBackup: true, unhealthy: [expect.stringMatching(/lost/)] });
    const sync = await c.startSync('tv1', { full: true, wait: true, rateMiBs: 0 });
    expect(sync).toEqual({
      transactionVolume: 'tv1',
      backupVolume: 'bv2',
      sessionId: 's2',
      state: 'copying',
      copiedPercent: 12.5,
      start: 'resume',
      unitsToCopy: 3,
      totalUnits: 16,
    });
    expect(calls.at(-1)).toEqual(['startSync', ['tv1', { full: true, wait: true, rateMiBs: 0, onProgress: 'function' }]]);
    await c.startSync('tv1');
    expect(calls.at(-1)).toEqual(['startSync', ['tv1', { full: false, wait: false, onProgress: 'function' }]]);
    expect(st.outstandingLocks[0]).toMatchObject({ action: 'frozen', freezeGuardPid: 42, mounts: [{ fsType: 'ext4', mountPoint: '/mnt' }] });
    const hist = await c.history('tv1');
    expect(hist[0]!.tape).toBeNull();
    expect(hist[1]!.tape).toEqual({ cartridge: 'T1', record: 2, sha256: 'ab', at: 'then', pointInTime: 'before', status: 'ok', error: '' });
    expect(await c.devices()).toEqual([{ volume: 'tv1', device: '/dev/loop1', how: 'map' }]);
    await c.unregister('bv9', { force: true });
    expect(calls.at(-1)).toEqual(['unregister', ['bv9', { force: true }]]);
    await c.close();
  });

  it('streams progress before the result, and keeps per-volume failures and hook results', async () => {
    const c = new AgentClient(`127.0.0.1:${port}`, { token: TOKEN });
    const seen: unknown[] = [];
    const report = await c.backup(['tv1', 'tv2'], {
      type: 'quickopc',
      to: 'both',
      completeAfter: 'disk',
      resync: false,
      waitEquivalentSeconds: 2.5,
      onProgress: (p) => seen.push(p),
    });
    expect(calls.at(-1)).toEqual([
      'backup',
      [
        ['tv1', 'tv2'],
        { type: 'quickopc', flushOnly: false, to: 'both', completeAfter: 'disk', resync: false, waitEquivalentSeconds: 2.5, onProgress: 'function' },
      ],
    ]);
    expect(seen).toEqual([{ volume: 'tv1', step: 'copy', message: 'copying', doneBytes: 5, totalBytes: 10 }]);
    expect(report.ok).toBe(false);
    expect(report.volumes[0]).toMatchObject({ ok: true, generation: { number: 7, prep: 'freeze' } });
    expect(report.volumes[0]!.hooks[0]).toMatchObject({ verdict: 'ok', exitCode: 0, signal: null });
    expect(report.volumes[1]).toMatchObject({ ok: false, error: 'lock failed', needsResourceMatch: 'pre-processing failed' });
    expect(report.volumes[1]!.hooks[0]).toMatchObject({ verdict: 'timeout', exitCode: null, signal: 'SIGKILL' });
    const restored = await c.restore('tv1', { generation: 2, to: 'other', fromTape: true });
    expect(restored).toMatchObject({ target: 'other', from: 'tape', generation: { number: 7 }, notes: ['a note'] });
    expect(calls.at(-1)).toEqual(['restore', ['tv1', { generation: 2, to: 'other', fromTape: true, force: false, onProgress: 'function' }]]);
    await c.restore('tv1', { to: 'other', force: true });
    expect(calls.at(-1)).toEqual(['restore', ['tv1', { to: 'other', fromTape: false, force: true, onProgress: 'function' }]]);
    await c.close();
  });

  it("keeps an agent error's code and message", async () => {
    const c = new AgentClient(`127.0.0.1:${port}`, { token: TOKEN });
    await expect(c.registerTransaction('missing')).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: 'no volume named missing on the array; create it first',
    });
    await expect(c.cancelSync('tv1')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION', message: expect.stringMatching(/start-sync tv1$/) });
    await c.close();
  });

  it('says where it looked when no agent is listening', async () => {
    const c = new AgentClient('127.0.0.1:1', { token: TOKEN });
    await expect(c.status()).rejects.toThrow(/cannot reach the agent at 127\.0\.0\.1:1: .*arraylab-agent serve/);
    await c.close();
  });

  it('serves TLS with a certificate for 127.0.0.1, and a client without the CA is refused', async () => {
    const openssl = requireTool('openssl');
    const dir = mkdtempSync(join(tmpdir(), 'agent-tls-'));
    try {
      execFileSync(
        openssl,
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
          '-keyout',
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
        ],
        { stdio: 'ignore' },
      );
      const cert = readFileSync(join(dir, 'cert.pem'));
      const tls = new AgentApiServer({ core, doctor: async () => [], token: TOKEN, log, tls: { cert, key: readFileSync(join(dir, 'key.pem')) } });
      const tlsPort = await tls.listen('127.0.0.1', 0);
      try {
        const good = new AgentClient(`127.0.0.1:${tlsPort}`, { token: TOKEN, tlsCa: cert });
        expect((await good.devices())[0]!.volume).toBe('tv1');
        await good.close();
        const plain = new AgentClient(`127.0.0.1:${tlsPort}`, { token: TOKEN, deadlineMs: 3000 });
        await expect(plain.devices()).rejects.toThrow(/agent at 127\.0\.0\.1/);
        await plain.close();
      } finally {
        await tls.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
