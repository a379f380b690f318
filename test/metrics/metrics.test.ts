/**
 * Prometheus /metrics on the real server (startArraylab passes --metrics 127.0.0.1:0): the text
 * parses with a strict exposition-format parser of the tests' own (not prom-client's), and the
 * series move as the array changes: a volume appears, qemu-io's NBD writes are counted to the
 * byte and grow its allocation, an OPC's state and copied units move, CreateVolume is counted.
 * Other paths are 404; the listener closes with the server; --metrics off and listen.metrics:
 * off serve none.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, makeTempDir, runCli, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { waitFor } from '../support/wait.js';
import { type Family, get, parseExposition, sampleValue } from './exposition.js';

const run = promisify(execFile);

describe('arraylab serve --metrics (real server, Prometheus text)', () => {
  let lab: Arraylab | undefined;
  afterAll(async () => {
    await lab?.stop().catch(() => undefined);
  });
  const port = () => (lab!.info as unknown as { metrics: { port: number } }).metrics.port;
  const scrape = async () => {
    const r = await get('/metrics', port());
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(r.body);
  };
  const value = sampleValue;

  it('serves gauges and counters that follow volumes, NBD writes, an OPC and API calls', async () => {
    lab = await startArraylab({ memory: true, config: { volumes: [] }, iscsi: false, extraArgs: ['--metrics', '127.0.0.1:0'] });
    const info = lab.info as unknown as { metrics: { host: string; port: number } | null };
    expect(info.metrics).toMatchObject({ host: '127.0.0.1' });
    expect(info.metrics!.port).toBeGreaterThan(0);

    let m = await scrape();
    expect(m.get('arraylab_volumes')?.type).toBe('gauge');
    expect(value(m, 'arraylab_volumes', {})).toBe(0);
    expect(m.get('arraylab_api_calls_total')?.type).toBe('counter');
    expect(value(m, 'arraylab_faults_active', {})).toBe(0);
    expect(value(m, 'arraylab_tape_cartridges', {})).toBe(0);

    for (const v of ['src', 'dst']) await cliOk(lab, ['volume', 'create', v, '--size', '4MiB']);
    m = await scrape();
    expect(value(m, 'arraylab_volumes', {})).toBe(2);
    expect(value(m, 'arraylab_volume_size_bytes', { volume: 'src' })).toBe(4 * 2 ** 20);
    expect(value(m, 'arraylab_volume_allocated_bytes', { volume: 'src' })).toBe(0);
    expect(value(m, 'arraylab_export_clients', { volume: 'src', protocol: 'nbd' })).toBe(0);
    expect(value(m, 'arraylab_api_calls_total', { rpc: 'CreateVolume', code: 'OK' })).toBe(2);

    const nbdWrites = (f: Map<string, Family>) => value(f, 'arraylab_io_latency_seconds_count', { protocol: 'nbd', operation: 'write' }) ?? Number.NaN;
    const writesBefore = nbdWrites(m);
    await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x5a 0 2M', lab.nbdUri('src')]);
    m = await scrape();
    expect(value(m, 'arraylab_volume_allocated_bytes', { volume: 'src' })).toBeGreaterThanOrEqual(2 * 2 ** 20);
    // Host I/O: exactly the bytes qemu-io wrote, in as many writes as the histogram observed.
    expect(value(m, 'arraylab_volume_write_bytes_total', { volume: 'src' })).toBe(2 * 2 ** 20);
    const writeOps = value(m, 'arraylab_volume_write_ops_total', { volume: 'src' })!;
    expect(writeOps).toBeGreaterThanOrEqual(1);
    expect(nbdWrites(m) - writesBefore).toBe(writeOps);
    expect(value(m, 'arraylab_volume_io_errors_total', { volume: 'src' })).toBe(0);

    // 1 MiB/s: the 4 MiB OPC takes a few seconds, long enough to see it move.
    const id = String((await cliJson(lab, ['copy', 'start', '--type', 'opc', '--src', 'src', '--dst', 'dst', '--rate', '1'])).id);
    m = await scrape();
    const labels = { session: id, type: 'opc', source: 'src', destination: 'dst' };
    expect(value(m, 'arraylab_copy_session_state', { ...labels, state: 'copying' })).toBe(1);
    expect(value(m, 'arraylab_copy_session_state', { ...labels, state: 'equivalent' })).toBe(0);
    const states = m.get('arraylab_copy_session_state')!.samples.filter((s) => s.labels.session === id);
    expect(states.reduce((n, s) => n + s.value, 0)).toBe(1); // one 0/1 series per state, one of them 1
    const total = value(m, 'arraylab_copy_session_total_units', labels)!;
    expect(total).toBeGreaterThan(0);
    expect(value(m, 'arraylab_copy_session_rate_bytes_per_second', labels)).toBe(2 ** 20);
    const first = value(m, 'arraylab_copy_session_copied_units', labels)!;
    expect(first).toBeLessThan(total);
    await waitFor(
      async () => value(await scrape(), 'arraylab_copy_session_copied_units', labels) ?? total,
      (n) => n > first,
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    // The copy engine writes dst, but a copy is not host I/O.
    expect(value(m, 'arraylab_volume_write_bytes_total', { volume: 'dst' })).toBe(0);
    // A refused call is counted under its status.
    expect((await lab.cli(['volume', 'create', 'src', '--size', '4MiB'])).code).not.toBe(0);
    m = await scrape();
    const refused = m.get('arraylab_api_calls_total')!.samples.filter((s) => s.labels.rpc === 'CreateVolume' && s.labels.code !== 'OK');
    expect(refused.map((s) => s.value)).toEqual([1]);

    expect((await get('/', port())).status).toBe(404);
    expect((await get('/metrics/x', port())).status).toBe(404);
  }, 60_000);

  it('closes the listener with the server', async () => {
    await lab!.stop();
    const p = port();
    lab = undefined;
    await expect(get('/metrics', p)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('--metrics-per-volume off drops the per-volume series and keeps the counts', async () => {
    const l = await startArraylab({
      memory: true,
      config: { volumes: [{ name: 'v1', size: '1MiB' }] },
      iscsi: false,
      extraArgs: ['--metrics', '127.0.0.1:0', '--metrics-per-volume', 'off'],
    });
    try {
      const r = await get('/metrics', (l.info as unknown as { metrics: { port: number } }).metrics.port);
      const m = parseExposition(r.body);
      expect(m.get('arraylab_volumes')?.samples[0]?.value).toBe(1);
      expect(m.has('arraylab_volume_size_bytes')).toBe(false);
      expect(m.has('arraylab_export_clients')).toBe(false);
      expect(
        m
          .get('arraylab_clients')
          ?.samples.map((s) => s.labels.protocol)
          .sort(),
      ).toEqual(['iscsi', 'nbd']);
    } finally {
      await l.stop();
    }
  });

  it('--metrics off serves none: serve --json says metrics null', async () => {
    const l = await startArraylab({ memory: true, config: { volumes: [] }, iscsi: false, extraArgs: ['--metrics', 'off'] });
    try {
      expect(l.info.metrics).toBeNull();
    } finally {
      await l.stop();
    }
  });

  it('listen.metrics: off in the config turns the default off; --metrics-per-volume then is a usage error', async () => {
    const dir = makeTempDir('arraylab-metrics-');
    const file = join(dir, 'arraylab.yaml');
    writeFileSync(file, 'listen: {metrics: off}\nvolumes: []\n');
    // Without the tests' ARRAYLAB_METRICS=off (vitest.config.ts): the config alone says off.
    const r = await runCli(['serve', '--memory', '--config', file, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--metrics-per-volume', 'off'], {
      env: { ARRAYLAB_METRICS: '' },
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--metrics-per-volume needs a metrics listener: pass --metrics HOST:PORT/);
  });
});
