/**
 * End-to-end harness for arraylab-agent: a real array (support/arraylab.ts), its volumes on
 * kernel block devices (qemu-storage-daemon FUSE + loop), real ext4/xfs filesystems mounted on
 * them, a writer process on each, and the agent CLI run as a child process with its own state
 * dir, hooks dir and device map.
 *
 *   const env = await startAgentLab();          // beforeAll
 *   const agent = env.newAgent();               // per test: fresh records
 *   const tv = await env.mountFs('tv1', EXT4);  // volume + attach + mkfs + mount + device map
 *   const w = env.startWriter(join(tv.mnt, 'records'));
 *   const r = await agent.run(['backup', 'tv1']);   // --json and the local-mode flags added
 *   await env.cleanup();                        // afterEach: undoes everything, last first
 *   await env.close();                          // afterAll
 *
 * Everything a test sets up registers its undo, so a failing test leaves nothing behind:
 * writers and agents killed, the array SIGCONTed, filesystems thawed and unmounted, loop
 * devices and FUSE exports detached.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { cliOk, makeTempDir, REPO_ROOT, startArraylab, type Arraylab, type StartOptions } from './arraylab.js';
import { attachNbd, type AttachedVolume } from './blockAttach.js';
import { requireTool } from './tools.js';
import { sleep, waitFor } from './wait.js';

export const AGENT_CLI = join(REPO_ROOT, 'dist', 'agent', 'cli', 'arraylab-agent.js');
export const WRITER_SCRIPT = join(REPO_ROOT, 'test', 'agent', 'e2e', 'writer.mjs');
/** Bytes per writer record (see writer.mjs). */
export const RECORD_BYTES = 75;

export { sleep } from './wait.js';

// ---------------------------------------------------------------------------------------------
// Filesystems

export interface FsKind {
  type: 'ext4' | 'xfs';
  mkfs: readonly string[];
  fsck(dev: string): string[];
  /** Smallest volume the filesystem accepts here (thin, so mostly unallocated). */
  size: string;
  /** Mount options for a copy mounted next to its source: xfs refuses a second mount of one UUID. */
  copyMountOptions: string;
}

export const EXT4: FsKind = { type: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], fsck: (dev) => ['e2fsck', '-f', '-n', dev], size: '64MiB', copyMountOptions: '' };
// mkfs.xfs 6.1: "Filesystem must be larger than 300MB"; 300 MiB is.
export const XFS: FsKind = {
  type: 'xfs',
  mkfs: ['mkfs.xfs', '-q', '-f'],
  fsck: (dev) => ['xfs_repair', '-n', dev],
  size: '300MiB',
  copyMountOptions: 'nouuid',
};
export const FILESYSTEMS = [EXT4, XFS] as const;

export function sh(argv: readonly string[], opts: { timeoutMs?: number } = {}): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs ?? 60_000 });
}

/** Runs a command and returns its code and output (never throws for a non-zero exit). */
export function shTry(argv: readonly string[], opts: { timeoutMs?: number } = {}): { code: number | null; out: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
  return { code: r.status, out: `${argv.join(' ')} exited ${r.status ?? r.signal}\n${r.stdout ?? ''}${r.stderr ?? ''}` };
}

export interface MountInfo {
  mountPoint: string;
  fsType: string;
  source: string;
  /** Field 6: per-mount options. */
  mountOptions: string;
  /** After the separator: per-superblock options. */
  superOptions: string;
}

/** The mount at exactly this mount point, from /proc/self/mountinfo, or undefined. */
export function mountAt(mountPoint: string): MountInfo | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (sep < 0) continue;
    if (unescapeMount(f[4]!) !== mountPoint) continue;
    return { mountPoint, mountOptions: f[5]!, fsType: f[sep + 1]!, source: f[sep + 2]!, superOptions: f[sep + 3]! };
  }
  return undefined;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Whether a write on the filesystem completes within ms (a frozen one blocks it). */
export async function writeCompletes(mnt: string, ms: number): Promise<boolean> {
  // A child process, since a write to a frozen filesystem blocks uninterruptibly; it is left
  // to finish by itself once thawed (the cleanup thaws).
  const child = spawn('sh', ['-c', `echo probe > "$1/.probe" && sync -f "$1/.probe"`, 'probe', mnt], { stdio: 'ignore' });
  const done = new Promise<boolean>((r) => child.once('exit', (code) => r(code === 0)));
  return Promise.race([done, sleep(ms).then(() => false)]);
}

/** sha256 of every regular file under root by relative path (lost+found left out). */
export function fileChecksums(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const list = sh(['find', root, '-xdev', '-path', join(root, 'lost+found'), '-prune', '-o', '-type', 'f', '-print0'])
    .split('\0')
    .filter(Boolean);
  for (const p of list.sort()) out.set(p.slice(root.length + 1), createHash('sha256').update(readFileSync(p)).digest('hex'));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer records

export interface RecordCheck {
  /** Complete, valid records from the start, in sequence 1..records. */
  records: number;
  /** Bytes after the last valid record. */
  tail: Buffer;
  /** TIME field of the last valid record (ms since the epoch), 0 if none. */
  lastTime: number;
  /** Why the scan stopped before the end, '' if it reached the end. */
  stoppedAt: string;
}

/**
 * The usual life of an agent lab in a describe block: started before its tests, each test's
 * set-up undone after it, closed at the end. Returns the lab (usable once beforeAll has run).
 */
export function useAgentLab(opts: StartOptions = {}): AgentLab {
  let lab: AgentLab | undefined;
  beforeAll(async () => {
    lab = await startAgentLab(opts);
  });
  afterEach(async () => {
    await lab?.cleanup();
  });
  afterAll(async () => {
    await lab?.close();
  });
  return new Proxy({} as AgentLab, {
    get(_, key) {
      if (lab === undefined) throw new Error('the agent lab is used before its beforeAll started it');
      const v = Reflect.get(lab, key) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(lab) : v;
    },
  });
}

/** Scans a writer file: how many records from the start are whole, in sequence and checksum. */
export function checkRecords(buf: Buffer): RecordCheck {
  let n = 0;
  let lastTime = 0;
  let stoppedAt = '';
  for (let off = 0; off + RECORD_BYTES <= buf.length; off += RECORD_BYTES) {
    const line = buf.subarray(off, off + RECORD_BYTES).toString('latin1');
    const m = /^(\d{10}) (\d{13}) ([0-9a-f]{32}) ([0-9a-f]{16})\n$/.exec(line);
    if (!m) {
      stoppedAt = `record ${n + 1} at byte ${off} is malformed: ${JSON.stringify(line)}`;
      break;
    }
    if (Number(m[1]) !== n + 1) {
      stoppedAt = `record at byte ${off} has sequence ${Number(m[1])}, expected ${n + 1}`;
      break;
    }
    const check = createHash('sha256').update(`${m[1]} ${m[2]} ${m[3]}`).digest('hex').slice(0, 16);
    if (check !== m[4]) {
      stoppedAt = `record ${n + 1} at byte ${off} fails its checksum`;
      break;
    }
    n++;
    lastTime = Number(m[2]);
  }
  return { records: n, tail: buf.subarray(n * RECORD_BYTES), lastTime, stoppedAt };
}

export interface Writer {
  pid: number;
  file: string;
  /** Last record made durable (fsync), per its stdout. */
  synced(): number;
  /** Set while quiesced: the last record written before it closed the file. */
  quietAt(): number | undefined;
  /** Resolves once it has fsynced n more records than now; throws if it stalls for ms. */
  progress(n: number, ms?: number): Promise<void>;
  /** Resolves when its stdout shows a line matching re. */
  waitFor(re: RegExp, ms?: number): Promise<string>;
  /** SIGTERM (fsync, close, exit) and wait; SIGKILL if it does not exit. */
  stop(): Promise<void>;
  exited(): boolean;
  output(): string;
}

// ---------------------------------------------------------------------------------------------
// The agent

export interface AgentResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON when it is (every command takes --json). */
  json: unknown;
  ms: number;
}

export interface AgentChild {
  pid: number;
  done: Promise<AgentResult>;
  /** kill -9 the agent (not its freeze guard: that is the point). */
  kill9(): Promise<AgentResult>;
}

export interface Agent {
  stateDir: string;
  hooksDir: string;
  deviceMapFile: string;
  /** Global flags every command gets (local mode). */
  flags(): string[];
  /** The array API address given with --array from now on (e.g. an ApiGate's). */
  useArray(address: string): void;
  /** Adds or replaces a device map line. */
  map(volume: string, device: string): void;
  /** Writes an executable hook script (body: shell, after #!/bin/sh). */
  hook(phase: string, body: string): string;
  /** Runs `arraylab-agent ARGS --json ...flags`. */
  run(args: string[], opts?: { timeoutMs?: number }): Promise<AgentResult>;
  /** The same, and it must exit 0: the parsed JSON. */
  json<T = unknown>(args: string[], opts?: { timeoutMs?: number }): Promise<T>;
  /** Starts it without waiting (for kill -9). */
  spawn(args: string[]): AgentChild;
}

export interface AgentOptions {
  hookTimeoutS?: number;
  freezeDeadlineS?: number;
}

export interface Attached extends AttachedVolume {
  volume: string;
}

export interface MountedFs {
  volume: string;
  fs: FsKind;
  dev: Attached;
  mnt: string;
  /** The mount as it was made (to compare after the agent's remount). */
  mount: MountInfo;
  /** Unmounts if mounted (idempotent). */
  unmount(): void;
}

export interface AgentLab {
  lab: Arraylab;
  work: string;
  /** arraylab CLI that must succeed; its stdout. */
  arraylab(args: string[]): Promise<string>;
  createVolume(name: string, size: string, opts?: { thin?: boolean }): Promise<void>;
  newAgent(opts?: AgentOptions): Agent;
  /** attachNbd, detached in cleanup. */
  attach(volume: string, opts?: { readOnly?: boolean; overlay?: boolean }): Promise<Attached>;
  /** Creates the volume, attaches it, makes fs, mounts it, and maps it in agent (if given). */
  mountFs(volume: string, fs: FsKind, agent?: Agent, opts?: { mountOptions?: string }): Promise<MountedFs>;
  /** Mounts a device at work/name; the returned unmount runs in cleanup too. */
  mount(dev: string, name: string, options?: string): { mnt: string; unmount(): void };
  startWriter(file: string, opts?: { fsyncEvery?: number; intervalMs?: number }): Writer;
  /** Registers an undo for cleanup (run last first). */
  onCleanup(fn: () => unknown): void;
  /** Undoes everything registered, last first; throws an AggregateError of the failures. */
  cleanup(): Promise<void>;
  /** Stops the array (SIGCONT first, in case a test stopped it). */
  close(): Promise<void>;
}

export async function startAgentLab(opts: StartOptions = {}): Promise<AgentLab> {
  for (const tool of ['qemu-storage-daemon', 'qemu-img', 'qemu-io', 'losetup', 'mount', 'umount', 'fsfreeze', 'mkfs.ext4', 'e2fsck', 'mkfs.xfs', 'xfs_repair'])
    requireTool(tool);
  const lab = await startArraylab({ config: { volumes: [] }, ...opts });
  const work = makeTempDir('arraylab-agent-e2e-');
  let cleanups: Array<() => unknown> = [];
  let agents = 0;
  let mounts = 0;
  const onCleanup = (fn: () => unknown) => void cleanups.push(fn);

  const env: AgentLab = {
    lab,
    work,
    arraylab: (args) => cliOk(lab, args),
    async createVolume(name, size, o = {}) {
      await cliOk(lab, ['volume', 'create', name, '--size', size, ...(o.thin === false ? ['--thick'] : ['--thin'])]);
    },

    newAgent(o = {}) {
      const dir = join(work, `agent${++agents}`);
      const stateDir = join(dir, 'state');
      const hooksDir = join(dir, 'hooks');
      const deviceMapFile = join(dir, 'devices.map');
      mkdirSync(stateDir, { recursive: true });
      mkdirSync(hooksDir, { recursive: true });
      writeFileSync(deviceMapFile, '');
      const devmap = new Map<string, string>();
      let arrayAddress = lab.apiAddress;
      const flags = () => [
        '--json',
        '--array',
        arrayAddress,
        '--state-dir',
        stateDir,
        '--device-map',
        deviceMapFile,
        '--hooks-dir',
        hooksDir,
        ...(o.hookTimeoutS !== undefined ? ['--hook-timeout', String(o.hookTimeoutS)] : []),
        ...(o.freezeDeadlineS !== undefined ? ['--freeze-deadline', String(o.freezeDeadlineS)] : []),
      ];
      const spawnAgent = (args: string[]): { child: ChildProcess; done: Promise<AgentResult> } => {
        const started = Date.now();
        const env2: NodeJS.ProcessEnv = { ...process.env };
        for (const k of ['ARRAYLAB_AGENT', 'ARRAYLAB_AGENT_TOKEN', 'ARRAYLAB_AGENT_CONFIG', 'ARRAYLAB_AGENT_STATE', 'ARRAYLAB_API', 'ARRAYLAB_LOG_LEVEL'])
          delete env2[k];
        const child = spawn(process.execPath, [AGENT_CLI, ...args, ...flags()], { env: env2, stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
        let stdout = '';
        let stderr = '';
        child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
        child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const done = new Promise<AgentResult>((resolve, reject) => {
          child.on('error', reject);
          child.on('close', (code, signal) => {
            let json: unknown;
            try {
              json = stdout.trim() ? JSON.parse(stdout) : undefined;
            } catch {
              json = undefined;
            }
            resolve({ code, signal, stdout, stderr, json, ms: Date.now() - started });
          });
        });
        onCleanup(() => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        });
        return { child, done };
      };
      const agent: Agent = {
        stateDir,
        hooksDir,
        deviceMapFile,
        flags,
        useArray(address) {
          arrayAddress = address;
        },
        map(volume, device) {
          devmap.set(volume, device);
          writeFileSync(deviceMapFile, [...devmap].map(([v, d]) => `${v} ${d}\n`).join(''));
        },
        hook(phase, body) {
          const path = join(hooksDir, phase);
          writeFileSync(path, `#!/bin/sh\n${body}\n`);
          chmodSync(path, 0o755);
          return path;
        },
        async run(args, ro = {}) {
          const { child, done } = spawnAgent(args);
          const timeoutMs = ro.timeoutMs ?? 90_000;
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise<never>((_, reject) => {
            timer = setTimeout(() => {
              child.kill('SIGKILL');
              reject(new Error(`arraylab-agent ${args.join(' ')} did not finish within ${timeoutMs} ms`));
            }, timeoutMs);
          });
          try {
            return await Promise.race([done, timeout]);
          } finally {
            clearTimeout(timer);
          }
        },
        async json<T>(args: string[], ro?: { timeoutMs?: number }) {
          const r = await agent.run(args, ro);
          if (r.code !== 0 || r.json === undefined)
            throw new Error(`arraylab-agent ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
          return r.json as T;
        },
        spawn(args) {
          const { child, done } = spawnAgent(args);
          return {
            pid: child.pid!,
            done,
            async kill9() {
              if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
              return done;
            },
          };
        },
      };
      return agent;
    },

    async attach(volume, o = {}) {
      const dev = await attachNbd({ port: lab.nbdPort, exportName: volume, dir: work, ...o });
      onCleanup(() => dev.detach());
      return Object.assign(dev, { volume });
    },

    mount(dev, name, options) {
      const mnt = join(work, name);
      mkdirSync(mnt, { recursive: true });
      sh(['mount', ...(options ? ['-o', options] : []), dev, mnt]);
      const unmount = () => {
        // The agent may have unmounted (and remounted) it: unmount whatever is there now.
        for (let i = 0; i < 5 && mountAt(mnt); i++) {
          shTry(['fsfreeze', '-u', mnt]);
          const r = shTry(['umount', mnt]);
          if (r.code !== 0 && i === 4) throw new Error(`cleanup: ${r.out}`);
        }
      };
      onCleanup(unmount);
      return { mnt, unmount };
    },

    async mountFs(volume, fs, agent, o = {}) {
      await env.createVolume(volume, fs.size);
      const dev = await env.attach(volume);
      sh([...fs.mkfs, dev.loop]);
      const { mnt, unmount } = env.mount(dev.loop, `mnt-${volume}-${++mounts}`, o.mountOptions);
      agent?.map(volume, dev.loop);
      return { volume, fs, dev, mnt, mount: mountAt(mnt)!, unmount };
    },

    startWriter(file, o = {}) {
      const child = spawn(process.execPath, [WRITER_SCRIPT, file, String(o.fsyncEvery ?? 8), String(o.intervalMs ?? 2)], {
        stdio: ['ignore', 'pipe', 'pipe'],
        cwd: '/',
      });
      let out = '';
      let err = '';
      let synced = 0;
      let quietAt: number | undefined;
      const waiters: Array<() => void> = [];
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        for (const line of d.split('\n')) {
          const [what, n] = line.split(' ');
          if (what === 'synced') synced = Number(n);
          else if (what === 'quiet') quietAt = Number(n);
          else if (what === 'resumed') quietAt = undefined;
        }
        for (const w of waiters.splice(0)) w();
      });
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      const gone = () => child.exitCode !== null || child.signalCode !== null;
      const writer: Writer = {
        pid: child.pid!,
        file,
        synced: () => synced,
        quietAt: () => quietAt,
        exited: gone,
        output: () => out + err,
        async progress(n, ms = 20_000) {
          const target = synced + n;
          const fsynced = () => {
            if (synced < target && gone()) throw new Error(`the writer exited (${child.exitCode ?? child.signalCode}): ${err}`);
            return synced;
          };
          await waitFor(fsynced, (k) => k >= target, {
            timeoutMs: ms,
            intervalMs: 20,
            onTimeout: (k) => `the writer made no progress in ${ms} ms (synced ${k}, waiting for ${target}): ${err}`,
          });
        },
        async waitFor(re, ms = 20_000) {
          const printed = () => {
            const line = out.split('\n').find((l) => re.test(l));
            if (line === undefined && gone()) throw new Error(`the writer exited before printing ${re}: ${err}`);
            return line;
          };
          const line = await waitFor(printed, (l) => l !== undefined, {
            timeoutMs: ms,
            intervalMs: 20,
            onTimeout: () => `the writer did not print ${re} within ${ms} ms; it printed: ${out.slice(-300)}`,
          });
          return line!;
        },
        async stop() {
          if (gone()) return;
          child.kill('SIGTERM');
          await waitFor(gone, (g) => g, { timeoutMs: 10_000, intervalMs: 20 });
          if (!gone()) child.kill('SIGKILL');
          await exited;
        },
      };
      onCleanup(async () => {
        if (!gone()) {
          child.kill('SIGKILL');
          await exited;
        }
      });
      return writer;
    },

    onCleanup,

    async cleanup() {
      const failures: unknown[] = [];
      const list = cleanups.reverse();
      cleanups = [];
      for (const undo of list) {
        try {
          await undo();
        } catch (err) {
          failures.push(err);
        }
      }
      if (failures.length > 0) throw new AggregateError(failures, `cleanup failed: ${failures.map(String).join('; ')}`);
    },

    async close() {
      try {
        process.kill(lab.pid, 'SIGCONT');
      } catch {
        // already gone
      }
      await lab.stop();
    },
  };
  return env;
}

/**
 * A backup volume's filesystem, read without changing the volume: attached through a
 * throwaway overlay (journal replay goes there), optionally fsck -n first (as it is on the
 * array), then mounted. check() runs fsck -n after the unmount (after any replay).
 */
export async function openBackupCopy(
  env: AgentLab,
  volume: string,
  fs: FsKind,
  opts: { fsckFirst: boolean },
): Promise<{ mnt: string; dev: Attached; fsckBefore: { code: number | null; out: string } | null; finish(): Promise<{ code: number | null; out: string }> }> {
  const dev = await env.attach(volume, { overlay: true });
  const fsckBefore = opts.fsckFirst ? shTry(fs.fsck(dev.loop)) : null;
  const { mnt, unmount } = env.mount(dev.loop, `copy-${volume}-${Date.now()}`, fs.copyMountOptions || undefined);
  return {
    mnt,
    dev,
    fsckBefore,
    async finish() {
      unmount();
      const r = shTry(fs.fsck(dev.loop));
      await dev.detach();
      return r;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// A gate in front of the array's control API

export interface ApiGate {
  /** HOST:PORT to give the agent as --array. */
  address: string;
  /**
   * Holds every request from now on (bytes towards the array are kept, not forwarded): the
   * agent's next array call hangs, while its block I/O (NBD, straight to the array) goes on.
   * Stopping the array process itself would hang that I/O too, and with it fsfreeze's sync.
   */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

export async function startApiGate(env: AgentLab): Promise<ApiGate> {
  const [host, port] = [env.lab.info.api.host, env.lab.apiPort];
  let paused = false;
  const held: Array<() => void> = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = tcpConnect(port, host);
    sockets.add(client).add(upstream);
    const forward = (chunk: Buffer) => {
      if (paused) held.push(() => upstream.write(chunk));
      else upstream.write(chunk);
    };
    client.on('data', forward);
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('api gate: no address');
  const gate: ApiGate = {
    address: `127.0.0.1:${addr.port}`,
    pause: () => void (paused = true),
    resume() {
      paused = false;
      for (const send of held.splice(0)) send();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  env.onCleanup(() => gate.close());
  return gate;
}
