/**
 * `arraylab lab start|step|check|hint|next|reset|solve|stop|run`: scenarios, lab files with
 * steps that check themselves (emulator/lab/scenario/, emulator/lab/README.md "Scenarios").
 */
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import type { LabItem } from '../lab/apply.js';
import type { CheckRecord } from '../lab/scenario/progress.js';
import type { RunnerOptions, Scenario, StepView } from '../lab/scenario/runner.js';
import type { SeatRow } from '../lab/scenario/seats.js';
import { CommandError, EXIT_USAGE } from './errors.js';
import { print, printJson, table } from '../../proto/util/table.js';
import { asCommandError, cliLogger, runDirOf } from './vm.js';

interface Common {
  json: boolean;
  'run-dir'?: string | undefined;
  scenario?: string | undefined;
  seat?: string | undefined;
}

async function loadScenario(file: string): Promise<Scenario> {
  const { loadLab, LabError } = await import('../lab/schema.js');
  const { asScenario } = await import('../lab/scenario/runner.js');
  try {
    return asScenario(loadLab(file));
  } catch (err) {
    if (err instanceof LabError || (err as Error).name === 'ScenarioError') throw new CommandError((err as Error).message, EXIT_USAGE);
    throw err;
  }
}

/** The scenario a command acts on: --scenario, else the one last started in the run directory. */
async function current(a: Common): Promise<{ s: Scenario; o: RunnerOptions }> {
  const runDir = await runDirOf(a);
  const inst = await seatInstanceOf(a, runDir);
  if (inst) return { s: inst.s, o: { runDir: inst.runDir, log: await cliLogger() } };
  let file = a.scenario;
  let seat = a.seat;
  if (file === undefined) {
    const { readCurrent } = await import('../lab/scenario/progress.js');
    const cur = readCurrent(runDir);
    const { readSeats } = await import('../lab/scenario/seats.js');
    const seats = cur ? undefined : readSeats(runDir);
    if (seats)
      throw new CommandError(
        `the scenario in ${runDir} runs as isolated seats (${seats.seats.map((x) => x.name).join(', ')}); say which: --seat NAME (arraylab lab seats shows them)`,
      );
    if (!cur) throw new CommandError(`no scenario is started in ${runDir}; start one with: arraylab lab start FILE (or give --scenario FILE)`);
    file = cur.file;
    seat ??= cur.seat;
  }
  return { s: await loadScenario(file), o: { runDir, log: await cliLogger(), ...(seat ? { seat } : {}) } };
}

/**
 * --seat NAME naming an isolated seat of lab start --seats (RUNDIR/.scenario-seats.json): that
 * seat's own scenario instance and run directory. Otherwise undefined (a seat of the lab's seats:).
 */
async function seatInstanceOf(a: Common, runDir: string): Promise<{ s: Scenario; runDir: string } | undefined> {
  if (!a.seat) return undefined;
  const { readSeats, seatOf } = await import('../lab/scenario/seats.js');
  const f = readSeats(runDir);
  if (!f || (a.scenario !== undefined && resolve(a.scenario) !== f.file) || !f.seats.some((x) => x.name === a.seat)) return undefined;
  return seatOf(f, await loadScenario(f.file), a.seat);
}

/** Errors of the runner (a setup line that failed, no such step) as the CLI's one line. */
function asError(err: unknown): never {
  if (err instanceof Error && err.name === 'ScenarioError') throw new CommandError(err.message);
  return asCommandError(err);
}

const stepText = (v: StepView) =>
  `## Step ${v.number}/${v.of}: ${v.title}\n\n${v.instructions.trimEnd()}\n${v.hints ? `\n(${v.hints} hint${v.hints > 1 ? 's' : ''}: arraylab lab hint)\n` : ''}`;

const checkLines = (results: CheckRecord[]) => results.map((r) => `${r.ok ? '✓' : '✗'} ${r.message}`).join('\n');

const lineOf = (i: LabItem) => `${i.kind} ${i.array ? `${i.array}:` : ''}${i.name}: ${i.state}${i.detail ? ` (${i.detail})` : ''}`;

/** Options every scenario command takes. */
const which = <T>(y: Argv<T>) =>
  y
    .option('scenario', { type: 'string', requiresArg: true, describe: 'the scenario file (default: the one last started with lab start)' })
    .option('seat', { type: 'string', requiresArg: true, describe: "the seat whose progress (default: lab start's)" });

/** lab start FILE --seats N: N isolated seats, one after the other, a line each. */
async function startSeatsCommand(a: Common & { file: string; seats: number }): Promise<void> {
  const { MAX_SEATS, startSeats, whyNoSeats } = await import('../lab/scenario/seats.js');
  if (a.seat !== undefined)
    throw new CommandError(
      '--seats and --seat go apart: --seats N starts N isolated seats (as instructor), --seat NAME works as one seat of the lab; give one of them',
      EXIT_USAGE,
    );
  if (!Number.isInteger(a.seats) || a.seats < 1 || a.seats > MAX_SEATS)
    throw new CommandError(`--seats ${a.seats}: give a whole number of seats from 1 to ${MAX_SEATS}`, EXIT_USAGE);
  const s = await loadScenario(a.file);
  const why = whyNoSeats(s);
  if (why) throw new CommandError(why, EXIT_USAGE);
  const runDir = await runDirOf(a);
  const seats = await startSeats(s, {
    runDir,
    log: await cliLogger(),
    count: a.seats,
    ...(a.json ? {} : { onSeat: (x) => print(`${x.name}: API ${x.api}, token in ${x.tokenFile}`) }),
  }).catch(asError);
  if (a.json)
    return printJson({
      file: s.file,
      title: s.scenario.title,
      seats: seats.map((x) => ({ name: x.name, api: x.api, tokenFile: x.tokenFile, runDir: x.runDir, checkpointMs: x.result.checkpointMs })),
    });
  print(
    `\n# ${s.scenario.title}: ${seats.length} seat${seats.length === 1 ? '' : 's'} at step 1/${s.scenario.steps.length}\nEach trainee: eval "$(arraylab lab env --seat SEAT)", then arraylab lab step --seat SEAT. Their progress: arraylab lab seats`,
  );
}

export function scenarioCommands<T extends { json: boolean }>(y: Argv<T>) {
  return y
    .command(
      'start <file>',
      "start a scenario: lab up, step 1's checkpoint and setup; prints its description and step 1",
      (c) =>
        c
          .positional('file', { type: 'string', demandOption: true })
          .option('seat', { type: 'string', requiresArg: true, describe: 'work as this seat of the lab (its token)' })
          .option('seats', {
            type: 'number',
            requiresArg: true,
            describe: 'as instructor: start N isolated seats, seat1..seatN, each with arrays of its own (1 to 32)',
          }),
      async (a) => {
        if (a.seats !== undefined) return startSeatsCommand(a as Common & { file: string; seats: number });
        const s = await loadScenario(String(a.file));
        const runDir = await runDirOf(a as Common);
        const { startScenario } = await import('../lab/scenario/runner.js');
        const r = await startScenario(s, { runDir, log: await cliLogger(), ...(a.seat ? { seat: a.seat } : {}) }).catch(asError);
        if (a.json) return printJson(r);
        print(`# ${r.title}\n${r.description ? `\n${r.description.trimEnd()}\n` : ''}\n${stepText(r.step)}`);
      },
    )
    .command(
      'step [n]',
      "show a step's instructions (default: the current step)",
      (c) => which(c.positional('n', { type: 'number', describe: 'step number, 1-based' })),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { showStep } = await import('../lab/scenario/runner.js');
        const v = (() => {
          try {
            return showStep(s, o, a.n);
          } catch (err) {
            return asError(err);
          }
        })();
        if (a.json) return printJson(v);
        print(`${stepText(v)}${v.number !== v.current ? `\n(you are at step ${v.current})\n` : ''}`);
      },
    )
    .command(
      'check',
      "run the current step's checks and say what is missing (exit 1 when one fails)",
      (c) => which(c),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { checkCurrent } = await import('../lab/scenario/runner.js');
        const r = await checkCurrent(s, o).catch(asError);
        if (a.json) printJson(r);
        else print(`Step ${r.step}: ${r.title}\n${checkLines(r.results)}\n${r.ok ? 'All checks pass: arraylab lab next' : ''}`.trimEnd());
        if (!r.ok) throw new CommandError(`step ${r.step}: ${r.results.filter((x) => !x.ok).length} check(s) fail; arraylab lab hint helps`);
      },
    )
    .command(
      'hint',
      "show the current step's next hint",
      (c) => which(c),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { nextHint } = await import('../lab/scenario/runner.js');
        const h = (() => {
          try {
            return nextHint(s, o);
          } catch (err) {
            return asError(err);
          }
        })();
        if (a.json) return printJson(h);
        print(`Hint ${h.hint}/${h.of}: ${h.text.trimEnd()}${h.hint === h.of ? '\n(that was the last hint)' : ''}`);
      },
    )
    .command(
      'next',
      "go to the next step once the current step's checks pass",
      (c) => which(c).option('force', { type: 'boolean', default: false, describe: 'go on without checking' }),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { nextStep } = await import('../lab/scenario/runner.js');
        const r = await nextStep(s, o, a.force).catch(asError);
        if (a.json) printJson(r);
        else if (r.check && !r.check.ok) print(`${checkLines(r.check.results)}`);
        else if (r.done)
          print(`${r.check ? `${checkLines(r.check.results)}\n` : ''}Scenario complete: ${s.scenario.title}. Stop the lab with: arraylab lab stop`);
        else print(`${r.check ? `${checkLines(r.check.results)}\n\n` : ''}${stepText(r.step!)}`);
        if (r.check && !r.check.ok)
          throw new CommandError(`step ${r.check.step} is not done yet: fix what the ✗ lines say (arraylab lab hint), or lab next --force`);
      },
    )
    .command(
      'reset',
      "bring the lab back to where a step began (its checkpoint), and run the step's setup again",
      (c) => which(c).option('to-step', { type: 'number', requiresArg: true, describe: 'the step (default: the current one)' }),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { resetStep } = await import('../lab/scenario/runner.js');
        const r = await resetStep(s, o, a['to-step']).catch(asError);
        if (a.json) return printJson(r);
        print(
          `Reset to the start of step ${r.step.number} (array ${r.arrays.join(', ')} restored in ${(r.restoreMs / 1000).toFixed(1)} s)\n\n${stepText(r.step)}`,
        );
      },
    )
    .command(
      'solve',
      "run the current step's solution, then its checks (for instructors)",
      (c) => which(c),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { solveStep } = await import('../lab/scenario/runner.js');
        const r = await solveStep(s, o).catch(asError);
        if (a.json) printJson(r);
        else print(`Step ${r.step}: ${r.title} (solved)\n${checkLines(r.results)}`);
        if (!r.ok)
          throw new CommandError(
            `step ${r.step}: its solve ran, and ${r.results.filter((x) => !x.ok).length} check(s) still fail; the scenario's solve is wrong`,
          );
      },
    )
    .command(
      'stop',
      'stop the scenario: lab down, forget its progress and checkpoints',
      (c) => which(c).option('purge', { type: 'boolean', default: false, describe: "also delete the lab's volumes, hosts and data (lab down --purge)" }),
      async (a) => {
        // Without --seat: every isolated seat; with the --seat of one: that seat alone (and it leaves the seats file).
        {
          const runDir = await runDirOf(a as Common);
          const { readSeats, stopSeats } = await import('../lab/scenario/seats.js');
          const all = readSeats(runDir);
          const f = all && a.seat ? { ...all, seats: all.seats.filter((x) => x.name === a.seat) } : all;
          if (f?.seats.length && (a.scenario === undefined || resolve(a.scenario) === f.file)) {
            const items = await stopSeats(
              {
                runDir,
                log: await cliLogger(),
                purge: a.purge,
                ...(a.json ? {} : { onSeatItem: (i: LabItem & { seat: string }) => print(`${i.seat}: ${lineOf(i)}`) }),
              },
              f,
            ).catch(asError);
            if (a.json) return printJson({ file: f.file, seats: f.seats.map((x) => x.name), items });
            return print(`Scenario stopped on ${f.seats.length} seat${f.seats.length === 1 ? '' : 's'}: ${f.file}`);
          }
        }
        const { s, o } = await current(a as Common);
        const { stopScenario } = await import('../lab/scenario/runner.js');
        const items = await stopScenario(s, { ...o, purge: a.purge, ...(a.json ? {} : { onItem: (i: LabItem) => print(lineOf(i)) }) }).catch(asError);
        if (a.json) printJson({ file: s.file, items });
        else print(`Scenario stopped: ${s.scenario.title}`);
      },
    )
    .command(
      'env',
      'print a seat\'s shell settings (ARRAYLAB_API, ARRAYLAB_TOKEN_FILE, LAB_ARRAY_<NAME>_API and _TOKEN_FILE): eval "$(arraylab lab env --seat seat2)"',
      (c) => which(c),
      async (a) => {
        const { s, o } = await current(a as Common);
        const { arraysEnv } = await import('../lab/scenario/shell.js');
        // A seat of the lab's seats: (a tenant of the shared arrays) works with its own token.
        const env = arraysEnv(s, o.runDir, a.seat && o.seat ? a.seat : undefined);
        if (!env.ARRAYLAB_API)
          throw new CommandError(`lab ${s.file}: array ${s.arrays[0]!.name} has no API address yet; is the scenario started? (arraylab lab start)`);
        if (a.json) return printJson({ file: s.file, ...(a.seat ? { seat: a.seat } : {}), env });
        const q = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;
        print(
          Object.entries(env)
            .map(([k, v]) => `export ${k}=${q(v)}`)
            .join('\n'),
        );
      },
    )
    .command(
      'seats',
      "the instructor's view of the seats of lab start --seats: each seat's step, last check and API",
      (c) => c,
      async (a) => {
        const runDir = await runDirOf(a as Common);
        const { readSeats, seatRows } = await import('../lab/scenario/seats.js');
        const f = readSeats(runDir);
        if (!f) throw new CommandError(`no seats are started in ${runDir}; start them with: arraylab lab start FILE --seats N`);
        const s = await loadScenario(f.file);
        const rows = seatRows(s, f);
        if (a.json) return printJson({ file: f.file, title: s.scenario.title, seats: rows });
        const time = (iso: string) => new Date(iso).toISOString().slice(11, 19);
        const check = (r: SeatRow) =>
          r.lastCheck ? `${r.lastCheck.ok ? '✓' : '✗'} ${time(r.lastCheck.at)}${r.lastCheck.step !== r.step ? ` (step ${r.lastCheck.step})` : ''}` : '-';
        print(
          table(rows, [
            { header: 'SEAT', value: (r) => r.seat },
            { header: 'STEP', value: (r) => (r.step ? `${r.step}/${r.of} ${r.title}${r.done ? ' (complete)' : ''}` : '-') },
            { header: 'LAST CHECK', value: check },
            { header: 'API', value: (r) => r.api ?? '-' },
          ]).trimEnd(),
        );
      },
    )
    .command(
      'run <file>',
      "run a scenario headless: every step's setup, solve and checks, from a clean lab to lab down --purge (exit 1 when a step fails)",
      (c) =>
        c
          .positional('file', { type: 'string', demandOption: true })
          .option('auto', { type: 'boolean', default: false, describe: 'run the solve of each step (required: the only mode for now)' }),
      async (a) => {
        if (!a.auto)
          throw new CommandError("lab run needs --auto (it runs each step's solve); to work through a scenario yourself: arraylab lab start FILE", EXIT_USAGE);
        const s = await loadScenario(String(a.file));
        const runDir = await runDirOf(a as Common);
        const { runAuto } = await import('../lab/scenario/runner.js');
        const r = await runAuto(s, {
          runDir,
          log: await cliLogger(),
          ...(a.json
            ? {}
            : {
                onStep: (x) =>
                  print(
                    `${x.ok ? 'PASS' : 'FAIL'} step ${x.step}/${s.scenario.steps.length} ${x.title} (${x.seconds.toFixed(1)} s)${x.message ? `: ${x.message}` : ''}`,
                  ),
              }),
        }).catch(asError);
        if (a.json) printJson({ file: s.file, title: s.scenario.title, ...r });
        else if (r.steps.length < s.scenario.steps.length) print(`not run: steps ${r.steps.length + 1} to ${s.scenario.steps.length}`);
        if (!r.ok) throw new CommandError(`scenario ${s.file}: step ${r.steps.find((x) => !x.ok)?.step} failed`);
        if (!a.json) print(`PASS ${s.scenario.title}: ${s.scenario.steps.length} steps in ${r.seconds.toFixed(1)} s`);
      },
    );
}
