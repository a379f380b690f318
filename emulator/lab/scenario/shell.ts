/**
 * The shell of a scenario: setup, solve and `shell:` check lines run with /bin/sh -c in the
 * scenario file's folder, with `arraylab` and `arraylab-agent` on PATH (shims in the run
 * directory running this checkout's dist/ with this node) and the lab's addresses and token in
 * the environment (emulator/lab/README.md, "Scenarios").
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseHostPort } from '../../../proto/util/address.js';
import { readLabArray, seatTokenFile } from '../apply.js';
import type { Lab, LabArray } from '../schema.js';

/** Default time a shell line may take. */
export const LINE_TIMEOUT_MS = 120_000;
/** Output kept per stream of a line: its end, where the error usually is. */
const MAX_OUTPUT = 64 * 1024;

export interface ShellEnv {
  cwd: string;
  env: NodeJS.ProcessEnv;
}

export interface LineResult {
  line: string;
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** The API address of a lab array: the file's, or for port 0 the one lab up picked (lab-array.json). */
export function arrayApi(a: LabArray): string | undefined {
  return parseHostPort(a.api).port !== 0 ? a.api : readLabArray(a).api;
}

/** The admin token of an array the lab started (its data directory's admin.token), if there is one. */
export function adminTokenFile(a: LabArray): string | undefined {
  const f = join(a.dataDir, 'admin.token');
  return a.start && existsSync(f) ? f : undefined;
}

/** LAB_ARRAY_<NAME>_API: the name upper-cased, other than letters and digits as _. */
export const arrayEnvName = (name: string) => `LAB_ARRAY_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_API`;
/** LAB_ARRAY_<NAME>_TOKEN_FILE: the credential for that array, as ARRAYLAB_TOKEN_FILE is for the first. */
export const arrayTokenEnvName = (name: string) => `LAB_ARRAY_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_TOKEN_FILE`;

/**
 * Where the lab's arrays answer and with which credential: ARRAYLAB_API and ARRAYLAB_TOKEN_FILE
 * for the first array, LAB_ARRAY_<NAME>_API and _TOKEN_FILE for each. A tenant seat's token
 * with seat; else the admin token of an array the lab started.
 */
export function arraysEnv(lab: Lab, runDir: string, seat?: string): Record<string, string> {
  const of = (a: LabArray) => ({ api: arrayApi(a), token: seat ? seatTokenFile(lab, runDir, a, seat) : adminTokenFile(a) });
  const env: Record<string, string> = {};
  const first = of(lab.arrays[0]!);
  if (first.api) env.ARRAYLAB_API = first.api;
  if (first.token) env.ARRAYLAB_TOKEN_FILE = first.token;
  for (const a of lab.arrays) {
    const { api, token } = of(a);
    if (api) env[arrayEnvName(a.name)] = api;
    if (token) env[arrayTokenEnvName(a.name)] = token;
  }
  return env;
}

/** This build's CLIs (dist/emulator/cli/arraylab.js, dist/agent/cli/arraylab-agent.js). */
function cliPaths(): { arraylab: string; agent: string } {
  return {
    arraylab: fileURLToPath(new URL('../../cli/arraylab.js', import.meta.url)),
    agent: fileURLToPath(new URL('../../../agent/cli/arraylab-agent.js', import.meta.url)),
  };
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** Writes the PATH shims in RUNDIR/.scenario-bin and returns that folder. */
export function writeShims(runDir: string): string {
  const dir = join(runDir, '.scenario-bin');
  mkdirSync(dir, { recursive: true });
  const { arraylab, agent } = cliPaths();
  for (const [name, js] of [
    ['arraylab', arraylab],
    ['arraylab-agent', agent],
  ] as const) {
    const file = join(dir, name);
    const text = `#!/bin/sh\n# Written by arraylab lab (scenarios): this checkout's ${name}.\nexec ${quote(process.execPath)} ${quote(js)} "$@"\n`;
    if (existsSync(file) && readFileSync(file, 'utf8') === text) continue;
    // Written beside and renamed: another run may be executing the shim right now, and
    // rewriting a file in use fails with ETXTBSY.
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, text, { mode: 0o755 });
    chmodSync(tmp, 0o755);
    renameSync(tmp, file);
  }
  return dir;
}

/** The environment of a scenario's shell lines at step (1-based), as the trainee or seat. */
export function scenarioShell(lab: Lab, runDir: string, step: number, seat?: string): ShellEnv {
  const bin = writeShims(runDir);
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`, LAB_SEED: String(lab.seed), LAB_STEP: String(step) };
  // The caller's credential must not stand in for the lab's.
  delete env.ARRAYLAB_TOKEN;
  delete env.ARRAYLAB_TOKEN_FILE;
  Object.assign(env, arraysEnv(lab, runDir, seat));
  return { cwd: dirname(lab.file), env };
}

/** Keeps the last MAX_OUTPUT bytes of a stream. */
class Tail {
  private chunks: Buffer[] = [];
  private size = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    while (this.size - this.chunks[0]!.length >= MAX_OUTPUT) this.size -= this.chunks.shift()!.length;
  }
  text(): string {
    const all = Buffer.concat(this.chunks);
    return (all.length > MAX_OUTPUT ? all.subarray(all.length - MAX_OUTPUT) : all).toString('utf8');
  }
}

/** Runs one line with bash -o pipefail -c; killed (its process group) after timeoutMs. */
export function runLine(line: string, sh: ShellEnv, timeoutMs = LINE_TIMEOUT_MS): Promise<LineResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    // bash (Essential in Debian) with pipefail: `arraylab ... | jq -e ...` fails when arraylab
    // does, instead of jq passing on empty input.
    const child = spawn('/bin/bash', ['-o', 'pipefail', '-c', line], { cwd: sh.cwd, env: sh.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const out = new Tail();
    const err = new Tail();
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    }, timeoutMs);
    const done = (code: number | null) => {
      clearTimeout(timer);
      resolve({ line, code, stdout: out.text(), stderr: err.text(), timedOut, ms: Date.now() - started });
    };
    child.once('error', (e) => {
      err.push(Buffer.from(String(e.message)));
      done(127);
    });
    child.once('close', (code) => done(code));
  });
}

/** What a failed line says: its exit and the end of its stderr (or stdout). */
export function lineFailure(r: LineResult, timeoutMs = LINE_TIMEOUT_MS): string {
  const limit = timeoutMs < 1000 ? `${timeoutMs} ms` : `${Math.round(timeoutMs / 1000)} s`;
  const why = r.timedOut ? `did not finish within ${limit}` : `exited ${r.code ?? 'by a signal'}`;
  const said = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-5).join('\n');
  return `\`${r.line}\` ${why}${said ? `: ${said}` : ''}`;
}

/** Runs lines in order; stops at the first that fails. */
export async function runLines(
  lines: string[],
  sh: ShellEnv,
  onLine?: (r: LineResult) => void,
): Promise<{ ok: boolean; results: LineResult[]; failure?: string }> {
  const results: LineResult[] = [];
  for (const line of lines) {
    const r = await runLine(line, sh);
    results.push(r);
    onLine?.(r);
    if (r.code !== 0 || r.timedOut) return { ok: false, results, failure: lineFailure(r) };
  }
  return { ok: true, results };
}
