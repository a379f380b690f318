#!/usr/bin/env node
// NBD benchmark: arraylab against nbdkit (file plugin) and qemu-nbd (writeback cache), side by
// side in one run, on backing files of the same size, driven by fio's nbd engine. Prints each
// peer's figure and arraylab's ratio to it; then arraylab's RSS with 100 thin 10 GiB volumes and
// 16 connected clients. Ratios, not absolute times, are what compare across machines.
// arraylab runs twice, as "arraylab" (--metrics off) and "arraylab-metrics" (/metrics on, per-volume
// series on, scraped once a second as Prometheus would, only faster): the cost of the I/O
// counters and latency histograms, under the same load in the same run.
// --baseline DIR adds another arraylab build (a checkout of an older commit, built there) as
// the peer "baseline", measured in turn with the others: a before/after of a change under the
// same load, which a busy machine otherwise makes noisy.
//
//   node scripts/bench/nbd.mjs [--tests randread,randwrite,read,write] [--runtime SECONDS] [--reps N] [--size 1GiB] [--json FILE] [--only arraylab,arraylab-metrics,nbdkit,qemu-nbd] [--no-memory] [--node-args FLAGS] [--baseline DIR]
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createConnection } from 'node:net';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'emulator', 'cli', 'arraylab.js');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const RUNTIME = Number(opt('runtime', '5'));
const REPS = Number(opt('reps', '3'));
const SIZE_GIB = Number(String(opt('size', '1GiB')).replace(/GiB$/i, ''));
const SIZE = SIZE_GIB * 1024 ** 3;
const JSON_OUT = opt('json', undefined);
const BASELINE = opt('baseline', undefined);
const baselineCli = BASELINE === undefined ? undefined : join(BASELINE, 'dist', 'emulator', 'cli', 'arraylab.js');
const ONLY = opt('only', BASELINE === undefined ? 'arraylab,arraylab-metrics,nbdkit,qemu-nbd' : 'arraylab,arraylab-metrics,baseline,nbdkit,qemu-nbd').split(
  ',',
);
const SKIP_MEMORY = args.includes('--no-memory');
// Extra node flags for arraylab, e.g. --node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it.
const NODE_ARGS = String(opt('node-args', '')).split(' ').filter(Boolean);

const ALL_TESTS = [
  { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, metric: 'iops' },
  { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, metric: 'iops' },
  { name: '1M seqread QD8', rw: 'read', bs: '1M', iodepth: 8, metric: 'MiB/s' },
  { name: '1M seqwrite QD8', rw: 'write', bs: '1M', iodepth: 8, metric: 'MiB/s' },
];

// --tests randread,write picks tests by fio rw mode (default: all four).
const TEST_FILTER = opt('tests', undefined)?.split(',');
const TESTS = TEST_FILTER ? ALL_TESTS.filter((t) => TEST_FILTER.includes(t.rw)) : ALL_TESTS;
if (TESTS.length === 0) {
  console.error(`bench: --tests matches none of ${ALL_TESTS.map((t) => t.rw).join(', ')}`);
  process.exit(2);
}

for (const tool of ['fio', 'nbdkit', 'qemu-nbd', 'nbdinfo']) {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'pipe' });
  } catch {
    console.error(`bench: ${tool} is not installed; run bash scripts/setup.sh`);
    process.exit(2);
  }
}
for (const c of [cli, baselineCli]) {
  if (c !== undefined && !existsSync(c)) {
    console.error(`bench: ${c} is missing; run npm run build${c === baselineCli ? ' in --baseline DIR' : ''}`);
    process.exit(2);
  }
}
if (ONLY.includes('baseline') && baselineCli === undefined) {
  console.error('bench: --only baseline needs --baseline DIR');
  process.exit(2);
}

const work = mkdtempSync(join(tmpdir(), 'arraylab-bench-'));
const children = new Set();
function cleanup() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {}
  }
  rmSync(work, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitForPort(port, child, what) {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited early with code ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port}`);
}

function start(cmd, argv, what, env = process.env) {
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  child.output = () => out;
  child.on('exit', () => children.delete(child));
  child.what = what;
  return child;
}

async function stop(child) {
  if (child.exitCode !== null) return;
  child.kill('SIGTERM');
  for (let i = 0; i < 100 && child.exitCode === null; i++) await sleep(50);
  if (child.exitCode === null) child.kill('SIGKILL');
}

/** Starts arraylab serve (of `cliPath`) with one file-backed thin volume and returns its NBD URI. */
async function startArraylab(extraVolumes = [], cliPath = cli, serveArgs = ['--metrics', 'off']) {
  const dataDir = join(work, `arraylab-${Date.now()}`);
  const config = `${dataDir}.yaml`;
  const vols = [{ name: 'bench', size: `${SIZE_GIB}GiB` }, ...extraVolumes]
    .map((v) => `  - name: ${v.name}\n    size: ${v.size}\n    provisioning: thin\n    blockSize: 512\n`)
    .join('');
  writeFileSync(config, `dataDir: ${dataDir}\nlog:\n  level: warn\nvolumes:\n${vols}`);
  const child = start(
    'node',
    [...NODE_ARGS, cliPath, 'serve', '--config', config, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', ...serveArgs, '--json'],
    'arraylab',
  );
  let line;
  for (let i = 0; i < 400 && !line; i++) {
    if (child.exitCode !== null) throw new Error(`arraylab exited early:\n${child.output()}`);
    line = child
      .output()
      .split('\n')
      .find((l) => l.startsWith('{') && l.includes('"nbd"'));
    if (!line) await sleep(50);
  }
  if (!line) throw new Error(`arraylab did not report its listeners:\n${child.output()}`);
  const info = JSON.parse(line);
  return { child, port: info.nbd.port, metricsPort: info.metrics?.port, uri: (name = 'bench') => `nbd://127.0.0.1:${info.nbd.port}/${name}` };
}

async function startNbdkit() {
  const file = join(work, 'nbdkit.img');
  execFileSync('truncate', ['-s', String(SIZE), file]);
  const port = await freePort();
  const child = start('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', file], 'nbdkit');
  await waitForPort(port, child, 'nbdkit');
  return { child, uri: () => `nbd://127.0.0.1:${port}/` };
}

async function startQemuNbd() {
  const file = join(work, 'qemu-nbd.img');
  execFileSync('truncate', ['-s', String(SIZE), file]);
  const port = await freePort();
  const child = start(
    'qemu-nbd',
    ['-f', 'raw', '--cache=writeback', '--aio=threads', '-t', '-e', '32', '-b', '127.0.0.1', '-p', String(port), '-x', '', file],
    'qemu-nbd',
  );
  await waitForPort(port, child, 'qemu-nbd');
  return { child, uri: () => `nbd://127.0.0.1:${port}/` };
}

/** fio, asynchronously: the scraper of arraylab-metrics keeps scraping while it runs. */
async function fio(uri, args) {
  const { stdout: out } = await promisify(execFile)('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(out.slice(out.indexOf('{')));
}

/** Writes the whole export once so that reads see real data on every peer. */
function prefill(uri) {
  return fio(uri, ['--rw=write', '--bs=1M', '--iodepth=8', `--size=${SIZE}`, '--buffer_compress_percentage=0', '--refill_buffers=0']);
}

async function measure(uri, t) {
  const j = await fio(uri, [
    `--rw=${t.rw}`,
    `--bs=${t.bs}`,
    `--iodepth=${t.iodepth}`,
    `--runtime=${RUNTIME}`,
    '--time_based',
    '--ramp_time=1',
    '--norandommap',
    '--randrepeat=0',
  ]);
  const job = j.jobs[0];
  const side = t.rw.includes('read') ? job.read : job.write;
  if (job.error) throw new Error(`fio error ${job.error}`);
  return t.metric === 'iops' ? side.iops : side.bw / 1024;
}

/** GET /metrics; the text. */
async function scrape(port) {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/** arraylab with metrics on, scraped every second while it runs (a scrape costs too). */
async function startArraylabMetrics() {
  const peer = await startArraylab([], cli, ['--metrics', '127.0.0.1:0', '--metrics-per-volume', 'on']);
  if (peer.metricsPort === undefined) throw new Error('arraylab --metrics 127.0.0.1:0 reported no metrics address');
  peer.scrapes = 0;
  peer.scraper = setInterval(() => {
    scrape(peer.metricsPort).then(
      () => peer.scrapes++,
      (err) => process.stderr.write(`bench: scrape failed: ${err.message}\n`),
    );
  }, 1000);
  return peer;
}

const peers = {
  arraylab: () => startArraylab(),
  'arraylab-metrics': startArraylabMetrics,
  // An older build may not know --metrics: it runs as it comes.
  baseline: () => startArraylab([], baselineCli, []),
  nbdkit: startNbdkit,
  'qemu-nbd': startQemuNbd,
};

// All peers run at once and are measured in turn, test by test, REPS times each, and the
// median is kept: load from anything else on the machine then falls on every peer alike,
// which is what makes the ratios comparable.
const running = {};
const results = {};
/** What arraylab-metrics' own series say of the bench volume after the run. */
let metricsSeen;
const samples = {};
try {
  for (const name of ONLY) {
    process.stderr.write(`bench: ${name}: starting and prefilling\n`);
    running[name] = await peers[name]();
    await prefill(running[name].uri());
    results[name] = {};
    samples[name] = {};
  }
  execFileSync('sync');
  for (const t of TESTS) {
    for (let rep = 0; rep < REPS; rep++) {
      // Every other rep in reverse order, so no peer always runs first on a warmer machine.
      for (const name of rep % 2 === 0 ? ONLY : [...ONLY].reverse()) {
        process.stderr.write(`bench: ${t.name}: ${name} (${rep + 1}/${REPS})\n`);
        (samples[name][t.name] ??= []).push(await measure(running[name].uri(), t));
      }
    }
    for (const name of ONLY) {
      const sorted = [...samples[name][t.name]].sort((a, b) => a - b);
      results[name][t.name] = sorted[Math.floor(sorted.length / 2)];
    }
  }
  // The counters saw the load: what the bench volume's series say after it.
  const m = running['arraylab-metrics'];
  if (m !== undefined) {
    clearInterval(m.scraper);
    const text = await scrape(m.metricsPort);
    const series = (name) => Number(text.match(new RegExp(`^${name}\\{volume="bench"\\} (\\S+)$`, 'm'))?.[1] ?? NaN);
    const count = (op) => Number(text.match(new RegExp(`^arraylab_io_latency_seconds_count\\{protocol="nbd",operation="${op}"\\} (\\S+)$`, 'm'))?.[1] ?? NaN);
    metricsSeen = {
      readOps: series('arraylab_volume_read_ops_total'),
      writeOps: series('arraylab_volume_write_ops_total'),
      readBytes: series('arraylab_volume_read_bytes_total'),
      writeBytes: series('arraylab_volume_write_bytes_total'),
      latencyReads: count('read'),
      latencyWrites: count('write'),
      scrapes: m.scrapes,
    };
  }
} finally {
  for (const peer of Object.values(running)) {
    if (peer.scraper !== undefined) clearInterval(peer.scraper);
    await stop(peer.child);
  }
}

const fmt = (v, metric) => (v === undefined ? '-' : metric === 'iops' ? `${Math.round(v)} IOPS` : `${v.toFixed(0)} MiB/s`);
const ratio = (a, b) => (a === undefined || b === undefined ? '-' : `${(a / b).toFixed(2)}x`);
const withBaseline = ONLY.includes('baseline');
const withMetrics = ONLY.includes('arraylab-metrics');
const rows = [
  [
    'test',
    'arraylab',
    ...(withMetrics ? ['metrics on'] : []),
    ...(withBaseline ? ['baseline'] : []),
    'nbdkit',
    'qemu-nbd',
    ...(withMetrics ? ['on vs off'] : []),
    ...(withBaseline ? ['vs baseline'] : []),
    'vs nbdkit',
    'vs qemu-nbd',
  ],
];
for (const t of TESTS) {
  const a = results.arraylab?.[t.name];
  const am = results['arraylab-metrics']?.[t.name];
  const b = results.baseline?.[t.name];
  const k = results.nbdkit?.[t.name];
  const q = results['qemu-nbd']?.[t.name];
  rows.push([
    t.name,
    fmt(a, t.metric),
    ...(withMetrics ? [fmt(am, t.metric)] : []),
    ...(withBaseline ? [fmt(b, t.metric)] : []),
    fmt(k, t.metric),
    fmt(q, t.metric),
    ...(withMetrics ? [ratio(am, a)] : []),
    ...(withBaseline ? [ratio(a, b)] : []),
    ratio(a, k),
    ratio(a, q),
  ]);
}
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
console.log(
  `\nNBD benchmark: fio nbd engine, one job, one connection; median of ${REPS} runs of ${RUNTIME} s per test and peer, interleaved; ${SIZE_GIB} GiB backing, prefilled`,
);
if (withMetrics)
  console.log(
    'metrics on: arraylab serve --metrics 127.0.0.1:0 (per-volume series on), scraped every second; "on vs off": its figure over arraylab\'s (--metrics off)',
  );
if (withBaseline) console.log(`baseline: the arraylab built in ${BASELINE}`);
console.log(line(rows[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows.slice(1)) console.log(line(r));

if (metricsSeen !== undefined) {
  const s = metricsSeen;
  console.log(
    `metrics on, volume bench after the run: ${s.readOps} reads (${(s.readBytes / 2 ** 30).toFixed(2)} GiB), ${s.writeOps} writes (${(s.writeBytes / 2 ** 30).toFixed(2)} GiB); latency histogram counts: nbd read ${s.latencyReads}, write ${s.latencyWrites}; ${s.scrapes} scrapes`,
  );
}

// Memory: 100 thin 10 GiB volumes, 16 clients connected, each having written and read 4 MiB.
let memory;
if (!SKIP_MEMORY && ONLY.includes('arraylab')) {
  const vols = Array.from({ length: 100 }, (_, i) => ({ name: `mem${String(i).padStart(3, '0')}`, size: '10GiB' }));
  const peer = await startArraylab(vols);
  try {
    const script = `
import nbd, sys, time
port = int(sys.argv[1])
hs = []
for i in range(16):
    h = nbd.NBD()
    h.connect_uri("nbd://127.0.0.1:%d/mem%03d" % (port, i * 6))
    buf = bytearray(b"%c" % (65 + i)) * (1 << 20)
    for k in range(4):
        h.pwrite(buf, (k * 977 + i) * (1 << 20))
        h.pread(1 << 20, (k * 977 + i) * (1 << 20))
    hs.append(h)
print("connected", flush=True)
sys.stdin.readline()
`;
    const py = spawn('/usr/bin/python3', ['-c', script, String(peer.port)], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.add(py);
    await new Promise((resolve, reject) => {
      py.stdout.on('data', (d) => String(d).includes('connected') && resolve());
      py.on('exit', (code) => reject(new Error(`memory client exited with ${code}`)));
    });
    await sleep(1000);
    const status = readFileSync(`/proc/${peer.child.pid}/status`, 'utf8');
    const kb = (key) => Number(status.match(new RegExp(`${key}:\\s+(\\d+)`))[1]);
    memory = { rssMB: (kb('VmRSS') * 1024) / 1e6, peakRssMB: (kb('VmHWM') * 1024) / 1e6, volumes: 100, clients: 16 };
    py.stdin.end('\n');
    console.log(
      `\nMemory: RSS ${memory.rssMB.toFixed(1)} MB (peak ${memory.peakRssMB.toFixed(1)} MB) with 100 thin 10 GiB volumes and 16 connected clients (target <= 150 MB)`,
    );
  } finally {
    await stop(peer.child);
  }
}

if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ runtime: RUNTIME, reps: REPS, sizeGiB: SIZE_GIB, results, samples, memory }, null, 2));
