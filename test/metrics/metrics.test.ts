/**
 * Prometheus /metrics on the real server (opt-in with --metrics): the text parses with a strict
 * exposition-format parser of the test's own (not prom-client's), and the series move as the
 * array changes: a volume appears, NBD writes grow its allocation, an OPC's state and copied
 * units move, CreateVolume is counted. Other paths are 404; the listener closes with the server.
 */
import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, runCli, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { waitFor } from '../support/wait.js';

const run = promisify(execFile);

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  type: string;
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Text format 0.0.4, strictly: HELP and TYPE before a family's samples, valid names, escapes and values. */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const family = (name: string): Family => {
    let f = families.get(name);
    if (f === undefined) families.set(name, (f = { type: 'untyped', help: '', samples: [] }));
    return f;
  };
  for (const line of text.slice(0, -1).split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string];
      if (!NAME.test(name)) throw new Error(`bad metric name in ${line}`);
      if (kind === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`bad type in ${line}`);
        if (families.get(name)?.samples.length) throw new Error(`TYPE after samples: ${line}`);
        family(name).type = rest;
      } else family(name).help = rest;
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const [, name, , body, raw] = m as unknown as [string, string, string | undefined, string | undefined, string];
    const labels: Record<string, string> = {};
    let rest = body ?? '';
    while (rest !== '') {
      const l = /^([^=]+)="((?:[^"\\]|\\["\\n])*)"(,|$)/.exec(rest);
      if (!l || !LABEL.test(l[1]!)) throw new Error(`bad labels in ${line}`);
      if (l[1]! in labels) throw new Error(`label ${l[1]} twice in ${line}`);
      labels[l[1]!] = l[2]!.replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
      rest = rest.slice(l[0].length);
    }
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' ? Number.NaN : Number(raw);
    if (raw !== 'NaN' && Number.isNaN(value)) throw new Error(`bad value in ${line}`);
    const base = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    const f = families.get(base);
    if (f === undefined || f.type === 'untyped') throw new Error(`sample before its TYPE: ${line}`);
    f.samples.push({ name, labels, value });
  }
  return families;
}

function get(path: string, port: number): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

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
  const value = (fams: Map<string, Family>, name: string, labels: Record<string, string>): number | undefined =>
    fams.get(name)?.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

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

    await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0x5a 0 2M', lab.nbdUri('src')]);
    m = await scrape();
    expect(value(m, 'arraylab_volume_allocated_bytes', { volume: 'src' })).toBeGreaterThanOrEqual(2 * 2 ** 20);

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

  it('is off unless asked for: serve --json says metrics null, and --metrics-per-volume alone is a usage error', async () => {
    const l = await startArraylab({ memory: true, config: { volumes: [] }, iscsi: false });
    try {
      expect((l.info as unknown as { metrics: unknown }).metrics).toBeNull();
    } finally {
      await l.stop();
    }
    const r = await runCli(['serve', '--memory', '--metrics-per-volume', 'off']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--metrics-per-volume needs --metrics HOST:PORT/);
  });
});
