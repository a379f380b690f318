/**
 * Checkpoints of a scenario's arrays, taken when a step begins, for lab reset. Only arrays the
 * lab started can be checkpointed: they are stopped cleanly (lab down, keeping seats; the VMs
 * stop too), each data directory is copied (sparse; reflinked where the file system can), and
 * lab up brings everything back (arrays, VMs, the lab's faults). A restore is the same in
 * reverse: stop, put the copy back, lab up. What the array keeps in its data directory comes
 * back (volumes' data, copy sessions, hosts, users, agent records on the array side); what it
 * keeps in memory does not (events, faults other than the lab's).
 * Kept in RUNDIR/.scenario-<file>-<hash>[-SEAT].checkpoints/step-N/ARRAY.
 */
import { execFile } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { labDown, type LabOptions, labTag, labUp, startedArrays } from '../apply.js';
import type { Lab, LabArray } from '../schema.js';

const run = promisify(execFile);

export const checkpointsDir = (lab: Lab, runDir: string, seat?: string) => join(runDir, `.scenario-${labTag(lab)}${seat ? `-${seat}` : ''}.checkpoints`);
const stepDir = (lab: Lab, runDir: string, step: number, seat?: string) => join(checkpointsDir(lab, runDir, seat), `step-${step}`);

/** Copies a directory keeping holes (a thin volume's file stays as small) and reflinking where it can. */
async function copyDir(from: string, to: string): Promise<void> {
  rmSync(to, { recursive: true, force: true });
  await run('cp', ['-a', '--sparse=always', '--reflink=auto', from, to]);
}

export interface CheckpointResult {
  step: number;
  arrays: string[];
  ms: number;
}

/** Stops the lab's started arrays (and VMs), runs fn, and brings the lab up again. */
async function whileDown(lab: Lab, o: LabOptions, fn: (arrays: LabArray[]) => Promise<void>): Promise<LabArray[]> {
  const arrays = startedArrays(lab, o.runDir);
  const quiet = { runDir: o.runDir, log: o.log };
  await labDown(lab, { ...quiet, keepSeats: true });
  try {
    await fn(arrays);
  } finally {
    await labUp(lab, quiet);
  }
  return arrays;
}

/** Takes step's checkpoint of every array the lab started (none started: nothing to take). */
export async function takeCheckpoint(lab: Lab, o: LabOptions, step: number, seat?: string): Promise<CheckpointResult> {
  const t0 = Date.now();
  if (startedArrays(lab, o.runDir).length === 0) return { step, arrays: [], ms: 0 };
  const dir = stepDir(lab, o.runDir, step, seat);
  const arrays = await whileDown(lab, o, async (arrays) => {
    rmSync(dir, { recursive: true, force: true });
    await run('mkdir', ['-p', dir]);
    for (const a of arrays) await copyDir(a.dataDir, join(dir, a.name));
  });
  return { step, arrays: arrays.map((a) => a.name), ms: Date.now() - t0 };
}

/**
 * Brings the started arrays back to step's checkpoint. Refused when an array of the lab was not
 * started by it (lab up used it as it was): it cannot be stopped and copied back.
 */
export async function restoreCheckpoint(lab: Lab, o: LabOptions, step: number, seat?: string): Promise<CheckpointResult> {
  const t0 = Date.now();
  const dir = stepDir(lab, o.runDir, step, seat);
  // The arrays the checkpoint holds are the lab's own, running or not: one a step stopped
  // (site-a lost, say) is restored and started again like the others.
  const saved = lab.arrays.filter((a) => existsSync(join(dir, a.name)));
  if (saved.length === 0) throw new Error(`lab ${lab.file}: no checkpoint of step ${step} in ${dir}; reset to a step reached since lab start`);
  const notOurs = lab.arrays.filter((a) => !saved.includes(a));
  if (notOurs.length > 0)
    throw new Error(
      `lab ${lab.file}: cannot reset: array ${notOurs.map((a) => a.name).join(', ')} was not started by lab up (it answered at ${notOurs[0]!.api} already), so it cannot be stopped and brought back to a checkpoint; let the lab start its own (start: true and a free api), or put things back by hand`,
    );
  await whileDown(lab, o, async () => {
    for (const a of saved) await copyDir(join(dir, a.name), a.dataDir);
  });
  return { step, arrays: saved.map((a) => a.name), ms: Date.now() - t0 };
}

/** Removes the checkpoints of steps after keep (all with keep 0). */
export function dropCheckpoints(lab: Lab, runDir: string, keep: number, seat?: string): void {
  if (keep <= 0) {
    rmSync(checkpointsDir(lab, runDir, seat), { recursive: true, force: true });
    return;
  }
  for (let s = keep + 1; existsSync(stepDir(lab, runDir, s, seat)); s++) rmSync(stepDir(lab, runDir, s, seat), { recursive: true, force: true });
}
