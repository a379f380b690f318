/**
 * REC consistency mode and failover/failback between two real `arraylab serve` processes (file
 * backends, fixed ports), driven with the real CLI; hosts are libnbd processes and qemu's tools.
 *
 * What users rely on: in consistency mode the remote volume is at every moment the image of some
 * past instant of the source: with an ordered writer (write k acknowledged before write k+1
 * starts) it holds writes 1..m for some m and none after. That holds while cycles run, across a
 * kill -9 of the remote (a committed cycle is applied at the restart, an uncommitted one
 * dropped) and of the source; a buffer that overflows halts the pair (buffer-overload) while
 * host writes go on; and a remote that took over (failover: split there) keeps its hosts' data
 * until an operator turns the pair round (failback), which copies it back to the first site.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI_PATH } from '../support/arraylab.js';
import { requireNbdsh } from '../support/tools.js';
import { addRemote, compareExports, readExport, run, type SessionView, type Site, startRec, twoArrays } from '../support/twoArrays.js';
import { sleep, waitFor } from '../support/wait.js';

const MiB = 2 ** 20;
const BS = 4096;
/** 4 KiB slots of the 16 MiB volumes: each write of a run goes to a slot of its own. */
const SLOTS = (16 * MiB) / BS;

const sites: Site[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const s of sites.splice(0)) await s.kill9();
});

// ---- the ordered writer and the prefix reader ----

/**
 * Write k (k = 1..N) goes to slot (k × MULT + OFF) mod SLOTS (MULT odd, SLOTS a power of two: a
 * permutation, from the seed), and holds k, the seed and sha256(`SEED:K`) repeated: a block is
 * either one write whole, or zeroes, or wrong.
 */
const PY_COMMON = `
import hashlib, struct, sys, nbd
def block(seed, k):
    d = hashlib.sha256(f'{seed}:{k}'.encode()).digest()
    return struct.pack('>II', k, seed) + (d * 128)[:4088]
`;

/**
 * Writes 1..N in order, each acknowledged before the next starts; reports "a K" once write k
 * (and its flush, if one is due) is acknowledged, "done" at the end, "fail K MESSAGE" on the
 * first error. fua: every write with FUA; flushEvery m: a flush after every m-th write.
 * stdin "stop" ends it after the current write.
 */
const WRITER = String.raw`
import threading, time
uri, seed, n, slots, mult, off, flush_every, fua, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8] == '1', float(sys.argv[9])
h = nbd.NBD()
h.connect_uri(uri)
stop = threading.Event()
def control():
    for line in sys.stdin:
        if line.strip() == 'stop':
            stop.set()
threading.Thread(target=control, daemon=True).start()
for k in range(1, n + 1):
    if stop.is_set():
        break
    try:
        h.pwrite(block(seed, k), ((k * mult + off) % slots) * 4096, nbd.CMD_FLAG_FUA if fua else 0)
        if flush_every > 0 and k % flush_every == 0:
            h.flush()
    except Exception as e:
        print(f'fail {k} {e}'.replace('\n', ' '), flush=True)
        sys.exit(3)
    print(f'a {k}', flush=True)
    if delay > 0:
        time.sleep(delay)
print('done', flush=True)
`;

/**
 * Reads the block of every write, from write N down to write 1, and prints one character per
 * write (write 1 first): 1 the write is there, 0 zeroes, x anything else. Reading the newest
 * write first makes a live image read in pieces still a prefix: if write j is read as there,
 * every earlier write, read later, was applied before it (when the array keeps cycles whole).
 */
const READER = `
uri, seed, n, slots, mult, off = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
h = nbd.NBD()
h.connect_uri(uri)
zero = bytes(4096)
out = ['?'] * n
for k in range(n, 0, -1):
    b = h.pread(4096, ((k * mult + off) % slots) * 4096)
    out[k - 1] = '1' if b == block(seed, k) else '0' if b == zero else 'x'
print(''.join(out), flush=True)
h.shutdown()
`;

interface Run {
  seed: number;
  /** Writes 1..n. */
  n: number;
  mult: number;
  off: number;
}

function ordered(seed: number, n: number): Run {
  const h = createHash('sha256').update(`perm:${seed}`).digest();
  return { seed, n, mult: 2 * (h.readUInt32BE(0) % (SLOTS / 2)) + 1, off: h.readUInt32BE(4) % SLOTS };
}

class OrderedWriter {
  /** The highest write acknowledged (writes are acknowledged in order). */
  acked = 0;
  done = false;
  failure: string | undefined;
  readonly exited: Promise<number | null>;
  private readonly child: ChildProcess;

  constructor(
    uri: string,
    readonly run: Run,
    opts: { flushEvery?: number; fua?: boolean; delayMs?: number } = {},
  ) {
    const args = [uri, run.seed, run.n, SLOTS, run.mult, run.off, opts.flushEvery ?? 0, opts.fua ? 1 : 0, (opts.delayMs ?? 0) / 1000].map(String);
    this.child = spawn(requireNbdsh(), ['-c', PY_COMMON + WRITER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(this.child);
    let out = '';
    let err = '';
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith('a ')) this.acked = Number(l.slice(2));
        else if (l === 'done') this.done = true;
        else if (l.startsWith('fail ')) this.failure = l;
      }
    });
    this.exited = new Promise((resolve) =>
      this.child.on('close', (code) => {
        if (code !== 0 && this.failure === undefined) this.failure = `writer exited ${code}: ${err}`;
        resolve(code);
      }),
    );
  }

  /** Waits until write k is acknowledged. */
  async reach(k: number, timeoutMs = 30_000): Promise<void> {
    await waitFor(
      () => {
        if (this.failure !== undefined) throw new Error(`the writer failed: ${this.failure}`);
        return this.acked;
      },
      (a) => a >= k,
      { timeoutMs, intervalMs: 10, onTimeout: (a) => `the writer acknowledged writes 1..${a}, wanted ${k}` },
    );
  }

  /** Waits for all n writes, which must all succeed. */
  async finish(timeoutMs = 30_000): Promise<void> {
    await this.reach(this.run.n, timeoutMs);
    await this.exited;
    expect(this.failure).toBeUndefined();
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
}

/** What the reader saw: the writes present are 1..m (else it throws, naming what is wrong). */
async function prefixOf(uri: string, r: Run): Promise<number> {
  const args = [uri, r.seed, r.n, SLOTS, r.mult, r.off].map(String);
  const res = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
    const child = spawn(requireNbdsh(), ['-c', PY_COMMON + READER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
  const line = res.out.trim();
  if (res.code !== 0 || line.length !== r.n || /[^01x]/.test(line)) throw new Error(`reading ${uri} failed (exit ${res.code}): ${res.out.slice(0, 2000)}`);
  const m = line.indexOf('1') === -1 ? 0 : line.search(/[^1]|$/);
  const torn = line.indexOf('x');
  if (torn !== -1) throw new Error(`${uri}: the block of write ${torn + 1} holds neither that write nor zeroes (writes 1..${m} are there)`);
  const after = line.indexOf('1', m);
  if (after !== -1)
    throw new Error(
      `${uri} is not a past instant of the source: write ${after + 1} is there but write ${m + 1} is not (writes ${m + 1}.. read as ${line.slice(m, m + 200)})`,
    );
  return m;
}

// ---- arrays and pairs ----

async function pair(flags: string[] = [], remoteSet: string[] = []): Promise<{ a: Site; b: Site; id: string }> {
  const { a, b } = await twoArrays();
  sites.push(a, b);
  await Promise.all([a.createVolume('vol1', '16MiB'), b.createVolume('vol1', '16MiB'), addRemote(a, 'site-b', b)]);
  if (remoteSet.length > 0) await a.json(['remote', 'set', 'site-b', ...remoteSet]);
  const id = await startRec(a, 'vol1', 'site-b:vol1', flags);
  await Promise.all([a.waitState(id, 'equivalent'), b.waitState(id, 'equivalent')]);
  return { a, b, id };
}

const consistencyPair = (flags: string[] = [], remoteSet: string[] = []) => pair(['--mode', 'consistency', ...flags], ['--cycle-ms', '100', ...remoteSet]);

/**
 * Consistency mode, the writers stopped: every cycle is applied on the remote. Polled with
 * `copy show` (a watch sends no events while a pair stays equivalent).
 */
function drained(a: Site, id: string, timeoutMs = 20_000): Promise<SessionView> {
  return waitFor(
    () => a.show(id),
    (s) => s.state === 'equivalent' && s.remote?.pendingBytes === 0 && s.remote.bufferUsedBytes === 0,
    { timeoutMs, intervalMs: 100, onTimeout: (s) => `the pair did not drain in ${timeoutMs} ms: ${JSON.stringify(s)}` },
  );
}

async function expectEqual(a: Site, b: Site): Promise<void> {
  expect(await compareExports(a.nbdUri('vol1'), b.nbdUri('vol1'))).toBe('');
}

/** Reads the remote over and over while the writer runs; returns the prefixes seen. */
async function readWhileWriting(b: Site, w: OrderedWriter): Promise<number[]> {
  const seen: number[] = [];
  while (!w.done && w.failure === undefined) {
    const m = await prefixOf(b.nbdUri('vol1'), w.run);
    expect(m, `the remote holds writes 1..${m}, but only 1..${w.acked} were acknowledged`).toBeLessThanOrEqual(w.acked);
    if (seen.length > 0) expect(m, `the remote went back from 1..${seen.at(-1)} to 1..${m}`).toBeGreaterThanOrEqual(seen.at(-1)!);
    seen.push(m);
  }
  return seen;
}

async function addFault(site: Site, args: string[]): Promise<string> {
  return String((await site.json<{ id: string }>(['fault', 'add', ...args])).id);
}

/** `copy watch ID --json` events (kind, message) of one array, collected from now on. */
function watchEvents(site: Site, id: string): Array<{ kind: string; message: string }> {
  const events: Array<{ kind: string; message: string }> = [];
  const child = spawn(process.execPath, [CLI_PATH, 'copy', 'watch', id, '--json', '--interval', '200'], {
    env: { ...process.env, ARRAYLAB_API: site.apiAddress },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  children.push(child);
  let buf = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    const lines = buf.split('\n');
    buf = lines.pop()!;
    for (const l of lines) {
      const e = JSON.parse(l) as { kind: string; message?: string };
      events.push({ kind: e.kind, message: e.message ?? '' });
    }
  });
  return events;
}

describe('REC consistency mode between two arraylab processes', () => {
  it.each([
    { name: 'no flushes', flushEvery: 0 },
    { name: 'a flush every 16 writes', flushEvery: 16 },
  ])('an ordered writer ($name): the remote, read while it runs, always holds writes 1..m and none after', async ({ flushEvery }) => {
    const { a, b, id } = await consistencyPair();
    expect(await a.show(id)).toMatchObject({ remote: { role: 'source', mode: 'consistency', bufferSizeBytes: 128 * MiB } });
    const w = new OrderedWriter(a.nbdUri('vol1'), ordered(11 + flushEvery, 1200), { flushEvery });
    const seen = await readWhileWriting(b, w);
    await w.finish();
    // Cycles reached the remote while the writer ran, a part of the writes at a time.
    expect(
      seen.some((m) => m > 0 && m < w.run.n),
      `prefixes seen while writing: ${seen.join(', ')}`,
    ).toBe(true);
    const s = await drained(a, id);
    expect(s.remote?.drainedAt).not.toBe('');
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(w.run.n);
    await expectEqual(a, b);
  });

  it('kill -9 of the remote array: restarted, it holds a past instant no older than before; the pair resumes by itself', async () => {
    const { a, b, id } = await consistencyPair();
    const w = new OrderedWriter(a.nbdUri('vol1'), ordered(21, 1500), { delayMs: 1 });
    await w.reach(200);
    let before = 0;
    while (w.acked < 600) before = await prefixOf(b.nbdUri('vol1'), w.run);
    await b.kill9();
    const ackedAtKill = w.acked;
    expect((await a.waitState(id, 'halt')).remote?.haltReason).toBe('link-down');
    await w.reach(ackedAtKill + 200); // host writes go on while halted (split auto)

    // Keep the pair from resuming until the restarted remote has been looked at.
    const fault = await addFault(a, ['link-down', '--remote', 'site-b']);
    await b.start(); // same data dir, same ports
    const restarted = await b.show(id);
    expect(restarted.state).toBe('halt');
    // Halted, the remote end is read-only: its hosts can read the image kept for a failover.
    const m = await prefixOf(b.nbdUri('vol1'), w.run);
    expect(m, `the remote held writes 1..${before} before the kill`).toBeGreaterThanOrEqual(before);
    expect(m).toBeLessThanOrEqual(ackedAtKill + 1);

    await a.json(['fault', 'remove', fault]);
    await w.finish();
    await b.waitState(id, 'equivalent', 30_000);
    await drained(a, id, 30_000);
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(w.run.n);
    await expectEqual(a, b);
  });

  it('kill -9 of the source array: the remote holds a past instant; every FUA write is on the restarted source, and the pair resumes', async () => {
    const { a, b, id } = await consistencyPair();
    const w = new OrderedWriter(a.nbdUri('vol1'), ordered(31, 1500), { fua: true, delayMs: 1 });
    await w.reach(200);
    let before = 0;
    while (w.acked < 600) before = await prefixOf(b.nbdUri('vol1'), w.run);
    await a.kill9();
    await w.exited;
    expect(w.failure).toMatch(/^fail /); // the connection went with the array
    const acked = w.acked;

    // The remote end halts as its data connection closes; at no moment is it other than a prefix.
    const atKill = await prefixOf(b.nbdUri('vol1'), w.run);
    expect(atKill).toBeGreaterThanOrEqual(before);
    expect(atKill).toBeLessThanOrEqual(acked + 1);
    expect((await b.waitState(id, 'halt')).remote?.haltReason).toBe('link-down');
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(atKill);

    await a.start();
    // Writes 1..acked had FUA: all there; the one in flight at the kill may be too.
    const onSource = await prefixOf(a.nbdUri('vol1'), w.run);
    expect(onSource === acked || onSource === acked + 1, `the source holds writes 1..${onSource}; 1..${acked} were acknowledged`).toBe(true);
    await a.waitState(id, 'equivalent', 30_000);
    await b.waitState(id, 'equivalent');
    await drained(a, id);
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(onSource);
    await expectEqual(a, b);
  });

  it('a REC buffer that overflows halts the pair with reason buffer-overload; host writes go on; resumed, it is equal again', async () => {
    const { a, b, id } = await consistencyPair(['--recovery', 'manual'], ['--buffer', '1MiB', '--halt-wait', '0']);
    const shown = await a.json<{ buffer: { bytes: number; haltWaitMs: number; cycleMs: number } }>(['remote', 'show', 'site-b']);
    expect(shown.buffer).toMatchObject({ bytes: MiB, haltWaitMs: 0, cycleMs: 100 });
    const fault = await addFault(a, ['link-rate', '--remote', 'site-b', '--mibs', '1']);
    const w = new OrderedWriter(a.nbdUri('vol1'), ordered(41, 2000));
    const halted = await a.waitState(id, 'halt');
    expect(halted.remote).toMatchObject({ haltReason: 'buffer-overload' });
    expect(halted.remote?.haltDetail).toMatch(/overloaded.*arraylab remote set site-b --buffer SIZE/);
    const atHalt = w.acked;
    expect(atHalt).toBeLessThan(w.run.n); // halted while the writer ran
    await b.waitState(id, 'halt'); // the remote end heard of it
    // The remote still holds a past instant, now frozen.
    const frozen = await prefixOf(b.nbdUri('vol1'), w.run);
    expect(frozen).toBeLessThanOrEqual(atHalt + 1);
    await w.finish(); // every write after the halt succeeded on the source
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(frozen);
    expect((await a.show(id)).state).toBe('halt'); // recovery manual: it waits for its operator

    await a.json(['fault', 'remove', fault]);
    await a.json(['copy', 'resume', id]);
    await a.waitState(id, 'equivalent', 30_000);
    await b.waitState(id, 'equivalent');
    await drained(a, id);
    expect(await prefixOf(b.nbdUri('vol1'), w.run)).toBe(w.run.n);
    await expectEqual(a, b);
  });
});

describe('REC failover and failback between two arraylab processes', () => {
  it("the remote is split while the link is down and written there; the source's automatic resume is refused; reversed, site-b's data lands on site-a", async () => {
    const { a, b, id } = await pair();
    const qemuWrite = (site: Site, args: string) => run('qemu-io', ['-f', 'raw', '-c', `write ${args}`, site.nbdUri('vol1')]);
    expect((await qemuWrite(a, '-P 0x11 0 1M')).code).toBe(0); // mirrored to site-b

    const fault = await addFault(a, ['link-down', '--remote', 'site-b']);
    expect((await a.waitState(id, 'halt')).remote?.haltReason).toBe('link-down');
    await b.waitState(id, 'halt');
    // Failover: site-b takes over its copy; its hosts write.
    expect(await b.json(['copy', 'split', id])).toMatchObject({ state: 'split' });
    const atB = await qemuWrite(b, '-P 0xb5 2M 256k');
    expect(atB.out).toMatch(/wrote 262144\/262144 bytes/);
    expect(atB.code).toBe(0);
    // Site-a's hosts write too, while halted (split auto): the failback overwrites this.
    expect((await qemuWrite(a, '-P 0xa5 6M 64k')).code).toBe(0);

    // The link returns: the automatic resume is refused, it would overwrite site-b's writes.
    const events = watchEvents(a, id);
    await sleep(300); // the watch is connected
    await a.json(['fault', 'remove', fault]);
    const refused = await waitFor(
      () => events.find((e) => /automatic resume/.test(e.message)),
      (e) => e !== undefined,
      { timeoutMs: 10_000, intervalMs: 50, onTimeout: () => `no automatic resume was tried in 10 s; events: ${JSON.stringify(events)}` },
    );
    expect(refused?.message).toMatch(/split on that array for a failover/);
    expect((await a.show(id)).state).toBe('halt');
    expect((await b.show(id)).state).toBe('split');
    const resume = await a.cli(['copy', 'resume', id]);
    expect(resume.code).not.toBe(0);
    expect(resume.stderr).toMatch(/split on that array for a failover.*reverse the pair/);

    // Failback: site-b must know site-a; site-a turns the pair round; site-b sends.
    await addRemote(b, 'site-a', a);
    expect(await a.json(['copy', 'reverse', id])).toMatchObject({ remote: { role: 'remote-end' } });
    expect(await b.show(id)).toMatchObject({ source: 'vol1', destination: 'site-a:vol1', remote: { role: 'source', peer: 'site-a' } });
    await b.json(['copy', 'resume', id]);
    await b.waitState(id, 'equivalent', 30_000);
    await a.waitState(id, 'equivalent');
    await expectEqual(a, b);
    const image = await readExport(a.nbdUri('vol1'));
    expect(image.subarray(0, MiB).equals(Buffer.alloc(MiB, 0x11))).toBe(true);
    expect(image.subarray(2 * MiB, 2 * MiB + 256 * 1024).equals(Buffer.alloc(256 * 1024, 0xb5))).toBe(true);
    expect(image.subarray(6 * MiB, 6 * MiB + 64 * 1024).equals(Buffer.alloc(64 * 1024, 0))).toBe(true);
  });
});
