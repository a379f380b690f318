/**
 * Runs the real `arraylab serve` (from dist/, so build first: `npm test` does) on free ports
 * and drives it with the real CLI.
 *
 *   const lab = await startArraylab();
 *   await lab.cli(['volume', 'create', 'vol1', '--size', '64MiB']);
 *   // qemu-img, nbdinfo, fio ... against lab.nbdUri('vol1')
 *   await lab.stop();              // SIGTERM; throws unless it exits 0
 *
 * Servers still running when a test file ends are killed (SIGKILL) in afterAll, and temp data
 * dirs the harness made are removed then; a dataDir you pass is never removed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { refuseInUnitTier } from './tier.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI_PATH = join(REPO_ROOT, 'dist', 'emulator', 'cli', 'arraylab.js');

export interface StartOptions {
  /** Data directory (kept afterwards). Default: a fresh temp dir, removed after the test file. */
  dataDir?: string;
  /** Config as an object or YAML text, written to a temp file and passed with --config. */
  config?: object | string;
  /** Path of an existing config file to pass with --config. */
  configFile?: string;
  /** Serve from memory (--memory). */
  memory?: boolean;
  /** Extra environment for the server (e.g. ARRAYLAB_LOG_LEVEL: 'debug'). */
  env?: NodeJS.ProcessEnv;
  /** Appended to the serve command line. */
  extraArgs?: string[];
  /** How long to wait for the server to listen; default 30 s. */
  startTimeoutMs?: number;
  /**
   * Serve iSCSI on a free loopback port (default true): the embedded config's 3260 would make
   * parallel test files collide. False leaves listen.iscsi to the config: with the built-in
   * config that is the fixed 3260, so only for a test's own config file.
   */
  iscsi?: boolean;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** What `serve --json` prints once it listens. */
export interface ServeInfo {
  version: string;
  pid: number;
  nbd: { host: string; port: number };
  api: { host: string; port: number };
  iscsi: { host: string; port: number; targetName: string } | null;
  /** The /metrics listener (startArraylab asks for one on a free port); null when off. */
  metrics: { host: string; port: number } | null;
  /** The web dashboard's address (serve --dashboard); null or absent when it is off. */
  dashboard?: { host: string; port: number } | null;
  backend: 'file' | 'memory';
  dataDir: string | null;
  volumes: Array<{ name: string; sizeBytes: number; blockSize: number; [key: string]: unknown }>;
}

export interface Arraylab {
  pid: number;
  nbdPort: number;
  apiPort: number;
  /** "127.0.0.1:PORT", for --api or ARRAYLAB_API. */
  apiAddress: string;
  /** nbd://127.0.0.1:PORT/name */
  nbdUri(name: string): string;
  /** Absolute data dir (null for --memory). */
  dataDir: string | null;
  /** The JSON line serve printed. */
  info: ServeInfo;
  /** Runs the arraylab CLI against this server (ARRAYLAB_API is set; an explicit --api wins). */
  cli(args: string[], opts?: CliOptions): Promise<CliResult>;
  /** SIGTERM (or the given signal), wait for exit, and throw (with the logs) unless it exits 0. */
  stop(signal?: 'SIGTERM' | 'SIGINT'): Promise<void>;
  /** SIGKILL and wait for the process to be gone: a crash, for durability tests. */
  kill9(): Promise<void>;
  /** Resolves when the process exits. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything the server wrote to stderr so far (its log). */
  logs(): string;
  /** Everything the server wrote to stdout so far. */
  stdout(): string;
}

/** The server's log lines at level error or fatal: a test that expects none asserts this is empty. */
export function loggedErrors(lab: Arraylab | undefined): string[] {
  return (
    lab
      ?.logs()
      .split('\n')
      .filter((l) => /"level":(50|60)/.test(l)) ?? []
  );
}

/** The same, by the name the filesystem and durability tests use. */
export type ArraylabProcess = Arraylab;

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  /** Default 60 s; the process is killed after it. */
  timeoutMs?: number;
  stdin?: string;
}

const running = new Set<ChildProcess>();
const tempDirs = new Set<string>();

afterAll(async () => {
  await Promise.all([...running].map((child) => killAndWait(child)));
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
});
// Last resort if the worker exits without running afterAll.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function assertBuilt(): void {
  refuseInUnitTier(`arraylab from dist/ (${CLI_PATH})`);
  if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} does not exist; run npm run build first (npm test does)`);
}

export function makeTempDir(prefix = 'arraylab-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Runs a CLI command against lab that must succeed quietly; returns its stdout. */
export async function cliOk(lab: Arraylab, args: string[]): Promise<string> {
  const r = await lab.cli(args);
  if (r.code !== 0 || r.stderr !== '') throw new Error(`arraylab ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

/** The same with --json, parsed. */
export async function cliJson(lab: Arraylab, args: string[]): Promise<Record<string, unknown>> {
  return JSON.parse(await cliOk(lab, [...args, '--json'])) as Record<string, unknown>;
}

/** Runs `arraylab ...args` to completion. Without a server: for usage errors, unreachable API, --help. */
export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  assertBuilt();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI_PATH, ...args], {
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`arraylab ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 60_000} ms; stderr:\n${stderr}`));
    }, opts.timeoutMs ?? 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
    child.stdin.end(opts.stdin ?? '');
  });
}

/** Starts `arraylab serve --json` on free loopback ports and waits until it listens. */
export async function startArraylab(opts: StartOptions = {}): Promise<Arraylab> {
  assertBuilt();
  const args = ['serve', '--json', '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'];

  let configHasDataDir = false;
  if (opts.config !== undefined) {
    const text = typeof opts.config === 'string' ? opts.config : toYaml(opts.config);
    const parsed: unknown = typeof opts.config === 'string' ? safeParseYaml(opts.config) : opts.config;
    configHasDataDir = typeof parsed === 'object' && parsed !== null && 'dataDir' in parsed;
    const file = join(makeTempDir('arraylab-config-'), 'arraylab.yaml');
    writeFileSync(file, text);
    args.push('--config', file);
  } else if (opts.configFile !== undefined) {
    args.push('--config', opts.configFile);
    configHasDataDir = true;
  }
  if (opts.memory) {
    args.push('--memory');
  } else if (opts.dataDir !== undefined) {
    args.push('--data-dir', opts.dataDir);
  } else if (!configHasDataDir) {
    args.push('--data-dir', makeTempDir('arraylab-data-'));
  }
  if (opts.iscsi !== false && !(opts.extraArgs ?? []).includes('--iscsi')) args.push('--iscsi', '127.0.0.1:0');
  // Metrics on, on a free port: parallel tests never take serve's default 127.0.0.1:9390.
  if (!(opts.extraArgs ?? []).includes('--metrics')) args.push('--metrics', '127.0.0.1:0');
  args.push(...(opts.extraArgs ?? []));

  const child = spawn(process.execPath, [CLI_PATH, ...args], {
    env: { ...process.env, ARRAYLAB_LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let stderr = '';
  let stdout = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolveExit) => {
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolveExit({ code, signal });
    });
  });

  const info = await new Promise<ServeInfo>((resolveInfo, reject) => {
    const timeoutMs = opts.startTimeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`arraylab serve did not report its addresses within ${timeoutMs} ms\ncommand: ${args.join(' ')}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      const complete = stdout.split('\n').slice(0, -1);
      const line = complete.find((l) => l.startsWith('{'));
      if (line === undefined) return;
      child.stdout!.removeAllListeners('data');
      child.stdout!.on('data', (more: string) => (stdout += more));
      clearTimeout(timer);
      try {
        resolveInfo(JSON.parse(line) as ServeInfo);
      } catch (err) {
        reject(new Error(`arraylab serve printed a line that is not JSON: ${line}: ${(err as Error).message}`));
      }
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`arraylab serve exited (${signal ?? `code ${code}`}) before listening\ncommand: ${args.join(' ')}\nstderr:\n${stderr}`));
    });
  });

  const apiAddress = `${info.api.host}:${info.api.port}`;
  const lab: Arraylab = {
    pid: child.pid!,
    nbdPort: info.nbd.port,
    apiPort: info.api.port,
    apiAddress,
    nbdUri: (name) => `nbd://${info.nbd.host}:${info.nbd.port}/${name}`,
    dataDir: info.dataDir,
    info,
    cli: (cliArgs, cliOpts = {}) => runCli(cliArgs, { ...cliOpts, env: { ARRAYLAB_API: apiAddress, ...cliOpts.env } }),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const { code, signal: killedBy } = await withTimeout(exited, 60_000, () => {
        child.kill('SIGKILL');
        return new Error(`arraylab serve did not exit within 60 s of ${signal}\nstderr:\n${stderr}`);
      });
      if (code !== 0) throw new Error(`arraylab serve exited with ${killedBy ?? `code ${code}`} after ${signal}, not 0\nstderr:\n${stderr}`);
    },
    async kill9() {
      await killAndWait(child);
    },
    exited,
    logs: () => stderr,
    stdout: () => stdout,
  };
  return lab;
}

/**
 * Opens an NBD connection to an export and keeps it open (fixed newstyle, NBD_OPT_EXPORT_NAME),
 * so the server lists a connected client. Resolves once the server has sent the export's size.
 */
export function holdNbdConnection(port: number, exportName: string, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolvePromise, reject) => {
    const socket = tcpConnect(port, host);
    let buf = Buffer.alloc(0);
    let stage: 'greeting' | 'export' = 'greeting';
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (stage === 'greeting' && buf.length >= 18) {
        if (buf.subarray(0, 16).toString('latin1') !== 'NBDMAGICIHAVEOPT') return reject(new Error('not an NBD newstyle server'));
        buf = buf.subarray(18);
        stage = 'export';
        const name = Buffer.from(exportName, 'utf8');
        const msg = Buffer.alloc(4 + 8 + 4 + 4 + name.length);
        msg.writeUInt32BE(3, 0); // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
        msg.write('IHAVEOPT', 4, 'latin1');
        msg.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME
        msg.writeUInt32BE(name.length, 16);
        name.copy(msg, 20);
        socket.write(msg);
      }
      if (stage === 'export' && buf.length >= 10) {
        socket.removeAllListeners('data');
        socket.removeListener('error', reject);
        socket.on('error', () => undefined);
        resolvePromise(socket);
      }
    });
    socket.on('close', () => reject(new Error(`the NBD server closed the connection (is there an export named ${exportName}?)`)));
  });
}

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGKILL');
  await gone;
}

function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(onTimeout()), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolvePromise(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

function safeParseYaml(text: string): unknown {
  try {
    return parseYaml(text);
  } catch {
    return undefined; // serve reports the syntax error
  }
}
