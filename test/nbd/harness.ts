/** Shared setup for the NBD tests: an in-process server, a log capture, and runners for real clients. */
import { execFile } from 'node:child_process';
import { NbdServer, type NbdAccess, type NbdLogger, type NbdTlsOptions } from '../../emulator/nbd/index.js';
import { requireNbdsh } from '../support/tools.js';
import { until } from '../support/wait.js';
import type { MemoryProvider } from '../support/memoryProvider.js';

export interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  bindings: object;
  obj: object;
  msg: string;
}

/** A pino-shaped logger that keeps every entry; set NBD_TEST_LOG=1 to also print them. */
export function captureLogger(entries: LogEntry[] = [], bindings: object = {}): NbdLogger & { entries: LogEntry[] } {
  const at =
    (level: LogEntry['level']) =>
    (o: object | string, msg?: string): void => {
      const entry = typeof o === 'string' ? { level, bindings, obj: {}, msg: o } : { level, bindings, obj: o, msg: msg ?? '' };
      entries.push(entry);
      if (process.env.NBD_TEST_LOG)
        console.log(
          level,
          JSON.stringify(bindings),
          entry.msg,
          JSON.stringify(entry.obj, (_k, v) => (v instanceof Error ? v.stack : v)),
        );
    };
  return {
    entries,
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (b: object) => captureLogger(entries, { ...bindings, ...b }),
  };
}

export interface Started {
  server: NbdServer;
  port: number;
  logs: LogEntry[];
  uri(name: string, scheme?: string): string;
  /** Entries at a level (for "logged once at warn" assertions). */
  at(level: LogEntry['level']): LogEntry[];
}

export async function startServer(
  provider: MemoryProvider,
  tls?: NbdTlsOptions,
  limits: { handshakeTimeoutMs?: number; maxConnections?: number; access?: NbdAccess } = {},
): Promise<Started> {
  const logger = captureLogger();
  const server = new NbdServer({ provider, logger, tls, ...limits });
  const { port } = await server.listen(0);
  return {
    server,
    port,
    logs: logger.entries,
    uri: (name, scheme = 'nbd') => `${scheme}://127.0.0.1:${port}/${name}`,
    at: (level) => logger.entries.filter((e) => e.level === level),
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program; never throws on a non-zero exit (tests assert the code). */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: opts.env ?? process.env, cwd: opts.cwd },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

/** Runs a python-libnbd script with Debian's python3; argv[1] is the port. Fails the test if the script fails. */
export async function python(script: string, port: number, extra: string[] = []): Promise<string> {
  const py = requireNbdsh();
  const r = await run(py, ['-c', script, String(port), ...extra]);
  if (r.code !== 0) throw new Error(`python script failed (${r.code}):\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/** until() with the NBD tests' argument order and pace: every 10 ms, 5 s by default. */
export function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  return until(what, cond, { timeoutMs: ms, intervalMs: 10 });
}

/** A buffer of `n` bytes with a recognisable position-dependent pattern. */
export function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}
