/**
 * Shared pieces of the end-to-end VM backup tests (issue 6): the host's arraylab-agent CLI run
 * as a child process, a writer that runs inside a guest, and the check of its file.
 *
 * The writer appends numbered lines `SEQ EPOCH SUM` (SUM: the first 16 hex digits of the
 * sha256 of `SEQ EPOCH`), one `echo` per line (one write(2): a freeze lands between lines),
 * `sync` every 5 lines, until /tmp/writer.stop exists; then it touches /tmp/writer.done.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/arraylab.js';
import { runProcess, type ProcessRun } from '../support/process.js';

export const AGENT_CLI = join(REPO_ROOT, 'dist', 'agent', 'cli', 'arraylab-agent.js');

export type AgentRun = ProcessRun;

/** `arraylab-agent ARGS` on the host, with none of the caller's ARRAYLAB_* settings leaking in. */
export function hostAgent(args: string[], timeoutMs = 150_000): Promise<AgentRun> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('ARRAYLAB_')) delete env[k];
  return runProcess(process.execPath, [AGENT_CLI, ...args], { env, cwd: '/', timeoutMs });
}

/** The same with --json; it must exit 0. */
export async function hostAgentJson<T = unknown>(args: string[], timeoutMs?: number): Promise<T> {
  const r = await hostAgent([...args, '--json'], timeoutMs);
  if (r.code !== 0) throw new Error(`arraylab-agent ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** Shell for the guest: starts the writer on FILE in the background (returns at once). */
export function startWriterScript(file: string): string {
  return [
    'rm -f /tmp/writer.stop /tmp/writer.done',
    '(',
    '  i=0',
    '  while [ ! -e /tmp/writer.stop ]; do',
    '    i=$((i+1))',
    `    body="$(printf '%08d' $i) $(date +%s)"`,
    `    sum=$(printf '%s' "$body" | sha256sum | cut -c1-16)`,
    `    echo "$body $sum" >> ${file}`,
    '    [ $((i % 5)) -eq 0 ] && sync',
    '  done',
    '  touch /tmp/writer.done',
    ') </dev/null >/tmp/writer.out 2>&1 &',
  ].join('\n');
}

/** Shell for the guest: asks the writer to stop and waits until it has (after its last line). */
export const STOP_WRITER =
  'touch /tmp/writer.stop; for i in $(seq 1 300); do [ -e /tmp/writer.done ] && break; sleep 0.1; done; [ -e /tmp/writer.done ] && sync';

export interface LinesCheck {
  /** Whole, valid lines from the start, numbered 1..lines. */
  lines: number;
  /** Why the scan stopped early, '' if every byte belonged to a valid line. */
  problem: string;
}

/** Checks a writer file: every line in sequence with a good checksum, and no torn last line. */
export function checkWriterLines(buf: Buffer): LinesCheck {
  const text = buf.toString('latin1');
  let lines = 0;
  let off = 0;
  while (off < text.length) {
    const nl = text.indexOf('\n', off);
    if (nl < 0) return { lines, problem: `torn last line at byte ${off}: ${JSON.stringify(text.slice(off, off + 80))}` };
    const line = text.slice(off, nl);
    const m = /^(\d{8}) (\d+) ([0-9a-f]{16})$/.exec(line);
    if (!m) return { lines, problem: `line ${lines + 1} at byte ${off} is malformed: ${JSON.stringify(line.slice(0, 80))}` };
    if (Number(m[1]) !== lines + 1) return { lines, problem: `line at byte ${off} has number ${Number(m[1])}, expected ${lines + 1}` };
    const sum = createHash('sha256').update(`${m[1]} ${m[2]}`).digest('hex').slice(0, 16);
    if (sum !== m[3]) return { lines, problem: `line ${lines + 1} at byte ${off} fails its checksum` };
    lines++;
    off = nl + 1;
  }
  return { lines, problem: '' };
}

export function sha256(buf: Buffer | string): string {
  return createHash('sha256').update(buf).digest('hex');
}

/** Seconds since t0, for the timings the tests print. */
export function stopwatch(): { lap(what: string): number; report(): string } {
  const t0 = performance.now();
  let last = t0;
  const laps: string[] = [];
  return {
    lap(what) {
      const now = performance.now();
      const s = (now - last) / 1000;
      laps.push(`${what} ${s.toFixed(1)} s`);
      last = now;
      return s;
    },
    report: () => `${laps.join(', ')}; total ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  };
}
