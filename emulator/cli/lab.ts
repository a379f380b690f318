/** `arraylab lab up|down|status FILE`: a lab file's arrays, seats, volumes, hosts, remotes, REC pairs and VMs (emulator/lab/). */
import type { Argv } from 'yargs';
import type { LabItem } from '../lab/apply.js';
import { EXIT_USAGE, CommandError } from './errors.js';
import { print, printJson, table } from '../../proto/util/table.js';
import { asCommandError, cliLogger, runDirOf, withRunDirOption } from './vm.js';
import { scenarioCommands } from './labScenario.js';

async function load(file: string) {
  const { loadLab, LabError } = await import('../lab/schema.js');
  try {
    return loadLab(file);
  } catch (err) {
    // A lab file that does not validate is like a bad config: exit 2.
    if (err instanceof LabError) throw new CommandError(err.message, EXIT_USAGE);
    throw err;
  }
}

/** An item's name; in a lab with several arrays, ARRAY:NAME for what is on one of them. */
const nameOf = (i: LabItem) => (i.array ? `${i.array}:${i.name}` : i.name);

function line(i: LabItem): string {
  return `${i.kind} ${nameOf(i)}: ${i.state}${i.detail ? ` (${i.detail})` : ''}`;
}

export function labCommands(y: Argv<{ json: boolean }>) {
  // Scenario commands (start, step, check, ...) first: lab.ts keeps up, down and status.
  return scenarioCommands(withRunDirOption(y))
    .command(
      'up <file>',
      'create what the lab file declares and is missing (start its arrays; seats, volumes, hosts, remotes, REC pairs, VMs); leaves what exists',
      (c) => c.positional('file', { type: 'string', demandOption: true }),
      async (a) => {
        const lab = await load(String(a.file));
        const { labUp } = await import('../lab/apply.js');
        const items = await labUp(lab, {
          runDir: await runDirOf(a),
          log: await cliLogger(),
          ...(a.json ? {} : { onItem: (i: LabItem) => print(line(i)) }),
        }).catch(asCommandError);
        if (a.json) printJson({ file: lab.file, items });
      },
    )
    .command(
      'down <file>',
      "stop the lab's VMs and the arrays lab up started, remove its seats; keeps data unless --purge",
      (c) =>
        c
          .positional('file', { type: 'string', demandOption: true })
          .option('purge', {
            type: 'boolean',
            default: false,
            describe: "also cancel the lab's REC pairs, remove its remotes, delete its hosts and volumes, and the data directory of an array lab up started",
          })
          .option('keep-seats', {
            type: 'boolean',
            default: false,
            describe: 'keep the trainee seats (their tenants, users and token files); by default lab down removes them (tenant remove --force)',
          }),
      async (a) => {
        const lab = await load(String(a.file));
        const { labDown } = await import('../lab/apply.js');
        const items = await labDown(lab, {
          runDir: await runDirOf(a),
          log: await cliLogger(),
          purge: a.purge,
          keepSeats: a['keep-seats'],
          ...(a.json ? {} : { onItem: (i: LabItem) => print(line(i)) }),
        }).catch(asCommandError);
        if (a.json) printJson({ file: lab.file, items });
      },
    )
    .command(
      'status <file>',
      "show the state of each of the lab's items",
      (c) => c.positional('file', { type: 'string', demandOption: true }),
      async (a) => {
        const lab = await load(String(a.file));
        const { labStatus } = await import('../lab/apply.js');
        const items = await labStatus(lab, { runDir: await runDirOf(a), log: await cliLogger() }).catch(asCommandError);
        if (a.json) return printJson({ file: lab.file, items });
        print(
          table(items, [
            { header: 'KIND', value: (i) => i.kind },
            { header: 'NAME', value: nameOf },
            { header: 'STATE', value: (i) => i.state },
            { header: 'DETAIL', value: (i) => i.detail ?? '' },
          ]),
        );
      },
    )
    .demandCommand(1, 'lab needs a subcommand: up, down or status; for a scenario start, step, check, hint, next, reset, solve, stop or run');
}
