/**
 * A trainee's progress through a scenario, in the lab's run directory:
 * RUNDIR/.scenario-<file>-<hash>[-SEAT].json (the step, hints shown, checkpoints taken, the last
 * check), and RUNDIR/.scenario-current.json naming the scenario (and seat) last started, which
 * lab step/check/hint/next/reset/solve/stop act on by default.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Lab } from '../schema.js';
import { labTag } from '../apply.js';

export interface CheckRecord {
  at: string;
  kind: string;
  ok: boolean;
  message: string;
}

export interface Progress {
  /** Absolute path of the scenario file. */
  file: string;
  seat?: string;
  /** 1-based. */
  step: number;
  /** When the current step began (ISO 8601): events since then count. */
  stepStartedAt: string;
  /** Hints of the current step shown so far. */
  hintsShown: number;
  /** Steps (1-based) whose checkpoint is kept. */
  checkpoints: number[];
  lastCheck?: { step: number; at: string; ok: boolean; results: CheckRecord[] };
  /** The last step's check passed and lab next went past it. */
  done?: boolean;
}

const suffix = (seat?: string) => (seat ? `-${seat}` : '');

export const progressFile = (lab: Lab, runDir: string, seat?: string) => join(runDir, `.scenario-${labTag(lab)}${suffix(seat)}.json`);
export const currentFile = (runDir: string) => join(runDir, '.scenario-current.json');

export function readProgress(lab: Lab, runDir: string, seat?: string): Progress | undefined {
  try {
    return JSON.parse(readFileSync(progressFile(lab, runDir, seat), 'utf8')) as Progress;
  } catch {
    return undefined;
  }
}

export function writeProgress(lab: Lab, runDir: string, p: Progress): void {
  mkdirSync(runDir, { recursive: true });
  writeFileSync(progressFile(lab, runDir, p.seat), `${JSON.stringify(p, null, 2)}\n`);
}

export function removeProgress(lab: Lab, runDir: string, seat?: string): void {
  rmSync(progressFile(lab, runDir, seat), { force: true });
}

/** The scenario last started in runDir: its file and seat. */
export function readCurrent(runDir: string): { file: string; seat?: string } | undefined {
  try {
    return JSON.parse(readFileSync(currentFile(runDir), 'utf8')) as { file: string; seat?: string };
  } catch {
    return undefined;
  }
}

export function writeCurrent(runDir: string, file: string, seat?: string): void {
  mkdirSync(runDir, { recursive: true });
  writeFileSync(currentFile(runDir), `${JSON.stringify({ file, ...(seat ? { seat } : {}) })}\n`);
}

/** Forgets the pointer if it names this scenario (and seat). */
export function clearCurrent(runDir: string, file: string, seat?: string): void {
  const cur = readCurrent(runDir);
  if (cur && cur.file === file && cur.seat === seat) rmSync(currentFile(runDir), { force: true });
}
