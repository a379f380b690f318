#!/usr/bin/env node
// In-process NBD benchmark: arraylab's StorageArray + NbdServer started straight from dist/
// (no CLI), against qemu-nbd and nbdkit on backing files of the same size, all prefilled, driven
// by fio's nbd engine (one job, one connection, iodepth N). Prints each figure and the ratios.
//
//   npx tsc -p tsconfig.json && node scripts/bench/nbd-inprocess.mjs \
//     [--runtime 10] [--size-mib 1024] [--only arraylab,qemu-nbd,nbdkit] [--tests 0,1,2,3]
//     [--threads 16] [--block-size 512] [--node-args "--cpu-prof --cpu-prof-dir=/tmp/prof"]
//     [--json FILE] [--reps 1] [--before DIR]
//
// --before DIR adds the peer "before": the same server built from another checkout's dist/
// (e.g. the previous commit), for before/after figures from one run.
//
// The arraylab server runs in a child node process (this file with --server), so node flags
// such as --cpu-prof apply to it alone and fio never shares its event loop.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createConnection, createServer } from 'node:net';

const here = fileURLToPath(import.meta.url);
const root = join(dirname(here), '..', '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

// ---- server mode: runs inside the child ----
if (args[0] === '--server') {
  // Before any fs use: libuv reads it once, at the threadpool's first use.
  process.env.UV_THREADPOOL_SIZE ||= '16';
  const dataDir = args[1];
  const sizeBytes = Number(args[2]);
  const blockSize = Number(args[3]);
  const root = args[4] ?? join(dirname(here), '..', '..');
  const { default: pino } = await import('pino');
  const { StorageArray } = await import(join(root, 'dist/emulator/array/StorageArray.js'));
  const { NbdServer } = await import(join(root, 'dist/emulator/nbd/index.js'));
  const logger = pino({ level: 'warn' });
  const array = await StorageArray.open({ backend: 'file', dataDir, logger });
  await array.createVolume({ name: 'bench', sizeBytes, blockSize, provisioning: 'thin' });
  const server = new NbdServer({ provider: array, logger });
  const { port } = await server.listen(0);
  process.stdout.write(`PORT ${port}\n`);
  const stop = async () => {
    await server.close();
    await array.closeAll();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  await main();
}

async function main() {
  const RUNTIME = Number(opt('runtime', '10'));
  const SIZE = Number(opt('size-mib', '1024')) * 1024 * 1024;
  const ONLY = opt('only', opt('before', undefined) ? 'before,arraylab,qemu-nbd,nbdkit' : 'arraylab,qemu-nbd,nbdkit').split(',');
  const THREADS = opt('threads', '16');
  const BLOCK = opt('block-size', '512');
  const NODE_ARGS = (opt('node-args', '') || '').split(' ').filter(Boolean);
  const REPS = Number(opt('reps', '1'));
  const JSON_OUT = opt('json', undefined);
  const BEFORE = opt('before', undefined);
  const ALL_TESTS = [
    { name: '4k randread QD16', rw: 'randread', bs: '4k', iodepth: 16, metric: 'iops' },
    { name: '4k randwrite QD16', rw: 'randwrite', bs: '4k', iodepth: 16, metric: 'iops' },
    { name: '1M seqread QD8', rw: 'read', bs: '1M', iodepth: 8, metric: 'MiB/s' },
    { name: '1M seqwrite QD8', rw: 'write', bs: '1M', iodepth: 8, metric: 'MiB/s' },
  ];
  const TESTS = opt('tests', '0,1,2,3').split(',').map((i) => ALL_TESTS[Number(i)]);

  const work = mkdtempSync(join(tmpdir(), 'arraylab-inproc-'));
  const children = new Set();
  process.on('exit', () => {
    for (const c of children) try { c.kill('SIGKILL'); } catch {}
    rmSync(work, { recursive: true, force: true });
  });
  process.on('SIGINT', () => process.exit(130));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function start(cmd, argv, env = process.env) {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env });
    children.add(child);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.output = () => out;
    child.on('exit', () => children.delete(child));
    return child;
  }
  async function stop(child) {
    if (child.exitCode !== null) return;
    child.kill('SIGTERM');
    for (let i = 0; i < 200 && child.exitCode === null; i++) await sleep(50);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  async function freePort() {
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
      if (child.exitCode !== null) throw new Error(`${what} exited early: ${child.output()}`);
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
    throw new Error(`${what} did not listen on ${port}`);
  }

  const startArraylab = async (distRoot) => {
      const dataDir = join(work, `arraylab-${Date.now()}`);
      const env = { ...process.env, UV_THREADPOOL_SIZE: THREADS };
      const child = start('node', [...NODE_ARGS, here, '--server', dataDir, String(SIZE), BLOCK, distRoot], env);
      let port;
      for (let i = 0; i < 400 && !port; i++) {
        if (child.exitCode !== null) throw new Error(`arraylab exited early:\n${child.output()}`);
        port = child.output().match(/PORT (\d+)/)?.[1];
        if (!port) await sleep(50);
      }
      return { child, uri: `nbd://127.0.0.1:${port}/bench` };
  };
  const peers = {
    arraylab: () => startArraylab(root),
    before: () => startArraylab(BEFORE),
    async 'qemu-nbd'() {
      const file = join(work, 'qemu-nbd.img');
      execFileSync('truncate', ['-s', String(SIZE), file]);
      const port = await freePort();
      const child = start('qemu-nbd', ['-f', 'raw', '--cache=writeback', '--aio=threads', '-t', '-e', '32', '-b', '127.0.0.1', '-p', String(port), '-x', '', file]);
      await waitForPort(port, child, 'qemu-nbd');
      return { child, uri: `nbd://127.0.0.1:${port}/` };
    },
    async nbdkit() {
      const file = join(work, 'nbdkit.img');
      execFileSync('truncate', ['-s', String(SIZE), file]);
      const port = await freePort();
      const child = start('nbdkit', ['-f', '-i', '127.0.0.1', '-p', String(port), 'file', file]);
      await waitForPort(port, child, 'nbdkit');
      return { child, uri: `nbd://127.0.0.1:${port}/` };
    },
  };

  function fio(uri, fargs) {
    const out = execFileSync('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...fargs], {
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    return JSON.parse(out.slice(out.indexOf('{')));
  }
  const prefill = (uri) => fio(uri, ['--rw=write', '--bs=1M', '--iodepth=8', `--size=${SIZE}`, '--buffer_compress_percentage=0', '--refill_buffers=0']);
  function measure(uri, t) {
    const j = fio(uri, [`--rw=${t.rw}`, `--bs=${t.bs}`, `--iodepth=${t.iodepth}`, `--size=${SIZE}`, `--runtime=${RUNTIME}`, '--time_based', '--ramp_time=1', '--norandommap', '--randrepeat=0']);
    const job = j.jobs[0];
    if (job.error) throw new Error(`fio error ${job.error}`);
    const side = t.rw.includes('read') ? job.read : job.write;
    return t.metric === 'iops' ? side.iops : side.bw / 1024;
  }

  const results = {};
  for (let rep = 0; rep < REPS; rep++) {
    for (const name of ONLY) {
      process.stderr.write(`bench: ${name}: starting\n`);
      const peer = await peers[name]();
      try {
        prefill(peer.uri);
        // Start every peer's tests with no dirty pages from its prefill (same for all peers).
        execFileSync('sync');
        results[name] ??= {};
        for (const t of TESTS) {
          const v = measure(peer.uri, t);
          process.stderr.write(`bench: ${name}: ${t.name}: ${v.toFixed(0)}\n`);
          (results[name][t.name] ??= []).push(v);
        }
      } finally {
        await stop(peer.child);
      }
    }
  }
  const med = (xs) => (xs === undefined ? undefined : [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]);
  const fmt = (v, m) => (v === undefined ? '-' : m === 'iops' ? `${Math.round(v)} IOPS` : `${v.toFixed(0)} MiB/s`);
  const ratio = (a, b) => (a === undefined || b === undefined ? '-' : `${(a / b).toFixed(2)}x`);
  const rows = [['test', 'arraylab', 'qemu-nbd', 'nbdkit', 'vs qemu-nbd', 'vs nbdkit']];
  if (results.before) rows[0].push('before', 'before vs qemu-nbd', 'before vs nbdkit');
  for (const t of TESTS) {
    const a = med(results.arraylab?.[t.name]);
    const q = med(results['qemu-nbd']?.[t.name]);
    const k = med(results.nbdkit?.[t.name]);
    const row = [t.name, fmt(a, t.metric), fmt(q, t.metric), fmt(k, t.metric), ratio(a, q), ratio(a, k)];
    if (results.before) {
      const b = med(results.before[t.name]);
      row.push(fmt(b, t.metric), ratio(b, q), ratio(b, k));
    }
    rows.push(row);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r) => '| ' + r.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
  console.log(`\nin-process NBD benchmark: ${RUNTIME} s per test, ${SIZE / 1048576} MiB prefilled, UV_THREADPOOL_SIZE=${THREADS}, reps=${REPS} (median)`);
  console.log(line(rows[0]));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows.slice(1)) console.log(line(r));
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(results, null, 2));
}
