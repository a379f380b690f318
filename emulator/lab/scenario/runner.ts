/**
 * The step lifecycle of a scenario (emulator/lab/README.md, "Scenarios"): start (lab up, step
 * 1), step, check, hint, next, reset, solve, stop, and run --auto (headless, for CI). Each
 * returns what it did as data; the CLI prints it (emulator/cli/lab.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { ApiError, ArrayClient } from '../../../proto/ArrayClient.js';
import { labDown, type LabItem, type LabOptions, labUp, pskFileOf, seatTokenFile, startedArrays } from '../apply.js';
import type { Lab } from '../schema.js';
import { dropCheckpoints, restoreCheckpoint, takeCheckpoint } from './checkpoint.js';
import { type CheckContext, runCheck } from './checks/index.js';
import { clearCurrent, type CheckRecord, type Progress, readProgress, removeProgress, writeCurrent, writeProgress } from './progress.js';
import type { ScenarioPart, ScenarioStep } from './schema.js';
import { parsePskFile } from '../../vm/nbdPsk.js';
import { adminTokenFile, arrayApi, type LineResult, runLines, scenarioShell } from './shell.js';

export type Scenario = Lab & { scenario: ScenarioPart };

export interface RunnerOptions extends LabOptions {
  seat?: string;
  /** Each shell line of a setup or solve, as it finishes. */
  onLine?: (what: 'setup' | 'solve', r: LineResult) => void;
}

export class ScenarioError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScenarioError';
  }
}

/** The lab file must be a scenario. */
export function asScenario(lab: Lab): Scenario {
  if (!lab.scenario)
    throw new ScenarioError(
      `lab ${lab.file}: is a lab without steps, not a scenario; use arraylab lab up ${lab.file}, or add title and steps (emulator/lab/README.md, "Scenarios")`,
    );
  return lab as Scenario;
}

/** What a step shows the trainee. */
export interface StepView {
  number: number;
  of: number;
  title: string;
  instructions: string;
  hints: number;
}

export const stepView = (s: Scenario, n: number): StepView => {
  const st = s.scenario.steps[n - 1]!;
  return { number: n, of: s.scenario.steps.length, title: st.title, instructions: st.instructions, hints: st.hints.length };
};

export interface CheckOutcome {
  step: number;
  ok: boolean;
  results: CheckRecord[];
}

/** A client per lab array, with the lab's credential (a started array's admin token). */
function checkContext(s: Scenario, o: RunnerOptions, step: number, startedAt: Date): CheckContext & { close(): void } {
  const clients = new Map<string, ArrayClient>();
  const arrayOf = (name?: string) => (name ? s.arrays.find((a) => a.name === name)! : s.arrays[0]!);
  return {
    client(name) {
      const a = arrayOf(name);
      let c = clients.get(a.name);
      if (!c) {
        const api = arrayApi(a);
        if (!api) throw new Error(`array ${a.name} has no API address yet; is the lab up? (arraylab lab up ${s.file})`);
        const token = adminTokenFile(a);
        c = new ArrayClient(api, { deadlineMs: 10_000, ...(token ? { tokenFile: token } : {}) });
        clients.set(a.name, c);
      }
      return c;
    },
    where: (name) => (s.arrays.length > 1 ? ` on array ${arrayOf(name).name}` : ''),
    shell: scenarioShell(s, o.runDir, step, o.seat),
    nbdKeys: (name) => {
      const file = pskFileOf(s, o.runDir, arrayOf(name));
      try {
        return parsePskFile(readFileSync(file, 'utf8'), file);
      } catch {
        return [];
      }
    },
    stepStartedAt: startedAt,
    close: () => {
      for (const c of clients.values()) c.close();
    },
  };
}

/** Runs step's checks, all of them (each says what it found). */
export async function checkStep(s: Scenario, o: RunnerOptions, step: number, startedAt: Date): Promise<CheckOutcome> {
  const ctx = checkContext(s, o, step, startedAt);
  try {
    const results: CheckRecord[] = [];
    for (const c of s.scenario.steps[step - 1]!.check) results.push(await runCheck(c, ctx));
    return { step, ok: results.every((r) => r.ok), results };
  } finally {
    ctx.close();
  }
}

async function runShell(s: Scenario, o: RunnerOptions, step: number, what: 'setup' | 'solve'): Promise<void> {
  const st: ScenarioStep = s.scenario.steps[step - 1]!;
  const r = await runLines(st[what], scenarioShell(s, o.runDir, step, o.seat), (x) => o.onLine?.(what, x));
  if (!r.ok) throw new ScenarioError(`step ${step} (${st.title}): its ${what} failed: ${r.failure}`);
}

function progressOf(s: Scenario, o: RunnerOptions): Progress {
  const p = readProgress(s, o.runDir, o.seat);
  if (!p) {
    const seat = o.seat ? ` --seat ${o.seat}` : '';
    throw new ScenarioError(`scenario ${s.file}${seat} is not started; start it with: arraylab lab start ${s.file}${seat}`);
  }
  return p;
}

/** Begins step n: its checkpoint (arrays the lab started), then its setup. */
async function beginStep(s: Scenario, o: RunnerOptions, p: Progress, n: number): Promise<{ checkpointMs: number }> {
  // A checkpoint stops the arrays every seat shares: not for one seat (its reset would undo the others' work too).
  const cp = o.seat ? { arrays: [], ms: 0 } : await takeCheckpoint(s, o, n);
  p.step = n;
  p.hintsShown = 0;
  p.done = false;
  p.checkpoints = [...new Set([...p.checkpoints.filter((x) => x < n), ...(cp.arrays.length ? [n] : [])])].sort((a, b) => a - b);
  p.stepStartedAt = new Date().toISOString();
  writeProgress(s, o.runDir, p);
  await runShell(s, o, n, 'setup');
  return { checkpointMs: cp.ms };
}

export interface StartResult {
  file: string;
  title: string;
  description: string;
  items: LabItem[];
  step: StepView;
  checkpointMs: number;
}

/** lab start: lab up, step 1 (its checkpoint and setup), the pointer to this scenario. */
export async function startScenario(s: Scenario, o: RunnerOptions): Promise<StartResult> {
  if (o.seat && !s.seats.names.includes(o.seat))
    throw new ScenarioError(
      `lab ${s.file}: seat ${o.seat} is not one of its seats (${s.seats.names.join(', ') || 'it declares none'}); use one of them, or leave --seat out`,
    );
  // A scenario starts from its environment as declared, not from what an earlier attempt left
  // (sessions, volumes, faults): purge first, as run --auto does. A seat joins a lab the
  // instructor started and shares it with the other seats: nothing is purged for it.
  if (!o.seat) {
    await refuseOthers(s, o.runDir);
    const quiet = { runDir: o.runDir, log: o.log };
    // An earlier attempt stopped without --purge left its data: up first, so purge reaches it.
    if (s.arrays.some((a) => a.start && existsSync(a.dataDir))) await labUp(s, quiet);
    await labDown(s, { ...quiet, purge: true });
  }
  const items = await labUp(s, o);
  if (o.seat && !s.arrays.some((a) => existsSync(seatTokenFile(s, o.runDir, a, o.seat!))))
    throw new ScenarioError(`lab ${s.file}: seat ${o.seat} has no token file; run arraylab lab up ${s.file} again`);
  dropCheckpoints(s, o.runDir, 0, o.seat);
  const p: Progress = { file: s.file, ...(o.seat ? { seat: o.seat } : {}), step: 1, stepStartedAt: '', hintsShown: 0, checkpoints: [] };
  writeCurrent(o.runDir, s.file, o.seat);
  const { checkpointMs } = await beginStep(s, o, p, 1);
  return { file: s.file, title: s.scenario.title, description: s.scenario.description, items, step: stepView(s, 1), checkpointMs };
}

export function showStep(s: Scenario, o: RunnerOptions, n?: number): StepView & { current: number } {
  const p = progressOf(s, o);
  const k = n ?? p.step;
  if (!Number.isInteger(k) || k < 1 || k > s.scenario.steps.length)
    throw new ScenarioError(`there is no step ${k}; the scenario has steps 1 to ${s.scenario.steps.length}`);
  return { ...stepView(s, k), current: p.step };
}

export async function checkCurrent(s: Scenario, o: RunnerOptions): Promise<CheckOutcome & { title: string }> {
  const p = progressOf(s, o);
  const r = await checkStep(s, o, p.step, new Date(p.stepStartedAt));
  p.lastCheck = { step: p.step, at: new Date().toISOString(), ok: r.ok, results: r.results };
  writeProgress(s, o.runDir, p);
  return { ...r, title: s.scenario.steps[p.step - 1]!.title };
}

/** The next hint of the current step; all shown: the last again. */
export function nextHint(s: Scenario, o: RunnerOptions): { step: number; hint: number; of: number; text: string; shown: string[] } {
  const p = progressOf(s, o);
  const hints = s.scenario.steps[p.step - 1]!.hints;
  if (hints.length === 0) throw new ScenarioError(`step ${p.step} (${s.scenario.steps[p.step - 1]!.title}) has no hints; lab check says what is missing`);
  p.hintsShown = Math.min(hints.length, p.hintsShown + 1);
  writeProgress(s, o.runDir, p);
  return { step: p.step, hint: p.hintsShown, of: hints.length, text: hints[p.hintsShown - 1]!, shown: hints.slice(0, p.hintsShown) };
}

export interface NextResult {
  check?: CheckOutcome;
  /** The step now; undefined when the scenario is complete. */
  step?: StepView;
  done: boolean;
  checkpointMs: number;
}

/** lab next: the current step's check must pass (unless force); then the next step begins. */
export async function nextStep(s: Scenario, o: RunnerOptions, force = false): Promise<NextResult> {
  const p = progressOf(s, o);
  let check: CheckOutcome | undefined;
  if (!force) {
    check = await checkStep(s, o, p.step, new Date(p.stepStartedAt));
    p.lastCheck = { step: p.step, at: new Date().toISOString(), ok: check.ok, results: check.results };
    writeProgress(s, o.runDir, p);
    if (!check.ok) return { check, step: stepView(s, p.step), done: false, checkpointMs: 0 };
  }
  if (p.step >= s.scenario.steps.length) {
    p.done = true;
    writeProgress(s, o.runDir, p);
    return { ...(check ? { check } : {}), done: true, checkpointMs: 0 };
  }
  const { checkpointMs } = await beginStep(s, o, p, p.step + 1);
  return { ...(check ? { check } : {}), step: stepView(s, p.step), done: false, checkpointMs };
}

/** lab reset: the arrays back to the step's checkpoint, the lab up again (VMs, faults), the step's setup again. */
export async function resetStep(s: Scenario, o: RunnerOptions, to?: number): Promise<{ step: StepView; restoreMs: number; arrays: string[] }> {
  const p = progressOf(s, o);
  const n = to ?? p.step;
  if (!Number.isInteger(n) || n < 1 || n > p.step)
    throw new ScenarioError(`cannot reset to step ${n}: the scenario is at step ${p.step}; give a step from 1 to ${p.step} (--to-step)`);
  if (o.seat)
    throw new ScenarioError(
      `lab reset works on a whole lab, and seat ${o.seat} shares its arrays with the other seats (a reset would undo their work too); put things back by hand, or run the scenario without --seat`,
    );
  if (!p.checkpoints.includes(n))
    throw new ScenarioError(
      `there is no checkpoint of step ${n}: the lab started none of its arrays (lab up used arrays that answered already), so reset cannot bring them back; put things back by hand`,
    );
  const r = await restoreCheckpoint(s, o, n);
  dropCheckpoints(s, o.runDir, n);
  p.step = n;
  p.hintsShown = 0;
  p.done = false;
  p.checkpoints = p.checkpoints.filter((x) => x <= n);
  p.stepStartedAt = new Date().toISOString();
  delete p.lastCheck;
  writeProgress(s, o.runDir, p);
  await runShell(s, o, n, 'setup');
  return { step: stepView(s, n), restoreMs: r.ms, arrays: r.arrays };
}

/** lab solve: the current step's solve, then its check. */
export async function solveStep(s: Scenario, o: RunnerOptions): Promise<CheckOutcome & { title: string }> {
  const p = progressOf(s, o);
  await runShell(s, o, p.step, 'solve');
  return checkCurrent(s, o);
}

/** lab stop: lab down (purge: the lab's data too), forgets the progress and checkpoints; for a seat, only its progress. */
export async function stopScenario(s: Scenario, o: RunnerOptions & { purge?: boolean }): Promise<LabItem[]> {
  // A seat leaves the scenario; the lab stays up for the other seats (lab stop without --seat ends it).
  const items = o.seat
    ? []
    : await labDown(s, { runDir: o.runDir, log: o.log, ...(o.purge ? { purge: true } : {}), ...(o.onItem ? { onItem: o.onItem } : {}) });
  dropCheckpoints(s, o.runDir, 0, o.seat);
  removeProgress(s, o.runDir, o.seat);
  clearCurrent(o.runDir, s.file, o.seat);
  return items;
}

/**
 * An array the lab would start that answers already, started from another run directory (another
 * lab start or lab run on the same data directory): run --auto would purge it under that run.
 */
async function refuseOthers(s: Scenario, runDir: string): Promise<void> {
  const ours = startedArrays(s, runDir);
  for (const a of s.arrays) {
    const api = arrayApi(a);
    if (!a.start || !api || ours.includes(a)) continue;
    const c = new ArrayClient(api, { deadlineMs: 2000 });
    try {
      await c.getStatus();
    } catch (err) {
      // An array that wants a credential answers all the same; nothing answering is what we want.
      if (!(err instanceof ApiError && (err.code === 'UNAUTHENTICATED' || err.code === 'PERMISSION_DENIED'))) continue;
    } finally {
      c.close();
    }
    throw new ScenarioError(
      `lab ${s.file}: ${a.at}: array ${a.name} answers at ${api} already, started from another run directory (its data in ${a.dataDir}); lab start and lab run --auto purge the lab, so they need it to themselves: stop that one first (arraylab lab stop or lab down ${s.file} with its --run-dir), or give this run another dataDir`,
    );
  }
}

export interface AutoStep {
  step: number;
  title: string;
  ok: boolean;
  seconds: number;
  /** Why it failed: a setup or solve line, or the failing checks' messages. */
  message?: string;
  results?: CheckRecord[];
}

/**
 * lab run --auto: from a clean environment (lab down --purge, then lab up), every step's setup,
 * solve and check in order; stops at the first step that fails; ends with lab down --purge.
 * No checkpoints (nothing resets).
 */
export async function runAuto(
  s: Scenario,
  o: RunnerOptions & { onStep?: (r: AutoStep) => void },
): Promise<{ ok: boolean; steps: AutoStep[]; seconds: number }> {
  const t0 = Date.now();
  const quiet = { runDir: o.runDir, log: o.log };
  const steps: AutoStep[] = [];
  await refuseOthers(s, o.runDir);
  await labDown(s, { ...quiet, purge: true });
  try {
    await labUp(s, quiet);
    for (const [i, st] of s.scenario.steps.entries()) {
      const n = i + 1;
      const t = Date.now();
      const startedAt = new Date();
      let r: AutoStep;
      try {
        await runShell(s, o, n, 'setup');
        await runShell(s, o, n, 'solve');
        const c = await checkStep(s, o, n, startedAt);
        const failed = c.results.filter((x) => !x.ok);
        r = {
          step: n,
          title: st.title,
          ok: c.ok,
          seconds: (Date.now() - t) / 1000,
          results: c.results,
          ...(c.ok ? {} : { message: failed.map((x) => x.message).join('; ') }),
        };
      } catch (err) {
        if (!(err instanceof ScenarioError)) throw err;
        r = { step: n, title: st.title, ok: false, seconds: (Date.now() - t) / 1000, message: err.message };
      }
      steps.push(r);
      o.onStep?.(r);
      if (!r.ok) break;
    }
  } finally {
    await labDown(s, { ...quiet, purge: true });
  }
  const ok = steps.length === s.scenario.steps.length && steps.every((x) => x.ok);
  return { ok, steps, seconds: (Date.now() - t0) / 1000 };
}
