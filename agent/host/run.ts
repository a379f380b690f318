/**
 * Runs a host tool (mount, umount, fsfreeze, sync, blockdev, dd) and returns what it said,
 * never throwing for a non-zero exit: callers turn the tool's stderr into an error that names
 * the volume and the fix.
 */
import { execFile } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  /** The tool could not be started (ENOENT: not installed). */
  spawnError?: NodeJS.ErrnoException;
}

export function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, killSignal: 'SIGKILL', cwd: '/' }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, signal: null, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: number | string; signal?: string | null };
      if (typeof e.code === 'string') return resolve({ code: null, signal: null, stdout, stderr, spawnError: e });
      resolve({ code: typeof e.code === 'number' ? e.code : null, signal: e.signal ?? null, stdout, stderr });
    });
  });
}

/** The tool's own words, on one line, for an error message. */
export function said(r: RunResult): string {
  if (r.spawnError) return r.spawnError.code === 'ENOENT' ? `${r.spawnError.message} (not installed?)` : r.spawnError.message;
  const text = (r.stderr.trim() || r.stdout.trim()).replace(/\s*\n\s*/g, '; ');
  if (text) return text;
  return r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
}
