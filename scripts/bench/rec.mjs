#!/usr/bin/env node
// REC benchmark (issue 16): two arraylab processes on loopback, site-a and site-b (`remote add
// site-b` on site-a), the cases side by side in one run, with a target next to each ratio.
// Ratios, not absolute figures, are what compare across machines.
//
//   iops     4k random writes, QD16, fio nbd engine, --runtime s time-based, on site-a volumes:
//            no session; the source of a sync REC pair (equivalent: every write mirrored to
//            site-b before it is acknowledged); the source of a stack REC pair (writes recorded,
//            sent in the background; drained before each run). Order alternates per rep.
//            Target: sync >= 0.5x no session.
//   seq      1 MiB sequential writes, QD8, same way: no session; the source of a consistency
//            REC pair (equivalent: writes go to the REC buffer to site-b and reach it in
//            cycles); stack and sync pairs (for information). The REC buffer to site-b is
//            --buffer (512 MiB) with a --halt-wait (15 s) halt wait timer, so that only a link
//            that cannot keep up for the whole run halts the pair (buffer-overload). Buffer use
//            is polled during each run (peak); a halt during a run is reported next to the
//            ratio (the pair then recorded writes in diff like a split pair: the figure does
//            not measure cycles). The buffer is drained (and a halted pair resynced) before the
//            next run. Target: consistency >= 0.8x no session.
//   resync   a filled --size source; sync REC to a fresh thin volume on site-b, from StartCopy
//            until equivalent (the full copy); suspend; 1% of the 64 KiB units rewritten at
//            random (fio randwrite bs=64k, distinct units); from ResumeCopy until equivalent.
//            Target: resync time <= 3% of the full copy time.
//
// Times come from the WatchCopies state events of site-a (arrival time), with a GetCopy poll
// every --poll-ms as a fallback. Volumes are thin, written in full before anything is measured.
//
//   node scripts/bench/rec.mjs [--only iops,seq,resync] [--reps N] [--size 256MiB] [--runtime SECONDS] [--poll-ms MS]
//                           [--cases none,sync,stack,consistency] [--buffer 512MiB] [--halt-wait 0|5|10|15]
//                           [--cycle-ms MS] [--json FILE] [--node-args FLAGS]
//
// --node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" profiles both servers (the files are named
// by pid; the pids are logged); with --cases sync --only iops it profiles one case, with
// --cases consistency --only seq the consistency case (site-b's profile holds the remote end).
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { performance } from 'node:perf_hooks';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'dist', 'emulator', 'cli', 'arraylab.js');
const clientModule = join(root, 'dist', 'proto', 'ArrayClient.js');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

const MiB = 2 ** 20;
const UNIT = 64 * 1024; // the engine's default copy unit

function parseSize(text, flag = 'size') {
  const m = /^(\d+(?:\.\d+)?)\s*(|m|mib|g|gib)$/i.exec(String(text).trim());
  if (!m) {
    console.error(`bench: --${flag} ${JSON.stringify(text)} is not a size; use e.g. 256MiB`);
    process.exit(2);
  }
  const mult = { '': 1, m: MiB, mib: MiB, g: 2 ** 30, gib: 2 ** 30 }[m[2].toLowerCase()];
  const bytes = Math.round(Number(m[1]) * mult);
  if (flag === 'size' && (bytes < 16 * MiB || bytes % UNIT !== 0)) {
    console.error('bench: --size must be at least 16MiB and a multiple of 64KiB');
    process.exit(2);
  }
  return bytes;
}

const RUNTIME = Number(opt('runtime', '10'));
const REPS = Number(opt('reps', '2'));
const SIZE = parseSize(opt('size', '256MiB'));
const SIZE_TEXT = `${SIZE / MiB} MiB`;
const POLL_MS = Number(opt('poll-ms', '50'));
// The REC buffer to site-b (consistency mode): large, and the longest halt wait timer, so the
// pair halts only if the link cannot keep up with the writes of a whole run.
const BUFFER = parseSize(opt('buffer', '512MiB'), 'buffer');
const HALT_WAIT_S = Number(opt('halt-wait', '15'));
const CYCLE_MS = opt('cycle-ms', undefined) === undefined ? undefined : Number(opt('cycle-ms', undefined));
const JSON_OUT = opt('json', undefined);
const ALL_PARTS = ['iops', 'seq', 'resync'];
const ONLY = opt('only', ALL_PARTS.join(',')).split(',');
const NODE_ARGS = String(opt('node-args', '')).split(' ').filter(Boolean);
// iops and seq: which volumes to write (e.g. --cases sync with --node-args to profile one case).
const ALL_CASES = ['none', 'sync', 'stack', 'consistency'];
/** Which cases each part writes (the order of a forward rep). */
const PART_CASES = { iops: ['none', 'sync', 'stack'], seq: ['none', 'consistency', 'stack', 'sync'] };
const VOLUMES = { none: 'plain', sync: 'sync-src', stack: 'stack-src', consistency: 'cons-src' };
const CASES = opt('cases', ALL_CASES.join(',')).split(',');

if (ONLY.some((p) => !ALL_PARTS.includes(p))) {
  console.error(`bench: --only takes a comma-separated list of ${ALL_PARTS.join(', ')}`);
  process.exit(2);
}
if (CASES.some((c) => !ALL_CASES.includes(c))) {
  console.error(`bench: --cases takes a comma-separated list of ${ALL_CASES.join(', ')}`);
  process.exit(2);
}
if (![0, 5, 10, 15].includes(HALT_WAIT_S) || (CYCLE_MS !== undefined && !(CYCLE_MS >= 10))) {
  console.error('bench: --halt-wait takes 0, 5, 10 or 15 (seconds); --cycle-ms at least 10');
  process.exit(2);
}
if (!(REPS >= 1) || !(RUNTIME >= 1) || !(POLL_MS >= 5)) {
  console.error('bench: --reps and --runtime must be at least 1, --poll-ms at least 5');
  process.exit(2);
}
for (const tool of ['fio', '/usr/bin/python3']) {
  const found = await new Promise((resolve) => {
    const c = spawn('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    c.on('exit', (code) => resolve(code === 0));
  });
  if (!found) {
    console.error(`bench: ${tool} is not installed; run bash scripts/setup.sh`);
    process.exit(2);
  }
}
for (const f of [cli, clientModule, join(root, 'dist', 'emulator', 'remote', 'RecLink.js')]) {
  if (!existsSync(f)) {
    console.error(`bench: ${f} is missing; run npm run build`);
    process.exit(2);
  }
}
const { ArrayClient } = await import(pathToFileURL(clientModule).href);

const work = mkdtempSync(join(tmpdir(), 'arraylab-recbench-'));
const children = new Set();
const clients = new Set();
function cleanup() {
  for (const c of clients) {
    try {
      c.close();
    } catch {}
  }
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
const log = (msg) => process.stderr.write(`bench: ${msg}\n`);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const notes = [];
const note = (msg) => {
  if (!notes.includes(msg)) notes.push(msg);
};

/** Runs a command to completion (killed with the bench); rejects on a non-zero exit. */
function run(cmd, argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', (err) => {
      children.delete(child);
      reject(err);
    });
    child.on('exit', (code, signal) => {
      children.delete(child);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new Error(`${cmd} ${argv.join(' ')} failed (${signal ?? `exit ${code}`}):\n${stderr || stdout}`));
    });
  });
}

async function fio(uri, fioArgs) {
  const { stdout } = await run('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...fioArgs]);
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  if (job.error) throw new Error(`fio error ${job.error}`);
  return job;
}

/** A host flush over NBD (Debian's python3 has the libnbd module). */
function flush(uri) {
  return run('/usr/bin/python3', ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\nh.flush()\nh.shutdown()\n`]);
}

// ---- the servers ----

/**
 * Starts arraylab serve on free ports with a fresh data directory, a gRPC client and one
 * WatchCopies stream whose events are kept with their arrival time, for the timings.
 */
async function startServer(tag) {
  const dataDir = join(work, `data-${tag}`);
  const config = join(work, `arraylab-${tag}.yaml`);
  writeFileSync(config, `dataDir: ${dataDir}\nlog:\n  level: warn\nvolumes: []\n`);
  const child = spawn('node', [...NODE_ARGS, cli, 'serve', '--config', config, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  child.on('exit', () => children.delete(child));
  let line;
  for (let i = 0; i < 600 && !line; i++) {
    if (child.exitCode !== null) throw new Error(`arraylab ${tag} exited early:\n${out}`);
    line = out.split('\n').find((l) => l.startsWith('{') && l.includes('"nbd"'));
    if (!line) await sleep(50);
  }
  if (!line) throw new Error(`arraylab ${tag} did not report its listeners:\n${out}`);
  const info = JSON.parse(line);
  const api = `127.0.0.1:${info.api.port}`;
  const client = new ArrayClient(api, { deadlineMs: 120_000 });
  clients.add(client);
  const events = [];
  const waiters = new Set();
  const watch = client.watchCopies({ progressIntervalMs: 60_000 }, (e) => {
    const ev = { ...e, t: performance.now() };
    events.push(ev);
    for (const w of [...waiters]) w(ev);
  });
  watch.done.catch((err) => {
    if (child.exitCode === null) log(`${tag}: watch stream failed: ${err.message}`);
  });
  log(`${tag}: pid ${info.pid}, api ${api}, nbd ${info.nbd.port}`);
  return {
    tag,
    pid: info.pid,
    api,
    client,
    events,
    uri: (name) => `nbd://127.0.0.1:${info.nbd.port}/${name}`,
    /**
     * Resolves with the first event after `since` (performance.now()) that pred accepts, or
     * with the time of the first poll that says so (a poll every POLL_MS); whichever comes first.
     */
    waitFor(pred, since, what, poll) {
      const hit = events.find((e) => e.t >= since && pred(e));
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        let polling = false;
        const timer = setInterval(async () => {
          if (child.exitCode !== null) {
            finish();
            return reject(new Error(`arraylab ${tag} exited while waiting for ${what}:\n${out}`));
          }
          if (!poll || polling) return;
          polling = true;
          try {
            const t = performance.now();
            if (await poll()) {
              finish();
              resolve({ t, polled: true });
            }
          } catch {
          } finally {
            polling = false;
          }
        }, POLL_MS);
        const w = (e) => {
          if (e.t >= since && pred(e)) {
            finish();
            resolve(e);
          }
        };
        const finish = () => {
          clearInterval(timer);
          waiters.delete(w);
        };
        waiters.add(w);
      });
    },
    reached(id, state, since) {
      return this.waitFor(
        (e) => e.sessionId === id && e.kind === 'state' && e.state === state,
        since,
        `session ${id} to be ${state}`,
        async () => (await client.getCopy(id)).state === state,
      );
    },
    /**
     * An asynchronous pair has nothing pending (polled: no event says so): stack copying,
     * consistency equivalent (a consistency pair that halted is waited for while recovery auto
     * resyncs it).
     */
    async drained(id, timeoutMs = 300_000) {
      const t0 = performance.now();
      for (;;) {
        const s = await client.getCopy(id);
        const want = s.remote?.mode === 'consistency' ? 'equivalent' : 'copying';
        const passing = s.remote?.mode === 'consistency' && (s.state === 'halt' || s.state === 'copying');
        if (s.state !== want && !passing) throw new Error(`REC session ${id} is ${s.state} while draining: ${s.remote?.haltDetail || s.error}`);
        if (s.state === want && s.remote?.pendingBytes === 0) return (performance.now() - t0) / 1000;
        if (performance.now() - t0 > timeoutMs)
          throw new Error(`REC session ${id} still has ${s.remote?.pendingBytes} bytes pending after ${timeoutMs / 1000} s`);
        await sleep(POLL_MS);
      }
    },
    async stop() {
      watch.cancel();
      client.close();
      clients.delete(client);
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      for (let i = 0; i < 600 && child.exitCode === null; i++) await sleep(50);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

/** Creates a thin volume of SIZE and writes all of it once with incompressible data, then flushes. */
async function createFilled(server, name) {
  await server.client.createVolume({ name, sizeBytes: SIZE, provisioning: 'thin' });
  const t = performance.now();
  await fio(server.uri(name), [
    '--rw=write',
    '--bs=1M',
    '--iodepth=8',
    `--size=${SIZE}`,
    '--refill_buffers',
    '--buffer_compress_percentage=0',
    '--end_fsync=1',
  ]);
  const s = (performance.now() - t) / 1000;
  log(`  filled ${server.tag}:${name}: ${SIZE_TEXT} in ${s.toFixed(1)} s (${(SIZE / MiB / s).toFixed(0)} MiB/s over NBD)`);
}

/** Starts a REC pair site-a:src -> site-b:dst and waits for its initial copy; returns its id and the time. */
async function startPair(a, src, dst, mode) {
  const t = performance.now();
  const s = await a.client.startCopy({ type: 'rec', source: src, destination: `site-b:${dst}`, mode });
  let done;
  if (mode === 'sync' || mode === 'consistency') done = (await a.reached(s.id, 'equivalent', t)).t;
  else {
    await a.drained(s.id);
    done = performance.now();
  }
  const secs = (done - t) / 1000;
  log(`  REC ${mode} ${src} -> site-b:${dst} (${s.id}): initial copy ${secs.toFixed(2)} s`);
  return { id: s.id, initialS: secs };
}

// ---- 1+2. host writes on REC sources vs no session ----

/**
 * Runs each case once per rep, the order reversed every other rep (A B C D, D C B A, ...). A host
 * flush before each run (a sync pair's write intent is cleared by it, so each run pays its
 * first-write journal commits) and, for a stack or consistency pair, its backlog drained before
 * the next run. A consistency run polls the pair every 200 ms for the REC buffer's use and
 * watches for a halt.
 */
async function benchWrites(a, pairs, part, fioArgs) {
  const cases = PART_CASES[part].filter((c) => CASES.includes(c)).map((name) => ({ name, volume: VOLUMES[name], pair: pairs[name] }));
  const samples = {};
  for (const c of cases) samples[c.name] = [];
  const asyncs = { stack: [], consistency: [] }; // per run: backlog at the end, drain time, buffer peak, halts
  for (let rep = 0; rep < REPS; rep++) {
    const order = rep % 2 === 0 ? cases : [...cases].reverse();
    for (const c of order) {
      const uri = a.uri(c.volume);
      await flush(uri);
      const t0 = performance.now();
      let peak = 0;
      let sampling = true;
      const sampler =
        c.name === 'consistency'
          ? (async () => {
              while (sampling) {
                try {
                  const s = await a.client.getCopy(c.pair.id);
                  peak = Math.max(peak, s.remote?.bufferUsedBytes ?? 0);
                } catch {}
                await sleep(200);
              }
            })()
          : undefined;
      let job;
      try {
        job = await fio(uri, fioArgs);
      } finally {
        sampling = false;
        await sampler;
      }
      const value = part === 'iops' ? job.write.iops : job.write.bw_bytes / MiB;
      samples[c.name].push(value);
      let extra = '';
      if (c.pair) {
        const s = await a.client.getCopy(c.pair.id);
        const halts = a.events.filter((e) => e.sessionId === c.pair.id && e.kind === 'state' && e.state === 'halt' && e.t >= t0);
        const want = c.name === 'stack' ? 'copying' : 'equivalent';
        if (s.state !== want && halts.length === 0)
          throw new Error(`REC ${c.name} pair ${c.pair.id} is ${s.state} after the run, not ${want}: ${s.remote?.haltDetail || s.error}`);
        if (c.name === 'sync' && halts.length > 0) throw new Error(`REC sync pair ${c.pair.id} halted during the run: ${s.remote?.haltDetail}`);
        if (c.name !== 'sync') {
          const backlog = s.remote.pendingBytes / MiB;
          const bufferAtEnd = (s.remote.bufferUsedBytes ?? 0) / MiB;
          peak = Math.max(peak, s.remote.bufferUsedBytes ?? 0);
          const haltReasons = halts.map((e) => e.session?.remote?.haltReason || 'halt');
          const drainS = await a.drained(c.pair.id);
          // The drain left dirty pages on both arrays: write them back and let the machine settle,
          // so the next case does not pay for this one's writeback (an order effect otherwise).
          execFileSync('sync');
          await new Promise((r) => setTimeout(r, 1000));
          asyncs[c.name].push({ backlog, drainS, peakMiB: peak / MiB, bufferAtEnd, halts: haltReasons });
          extra = `; ${backlog.toFixed(1)} MiB pending at the end, drained in ${drainS.toFixed(2)} s`;
          if (c.name === 'consistency') {
            extra += `; REC buffer peak ${(peak / MiB).toFixed(0)} MiB, ${bufferAtEnd.toFixed(0)} MiB at the end, of ${(s.remote.bufferSizeBytes / MiB).toFixed(0)} MiB`;
            extra += haltReasons.length ? `; HALTED during the run (${haltReasons.join(', ')})` : '; no halt';
          }
        }
      }
      log(`${part} (${rep + 1}/${REPS}): ${c.name}: ${part === 'iops' ? `${Math.round(value)} IOPS` : `${value.toFixed(0)} MiB/s`}${extra}`);
    }
  }
  const out = { samples, asyncs };
  for (const c of cases) out[c.name] = median(samples[c.name]);
  return out;
}

// ---- 3. resync after 1% change vs full copy ----

async function benchResync(a, b) {
  const units = SIZE / UNIT;
  const changed = Math.ceil(units / 100);
  const samples = { full: [], resync: [], resumeRpc: [], changedUnits: [], polled: 0 };
  await createFilled(a, 'rs-src');
  for (let rep = 0; rep < REPS; rep++) {
    // A fresh thin destination each rep: every full copy is a first copy.
    await b.client.createVolume({ name: 'rs-dst', sizeBytes: SIZE, provisioning: 'thin' });
    let t = performance.now();
    const s = await a.client.startCopy({ type: 'rec', source: 'rs-src', destination: 'site-b:rs-dst', mode: 'sync' });
    let e = await a.reached(s.id, 'equivalent', t);
    if (e.polled) samples.polled++;
    const fullS = (e.t - t) / 1000;
    await a.client.suspendCopy(s.id);
    // 1% of the units, distinct (fio's random map), 64 KiB aligned: one unit each.
    await fio(a.uri('rs-src'), [
      '--rw=randwrite',
      '--bs=64k',
      `--number_ios=${changed}`,
      '--iodepth=16',
      `--size=${SIZE}`,
      '--randrepeat=0',
      '--refill_buffers',
      '--end_fsync=1',
    ]);
    const before = await a.client.getCopy(s.id);
    const pending = Math.round(before.remote.pendingBytes / UNIT);
    t = performance.now();
    await a.client.resumeCopy(s.id);
    const rpcS = (performance.now() - t) / 1000; // the control path's share: ResumeRemoteEnd, journal
    e = await a.reached(s.id, 'equivalent', t);
    if (e.polled) samples.polled++;
    const resyncS = (e.t - t) / 1000;
    samples.full.push(fullS);
    samples.resync.push(resyncS);
    samples.resumeRpc.push(rpcS);
    samples.changedUnits.push(pending);
    log(
      `resync (${rep + 1}/${REPS}): full copy ${fullS.toFixed(2)} s; resync of ${pending} changed units ${(resyncS * 1000).toFixed(0)} ms (ResumeCopy returned after ${(rpcS * 1000).toFixed(0)} ms)`,
    );
    await a.client.cancelCopy(s.id);
    await b.client.deleteVolume('rs-dst');
  }
  if (samples.polled) note(`${samples.polled} resync timing(s) came from a ${POLL_MS} ms poll, not an event`);
  return { samples, changedTarget: changed, units, full: median(samples.full), resync: median(samples.resync) };
}

// ---- run ----

const results = {};
const load = { start: loadavg()[0] };
let a;
let b;
try {
  log('starting site-a and site-b');
  a = await startServer('site-a');
  b = await startServer('site-b');
  await a.client.addRemote('site-b', b.api);
  if (ONLY.includes('iops') || ONLY.includes('seq')) {
    // Only the volumes of the cases asked for (each is filled: a minute of a small machine).
    const wanted = ALL_CASES.filter((c) => CASES.includes(c) && ONLY.some((p) => PART_CASES[p]?.includes(c)));
    const remotes = wanted.filter((c) => c !== 'none');
    log(`writes: filling ${wanted.length} ${SIZE_TEXT} volumes on site-a`);
    for (const c of wanted) await createFilled(a, VOLUMES[c]);
    const dst = (c) => VOLUMES[c].replace(/-src$/, '-dst');
    for (const c of remotes) await b.client.createVolume({ name: dst(c), sizeBytes: SIZE, provisioning: 'thin' });
    if (remotes.includes('consistency')) {
      const r = await a.client.setRemoteBuffer('site-b', {
        bytes: BUFFER,
        haltWaitMs: HALT_WAIT_S * 1000,
        ...(CYCLE_MS !== undefined ? { cycleMs: CYCLE_MS } : {}),
      });
      results.buffer = r.buffer;
      log(
        `REC buffer to site-b: ${r.buffer.bytes / MiB} MiB, halt wait ${r.buffer.haltWaitMs / 1000} s, monitoring ${r.buffer.monitorMs / 1000} s, cycle ${r.buffer.cycleMs} ms`,
      );
    }
    const pairs = {};
    for (const c of remotes) pairs[c] = await startPair(a, VOLUMES[c], dst(c), c);
    results.pairs = pairs;
    const common = ['--iodepth=16', `--size=${SIZE}`, `--runtime=${RUNTIME}`, '--time_based', '--randrepeat=0'];
    if (ONLY.includes('iops')) results.iops = await benchWrites(a, pairs, 'iops', ['--rw=randwrite', '--bs=4k', '--norandommap', ...common]);
    if (ONLY.includes('seq')) {
      results.seq = await benchWrites(a, pairs, 'seq', ['--rw=write', '--bs=1M', ...common.map((x) => (x === '--iodepth=16' ? '--iodepth=8' : x))]);
    }
    for (const p of Object.values(pairs)) await a.client.cancelCopy(p.id);
    for (const c of wanted) await a.client.deleteVolume(VOLUMES[c]);
    for (const c of remotes) await b.client.deleteVolume(dst(c));
  }
  if (ONLY.includes('resync')) results.resync = await benchResync(a, b);
} finally {
  if (a) await a.stop();
  if (b) await b.stop();
}
load.end = loadavg()[0];

// ---- report ----

const secs = (s) => (s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
const verdict = (ok) => (ok ? 'PASS' : 'MISS');
const rows = [['measurement', 'arraylab', 'peer', 'ratio', 'target', 'result']];
const table = [];
const add = (r) => {
  if (!Number.isFinite(r.value)) return; // a case left out with --cases
  rows.push([r.measurement, r.arraylab, r.peer, r.ratio, r.target, r.result]);
  table.push(r);
};
if (results.iops) {
  const i = results.iops;
  const rs = i.sync / i.none;
  add({
    measurement: '4k randwrite QD16, sync REC source (equivalent)',
    arraylab: `${Math.round(i.sync)} IOPS`,
    peer: `no session ${Math.round(i.none)} IOPS`,
    ratio: `${rs.toFixed(2)}x`,
    target: '>= 0.50x',
    result: verdict(rs >= 0.5),
    value: rs,
  });
  const rk = i.stack / i.none;
  add({
    measurement: '4k randwrite QD16, stack REC source',
    arraylab: `${Math.round(i.stack)} IOPS`,
    peer: `no session ${Math.round(i.none)} IOPS`,
    ratio: `${rk.toFixed(2)}x`,
    target: '(info)',
    result: '-',
    value: rk,
  });
}
if (results.seq) {
  const q = results.seq;
  const cons = q.asyncs.consistency;
  const halted = cons.filter((r) => r.halts.length > 0).length;
  const rc = q.consistency / q.none;
  add({
    measurement: '1 MiB seq write QD8, consistency REC source (equivalent)',
    arraylab: `${q.consistency?.toFixed(0)} MiB/s`,
    peer: `no session ${q.none?.toFixed(0)} MiB/s`,
    ratio: `${rc.toFixed(2)}x`,
    target: '>= 0.80x',
    // A run that halted measured writes recorded in diff, not cycles: not a pass.
    result: halted ? `MISS (halted in ${halted}/${cons.length} runs)` : verdict(rc >= 0.8),
    value: rc,
  });
  const rk = q.stack / q.none;
  add({
    measurement: '1 MiB seq write QD8, stack REC source',
    arraylab: `${q.stack?.toFixed(0)} MiB/s`,
    peer: `no session ${q.none?.toFixed(0)} MiB/s`,
    ratio: `${rk.toFixed(2)}x`,
    target: '(info)',
    result: '-',
    value: rk,
  });
  const rs = q.sync / q.none;
  add({
    measurement: '1 MiB seq write QD8, sync REC source',
    arraylab: `${q.sync?.toFixed(0)} MiB/s`,
    peer: `no session ${q.none?.toFixed(0)} MiB/s`,
    ratio: `${rs.toFixed(2)}x`,
    target: '(info)',
    result: '-',
    value: rs,
  });
}
if (results.resync) {
  const r = results.resync;
  const ratio = r.resync / r.full;
  add({
    measurement: `REC resync after 1% (${r.changedTarget} units) changed`,
    arraylab: `resync ${secs(r.resync)}`,
    peer: `full copy ${secs(r.full)}`,
    ratio: `${(ratio * 100).toFixed(1)}%`,
    target: '<= 3%',
    result: verdict(ratio <= 0.03),
    value: ratio,
  });
}

const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
console.log(
  `\nREC benchmark: site-a -> site-b, two arraylab processes on loopback; median of ${REPS} runs each, order alternating; ` +
    `${SIZE_TEXT} thin volumes (64 KiB copy units); fio ${RUNTIME} s runs, nbd engine, one connection; ` +
    `load average ${load.start.toFixed(1)} at the start, ${load.end.toFixed(1)} at the end`,
);
if (results.seq?.asyncs.consistency.length) {
  const b = results.buffer;
  const cons = results.seq.asyncs.consistency;
  const halts = cons.flatMap((r) => r.halts);
  console.log(
    `consistency mode: REC buffer ${b.bytes / MiB} MiB, halt wait ${b.haltWaitMs / 1000} s, cycle ${b.cycleMs} ms; ` +
      `buffer peak ${cons.map((r) => `${r.peakMiB.toFixed(0)} MiB`).join(', ')}; ` +
      (halts.length
        ? `HALTED (${[...new Set(halts)].join(', ')}) in ${cons.filter((r) => r.halts.length).length} of ${cons.length} runs: the link could not keep up with the writes (writes were recorded in diff after the halt, so the figure is not cycles' throughput)`
        : 'no halt'),
  );
}
console.log(line(rows[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows.slice(1)) console.log(line(r));

const details = [];
if (results.pairs) {
  const p = results.pairs;
  details.push(
    `initial copies (${SIZE_TEXT}): ${Object.entries(p)
      .map(([mode, x]) => `${mode} pair until ${mode === 'stack' ? 'nothing pending' : 'equivalent'} ${secs(x.initialS)}`)
      .join('; ')}`,
  );
}
for (const part of ['iops', 'seq']) {
  const r = results[part];
  if (!r) continue;
  const f = part === 'iops' ? (x) => String(Math.round(x)) : (x) => x.toFixed(0);
  const byCase = Object.entries(r.samples).map(([name, xs]) => `${name} ${xs.map(f).join(', ')}`);
  details.push(`${part} samples (${part === 'iops' ? 'IOPS' : 'MiB/s'}): ${byCase.join('; ')}`);
  for (const [name, runs] of Object.entries(r.asyncs)) {
    if (!runs.length) continue;
    const buf =
      name === 'consistency'
        ? `; REC buffer peak ${runs.map((x) => `${x.peakMiB.toFixed(0)} MiB`).join(', ')}; halts ${runs.map((x) => (x.halts.length ? x.halts.join('+') : 'none')).join(', ')}`
        : '';
    details.push(
      `${part} ${name}: backlog at the end of a run ${runs.map((x) => `${x.backlog.toFixed(1)} MiB`).join(', ')}, drained in ${runs.map((x) => secs(x.drainS)).join(', ')}${buf}`,
    );
  }
}
if (results.resync) {
  const r = results.resync;
  details.push(
    `resync: full copy (StartCopy until 'equivalent', fresh thin destination) ${r.samples.full.map(secs).join(', ')}; ` +
      `resync (ResumeCopy until 'equivalent') ${r.samples.resync.map(secs).join(', ')} of ${r.samples.changedUnits.join(', ')} changed units, ` +
      `of which the ResumeCopy call ${r.samples.resumeRpc.map(secs).join(', ')} ` +
      `(fio randwrite bs=64k while suspended, ${r.changedTarget} of ${r.units} units)`,
  );
}
for (const n of notes) details.push(`note: ${n}`);
if (details.length) console.log(`\n${details.map((d) => `- ${d}`).join('\n')}`);

if (JSON_OUT) {
  writeFileSync(JSON_OUT, JSON.stringify({ sizeBytes: SIZE, reps: REPS, runtime: RUNTIME, loadAverage: load, table, results, notes }, null, 2));
}
