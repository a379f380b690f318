/**
 * Faults on demand (issue 15) as NBD clients see them: qemu-io, libnbd (python), nbdcopy
 * against the real `arraylab serve`, faults set through the API (ArrayClient).
 *
 * Every errno on reads and writes in an LBA range and not outside it; a refused connect; bad
 * blocks that heal on rewrite unless permanent; a pause that holds a reader until removed; rate
 * caps in MiB/s and IOPS, per volume and per connection, changed while running; seeded silent
 * corruption; a disconnect with a refuse window; a reset NBD ignores.
 */
import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type * as pb from '../../proto/gen/index.js';
import { cliJson, startArraylab, type Arraylab, loggedErrors } from '../support/arraylab.js';
import { startNbdsh, type NbdshSession } from '../support/nbdshSession.js';
import { runProcess } from '../support/process.js';
import { requireNbdsh, requireTool } from '../support/tools.js';
import { sleep, until } from '../support/wait.js';

const MiB = 1024 * 1024;
const BS = 512;

let lab: Arraylab;
let client: ArrayClient;
let uri: string;
const sessions: NbdshSession[] = [];

async function nbdsh(): Promise<NbdshSession> {
  const s = await startNbdsh();
  sessions.push(s);
  return s;
}

function add(spec: pb.FaultSpec): Promise<{ id: string }> {
  return client.addFault(spec);
}

async function qemuIo(cmds: string[], timeoutMs = 30_000): Promise<{ code: number | null; output: string }> {
  const args = ['-f', 'raw'];
  for (const c of cmds) args.push('-c', c);
  args.push(uri);
  return runProcess(requireTool('qemu-io'), args, { env: process.env, timeoutMs });
}

/** Connected NBD clients of vol1, as `arraylab export list` counts them. */
async function connections(): Promise<number> {
  const j = (await cliJson(lab, ['export', 'list'])) as { exports: Array<{ name: string; connections: unknown[] }> };
  return j.exports.find((x) => x.name === 'vol1')?.connections.length ?? 0;
}

beforeAll(async () => {
  requireTool('qemu-io');
  requireTool('nbdcopy');
  requireNbdsh();
  lab = await startArraylab({ config: { volumes: [{ name: 'vol1', size: '16MiB', blockSize: BS }] } });
  client = new ArrayClient(lab.apiAddress);
  uri = lab.nbdUri('vol1');
});

afterEach(async () => {
  for (const s of sessions.splice(0)) s.close();
  await client.clearFaults({ flags: true });
});

afterAll(async () => {
  client?.close();
  // Dropped connections, refused opens and resets are warnings; nothing may have been an error.
  const errors = loggedErrors(lab);
  await lab?.stop();
  expect(errors).toEqual([]);
});

describe('error faults', () => {
  const ERRNOS = ['EIO', 'ENOSPC', 'EPERM', 'EINVAL', 'ENOMEM', 'ESHUTDOWN'] as const;

  it('libnbd sees each errno on reads and writes inside the LBA range, and nothing outside it', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    for (const errno of ERRNOS) {
      const f = await add({ kind: 'error', target: 'volume:vol1', ops: ['read', 'write'], lba: '100-199', errno });
      const r = await py.ok<Record<string, unknown>>(`
out = {
  "readIn": err_of(lambda: h.pread(${BS}, 150 * ${BS})),
  "readEdge": err_of(lambda: h.pread(2 * ${BS}, 99 * ${BS})),
  "writeIn": err_of(lambda: h.pwrite(b"x" * ${BS}, 199 * ${BS})),
  "readBefore": err_of(lambda: h.pread(${BS}, 99 * ${BS})),
  "readAfter": err_of(lambda: h.pread(${BS}, 200 * ${BS})),
  "writeAfter": err_of(lambda: h.pwrite(b"y" * ${BS}, 200 * ${BS})),
}`);
      expect(r, errno).toMatchObject({
        readIn: { errno },
        readEdge: { errno },
        writeIn: { errno },
        readBefore: null,
        readAfter: null,
        writeAfter: null,
      });
      await client.removeFault(f.id);
    }
    // The connection survived six kinds of error.
    expect(await py.ok(`out = err_of(lambda: h.pread(${BS}, 150 * ${BS}))`)).toBeNull();
  });

  it('qemu-io reports the errno of a read and of a write in the range', async () => {
    const messages: Record<string, string> = {
      EIO: 'Input/output error',
      ENOSPC: 'No space left on device',
      EPERM: 'Operation not permitted',
      EINVAL: 'Invalid argument',
      ENOMEM: 'Cannot allocate memory',
      ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
    };
    for (const errno of ERRNOS) {
      const f = await add({ kind: 'error', target: 'volume:vol1', ops: ['read', 'write'], lba: '100-199', errno });
      const bad = await qemuIo([`read ${100 * BS} ${BS}`]);
      expect(bad.output, errno).toContain(`read failed: ${messages[errno]}`);
      const badWrite = await qemuIo([`write -P 0x11 ${150 * BS} ${BS}`]);
      expect(badWrite.output, errno).toContain(`write failed: ${messages[errno]}`);
      const good = await qemuIo([`read ${200 * BS} ${BS}`, `write -P 0x22 0 ${BS}`]);
      expect(good.code, good.output).toBe(0);
      expect(good.output).not.toContain('failed');
      await client.removeFault(f.id);
    }
  });

  it('a connect fault refuses the NBD open with its message (NBD_REP_ERR_POLICY), then lets clients in once removed', async () => {
    const f = await add({ kind: 'error', target: 'export:vol1', ops: ['connect'] });
    const py = await nbdsh();
    const refused = await py.ok<{ error: string; debug: string }>(`out = refusal("${uri}")`);
    expect(refused.error).toContain('server policy prevents NBD_OPT_GO');
    expect(refused.debug).toMatch(/connection to vol1 refused by fault f\d+/);
    const q = await qemuIo([`read 0 ${BS}`]);
    expect(q.code).not.toBe(0);
    expect(q.output).toMatch(/refused by fault f\d+/);
    await client.removeFault(f.id);
    expect(await py.ok(`h = connect("${uri}")\nout = len(h.pread(${BS}, 0))`)).toBe(BS);
  });
});

describe('bad blocks', () => {
  it('a read of a bad block fails EIO, a rewrite heals it (qemu-io)', async () => {
    expect((await qemuIo([`write -P 0x33 0 ${64 * BS}`])).code).toBe(0);
    await add({ kind: 'bad-blocks', target: 'volume:vol1', lba: '10,11,40-41' });
    expect((await qemuIo([`read ${10 * BS} ${BS}`])).output).toContain('read failed: Input/output error');
    expect((await qemuIo([`read ${8 * BS} ${8 * BS}`])).output).toContain('read failed: Input/output error');
    const around = await qemuIo([`read -P 0x33 0 ${10 * BS}`, `read -P 0x33 ${12 * BS} ${28 * BS}`]);
    expect(around.output).not.toContain('failed');
    // Rewriting blocks 10 and 11 heals them; 40-41 stay bad.
    const healed = await qemuIo([`write -P 0x44 ${10 * BS} ${2 * BS}`, `read -P 0x44 ${10 * BS} ${2 * BS}`]);
    expect(healed.output).not.toContain('failed');
    expect(healed.output).not.toContain('Pattern verification failed');
    expect((await qemuIo([`read ${40 * BS} ${BS}`])).output).toContain('read failed: Input/output error');
  });

  it('permanent bad blocks stay bad after a rewrite', async () => {
    await add({ kind: 'bad-blocks', target: 'volume:vol1', lba: '20', permanent: true });
    const r = await qemuIo([`write -P 0x55 ${20 * BS} ${BS}`, `read ${20 * BS} ${BS}`]);
    expect(r.output).toContain('read failed: Input/output error');
    expect(r.output).not.toContain('write failed');
  });
});

describe('pause', () => {
  it('a reader blocks until the fault is removed, then gets its data', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")\nh.pwrite(b"\\x66" * 4096, 0)`);
    const f = await add({ kind: 'pause', target: 'volume:vol1', ops: ['read'] });
    const started = performance.now();
    const reading = py.ok<boolean>(`out = h.pread(4096, 0) == b"\\x66" * 4096`, 15_000);
    let done = false;
    void reading.then(() => (done = true));
    await sleep(1000);
    expect(done).toBe(false);
    await client.removeFault(f.id);
    expect(await reading).toBe(true);
    expect(performance.now() - started).toBeGreaterThan(900);
  });
});

describe('delay', () => {
  it('each read waits the delay (fixed, then uniform with jitter); writes are untouched', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    const timed = `
def timed(f):
    t = time.monotonic()
    f()
    return (time.monotonic() - t) * 1000
out = {"reads": [timed(lambda: h.pread(4096, i * 4096)) for i in range(8)],
       "writes": [timed(lambda: h.pwrite(b"d" * 4096, i * 4096)) for i in range(8)]}`;
    await add({ kind: 'delay', target: 'volume:vol1', ops: ['read'], ms: 60 });
    const fixed = await py.ok<{ reads: number[]; writes: number[] }>(timed);
    // Lower bounds per read (a delay is a minimum); upper ones on the median, which a loaded CI machine does not move.
    const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
    for (const ms of fixed.reads) expect(ms).toBeGreaterThanOrEqual(58);
    expect(median(fixed.reads)).toBeLessThan(100);
    expect(median(fixed.writes)).toBeLessThan(30);
    await client.clearFaults();
    await add({ kind: 'delay', target: 'volume:vol1', ops: ['read'], ms: 60, jitterMs: 40, seed: 3 });
    const uniform = await py.ok<{ reads: number[]; writes: number[] }>(timed);
    for (const ms of uniform.reads) expect(ms).toBeGreaterThanOrEqual(18);
    expect(median(uniform.reads)).toBeLessThan(120);
    // Jitter: not all the same (8 uniform draws over 80 ms).
    expect(Math.max(...uniform.reads) - Math.min(...uniform.reads)).toBeGreaterThan(10);
    console.log(`delay 60 ms: reads ${fixed.reads.map((x) => x.toFixed(0)).join(' ')}; 60±40 ms: ${uniform.reads.map((x) => x.toFixed(0)).join(' ')}`);
  });
});

describe('rate', () => {
  /** Reads `mib` MiB sequentially in 256 KiB requests on one connection; MiB/s and op/s measured in python. */
  async function readRate(py: NbdshSession, mib: number, chunk = 256 * 1024): Promise<{ mibs: number; iops: number }> {
    return py.ok(
      `
n = ${(mib * MiB) / chunk}
t0 = time.monotonic()
for i in range(int(n)):
    h.pread(${chunk}, (i * ${chunk}) % ${16 * MiB})
dt = time.monotonic() - t0
out = {"mibs": n * ${chunk} / ${MiB} / dt, "iops": n / dt}`,
      60_000,
    );
  }

  it('a MiB/s cap holds within 10 % (libnbd, sequential 256 KiB reads)', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    await add({ kind: 'rate', target: 'volume:vol1', mibs: 5 });
    const r = await readRate(py, 10);
    console.log(`rate 5 MiB/s cap: measured ${r.mibs.toFixed(2)} MiB/s`);
    expect(r.mibs).toBeGreaterThan(4.5);
    expect(r.mibs).toBeLessThan(5.5);
  });

  it('an IOPS cap holds within 10 % (libnbd, 4 KiB reads)', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    await add({ kind: 'rate', target: 'volume:vol1', iops: 200 });
    const r = await readRate(py, 1.5, 4096);
    console.log(`rate 200 IOPS cap: measured ${r.iops.toFixed(1)} IOPS`);
    expect(r.iops).toBeGreaterThan(180);
    expect(r.iops).toBeLessThan(220);
  });

  it('a per-volume MiB/s cap holds for a multi-connection copy (nbdcopy, 4 connections, 16 requests in flight)', async () => {
    await add({ kind: 'rate', target: 'volume:vol1', mibs: 8 });
    // --no-extents: read every byte (the thin volume is mostly holes nbdcopy would skip).
    const r = await runProcess(requireTool('nbdcopy'), ['--no-extents', '--connections=4', '--requests=4', '--request-size=262144', uri, 'null:'], {
      env: process.env,
      timeoutMs: 60_000,
    });
    expect(r.code, r.output).toBe(0);
    const mibs = 16 / (r.ms / 1000);
    console.log(`rate 8 MiB/s per volume, nbdcopy: ${mibs.toFixed(2)} MiB/s`);
    // Process start and handshakes count against the copy, so the lower bound is looser.
    expect(mibs).toBeGreaterThan(8 * 0.85);
    expect(mibs).toBeLessThan(8 * 1.1);
  });

  it('per volume two connections share the cap; per connection each gets it (libnbd, two processes)', async () => {
    const [a, b] = [await nbdsh(), await nbdsh()];
    await Promise.all([a.ok(`h = connect("${uri}")`), b.ok(`h = connect("${uri}")`)]);
    /**
     * Both read 8 MiB at once; wall-clock spans from each process (time.time is shared). Long
     * enough that the bucket's first tenth of a second of tokens (its burst) stays within 5 %.
     */
    const both = async (): Promise<{ each: number[]; total: number }> => {
      const code = `
t0 = time.time()
for i in range(32):
    h.pread(262144, i * 262144)
out = [t0, time.time()]`;
      const spans = await Promise.all([a.ok<[number, number]>(code, 60_000), b.ok<[number, number]>(code, 60_000)]);
      const each = spans.map(([s, e]) => 8 / (e - s));
      const total = 16 / (Math.max(...spans.map((x) => x[1])) - Math.min(...spans.map((x) => x[0])));
      return { each, total };
    };
    const shared = await add({ kind: 'rate', target: 'volume:vol1', mibs: 4 });
    const v = await both();
    await client.removeFault(shared.id);
    await add({ kind: 'rate', target: 'volume:vol1', mibs: 4, perConnection: true });
    const c = await both();
    const f = (n: number): string => n.toFixed(2);
    console.log(
      `rate 4 MiB/s per volume, 2 connections: total ${f(v.total)} MiB/s (each ${v.each.map(f).join(', ')}); per connection: total ${f(c.total)} MiB/s (each ${c.each.map(f).join(', ')})`,
    );
    expect(v.total).toBeGreaterThan(3.6);
    expect(v.total).toBeLessThan(4.4);
    expect(c.total).toBeGreaterThan(7.2);
    expect(c.total).toBeLessThan(8.8);
    for (const e of c.each) expect(e).toBeLessThan(4.4);
  });

  it('setFaultRate changes the cap while a reader runs', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    const f = await add({ kind: 'rate', target: 'volume:vol1', mibs: 4 });
    const chunk = 256 * 1024;
    const reading = py.ok<Array<[number, number]>>(
      `
t0 = time.monotonic()
marks = []
for i in range(96):
    h.pread(${chunk}, (i * ${chunk}) % ${16 * MiB})
    marks.append([time.monotonic() - t0, (i + 1) * ${chunk}])
out = marks`,
      60_000,
    );
    await sleep(2000);
    await client.setFaultRate(f.id, { mibs: 16 });
    const marks = await reading;
    const at = (t: number): number => marks.filter(([s]) => s <= t).at(-1)?.[1] ?? 0;
    const before = (at(1.8) - at(0.3)) / MiB / 1.5;
    const end = marks.at(-1)!;
    const from = marks.find(([s]) => s >= 2.4)!;
    const after = (end[1] - from[1]) / MiB / (end[0] - from[0]);
    console.log(`setFaultRate 4 -> 16 MiB/s: before ${before.toFixed(2)} MiB/s, after ${after.toFixed(2)} MiB/s`);
    expect(before).toBeGreaterThan(3.6);
    expect(before).toBeLessThan(4.4);
    expect(after).toBeGreaterThan(14.4);
    expect(after).toBeLessThan(17.6);
  });
});

describe('corrupt', () => {
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  async function readBack(py: NbdshSession): Promise<Buffer> {
    return Buffer.from(await py.ok<string>(`out = h.pread(${MiB}, 0).hex()`), 'hex');
  }

  it('flips exactly the given bits of the data read, the stored data stays good, and the same seed flips the same bits', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")\nimport random\nrandom.seed(5)\nh.pwrite(random.randbytes(${MiB}), 0)`);
    const good = await readBack(py);
    const f1 = await add({ kind: 'corrupt', target: 'volume:vol1', ops: ['read'], bits: 3, seed: 7 });
    const bad1 = await readBack(py);
    await client.removeFault(f1.id);
    const f2 = await add({ kind: 'corrupt', target: 'volume:vol1', ops: ['read'], bits: 3, seed: 7 });
    const bad2 = await readBack(py);
    await client.removeFault(f2.id);
    let flipped = 0;
    for (let i = 0; i < good.length; i++) {
      let x = good[i]! ^ bad1[i]!;
      while (x !== 0) {
        flipped += x & 1;
        x >>= 1;
      }
    }
    expect(sha(bad1)).not.toBe(sha(good));
    expect(flipped).toBe(3);
    expect(bad2.equals(bad1)).toBe(true);
    expect((await readBack(py)).equals(good)).toBe(true);
  });
});

describe('disconnect and reset', () => {
  it('a disconnect drops the connection; reconnects are refused for refuseMs, then accepted', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")\nout = len(h.pread(${BS}, 0))`);
    await until('the client to show in export list', async () => (await connections()) === 1, { timeoutMs: 5000 });
    await add({ kind: 'disconnect', target: 'export:vol1', refuseMs: 2000 });
    const dropped = await py.run(`h.pread(${BS}, 0)`);
    expect(dropped.ok).toBe(false);
    const refused = await py.ok<{ error: string; debug: string } | null>(`out = refusal("${uri}")`);
    expect(refused?.debug).toMatch(/export vol1 refuses connections for \d+ s more \(fault f\d+\)/);
    // The dropped connection's handle was released (once: the count is not negative or stuck).
    await until('the dropped client to leave export list', async () => (await connections()) === 0, { timeoutMs: 5000 });
    await sleep(2100);
    expect(await py.ok(`h3 = connect("${uri}")\nout = len(h3.pread(${BS}, 0))`)).toBe(BS);
  });

  it('a disconnect while a request is paused: the client sees the drop at once, the handle is released once the request ends', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    await until('the client to show in export list', async () => (await connections()) === 1, { timeoutMs: 5000 });
    const pause = await add({ kind: 'pause', target: 'volume:vol1', ops: ['read'] });
    const reading = py.run(`h.pread(${BS}, 0)`, 15_000);
    await sleep(300);
    await add({ kind: 'disconnect', target: 'export:vol1' });
    const r = await reading;
    expect(r.ok).toBe(false);
    // The paused request still holds the volume: teardown waits for it before closing the handle.
    expect(await connections()).toBe(1);
    await client.removeFault(pause.id);
    await until('the handle to be released', async () => (await connections()) === 0, { timeoutMs: 5000 });
  });

  it('a disconnect fault with a trigger drops the connection whose request fired it', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")\nother = connect("${uri}")`);
    // With a trigger (once) it waits for a matching request; without one it would act at once.
    await add({ kind: 'disconnect', target: 'volume:vol1', ops: ['read'], lba: '1000-1000', once: true });
    const r = await py.ok<Record<string, unknown>>(`
first = err_of(lambda: h.pread(${BS}, 0))
fired = err_of(lambda: h.pread(${BS}, 1000 * ${BS}))
after = err_of(lambda: h.pread(${BS}, 0))
out = {"first": first, "fired": fired, "after": after, "other": err_of(lambda: other.pread(${BS}, 0))}`);
    expect(r.first).toBeNull();
    expect(r.fired).not.toBeNull();
    expect(r.after).not.toBeNull();
    expect(r.other).toBeNull();
  });

  it('a reset fault does nothing to NBD clients (NBD has no reset)', async () => {
    const py = await nbdsh();
    await py.ok(`h = connect("${uri}")`);
    await add({ kind: 'reset', target: 'export:vol1', scope: 'target' });
    expect(await py.ok(`out = len(h.pread(${BS}, 0))`)).toBe(BS);
  });
});
