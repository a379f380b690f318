#!/usr/bin/env node
// Copy-engine benchmark: arraylab's copy sessions against their peers, side by side in one run,
// with issue 20's target next to each ratio, PASS or MISS, and the machine's ceiling. Ratios, not
// absolute times, are what compare across machines. The last line counts the targets:
// "targets: N PASS, M MISS".
//
//   opc       OPC physical copy of a fully written volume (--size, default 2 GiB), from copy start
//             until the session has ended, against cp --sparse=never of the source's backing
//             data file (and against cp + fsync of the copy, since an ended OPC is durable).
//             Page cache dropped before each timed run; cp and OPC alternate, --reps each.
//             Targets: OPC throughput >= 1.00x cp + fsync, and >= 0.50x plain cp. cp itself is
//             the machine's copy ceiling.
//   quickopc  QuickOPC: full copy until tracking, then 1% of the 64 KiB units rewritten at random
//             (fio randwrite bs=64k), restart, time until tracking again.
//             Target: re-copy time <= 3% of the full copy time.
//   iops      4k random writes, QD16, fio nbd engine, on a source with no session, with a fresh
//             SnapOPC+ generation (restarted each rep: first writes to each unit pay the
//             copy-on-write; a new thin snap volume each rep) and with an EC pair equivalent (every
//             write mirrored). Each run starts after a sync, with nothing dirty on the machine. Interleaved,
//             with fio on a prefilled file in the work directory (io_uring, else psync; buffered;
//             same size, bs, depth and runtime): the machine's ceiling, informational.
//             Targets: SnapOPC+ >= 0.70x no session; EC >= 0.80x no session.
//   rss       one server, 200 thin 10 GiB volumes, 100 sessions (40 QuickOPC + 30 EC, rate 0,
//             30 SnapOPC+ generations), host writes spread over every source; server VmRSS.
//             Target: <= 200 MB.
//
//   node scripts/bench/copy.mjs [--only opc,quickopc,iops,rss] [--reps N] [--size 2GiB] [--runtime SECONDS] [--json FILE] [--node-args FLAGS]
//                               [--no-ceiling] [--ceiling-engine io_uring|psync|libaio]
//
// --node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" profiles the servers. Dropping the page cache
// needs root; without it the runs go on with a warm cache and the output says so.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
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

function parseSize(text) {
  const m = /^(\d+(?:\.\d+)?)\s*(|k|kib|m|mib|g|gib|t|tib)$/i.exec(String(text).trim());
  if (!m) {
    console.error(`bench: --size ${JSON.stringify(text)} is not a size; use e.g. 2GiB or 512MiB`);
    process.exit(2);
  }
  const mult = { '': 1, k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30, t: 2 ** 40, tib: 2 ** 40 }[m[2].toLowerCase()];
  const bytes = Math.round(Number(m[1]) * mult);
  if (bytes < 64 * 2 ** 20 || bytes % (64 * 1024) !== 0) {
    console.error('bench: --size must be at least 64MiB and a multiple of 64KiB');
    process.exit(2);
  }
  return bytes;
}

const RUNTIME = Number(opt('runtime', '5'));
const REPS = Number(opt('reps', '3'));
const SIZE = parseSize(opt('size', '2GiB'));
const SIZE_TEXT = SIZE % 2 ** 30 === 0 ? `${SIZE / 2 ** 30} GiB` : `${SIZE / 2 ** 20} MiB`;
const JSON_OUT = opt('json', undefined);
const ALL_PARTS = ['opc', 'quickopc', 'iops', 'rss'];
const ONLY = opt('only', ALL_PARTS.join(',')).split(',');
// Extra node flags for arraylab, e.g. --node-args "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile it.
const NODE_ARGS = String(opt('node-args', '')).split(' ').filter(Boolean);
const SKIP_CEILING = args.includes('--no-ceiling');
const CEILING_ENGINE = opt('ceiling-engine', undefined);
const UNIT = 64 * 1024; // the engine's default copy unit
const MiB = 2 ** 20;

if (ONLY.some((p) => !ALL_PARTS.includes(p))) {
  console.error(`bench: --only takes a comma-separated list of ${ALL_PARTS.join(', ')}`);
  process.exit(2);
}
if (!(REPS >= 1) || !(RUNTIME >= 1)) {
  console.error('bench: --reps and --runtime must be at least 1');
  process.exit(2);
}

for (const tool of ['fio', 'cp', 'sync', '/usr/bin/python3']) {
  const found = await new Promise((resolve) => {
    const c = spawn('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    c.on('exit', (code) => resolve(code === 0));
  });
  if (!found) {
    console.error(`bench: ${tool} is not installed; run bash scripts/setup.sh`);
    process.exit(2);
  }
}
if (!existsSync(cli)) {
  console.error(`bench: ${cli} is missing; run npm run build`);
  process.exit(2);
}
const { ArrayClient } = await import(pathToFileURL(clientModule).href);

const work = mkdtempSync(join(tmpdir(), 'arraylab-copybench-'));
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
function run(cmd, argv, { quiet = false } = {}) {
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
      if (code === 0 || quiet) resolve({ code, stdout, stderr });
      else reject(new Error(`${cmd} ${argv.join(' ')} failed (${signal ?? `exit ${code}`}):\n${stderr || stdout}`));
    });
  });
}

/** sync + drop the page cache, so that every timed copy reads from disk. */
let dropWorks;
async function dropCaches() {
  await run('sync', []);
  if (dropWorks === false) return;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    dropWorks = true;
  } catch (err) {
    dropWorks = false;
    note(`could not drop the page cache (${err.code ?? err.message}; needs root): timed copies ran with a warm cache`);
  }
}

async function fio(uri, fioArgs) {
  const { stdout } = await run('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--output-format=json', ...fioArgs]);
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  if (job.error) throw new Error(`fio error ${job.error}`);
  return job;
}

/** The machine's ceiling: fio on a file in the work directory (the data directories' filesystem). */
async function fioFile(file, engine, fioArgs) {
  const { stdout } = await run('fio', [
    '--name=ceiling',
    `--filename=${file}`,
    `--ioengine=${engine}`,
    '--direct=0',
    '--invalidate=0',
    '--output-format=json',
    ...fioArgs,
  ]);
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  if (job.error) throw new Error(`fio error ${job.error}`);
  return job;
}

/** io_uring if this fio (and kernel) can run it, else psync (or --ceiling-engine). */
async function ceilingEngine() {
  if (CEILING_ENGINE !== undefined) return CEILING_ENGINE;
  const probe = join(work, 'engine-probe.img');
  try {
    writeFileSync(probe, Buffer.alloc(MiB));
    await fioFile(probe, 'io_uring', ['--rw=read', '--bs=4k', '--size=1M']);
    return 'io_uring';
  } catch {
    return 'psync';
  } finally {
    rmSync(probe, { force: true });
  }
}

/** nbdsh (Debian's python3 has the libnbd module). */
function nbdsh(uri, code) {
  return run('/usr/bin/python3', ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\n${code}\nh.shutdown()\n`]);
}

function rssOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(status.match(new RegExp(`${key}:\\s+(\\d+)`))[1]);
  return { rssMB: (kb('VmRSS') * 1024) / 1e6, peakMB: (kb('VmHWM') * 1024) / 1e6 };
}

// ---- the server ----

/**
 * Starts arraylab serve on free ports with a fresh data directory, a gRPC client and one
 * WatchCopies stream; events are logged with their arrival time for the timings.
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
    if (child.exitCode !== null) throw new Error(`arraylab exited early:\n${out}`);
    line = out.split('\n').find((l) => l.startsWith('{') && l.includes('"nbd"'));
    if (!line) await sleep(50);
  }
  if (!line) throw new Error(`arraylab did not report its listeners:\n${out}`);
  const info = JSON.parse(line);
  const client = new ArrayClient(`127.0.0.1:${info.api.port}`, { deadlineMs: 120_000 });
  clients.add(client);
  const events = [];
  const waiters = new Set();
  const watch = client.watchCopies({ progressIntervalMs: 60_000 }, (e) => {
    const ev = { ...e, t: performance.now() };
    events.push(ev);
    for (const w of [...waiters]) w(ev);
  });
  watch.done.catch((err) => {
    if (child.exitCode === null) log(`watch stream failed: ${err.message}`);
  });
  const server = {
    tag,
    child,
    pid: info.pid,
    dataDir,
    client,
    output: () => out,
    uri: (name) => `nbd://127.0.0.1:${info.nbd.port}/${name}`,
    async dataFile(name) {
      const v = await client.getVolume(name);
      return join(dataDir, 'volumes', `${v.uuid}.data`);
    },
    /**
     * Resolves with the arrival time of the first event after `since` (performance.now())
     * that pred accepts. A poll every 2 s covers a lost event (its time is then the poll's).
     */
    waitFor(pred, since, what, poll) {
      const hit = events.find((e) => e.t >= since && pred(e));
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const timer = setInterval(async () => {
          if (child.exitCode !== null) {
            finish();
            return reject(new Error(`arraylab exited while waiting for ${what}:\n${out}`));
          }
          if (!poll) return;
          try {
            if (await poll()) {
              note(`an event was missed while waiting for ${what}; its time came from a 2 s poll`);
              finish();
              resolve({ t: performance.now() });
            }
          } catch {}
        }, 2000);
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
    ended(id, since) {
      return this.waitFor(
        (e) => e.sessionId === id && ['completed', 'cancelled', 'dropped'].includes(e.kind),
        since,
        `session ${id} to end`,
        async () => !(await client.listCopies()).some((s) => s.id === id),
      );
    },
    reached(id, state, since) {
      return this.waitFor(
        (e) => e.sessionId === id && e.kind === 'state' && e.state === state,
        since,
        `session ${id} to be ${state}`,
        async () => (await client.getCopy(id)).state === state,
      );
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
  return server;
}

/** fio arguments that write all of SIZE once, incompressibly, and flush: volumes and the ceiling file alike. */
const FILL_ARGS = ['--rw=write', '--bs=1M', '--iodepth=8', `--size=${SIZE}`, '--refill_buffers', '--buffer_compress_percentage=0', '--end_fsync=1'];

/** Creates a thin volume of SIZE and writes all of it once with incompressible data, then flushes. */
async function createFilled(server, name) {
  await server.client.createVolume({ name, sizeBytes: SIZE, provisioning: 'thin' });
  const t = performance.now();
  await fio(server.uri(name), FILL_ARGS);
  const s = (performance.now() - t) / 1000;
  log(`  filled ${name}: ${SIZE_TEXT} in ${s.toFixed(1)} s (${(SIZE / MiB / s).toFixed(0)} MiB/s over NBD)`);
}

// ---- 1. OPC vs cp ----

async function benchOpc(server) {
  log(`opc: filling a ${SIZE_TEXT} source`);
  await createFilled(server, 'src');
  const srcFile = await server.dataFile('src');
  const cpDst = join(work, 'cp-copy.data');
  const samples = { cp: [], cpSync: [], opc: [] };
  for (let rep = 0; rep < REPS; rep++) {
    rmSync(cpDst, { force: true });
    await dropCaches();
    let t = performance.now();
    await run('cp', ['--sparse=never', srcFile, cpDst]);
    const cpS = (performance.now() - t) / 1000;
    t = performance.now();
    await run('sync', [cpDst]);
    const syncS = (performance.now() - t) / 1000;
    rmSync(cpDst, { force: true });
    samples.cp.push(cpS);
    samples.cpSync.push(cpS + syncS);
    log(`opc (${rep + 1}/${REPS}): cp ${cpS.toFixed(2)} s, + fsync ${syncS.toFixed(2)} s`);

    const dst = `opc-dst-${rep}`;
    await server.client.createVolume({ name: dst, sizeBytes: SIZE, provisioning: 'thin' });
    await dropCaches();
    t = performance.now();
    const s = await server.client.startCopy({ type: 'opc', source: 'src', destination: dst });
    const end = await server.ended(s.id, t);
    if (end.kind && end.kind !== 'completed') throw new Error(`OPC session ${s.id} ended ${end.kind}: ${end.message}`);
    const opcS = (end.t - t) / 1000;
    samples.opc.push(opcS);
    log(`opc (${rep + 1}/${REPS}): OPC ${opcS.toFixed(2)} s (${(SIZE / MiB / opcS).toFixed(0)} MiB/s)`);
    await server.client.deleteVolume(dst);
  }
  return { samples, cp: median(samples.cp), cpSync: median(samples.cpSync), opc: median(samples.opc) };
}

// ---- 2. QuickOPC differential re-copy ----

async function benchQuickOpc(server, source) {
  const units = SIZE / UNIT;
  const changed = Math.ceil(units / 100);
  const samples = { full: [], recopy: [], changedUnits: [] };
  for (let rep = 0; rep < REPS; rep++) {
    const dst = `qopc-dst-${rep}`;
    await server.client.createVolume({ name: dst, sizeBytes: SIZE, provisioning: 'thin' });
    await dropCaches();
    let t = performance.now();
    const s = await server.client.startCopy({ type: 'quickopc', source, destination: dst });
    let e = await server.reached(s.id, 'tracking', t);
    const fullS = (e.t - t) / 1000;
    // 1% of the units, distinct (fio's random map), 64 KiB aligned: one unit each.
    await fio(server.uri(source), [
      '--rw=randwrite',
      '--bs=64k',
      `--number_ios=${changed}`,
      '--iodepth=16',
      `--size=${SIZE}`,
      '--randrepeat=0',
      '--refill_buffers',
      '--end_fsync=1',
    ]);
    await dropCaches();
    t = performance.now();
    await server.client.startCopy({ type: 'quickopc', source, destination: dst });
    const restarted = await server.waitFor((ev) => ev.sessionId === s.id && ev.kind === 'state' && /restarted/.test(ev.message), t, 'the restart event');
    e = await server.reached(s.id, 'tracking', t);
    const recopyS = (e.t - t) / 1000;
    const n = Number(/(\d+) changed units/.exec(restarted.message ?? '')?.[1] ?? NaN);
    samples.full.push(fullS);
    samples.recopy.push(recopyS);
    samples.changedUnits.push(n);
    log(`quickopc (${rep + 1}/${REPS}): full copy ${fullS.toFixed(2)} s, re-copy of ${n} units ${(recopyS * 1000).toFixed(0)} ms`);
    await server.client.cancelCopy(s.id);
    await server.client.deleteVolume(dst);
  }
  return { samples, changedTarget: changed, units, full: median(samples.full), recopy: median(samples.recopy) };
}

// ---- 3. 4k random-write IOPS under sessions ----

async function benchIops(server) {
  log(`iops: filling three ${SIZE_TEXT} sources`);
  for (const name of ['base', 'snap-src', 'ec-src']) await createFilled(server, name);
  await server.client.createVolume({ name: 'ec-dst', sizeBytes: SIZE, provisioning: 'thin' });
  const t = performance.now();
  const ec = await server.client.startCopy({ type: 'ec', source: 'ec-src', destination: 'ec-dst' });
  const eq = await server.reached(ec.id, 'equivalent', t);
  const ecInitialS = (eq.t - t) / 1000;
  log(`iops: EC pair equivalent after ${ecInitialS.toFixed(1)} s (initial copy)`);

  const peers = [
    { name: 'none', volume: 'base' },
    { name: 'snap', volume: 'snap-src' },
    { name: 'ec', volume: 'ec-src' },
  ];
  const samples = { none: [], snap: [], ec: [], ceiling: [], snapSavedUnits: [], snapWrites: [], snapUnitsPerS: [], cowCeiling: [], ecIntentNote: [] };
  const randwrite = ['--rw=randwrite', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, `--runtime=${RUNTIME}`, '--time_based', '--norandommap', '--randrepeat=0'];
  let ceiling;
  if (!SKIP_CEILING) {
    ceiling = { file: join(work, 'ceiling.img'), engine: await ceilingEngine() };
    log(`iops: filling a ${SIZE_TEXT} file for fio (${ceiling.engine}), the machine's ceiling`);
    await fioFile(ceiling.file, ceiling.engine, FILL_ARGS);
    peers.push({ name: 'ceiling' });
  }
  let gen;
  for (let rep = 0; rep < REPS; rep++) {
    for (const p of peers) {
      // Nothing dirty anywhere on the machine: the fills and the previous run's writes would
      // otherwise still be written back during this run, and a session that syncs (SnapOPC+
      // rounds, EC intent) would queue behind gigabytes of someone else's writeback.
      await run('sync', []);
      if (p.name === 'ceiling') {
        const job = await fioFile(ceiling.file, ceiling.engine, randwrite);
        samples.ceiling.push(job.write.iops);
        log(`iops (${rep + 1}/${REPS}): fio on the file: ${Math.round(job.write.iops)} IOPS`);
        continue;
      }
      const uri = server.uri(p.volume);
      // A flush first: each run starts with nothing dirty, and for EC with no write intent left
      // (a host flush clears it), so the first write to each unit pays its journal commit.
      await nbdsh(uri, 'h.flush()');
      if (p.name === 'snap') {
        // Each rep: a new generation on a new snap volume, whose file has no blocks yet (a
        // reused one keeps its blocks, and later reps would measure a cheaper case).
        if (gen) {
          await server.client.cancelCopy(gen.id);
          await server.client.deleteVolume(gen.destination);
        }
        await server.client.createVolume({ name: `snap-vol-${rep}`, sizeBytes: SIZE, provisioning: 'thin' });
        gen = await server.client.startCopy({ type: 'snapopcplus', source: 'snap-src', destination: `snap-vol-${rep}` });
      }
      const job = await fio(uri, randwrite);
      samples[p.name].push(job.write.iops);
      let extra = '';
      if (p.name === 'snap') {
        const info = await server.client.getCopy(gen.id);
        samples.snapSavedUnits.push(info.copiedBlocks);
        samples.snapWrites.push(job.write.total_ios);
        samples.snapUnitsPerS.push(info.copiedBlocks / (job.write.runtime / 1000));
        extra = `, ${info.copiedBlocks} of ${info.totalBlocks} units saved (copy-on-write) by ${job.write.total_ios} writes`;
        if (ceiling) {
          // What the machine charges for the before-images alone: 64 KiB writes at random into a
          // new sparse file (each unit once), synced every 64 writes, like a round's flush.
          const cowFile = join(work, 'cow-ceiling.img');
          await run('sync', []); // from the same clean start as the SnapOPC+ run
          const cow = await fioFile(cowFile, 'psync', [
            '--rw=randwrite',
            '--bs=64k',
            `--size=${SIZE}`,
            `--runtime=${RUNTIME}`,
            '--fallocate=none',
            '--fdatasync=64',
            '--randrepeat=0',
          ]);
          rmSync(cowFile, { force: true });
          samples.cowCeiling.push(cow.write.iops);
          extra += `; fio's 64 KiB writes into a new sparse file: ${Math.round(cow.write.iops)}/s`;
        }
      }
      log(`iops (${rep + 1}/${REPS}): ${p.name}: ${Math.round(job.write.iops)} IOPS${extra}`);
    }
  }
  if (gen) {
    await server.client.cancelCopy(gen.id);
    await server.client.deleteVolume(gen.destination);
  }
  await server.client.cancelCopy(ec.id);
  if (ceiling) rmSync(ceiling.file, { force: true });
  return {
    samples,
    ecInitialS,
    ceilingEngine: ceiling?.engine,
    ceiling: ceiling ? median(samples.ceiling) : undefined,
    none: median(samples.none),
    snap: median(samples.snap),
    ec: median(samples.ec),
    snapSavedUnits: median(samples.snapSavedUnits),
    snapWrites: median(samples.snapWrites),
    snapUnitsPerS: median(samples.snapUnitsPerS),
    cowCeiling: samples.cowCeiling.length > 0 ? median(samples.cowCeiling) : undefined,
    memoryTouch: ceiling ? touchRates() : undefined,
    units: SIZE / UNIT,
  };
}

/**
 * MiB/s of writing 256 MiB of memory this process never touched, and then of writing it again.
 * On a virtual machine whose host backs guest memory lazily, the first is far slower: every page
 * the page cache grows by (a before-image in a new snap file) pays it too.
 */
function touchRates() {
  const n = 256 * MiB;
  const b = Buffer.allocUnsafeSlow(n);
  let t = performance.now();
  b.fill(1);
  const first = n / MiB / ((performance.now() - t) / 1000);
  t = performance.now();
  b.fill(2);
  const again = n / MiB / ((performance.now() - t) / 1000);
  return { first, again };
}

// ---- 4. RSS with 100 sessions ----

const RSS_VOL = 10 * 2 ** 30;
const RSS_MIX = { quickopc: 40, ec: 30, snapopcplus: 30 };
const WRITES_PER_SOURCE = 16;

async function benchRss() {
  log('rss: starting a server and creating 200 thin 10 GiB volumes');
  const server = await startServer('rss');
  try {
    const pairs = [];
    for (const [type, n] of Object.entries(RSS_MIX)) {
      for (let i = 0; i < n; i++) pairs.push({ type, source: `${type}-src-${i}`, destination: `${type}-dst-${i}` });
    }
    for (const p of pairs) {
      await server.client.createVolume({ name: p.source, sizeBytes: RSS_VOL, provisioning: 'thin' });
      await server.client.createVolume({ name: p.destination, sizeBytes: RSS_VOL, provisioning: 'thin' });
    }
    await sleep(1000);
    const volumesOnly = rssOf(server.pid);
    log(`rss: ${volumesOnly.rssMB.toFixed(1)} MB with 200 volumes, no sessions; starting 100 sessions`);
    for (const p of pairs) {
      await server.client.startCopy({ type: p.type, source: p.source, destination: p.destination, ...(p.type === 'snapopcplus' ? {} : { rateMiBs: 0 }) });
    }
    await sleep(1000);
    const sessionsOnly = rssOf(server.pid);
    log(`rss: ${sessionsOnly.rssMB.toFixed(1)} MB with 100 sessions; writing ${WRITES_PER_SOURCE} x 64 KiB spread over each source`);
    // Writes spread over the whole of each source, so that every bitmap chunk (and the volumes'
    // allocation-map chunks) the sessions touch becomes resident: copy-on-write (QuickOPC copied
    // + tracked, SnapOPC+ saved) and mirroring (EC write intent).
    const script = `
import nbd, sys
port = int(sys.argv[1]); size = int(sys.argv[2]); n = int(sys.argv[3])
buf = bytearray(b"\\x5a") * 65536
for name in sys.argv[4:]:
    h = nbd.NBD()
    h.connect_uri("nbd://127.0.0.1:%d/%s" % (port, name))
    for k in range(n):
        off = (size // n) * k + 65536 * (k % 7)
        h.pwrite(buf, off)
    h.flush()
    h.shutdown()
`;
    const port = Number(/:(\d+)\//.exec(server.uri('x'))[1]);
    const t = performance.now();
    await run('/usr/bin/python3', ['-c', script, String(port), String(RSS_VOL), String(WRITES_PER_SOURCE), ...pairs.map((p) => p.source)]);
    const writeS = (performance.now() - t) / 1000;
    await sleep(1000);
    const after = rssOf(server.pid);
    const sessions = await server.client.listCopies();
    const states = {};
    for (const s of sessions) states[`${s.type} ${s.state}`] = (states[`${s.type} ${s.state}`] ?? 0) + 1;
    log(
      `rss: ${after.rssMB.toFixed(1)} MB (peak ${after.peakMB.toFixed(1)} MB) after ${pairs.length * WRITES_PER_SOURCE} writes in ${writeS.toFixed(1)} s; sessions: ${JSON.stringify(states)}`,
    );
    return { volumesOnly, sessionsOnly, after, sessions: sessions.length, states, writes: pairs.length * WRITES_PER_SOURCE, writeS };
  } finally {
    await server.stop();
  }
}

// ---- run ----

const results = {};
const load = { start: loadavg()[0] };
let main;
try {
  if (ONLY.some((p) => p !== 'rss')) {
    log('starting arraylab');
    main = await startServer('main');
  }
  if (ONLY.includes('opc')) results.opc = await benchOpc(main);
  if (ONLY.includes('quickopc')) {
    if (!results.opc) {
      log(`quickopc: filling a ${SIZE_TEXT} source`);
      await createFilled(main, 'src');
    }
    results.quickopc = await benchQuickOpc(main, 'src');
  }
  if (results.opc || results.quickopc) await main.client.deleteVolume('src'); // its space back before the next part
  if (ONLY.includes('iops')) results.iops = await benchIops(main);
} finally {
  if (main) await main.stop();
}
if (ONLY.includes('rss')) results.rss = await benchRss();
load.end = loadavg()[0];

// ---- report ----

const secs = (s) => (s < 1 ? `${(s * 1000).toFixed(0)} ms` : `${s.toFixed(2)} s`);
const mibs = (s) => `${(SIZE / MiB / s).toFixed(0)} MiB/s`;
const verdict = (ok) => (ok ? 'PASS' : 'MISS');
const rows = [['measurement', 'arraylab', 'peer', 'ratio', 'target', 'result', 'machine ceiling']];
const table = [];
const add = (r) => {
  rows.push([r.measurement, r.arraylab, r.peer, r.ratio, r.target, r.result, r.ceiling ?? '-']);
  table.push(r);
};
if (results.opc) {
  const o = results.opc;
  const cpCeiling = `cp ${mibs(o.cp)} (cp is the copy ceiling)`;
  const r2 = o.cpSync / o.opc;
  add({
    measurement: `OPC ${SIZE_TEXT} vs cp + fsync (durable, like OPC)`,
    arraylab: `${secs(o.opc)} (${mibs(o.opc)})`,
    peer: `cp+fsync ${secs(o.cpSync)} (${mibs(o.cpSync)})`,
    ratio: `${r2.toFixed(2)}x`,
    target: '>= 1.00x',
    result: verdict(r2 >= 1),
    value: r2,
    ceiling: cpCeiling,
  });
  const r1 = o.cp / o.opc;
  add({
    measurement: `OPC ${SIZE_TEXT} physical copy vs plain cp`,
    arraylab: `${secs(o.opc)} (${mibs(o.opc)})`,
    peer: `cp ${secs(o.cp)} (${mibs(o.cp)})`,
    ratio: `${r1.toFixed(2)}x`,
    target: '>= 0.50x',
    result: verdict(r1 >= 0.5),
    value: r1,
    ceiling: cpCeiling,
  });
}
if (results.quickopc) {
  const q = results.quickopc;
  const r = q.recopy / q.full;
  add({
    measurement: `QuickOPC re-copy after 1% (${q.changedTarget} units) changed`,
    arraylab: `re-copy ${secs(q.recopy)}`,
    peer: `full copy ${secs(q.full)}`,
    ratio: `${(r * 100).toFixed(1)}%`,
    target: '<= 3%',
    result: verdict(r <= 0.03),
    value: r,
  });
}
if (results.iops) {
  const i = results.iops;
  const fioCeiling = i.ceiling === undefined ? undefined : `fio on the file ${Math.round(i.ceiling)} IOPS`;
  const rs = i.snap / i.none;
  add({
    measurement: '4k randwrite QD16, SnapOPC+ gen (fresh: COW on 1st write/unit)',
    arraylab: `${Math.round(i.snap)} IOPS`,
    peer: `no session ${Math.round(i.none)} IOPS`,
    ratio: `${rs.toFixed(2)}x`,
    target: '>= 0.70x',
    result: verdict(rs >= 0.7),
    value: rs,
    ceiling: fioCeiling,
  });
  const re = i.ec / i.none;
  add({
    measurement: '4k randwrite QD16, EC equivalent (mirrored)',
    arraylab: `${Math.round(i.ec)} IOPS`,
    peer: `no session ${Math.round(i.none)} IOPS`,
    ratio: `${re.toFixed(2)}x`,
    target: '>= 0.80x',
    result: verdict(re >= 0.8),
    value: re,
    ceiling: fioCeiling,
  });
  if (i.cowCeiling !== undefined) {
    const rw = i.snapUnitsPerS / i.cowCeiling;
    add({
      measurement: 'copy-on-write rate, SnapOPC+ gen (units saved per second)',
      arraylab: `${Math.round(i.snapUnitsPerS)} units/s`,
      peer: `fio 64k into a new file ${Math.round(i.cowCeiling)}/s`,
      ratio: `${rw.toFixed(2)}x`,
      target: 'info',
      result: '-',
      value: rw,
      ceiling: `fio 64k into a new file ${Math.round(i.cowCeiling)}/s`,
    });
  }
  if (i.ceiling !== undefined) {
    const rc = i.none / i.ceiling;
    add({
      measurement: '4k randwrite QD16, no session vs the machine (the reference above)',
      arraylab: `no session ${Math.round(i.none)} IOPS`,
      peer: `fio on the file ${Math.round(i.ceiling)} IOPS`,
      ratio: `${rc.toFixed(2)}x`,
      target: 'info',
      result: '-',
      value: rc,
      ceiling: fioCeiling,
    });
  }
}
if (results.rss) {
  const m = results.rss;
  add({
    measurement: `RSS, ${m.sessions} sessions on 200 thin 10 GiB volumes`,
    arraylab: `${m.after.rssMB.toFixed(1)} MB`,
    peer: `no sessions ${m.volumesOnly.rssMB.toFixed(1)} MB`,
    ratio: `+${(m.after.rssMB - m.volumesOnly.rssMB).toFixed(1)} MB`,
    target: '<= 200 MB',
    result: verdict(m.after.rssMB <= 200),
    value: m.after.rssMB,
  });
}

const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
const line = (r) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
const scope = ONLY.filter((p) => p !== 'rss').length
  ? `median of ${REPS} interleaved runs each; ${SIZE_TEXT} volumes (64 KiB copy units)${ONLY.includes('iops') ? `; fio ${RUNTIME} s runs, nbd engine, one connection` : ''}`
  : 'one server';
console.log(`\nCopy-engine benchmark: ${scope}; load average ${load.start.toFixed(1)} at the start, ${load.end.toFixed(1)} at the end`);
console.log(line(rows[0]));
console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
for (const r of rows.slice(1)) console.log(line(r));
const pass = table.filter((r) => r.result === 'PASS').length;
const miss = table.filter((r) => r.result === 'MISS').length;

const details = [];
if (dropWorks) details.push('page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed cp, OPC and QuickOPC run');
if (results.opc)
  details.push(
    `OPC: from StartCopy to the 'completed' event (WatchCopies); cp --sparse=never of the source's data file; samples OPC ${results.opc.samples.opc.map(secs).join(', ')}; cp ${results.opc.samples.cp.map(secs).join(', ')}; cp+fsync ${results.opc.samples.cpSync.map(secs).join(', ')}`,
  );
if (results.quickopc) {
  const q = results.quickopc;
  details.push(
    `QuickOPC: full copy until 'tracking' ${q.samples.full.map(secs).join(', ')}; re-copy ${q.samples.recopy.map(secs).join(', ')} of ${q.samples.changedUnits.join(', ')} changed units (fio randwrite bs=64k, ${q.changedTarget} of ${q.units} units)`,
  );
}
if (results.iops) {
  const i = results.iops;
  details.push(
    `IOPS samples: none ${i.samples.none.map(Math.round).join(', ')}; SnapOPC+ ${i.samples.snap.map(Math.round).join(', ')}; EC ${i.samples.ec.map(Math.round).join(', ')}`,
  );
  details.push(
    `SnapOPC+: a new generation on a new thin snap volume (the previous one cancelled and deleted) before each run, so it measures the realistic case of a fresh snapshot: ` +
      `the first write to each 64 KiB unit pays a copy-on-write. Median ${i.snapSavedUnits} of ${i.units} units saved by ${i.snapWrites} writes ` +
      `(${((100 * i.snapSavedUnits) / i.snapWrites).toFixed(0)}% of the writes paid a copy-on-write)`,
  );
  if (i.cowCeiling !== undefined)
    details.push(
      `copy-on-write ceiling: fio --ioengine=psync --rw=randwrite --bs=64k --fallocate=none --fdatasync=64 into a new sparse file in the work directory, after a sync, right after each SnapOPC+ run: ` +
        `${i.samples.cowCeiling.map(Math.round).join(', ')} writes/s, against arraylab's ${i.samples.snapUnitsPerS.map(Math.round).join(', ')} units saved/s ` +
        `(a lower bound when nearly every unit was saved before the run ended). Each save also reads the unit from the source; fio's figure leaves that out`,
    );
  if (i.memoryTouch !== undefined)
    details.push(
      `memory: writing memory this process never touched ran at ${i.memoryTouch.first.toFixed(0)} MiB/s, writing it again at ${i.memoryTouch.again.toFixed(0)} MiB/s. ` +
        `Where the first is far lower (a virtual machine whose host backs its memory lazily), every page the page cache grows by pays it: a before-image into a new snap file does, an overwrite of a cached source page does not`,
    );
  if (i.ceiling !== undefined)
    details.push(
      `machine ceiling: fio --ioengine=${i.ceilingEngine} --direct=0 --invalidate=0, 4k randwrite QD16, same runtime, on a prefilled ${SIZE_TEXT} file in the work directory (the data directory's filesystem), a run after the peers in each rep: ${i.samples.ceiling.map(Math.round).join(', ')} IOPS; the no-session figure is the targets' reference`,
    );
  details.push(
    `EC: pair equivalent for every run (initial copy ${i.ecInitialS.toFixed(1)} s); every write mirrored; a host flush before each run clears the write intent, so the first write to each 64 MiB intent region after it pays a journal commit`,
  );
}
if (results.rss) {
  const m = results.rss;
  details.push(
    `RSS: VmRSS of the server: ${m.volumesOnly.rssMB.toFixed(1)} MB with 200 volumes and no session; ${m.sessionsOnly.rssMB.toFixed(1)} MB after starting ` +
      `${RSS_MIX.quickopc} QuickOPC (rate 0: copying, no background copy), ${RSS_MIX.ec} EC (rate 0: copying, full diff bitmap), ${RSS_MIX.snapopcplus} SnapOPC+ generations ` +
      `(one per source); ${m.after.rssMB.toFixed(1)} MB (peak ${m.after.peakMB.toFixed(1)} MB) after ${m.writes} host writes of 64 KiB spread over the sources ` +
      `(copy-on-write, tracking, mirroring), clients disconnected. States: ${Object.entries(m.states)
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')}`,
  );
}
for (const n of notes) details.push(`note: ${n}`);
if (details.length) console.log(`\n${details.map((d) => `- ${d}`).join('\n')}`);
console.log(`\ntargets: ${pass} PASS, ${miss} MISS`);

if (JSON_OUT) {
  writeFileSync(
    JSON_OUT,
    JSON.stringify(
      {
        sizeBytes: SIZE,
        reps: REPS,
        runtime: RUNTIME,
        pageCacheDropped: dropWorks === true,
        loadAverage: load,
        table,
        results,
        notes,
        summary: { pass, miss },
      },
      null,
      2,
    ),
  );
}
