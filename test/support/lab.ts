/**
 * Test support for `arraylab lab`: what lab up started (from its state files in the run directory
 * or from /proc), killing it, and running the shipped scenarios with lab run --auto.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { REPO_ROOT, runCli } from './arraylab.js';

interface Serve {
  pid: number;
}

/** Pids of the arraylab serve processes lab up started, of every lab or of the lab file NAME.yaml. */
export function labServePids(runDir: string, labName = ''): number[] {
  if (!existsSync(runDir)) return [];
  return readdirSync(runDir)
    .filter((f) => f.startsWith(`.lab-${labName}`))
    .flatMap((f) => {
      // By array name; `serve` in state files written before labs had several arrays.
      const s = JSON.parse(readFileSync(join(runDir, f), 'utf8')) as { arrays?: Record<string, Serve>; serve?: Serve };
      return [...Object.values(s.arrays ?? {}), ...(s.serve ? [s.serve] : [])].map((x) => x.pid);
    })
    .filter((pid) => pid > 0);
}

/** SIGKILLs each pid; one already gone is skipped. For a test's afterAll and exit hook. */
export function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

/**
 * `arraylab serve` processes whose command line names a path under folder (a lab's arrays keep
 * their --data-dir there). Found from /proc, not from the lab's state file, which lab down
 * removes even when an array outlives it.
 */
export function servesUnder(folder: string): number[] {
  const pids: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('serve') && cmd.some((a) => a.startsWith(folder))) pids.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** The folder of the scenarios arraylab ships. */
export const SHIPPED_SCENARIOS = join(REPO_ROOT, 'vm-images', 'labs', 'scenarios');

/** What `lab run FILE --auto --json` prints. */
export interface ScenarioRun {
  ok: boolean;
  seconds: number;
  steps: Array<{
    step: number;
    title: string;
    ok: boolean;
    seconds: number;
    message?: string;
    results?: Array<{ ok: boolean; message: string; at: string; kind: string }>;
  }>;
}

/** A shipped scenario copied (or given as text) into DIR/scenarios/, so its ../lab-data is under DIR. */
export function placeScenario(dir: string, name: string, text?: string): string {
  mkdirSync(join(dir, 'scenarios'), { recursive: true });
  const file = join(dir, 'scenarios', name);
  if (text === undefined) copyFileSync(join(SHIPPED_SCENARIOS, name), file);
  else writeFileSync(file, text);
  return file;
}

/** Runs `arraylab lab run FILE --auto --json` and parses what it printed. */
export async function runScenarioAuto(file: string, runDir: string): Promise<{ code: number | null; stderr: string; out: ScenarioRun }> {
  const r = await runCli(['lab', 'run', file, '--auto', '--json', '--run-dir', runDir], { timeoutMs: 120_000 });
  let out: ScenarioRun;
  try {
    out = JSON.parse(r.stdout) as ScenarioRun;
  } catch {
    throw new Error(`lab run --auto ${file} printed no JSON (exit ${r.code}): ${r.stdout}${r.stderr}`);
  }
  return { code: r.code, stderr: r.stderr, out };
}

/** The steps that failed, one line each with the check's message: [] when all passed. */
export const failedSteps = (out: ScenarioRun) => out.steps.filter((s) => !s.ok).map((s) => `step ${s.step} ${s.title}: ${s.message ?? ''}`);

/** lab run --auto passed: exit 0, every step in order with every check passing, within maxSeconds. */
export function expectEveryStepPassed(run: { code: number | null; stderr: string; out: ScenarioRun }, steps: number, maxSeconds: number): void {
  const { code, stderr, out } = run;
  expect(failedSteps(out)).toEqual([]);
  expect([code, stderr]).toEqual([0, '']);
  expect(out.ok).toBe(true);
  expect(out.steps.map((s) => s.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
  for (const s of out.steps)
    expect(
      s.results?.every((c) => c.ok),
      `step ${s.step}`,
    ).toBe(true);
  expect(out.seconds).toBeLessThan(maxSeconds);
}
