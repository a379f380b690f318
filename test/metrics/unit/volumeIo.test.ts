/**
 * Host I/O counters and latency histograms, fault injections and API calls on an in-process
 * array (no dist/, no external tools): NBD I/O from the tests' raw NBD client and iSCSI I/O from
 * the raw initiator move each volume's counters by exactly the bytes moved, and the scrape
 * (parsed by the tests' strict parser) shows them; an injected fault is counted by kind; with
 * api.auth off API calls are counted. Then the listener's defaults: serve's loopback default
 * (applyOverrides), and a defaulted address that is busy (a warning; serving goes on) against
 * an asked-for one (the start fails).
 */
import { createServer, type Server } from 'node:net';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { applyOverrides, type ArraylabConfig, loadConfig, parseConfig } from '../../../emulator/config.js';
import * as op from '../../../emulator/iscsi/opcodes.js';
import { LATENCY_BUCKETS, VolumeIoStats } from '../../../emulator/metrics/VolumeIo.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import { RawInitiator, rw10, TARGET_IQN } from '../../support/iscsiTestInitiator.js';
import { CMD, WireClient } from '../../support/nbdWire.js';
import { type Family, get, parseExposition, sampleValue } from '../exposition.js';

const KiB = 1024;
const MiB = 2 ** 20;
const silent = pino({ level: 'silent' });

/** An in-process array: memory backend, every listener on port 0, api.auth off. */
function config(extra = ''): ArraylabConfig {
  return parseConfig(
    `backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0", iscsi: "127.0.0.1:0"${extra}}\napi: {auth: off}\n` +
      `iscsi: {targetName: ${TARGET_IQN}}\nvolumes: [{name: v1, size: 4MiB}, {name: v2, size: 4MiB}]\n`,
    'test',
    '/tmp',
  );
}

describe('host I/O, fault injections and API calls, counted and scraped', () => {
  let server: ArrayServer;
  let client: ArrayClient;
  let metricsPort = 0;
  const scrape = async (): Promise<Map<string, Family>> => {
    const r = await get('/metrics', metricsPort);
    expect(r.status).toBe(200);
    return parseExposition(r.body);
  };
  const latencyCount = (m: Map<string, Family>, protocol: string, operation: string) =>
    sampleValue(m, 'arraylab_io_latency_seconds_count', { protocol, operation }) ?? Number.NaN;

  beforeAll(async () => {
    server = new ArrayServer(config(', metrics: "127.0.0.1:0"'), silent);
    const a = await server.start();
    metricsPort = a.metrics!.port;
    client = new ArrayClient(`127.0.0.1:${a.api.port}`);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('serves every I/O series at zero before any I/O, the histogram for both protocols and four operations', async () => {
    expect(server.volumeIo).toBeInstanceOf(VolumeIoStats);
    expect(server.volumeIo!.get('v1')).toBeUndefined(); // no host has opened it
    const m = await scrape();
    for (const f of ['read_ops', 'read_bytes', 'write_ops', 'write_bytes', 'flush_ops', 'trim_ops', 'trim_bytes', 'io_errors']) {
      const fam = m.get(`arraylab_volume_${f}_total`);
      expect(fam?.type, f).toBe('counter');
      expect(fam!.samples.map((s) => [s.labels.volume, s.value])).toEqual([
        ['v1', 0],
        ['v2', 0],
      ]);
    }
    const h = m.get('arraylab_io_latency_seconds')!;
    expect(h.type).toBe('histogram');
    for (const protocol of ['nbd', 'iscsi'])
      for (const operation of ['read', 'write', 'flush', 'trim']) {
        const buckets = h.samples.filter((s) => s.name.endsWith('_bucket') && s.labels.protocol === protocol && s.labels.operation === operation);
        expect(buckets.map((s) => s.labels.le)).toEqual([...LATENCY_BUCKETS.map(String), '+Inf']);
        expect(latencyCount(m, protocol, operation)).toBe(0);
      }
  });

  it('NBD reads, writes, write-zeroes, flushes and trims move v1 by the bytes moved, and only v1', async () => {
    const before = await scrape();
    const nbd = await WireClient.connect(server.addresses!.nbd.port);
    try {
      await nbd.connectExport('v1');
      let cookie = 1n;
      const ok = async (type: number, o: { offset?: number; length?: number; payload?: Buffer }, readLength = 0) => {
        nbd.sendRequest(type, { cookie: cookie++, ...o });
        expect((await nbd.readReply(readLength)).error).toBe(0);
      };
      await ok(CMD.WRITE, { offset: 0, length: 64 * KiB, payload: Buffer.alloc(64 * KiB, 0x5a) });
      await ok(CMD.WRITE, { offset: MiB, length: 4 * KiB, payload: Buffer.alloc(4 * KiB, 0x33) });
      await ok(CMD.WRITE_ZEROES, { offset: 2 * MiB, length: 8 * KiB });
      await ok(CMD.READ, { offset: 0, length: 16 * KiB }, 16 * KiB);
      await ok(CMD.FLUSH, {});
      await ok(CMD.TRIM, { offset: MiB, length: 4 * KiB });
    } finally {
      nbd.close();
    }
    expect(server.volumeIo!.get('v1')).toEqual({
      readOps: 1,
      readBytes: 16 * KiB,
      writeOps: 3,
      writeBytes: 76 * KiB,
      flushOps: 1,
      trimOps: 1,
      trimBytes: 4 * KiB,
      errors: 0,
    });
    const m = await scrape();
    const v = (name: string, volume = 'v1') => sampleValue(m, name, { volume });
    expect(v('arraylab_volume_read_ops_total')).toBe(1);
    expect(v('arraylab_volume_read_bytes_total')).toBe(16 * KiB);
    expect(v('arraylab_volume_write_ops_total')).toBe(3);
    expect(v('arraylab_volume_write_bytes_total')).toBe(76 * KiB);
    expect(v('arraylab_volume_flush_ops_total')).toBe(1);
    expect(v('arraylab_volume_trim_ops_total')).toBe(1);
    expect(v('arraylab_volume_trim_bytes_total')).toBe(4 * KiB);
    expect(v('arraylab_volume_write_ops_total', 'v2')).toBe(0);
    expect(latencyCount(m, 'nbd', 'write') - latencyCount(before, 'nbd', 'write')).toBe(3);
    expect(latencyCount(m, 'nbd', 'read') - latencyCount(before, 'nbd', 'read')).toBe(1);
    expect(latencyCount(m, 'nbd', 'flush') - latencyCount(before, 'nbd', 'flush')).toBe(1);
    expect(latencyCount(m, 'nbd', 'trim') - latencyCount(before, 'nbd', 'trim')).toBe(1);
    expect(latencyCount(m, 'iscsi', 'write')).toBe(0);
    // Cumulative buckets that end at the count; a positive sum of seconds.
    const writes = m
      .get('arraylab_io_latency_seconds')!
      .samples.filter((s) => s.name.endsWith('_bucket') && s.labels.protocol === 'nbd' && s.labels.operation === 'write');
    for (let i = 1; i < writes.length; i++) expect(writes[i]!.value).toBeGreaterThanOrEqual(writes[i - 1]!.value);
    expect(writes.at(-1)!.value).toBe(latencyCount(m, 'nbd', 'write'));
    expect(sampleValue(m, 'arraylab_io_latency_seconds_sum', { protocol: 'nbd', operation: 'write' })).toBeGreaterThan(0);
  });

  it('iSCSI WRITE(10), READ(10) and UNMAP count on v2 under protocol iscsi', async () => {
    const ini = await RawInitiator.connect(server.addresses!.iscsi!.port);
    try {
      expect((await ini.login()).bhs[36]).toBe(0);
      /** Runs a command to its status (a SCSI Response, or a Data-In carrying the status). */
      const run = async (f: Parameters<RawInitiator['command']>[0], data?: Buffer): Promise<number> => {
        const itt = ini.command(f, data);
        for (;;) {
          const p = await ini.recv(5000);
          if (p === null) throw new Error('no answer from the target');
          if (p.itt !== itt) continue;
          if (p.opcode === op.OP_SCSI_RESP) return p.bhs[3]!;
          if (p.opcode === op.OP_SCSI_DATA_IN && (p.bhs[1]! & 0x01) !== 0) return p.bhs[3]!;
        }
      };
      // The power-on unit attention first (TEST UNIT READY until GOOD): no I/O reaches the volume.
      for (let i = 0; i < 4 && (await run({ cdb: [0, 0, 0, 0, 0, 0], edtl: 0 })) !== 0; i++);
      // LUN 0 is v1, LUN 1 is v2 (every initiator sees every volume, in name order).
      expect(await run({ cdb: rw10(0x2a, 8, 16), lun: 1, write: true, edtl: 8 * KiB }, Buffer.alloc(8 * KiB, 0x11))).toBe(0);
      expect(await run({ cdb: rw10(0x28, 0, 32), lun: 1, read: true, edtl: 16 * KiB })).toBe(0);
      // UNMAP of 4 blocks at LBA 8 (one descriptor): a trim, though the SCSI layer zeroes with it.
      const unmapList = Buffer.alloc(24);
      unmapList.writeUInt16BE(22, 0);
      unmapList.writeUInt16BE(16, 2);
      unmapList.writeUInt32BE(8, 12);
      unmapList.writeUInt32BE(4, 16);
      expect(await run({ cdb: [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], lun: 1, write: true, edtl: 24 }, unmapList)).toBe(0);
    } finally {
      ini.close();
    }
    expect(server.volumeIo!.get('v2')).toEqual({
      readOps: 1,
      readBytes: 16 * KiB,
      writeOps: 1,
      writeBytes: 8 * KiB,
      flushOps: 0,
      trimOps: 1,
      trimBytes: 2 * KiB,
      errors: 0,
    });
    const m = await scrape();
    expect(sampleValue(m, 'arraylab_volume_write_bytes_total', { volume: 'v2' })).toBe(8 * KiB);
    expect(sampleValue(m, 'arraylab_volume_read_bytes_total', { volume: 'v2' })).toBe(16 * KiB);
    expect(latencyCount(m, 'iscsi', 'write')).toBe(1);
    expect(latencyCount(m, 'iscsi', 'read')).toBe(1);
    expect(latencyCount(m, 'iscsi', 'trim')).toBe(1);
  });

  it('an injected read error counts as an injection of its kind and as an I/O error of the volume', async () => {
    let m = await scrape();
    const kinds = m.get('arraylab_fault_injections_total')!;
    expect(kinds.type).toBe('counter');
    expect(kinds.samples.find((s) => s.labels.kind === 'error')?.value).toBe(0);
    expect(sampleValue(m, 'arraylab_faults_active', {})).toBe(0);
    const fault = await client.addFault({ kind: 'error', target: 'volume:v1', ops: ['read'] });
    const nbd = await WireClient.connect(server.addresses!.nbd.port);
    try {
      await nbd.connectExport('v1');
      nbd.sendRequest(CMD.READ, { cookie: 9n, offset: 0, length: 4 * KiB });
      expect((await nbd.readReply(4 * KiB)).error).not.toBe(0);
    } finally {
      nbd.close();
      await client.removeFault(fault.id);
    }
    m = await scrape();
    expect(sampleValue(m, 'arraylab_fault_injections_total', { kind: 'error' })).toBe(1);
    expect(sampleValue(m, 'arraylab_fault_injections_total', { kind: 'delay' })).toBe(0);
    expect(sampleValue(m, 'arraylab_volume_io_errors_total', { volume: 'v1' })).toBe(1);
    expect(sampleValue(m, 'arraylab_volume_read_ops_total', { volume: 'v1' })).toBe(1); // the failed read is not a completed one
  });

  it('counts API calls by RPC and status with api.auth off', async () => {
    const calls = async () => sampleValue(await scrape(), 'arraylab_api_calls_total', { rpc: 'ListVolumes', code: 'OK' }) ?? 0;
    const before = await calls();
    await client.listVolumes();
    await client.listVolumes();
    expect(await calls()).toBe(before + 2);
    await expect(client.getVolume('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(sampleValue(await scrape(), 'arraylab_api_calls_total', { rpc: 'GetVolume', code: 'NOT_FOUND' })).toBe(1);
  });

  it('a deleted volume loses its series; a renamed one keeps its counts under the new name', async () => {
    await client.renameVolume('v1', 'v1b');
    expect(server.volumeIo!.get('v1')).toBeUndefined();
    expect(server.volumeIo!.get('v1b')?.writeBytes).toBe(76 * KiB);
    await client.deleteVolume('v2');
    expect(server.volumeIo!.get('v2')).toBeUndefined();
    const m = await scrape();
    expect(m.get('arraylab_volume_write_bytes_total')!.samples.map((s) => s.labels.volume)).toEqual(['v1b']);
  });
});

describe('no metrics unless asked for (in process)', () => {
  it('an ArrayServer from a config without listen.metrics has no listener and counts nothing', async () => {
    const server = new ArrayServer(config(), silent);
    try {
      const a = await server.start();
      expect(a.metrics).toBeUndefined();
      expect(server.volumeIo).toBeUndefined();
    } finally {
      await server.stop();
    }
  });
});

describe("serve's loopback default (applyOverrides)", () => {
  const base = (yaml = '') => parseConfig(`backend: memory\n${yaml}`, 'test', '/tmp');
  const dflt = { metricsDefault: '127.0.0.1:9390' };

  it('applies 127.0.0.1:9390 as a default only when the API is on loopback and nothing says otherwise', () => {
    const on = applyOverrides(base(), dflt);
    expect(on.listen.metrics).toEqual({ host: '127.0.0.1', port: 9390 });
    expect(on.metrics).toEqual({ perVolume: true, listener: 'default' });
    // Without serve's default (an ArrayServer built from a parsed config): none.
    expect(applyOverrides(base(), {}).listen.metrics).toBeUndefined();
    // The API on another address: no default.
    expect(applyOverrides(base(), { ...dflt, api: '10.0.0.1:7390' }).listen.metrics).toBeUndefined();
    // listen.metrics: off in the config, or --metrics off.
    const off = base('listen: {metrics: off}');
    expect(off.metrics).toEqual({ perVolume: true, listener: 'off' });
    expect(applyOverrides(off, dflt).listen.metrics).toBeUndefined();
    expect(applyOverrides(base(), { ...dflt, metrics: 'off' }).listen.metrics).toBeUndefined();
    // Asked for (flag or config): not a default, so a busy port fails the start.
    expect(applyOverrides(base(), { ...dflt, metrics: '127.0.0.1:0' }).metrics).toEqual({ perVolume: true });
    expect(applyOverrides(base('listen: {metrics: "127.0.0.1:9999"}'), dflt).metrics).toEqual({ perVolume: true });
    // The built-in config's listen.metrics is a default too.
    expect(applyOverrides(loadConfig(), dflt).metrics).toEqual({ perVolume: true, listener: 'default' });
    // --metrics-per-volume applies to the default, and needs a listener.
    expect(applyOverrides(base(), { ...dflt, metricsPerVolume: 'off' }).metrics).toEqual({ perVolume: false, listener: 'default' });
    expect(() => applyOverrides(off, { ...dflt, metricsPerVolume: 'off' })).toThrow(/--metrics-per-volume needs a metrics listener: pass --metrics HOST:PORT/);
  });

  describe('a busy port', () => {
    let busy: Server;
    let port = 0;
    beforeAll(async () => {
      busy = createServer();
      await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
      port = (busy.address() as { port: number }).port;
    });
    afterAll(() => new Promise<void>((resolve) => busy.close(() => resolve())));

    it('is a warning naming --metrics HOST:PORT and --metrics off when defaulted; the array serves on', async () => {
      const warnings: string[] = [];
      const log = pino({ level: 'warn' }, { write: (line: string) => warnings.push(String(JSON.parse(line).msg)) });
      const server = new ArrayServer(applyOverrides(config(), { metricsDefault: `127.0.0.1:${port}` }), log);
      try {
        const a = await server.start();
        expect(a.metrics).toBeUndefined();
        const c = new ArrayClient(`127.0.0.1:${a.api.port}`);
        expect((await c.listVolumes()).length).toBe(2);
        c.close();
        const w = warnings.find((m) => m.startsWith('metrics not served'));
        expect(w).toContain(`127.0.0.1:${port} is busy`);
        expect(w).toContain('--metrics HOST:PORT');
        expect(w).toContain('--metrics off');
      } finally {
        await server.stop();
      }
    });

    it('fails the start when the address was asked for', async () => {
      const server = new ArrayServer(applyOverrides(config(), { metrics: `127.0.0.1:${port}` }), silent);
      try {
        await expect(server.start()).rejects.toThrow(`cannot listen for metrics on 127.0.0.1:${port}: the address is in use`);
      } finally {
        await server.stop();
      }
    });
  });
});
