/**
 * Two real `arraylab serve` processes for REC tests: file backends, fixed loopback ports (a
 * restarted array comes back on the address the other registered with `remote add`), driven
 * with the real CLI. Host I/O with libnbd (a writer process) and qemu's tools.
 *
 *   const { a, b } = await twoArrays();
 *   await addRemote(a, 'site-b', b);
 *   const id = await startRec(a, 'vol1', 'site-b:vol1');
 *   await a.waitState(id, 'equivalent');
 *   const w = startNbdWriter(a.nbdUri('vol1'), { seed: 1, slots: 4096 });
 *   await a.kill9(); await a.start();
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import type { CopySessionView } from '../../proto/views.js';
import { type Arraylab, CLI_PATH, type CliResult, makeTempDir, startArraylab } from './arraylab.js';
import { freePort } from './ports.js';
import { requireNbdsh, requireTool, SYSTEM_PYTHON } from './tools.js';
import { sleep, waitFor } from './wait.js';

export type SessionView = CopySessionView;

/** One array: its data dir and ports outlive its processes. */
export class Site {
  private current: Arraylab | undefined;

  constructor(
    readonly name: string,
    readonly dataDir: string,
    readonly nbdPort: number,
    readonly apiPort: number,
  ) {}

  get apiAddress(): string {
    return `127.0.0.1:${this.apiPort}`;
  }

  get lab(): Arraylab {
    if (!this.current) throw new Error(`array ${this.name} is not running; start() it first`);
    return this.current;
  }

  nbdUri(volume: string): string {
    return `nbd://127.0.0.1:${this.nbdPort}/${volume}`;
  }

  /** Starts serve on this site's data dir and ports (again after a kill9 or stop). */
  async start(): Promise<void> {
    // startArraylab passes --nbd/--api with port 0, which win over a config's listen
    // addresses; the later flags here win over those.
    // No iSCSI: a target on a free port could take this site's fixed API port, free again
    // after a kill9, before the restarted API binds it (seen once in CI).
    this.current = await startArraylab({
      dataDir: this.dataDir,
      config: { volumes: [] },
      iscsi: false,
      extraArgs: ['--nbd', `127.0.0.1:${this.nbdPort}`, '--api', this.apiAddress],
    });
    if (this.current.nbdPort !== this.nbdPort || this.current.apiPort !== this.apiPort) {
      throw new Error(`array ${this.name} listens on nbd ${this.current.nbdPort}, api ${this.current.apiPort}; wanted ${this.nbdPort}, ${this.apiPort}`);
    }
  }

  async kill9(): Promise<void> {
    this.stopWatching();
    await this.current?.kill9();
    this.current = undefined;
  }

  async stop(): Promise<void> {
    this.stopWatching();
    await this.current?.stop();
    this.current = undefined;
  }

  /** The server's log so far (of the current process). */
  logs(): string {
    return this.current?.logs() ?? '';
  }

  cli(args: string[]): Promise<CliResult> {
    return this.lab.cli(args);
  }

  /** `arraylab ARGS --json`, which must succeed; parsed. */
  async json<T = Record<string, unknown>>(args: string[]): Promise<T> {
    const r = await this.lab.cli([...args, '--json']);
    if (r.code !== 0) throw new Error(`array ${this.name}: arraylab ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  show(id: string): Promise<SessionView> {
    return this.json<SessionView>(['copy', 'show', id]);
  }

  /**
   * Waits until the session satisfies want (a state name or a predicate); returns that view.
   * Follows `copy watch ID --json` (one CLI process, not one per poll: each costs ~0.5 s).
   */
  async waitState(id: string, want: string | ((s: SessionView) => boolean), timeoutMs = 20_000): Promise<SessionView> {
    const ok = typeof want === 'string' ? (s: SessionView) => s.state === want : want;
    const seen: string[] = [];
    const end = Date.now() + timeoutMs;
    for (;;) {
      const w = this.watch(id);
      const s = w.last;
      if (s !== undefined) {
        if (seen.at(-1) !== s.state) seen.push(s.state);
        if (ok(s)) return s;
      }
      if (Date.now() > end) {
        throw new Error(
          `array ${this.name}: session ${id} did not reach ${typeof want === 'string' ? want : 'the wanted state'} in ${timeoutMs} ms; states seen: ${seen.join(' -> ')}; last: ${JSON.stringify(s)}`,
        );
      }
      await sleep(20);
    }
  }

  private readonly watchers = new Map<string, { child: ChildProcess; last: SessionView | undefined }>();

  /** A `copy watch ID --json` running against the current process, started on first use. */
  private watch(id: string): { last: SessionView | undefined } {
    const old = this.watchers.get(id);
    if (old && old.child.exitCode === null && old.child.signalCode === null) return old;
    const w: { child: ChildProcess; last: SessionView | undefined } = {
      child: spawn(process.execPath, [CLI_PATH, 'copy', 'watch', id, '--json', '--interval', '100'], {
        env: { ...process.env, ARRAYLAB_API: this.lab.apiAddress },
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
      last: old?.last,
    };
    let buf = '';
    w.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        const e = JSON.parse(l) as { session?: SessionView };
        if (e.session) w.last = e.session;
      }
    });
    this.watchers.set(id, w);
    return w;
  }

  private stopWatching(): void {
    for (const w of this.watchers.values()) w.child.kill('SIGKILL');
    this.watchers.clear();
  }

  async createVolume(name: string, size: string): Promise<void> {
    await this.json(['volume', 'create', name, '--size', size, '--thin']);
  }
}

/** Two arrays, site-a and site-b, running on fixed ports. */
export async function twoArrays(): Promise<{ a: Site; b: Site }> {
  const a = new Site('site-a', makeTempDir('arraylab-rec-a-'), await freePort(), await freePort());
  const b = new Site('site-b', makeTempDir('arraylab-rec-b-'), await freePort(), await freePort());
  await Promise.all([a.start(), b.start()]);
  return { a, b };
}

/** `arraylab remote add NAME --api B` on a, as the manual says. */
export async function addRemote(a: Site, name: string, b: Site): Promise<void> {
  const r = await a.json<{ name: string; reachable: boolean; nbd: string }>(['remote', 'add', name, '--api', b.apiAddress]);
  if (!r.reachable || r.nbd !== `127.0.0.1:${b.nbdPort}`) throw new Error(`remote add ${name}: ${JSON.stringify(r)}`);
}

/** `copy start --type rec`; returns the session id. */
export async function startRec(a: Site, src: string, dst: string, flags: string[] = []): Promise<string> {
  const s = await a.json<SessionView>(['copy', 'start', '--type', 'rec', '--src', src, '--dst', dst, ...flags]);
  return s.id;
}

// ---- host data ----

/** The content the writers put in record seq: sha256(`SEED:SEQ`) repeated to size bytes. */
export function pattern(seed: number, seq: number, size: number): Buffer {
  const d = createHash('sha256').update(`${seed}:${seq}`).digest();
  return Buffer.concat(Array.from({ length: Math.ceil(size / d.length) }, () => d)).subarray(0, size);
}

/** The whole export, read with nbdcopy. */
export function readExport(uri: string): Promise<Buffer> {
  const nbdcopy = requireTool('nbdcopy');
  return new Promise((resolve, reject) => {
    execFile(nbdcopy, [uri, '-'], { encoding: 'buffer', maxBuffer: 256 * 2 ** 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`nbdcopy ${uri} -: ${err.message}: ${stderr.toString()}`));
      else resolve(stdout);
    });
  });
}

/** qemu-img compare of two raw exports: '' when identical, else what qemu-img said. */
export function compareExports(uri1: string, uri2: string): Promise<string> {
  const qemuImg = requireTool('qemu-img');
  return new Promise((resolve, reject) => {
    execFile(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', uri1, uri2], { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve('');
      if ((err as { code?: unknown }).code === 1) return resolve(`${uri1} and ${uri2} differ: ${stdout.trim()}`);
      reject(new Error(`qemu-img compare ${uri1} ${uri2}: ${err.message}: ${stderr}`));
    });
  });
}

/** Runs a tool to completion; resolves with its exit code and output. */
export function run(tool: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(requireTool(tool), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

/** The same, which must exit 0; returns its output. */
export async function runOk(tool: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const r = await run(tool, args, env);
  if (r.code !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.code}:\n${r.out}`);
  return r.out;
}

// ---- writers ----

/**
 * A writer process. Record seq (0, 1, ...) is written, made durable, then reported on stdout
 * as "a SEQ": an acknowledged record. nbd-flush: a 4 KiB pwrite at slot seq × stride % slots then a
 * flush; nbd-fua: the pwrite with FUA; files: DIR/file-SEQ of 4 KiB × (1 + seq % 8), fsynced,
 * and the directory fsynced. stdin takes pause (answered "paused" between records), resume,
 * stop. The first failure is reported as "fail SEQ MESSAGE" and ends the writer.
 */
const WRITER = String.raw`
import hashlib, os, sys, threading, time
kind, target, seed, slots, delay, stride = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
BS = 4096
if kind.startswith('nbd'):
    import nbd
    h = nbd.NBD()
    h.connect_uri(target)
else:
    dfd = os.open(target, os.O_RDONLY)
pause = threading.Event()
go = threading.Event()
go.set()
stop = threading.Event()
def control():
    for line in sys.stdin:
        c = line.strip()
        if c == 'pause':
            pause.set(); go.clear()
        elif c == 'resume':
            pause.clear(); go.set()
        elif c == 'stop':
            stop.set(); go.set()
    stop.set(); go.set()
threading.Thread(target=control, daemon=True).start()
def data(seq, size):
    d = hashlib.sha256(f'{seed}:{seq}'.encode()).digest()
    return (d * (size // len(d) + 1))[:size]
seq = 0
while not stop.is_set():
    if pause.is_set():
        print('paused', flush=True)
        go.wait()
        continue
    try:
        if kind == 'nbd-flush':
            h.pwrite(data(seq, BS), (seq * stride % slots) * BS)
            h.flush()
        elif kind == 'nbd-fua':
            h.pwrite(data(seq, BS), (seq * stride % slots) * BS, nbd.CMD_FLAG_FUA)
        else:
            fd = os.open(f'{target}/file-{seq}', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data(seq, BS * (1 + seq % 8)))
            os.fsync(fd)
            os.close(fd)
            os.fsync(dfd)
    except Exception as e:
        print(f'fail {seq} {e}'.replace('\n', ' '), flush=True)
        sys.exit(3)
    print(f'a {seq}', flush=True)
    seq += 1
    if delay > 0:
        time.sleep(delay)
print('stopped', flush=True)
`;

export interface WriterOptions {
  seed: number;
  /** nbd kinds: 4 KiB slots the records cycle through (from offset 0). */
  slots?: number;
  /** nbd kinds: record seq goes to slot seq × stride % slots (default 1: one after the other). */
  stride?: number;
  /** Pause between records, ms (keeps the writer from taking a core). */
  delayMs?: number;
}

export class Writer {
  /** Acknowledged records, in order. */
  readonly acked: number[] = [];
  /** "fail SEQ MESSAGE" if a record failed (the writer then exits). */
  failure: string | undefined;
  private out = '';
  private paused = 0;
  private readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  constructor(
    readonly kind: 'nbd-flush' | 'nbd-fua' | 'files',
    target: string,
    readonly opts: WriterOptions,
  ) {
    const python = kind === 'files' ? SYSTEM_PYTHON : requireNbdsh();
    this.child = spawn(
      python,
      ['-c', WRITER, kind, target, String(opts.seed), String(opts.slots ?? 1), String((opts.delayMs ?? 0) / 1000), String(opts.stride ?? 1)],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let err = '';
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.out += d;
      const lines = this.out.split('\n');
      this.out = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith('a ')) this.acked.push(Number(l.slice(2)));
        else if (l === 'paused') this.paused++;
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

  /** The 4 KiB slot record seq goes to. */
  slotOf(seq: number): number {
    return (seq * (this.opts.stride ?? 1)) % (this.opts.slots ?? 1);
  }

  get count(): number {
    return this.acked.length;
  }

  private send(cmd: string): void {
    this.child.stdin!.write(`${cmd}\n`);
  }

  /** Waits until n more records than now are acknowledged (fails if the writer fails). */
  async more(n: number, timeoutMs = 20_000): Promise<void> {
    const want = this.count + n;
    await waitFor(
      () => {
        if (this.failure !== undefined) throw new Error(`the writer failed: ${this.failure}`);
        return this.count;
      },
      (c) => c >= want,
      { timeoutMs, intervalMs: 20, onTimeout: (c) => `the writer acknowledged ${c} records, wanted ${want}` },
    );
  }

  /** Returns once the writer stands between records. */
  async pause(): Promise<void> {
    const want = this.paused + 1;
    this.send('pause');
    await waitFor(
      () => {
        if (this.failure !== undefined) throw new Error(`the writer failed: ${this.failure}`);
        return this.paused;
      },
      (p) => p >= want,
      { timeoutMs: 20_000, intervalMs: 10, onTimeout: () => 'the writer did not pause' },
    );
  }

  resume(): void {
    this.send('resume');
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) this.send('stop');
    this.child.stdin!.end();
    await this.exited;
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

export function startNbdWriter(uri: string, kind: 'nbd-flush' | 'nbd-fua', opts: WriterOptions): Writer {
  return new Writer(kind, uri, opts);
}

export function startFileWriter(dir: string, opts: WriterOptions): Writer {
  return new Writer('files', dir, opts);
}

/**
 * Where an nbd writer's acknowledged records are missing from image: for each slot, the last
 * record acknowledged there must be there. The record after the last acknowledged one may have
 * landed (in flight at a crash): its slot may hold either. Returns the wrong slots (empty: all there).
 */
export function missingRecords(image: Buffer, writer: Writer, acked: readonly number[] = writer.acked): string[] {
  const last = new Map<number, number>();
  for (const seq of acked) last.set(writer.slotOf(seq), seq);
  const inFlight = (acked.at(-1) ?? -1) + 1; // acked is in order
  const wrong: string[] = [];
  for (const [slot, seq] of last) {
    const got = image.subarray(slot * 4096, slot * 4096 + 4096);
    if (got.equals(pattern(writer.opts.seed, seq, 4096))) continue;
    if (writer.slotOf(inFlight) === slot && got.equals(pattern(writer.opts.seed, inFlight, 4096))) continue;
    wrong.push(`slot ${slot} (record ${seq})`);
  }
  return wrong;
}
