/**
 * Isolated seats of a scenario (`lab start FILE --seats N`): one instance of the scenario per
 * trainee, seat1..seatN, each with arrays of its own. An instance is the scenario with every
 * array's data in DATADIR/seats/SEAT and its API, NBD and iSCSI on 127.0.0.1:0 (fixed ports would
 * collide), run from RUNDIR/seats/SEAT (its lab state, progress, checkpoints, secrets and VM run
 * dirs all follow from that), so each seat checkpoints and resets on its own. The instructor's
 * run directory keeps RUNDIR/.scenario-seats.json naming the scenario and the seats.
 */
import { mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { LabItem, LabOptions } from '../apply.js';
import { type CheckRecord, readProgress } from './progress.js';
import { loadLab } from '../schema.js';
import { asScenario, type Scenario, ScenarioError, type StartResult, startScenario, stopScenario } from './runner.js';
import { arrayApi, arraysEnv } from './shell.js';

export const MAX_SEATS = 32;

export interface SeatsFile {
  file: string;
  seats: Array<{ name: string; runDir: string }>;
}

export const seatsFile = (runDir: string) => join(runDir, '.scenario-seats.json');

export function readSeats(runDir: string): SeatsFile | undefined {
  try {
    return JSON.parse(readFileSync(seatsFile(runDir), 'utf8')) as SeatsFile;
  } catch {
    return undefined;
  }
}

function writeSeats(runDir: string, f: SeatsFile): void {
  mkdirSync(runDir, { recursive: true });
  writeFileSync(seatsFile(runDir), `${JSON.stringify(f, null, 2)}\n`);
}

const seatDataDir = (dataDir: string, seat: string) => join(dataDir, 'seats', seat);

/** The scenario as seat's own: its arrays' data under DATADIR/seats/SEAT, on free ports. */
export function seatInstance(s: Scenario, runDir: string, seat: string): { s: Scenario; runDir: string } {
  const any = '127.0.0.1:0';
  return {
    s: { ...s, arrays: s.arrays.map((a) => ({ ...a, dataDir: seatDataDir(a.dataDir, seat), api: any, nbd: any, iscsi: any })) },
    runDir: join(runDir, 'seats', seat),
  };
}

/** Why the scenario cannot be copied per seat, if it cannot. */
export function whyNoSeats(s: Scenario): string | undefined {
  const used = s.arrays.filter((a) => !a.start);
  if (used.length === 0) return undefined;
  return `lab ${s.file}: ${used[0]!.at}: array ${used[0]!.name} is used as it is (no start: true), and an array the lab does not start cannot be copied per seat; set start: true on every array for --seats, or run the scenario without --seats`;
}

export interface SeatStarted {
  name: string;
  runDir: string;
  api: string;
  tokenFile: string;
  result: StartResult;
}

/**
 * Starts seat1..seatN one after the other (each: a clean start, step 1's checkpoint and setup).
 * Seats of an earlier --seats start beyond N are stopped and purged; the file lists each seat
 * as soon as it is started, so lab stop reaches a half-done start too.
 */
export async function startSeats(s: Scenario, o: LabOptions & { count: number; onSeat?: (x: SeatStarted) => void }): Promise<SeatStarted[]> {
  const why = whyNoSeats(s);
  if (why) throw new ScenarioError(why);
  const names = Array.from({ length: o.count }, (_, i) => `seat${i + 1}`);
  const before = readSeats(o.runDir);
  if (before) {
    // Another scenario's seats go entirely; the same scenario's seats beyond N go.
    const gone = before.file === s.file ? before.seats.filter((x) => !names.includes(x.name)) : before.seats;
    await stopSeats({ runDir: o.runDir, log: o.log, purge: true }, { ...before, seats: gone });
  }
  const f: SeatsFile = { file: s.file, seats: [] };
  const out: SeatStarted[] = [];
  for (const name of names) {
    const inst = seatInstance(s, o.runDir, name);
    f.seats.push({ name, runDir: inst.runDir });
    writeSeats(o.runDir, f);
    const result = await startScenario(inst.s, { runDir: inst.runDir, log: o.log });
    const env = arraysEnv(inst.s, inst.runDir);
    const x = { name, runDir: inst.runDir, api: env.ARRAYLAB_API ?? '', tokenFile: env.ARRAYLAB_TOKEN_FILE ?? '', result };
    out.push(x);
    o.onSeat?.(x);
  }
  return out;
}

/** The instance a seat of the seats file is, with the scenario loaded by load. */
export function seatOf(f: SeatsFile, s: Scenario, name: string): { s: Scenario; runDir: string } | undefined {
  const x = f.seats.find((y) => y.name === name);
  if (!x) return undefined;
  return { s: seatInstance(s, dirname(dirname(x.runDir)), name).s, runDir: x.runDir };
}

function rmEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // not empty, or not there
  }
}

/** Stops the seats of f (lab down, purge if asked), forgets their progress; all seats of the file: the file goes too. */
export async function stopSeats(
  o: LabOptions & { purge?: boolean; onSeatItem?: (i: LabItem & { seat: string }) => void },
  f: SeatsFile,
): Promise<Array<LabItem & { seat: string }>> {
  const items: Array<LabItem & { seat: string }> = [];
  const s = f.seats.length ? asScenario(loadLab(f.file)) : undefined;
  for (const x of f.seats) {
    const inst = seatOf(f, s!, x.name)!;
    const got = await stopScenario(inst.s, { runDir: inst.runDir, log: o.log, ...(o.purge ? { purge: true } : {}) });
    for (const i of got) {
      const it = { ...i, seat: x.name };
      items.push(it);
      o.onSeatItem?.(it);
    }
    // DATADIR/seats and DATADIR go too once the last seat's data is gone.
    if (o.purge) for (const a of inst.s.arrays) for (const d of [dirname(a.dataDir), dirname(dirname(a.dataDir))]) rmEmpty(d);
  }
  const all = readSeats(o.runDir);
  if (all) {
    const left = all.seats.filter((y) => !f.seats.some((x) => x.name === y.name));
    if (left.length === 0) rmSync(seatsFile(o.runDir), { force: true });
    else writeSeats(o.runDir, { ...all, seats: left });
  }
  return items;
}

export interface SeatRow {
  seat: string;
  step: number;
  of: number;
  title: string;
  done: boolean;
  lastCheck?: { step: number; at: string; ok: boolean; failed: CheckRecord[] };
  api?: string;
}

/** The instructor's view: each seat's step and last check, from the progress files only. */
export function seatRows(s: Scenario, f: SeatsFile): SeatRow[] {
  return f.seats.map((x) => {
    const inst = seatOf(f, s, x.name)!;
    const p = readProgress(inst.s, inst.runDir);
    const step = p?.step ?? 0;
    const api = arrayApi(inst.s.arrays[0]!);
    return {
      seat: x.name,
      step,
      of: s.scenario.steps.length,
      title: step ? s.scenario.steps[step - 1]!.title : '',
      done: p?.done === true,
      ...(p?.lastCheck
        ? { lastCheck: { step: p.lastCheck.step, at: p.lastCheck.at, ok: p.lastCheck.ok, failed: p.lastCheck.results.filter((r) => !r.ok) } }
        : {}),
      ...(api ? { api } : {}),
    };
  });
}
