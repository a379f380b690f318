/**
 * The arraylab command line: `serve` runs the array; `volume`, `copy`, `remote`, `host`, `tape`, `export`, `fault`, `power-cut`, `status`, `user`, `tenant` and `audit`
 * talk to a running one over the control API. Every command takes --json.
 *
 * Failures print exactly one line, `arraylab: ...`, on stderr: exit status 2 for a wrong command
 * line or config (with a pointer to --help), 1 for an operation that failed.
 */
import yargs from 'yargs';
import { ApiError } from '../../proto/errors.js';
import { ARRAYLAB_VERSION } from '../../proto/util/version.js';
import { withApiOption } from './client.js';
import { copyCommands } from './copy.js';
import { CommandError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './errors.js';
import { exportCommands } from './exports.js';
import { faultCommands } from './fault.js';
import { powerCutCommand } from './powerCut.js';
import { remoteCommands } from './remote.js';
import { hostCommands } from './host.js';
import { serveOptions } from './serveOptions.js';
import { statusCommand } from './status.js';
import { tapeCommands } from './tape.js'; // tape
import { volumeCommands } from './volume.js';
import { vmCommands } from './vm.js'; // vm, lab (issue 6)
import { labCommands } from './lab.js'; // vm, lab (issue 6)
import { userCommands } from './user.js';
import { tenantCommands } from './tenant.js';
import { auditCommand, auditOptions } from './audit.js';
import { eventsCommand, eventsOptions } from './events.js';

const EPILOGUE = `Sizes take binary units K/M/G/T (= KiB/MiB/GiB/TiB) or decimal KB/MB/GB/TB, e.g. 64MiB, 10G, 4k.

Environment:
  ARRAYLAB_API        control API address for client commands (default 127.0.0.1:7390)
  ARRAYLAB_TOKEN      control API token (or ARRAYLAB_TOKEN_FILE: a file holding it); default: the
                      admin token of an array this user started on this machine
  ARRAYLAB_TLS_CA     CA of the API's TLS certificate (ARRAYLAB_TLS_CERT, ARRAYLAB_TLS_KEY: mutual TLS)
  ARRAYLAB_LOG_LEVEL  serve's log level

Exit status: 0 success, 1 the operation failed, 2 wrong command line or config.`;

export async function main(argv: string[]): Promise<void> {
  // A reader that goes away (`arraylab events --json | head`) ends the command quietly, as it
  // does for any Unix tool, instead of an EPIPE stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT_OK);
    throw err;
  });
  const code = await run(argv);
  process.exit(code);
}

/** Parses and runs one command line; returns the exit status. */
export async function run(argv: string[]): Promise<number> {
  let exitCode = EXIT_OK;
  let suggestion: string | undefined;
  const parser = yargs(argv)
    .scriptName('arraylab')
    .usage(
      '$0 <command> [options]\n\nEmulates an enterprise storage array: volumes served as block devices over NBD and iSCSI, managed over a gRPC control API.',
    )
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable JSON on stdout (sizes in bytes)' })
    .command(
      'serve',
      'run the array: serve volumes over NBD and iSCSI and the control API until SIGTERM/SIGINT',
      (y) => serveOptions(y),
      async (a) => {
        const { serve } = await import('./serve.js');
        exitCode = await serve(a);
      },
    )
    .command('volume', 'create, list, show, resize, set, rename and delete volumes', (y) => volumeCommands(y))
    .command('copy', 'start, list, show, control and watch copy sessions (OPC, QuickOPC, SnapOPC+, EC, REC)', (y) => copyCommands(y))
    .command('remote', 'add, list, show and remove the other arrays REC pairs mirror to', (y) => remoteCommands(y))
    .command('host', 'define hosts by initiator name and map volumes to them at LUNs (iSCSI host affinity)', (y) => hostCommands(y))
    .command('tape', "the array's virtual tape library: cartridges, and volumes written to and restored from them", (y) => tapeCommands(y)) // tape
    .command('export', 'list exports and their connected clients', (y) => exportCommands(y))
    .command('fault', 'inject faults on purpose: I/O errors, bad blocks, delays, rate caps, pauses, disconnects, copy/tape/API errors', (y) => faultCommands(y))
    .command(powerCutCommand)
    .command(
      'status',
      "show the running array's status",
      (y) => withApiOption(y),
      (a) => statusCommand(a),
    )
    .command('vm', 'lab VMs on the array: start (volumes over NBD or iSCSI), list, stop, console', (y) => vmCommands(y)) // vm, lab (issue 6)
    .command('user', 'users of the control API: add (prints a token), list, show, whoami, rotate, remove', (y) => userCommands(y))
    .command('tenant', 'tenants: add, list, show, set quotas, assign objects, remove', (y) => tenantCommands(y))
    .command(
      'audit',
      'the audit log: every call that changed or tried to change the array, newest first',
      (y) => auditOptions(y),
      (a) => auditCommand(a),
    )
    .command(
      'events',
      'the event stream (unless api.events: off): volumes, clients, copy sessions, hosts, tape, faults; --follow for new ones',
      (y) => eventsOptions(y),
      (a) => eventsCommand(a),
    )
    .command('lab', 'bring a lab file (arrays, volumes, hosts, VMs) up, down, or show its status', (y) => labCommands(y)) // vm, lab (issue 6)
    .demandCommand(1, 'give a command: serve, volume, copy, host, export, tape, fault, power-cut, status, user, tenant, audit, vm or lab')
    .recommendCommands()
    .strict()
    .help()
    .alias('h', 'help')
    .version(ARRAYLAB_VERSION)
    .epilogue(EPILOGUE)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((message, err) => {
      // yargs' own validation errors (YError) are usage errors like the messages it passes alone.
      if (err && err.name !== 'YError') throw err;
      // recommendCommands reports "Did you mean X?" first, then the unknown argument: say both.
      if (/^Did you mean/.test(message)) {
        suggestion = message;
        return;
      }
      throw new UsageError(suggestion ? `${message}. ${suggestion}` : message);
    });

  try {
    await parser.parseAsync();
    return exitCode;
  } catch (err) {
    return report(err, argv);
  }
}

/** Prints the one-line error and returns the exit status for it. */
function report(err: unknown, argv: string[]): number {
  const say = (line: string) => process.stderr.write(`arraylab: ${line}\n`);
  if (err instanceof UsageError) {
    // One line. Our own messages end in their fix ("...; use 512 or 4096"); yargs' own
    // ("Missing required argument: size") do not, so they point at the command's help.
    const message = err.message.replace(/\s*\n\s*/g, ' ');
    const command = err.command ?? commandPath(argv);
    say(message.includes('; ') ? message : `${message} (see 'arraylab ${command ? `${command} ` : ''}--help')`);
    return EXIT_USAGE;
  }
  if (err instanceof CommandError) {
    say(err.message);
    return err.exitCode;
  }
  if (err instanceof ApiError) {
    say(err.message);
    return EXIT_FAILURE;
  }
  // A bug: still one line, but enough to find it.
  say(`unexpected error: ${err instanceof Error ? err.message : String(err)}; please report it with the command line used`);
  if (process.env.ARRAYLAB_DEBUG) console.error(err);
  return EXIT_FAILURE;
}

const COMMANDS: Record<string, string[]> = {
  '': ['serve', 'volume', 'copy', 'host', 'tape', 'export', 'fault', 'power-cut', 'status', 'vm', 'lab'],
  fault: ['add', 'list', 'ls', 'show', 'remove', 'rm', 'clear', 'rate', 'apply', 'flag', 'events'],
  'fault flag': ['set', 'clear', 'list', 'ls'],
  vm: ['start', 'list', 'ls', 'stop', 'console'], // vm, lab (issue 6)
  lab: ['up', 'down', 'status'], // vm, lab (issue 6)
  copy: ['start', 'list', 'ls', 'show', 'suspend', 'resume', 'reverse', 'split', 'cancel', 'rate', 'watch'],
  volume: ['create', 'list', 'ls', 'show', 'resize', 'set', 'rename', 'delete', 'rm'],
  export: ['list', 'ls'],
  tape: ['add', 'list', 'ls', 'show', 'erase', 'remove', 'rm', 'write', 'restore', 'verify'], // tape
  host: ['add', 'remove', 'rm', 'map', 'unmap', 'list', 'ls', 'show', 'add-initiator', 'remove-initiator'],
};

/** The known command words at the start of argv, e.g. "volume create", for the --help hint. */
function commandPath(argv: string[]): string {
  const words: string[] = [];
  for (const word of argv) {
    const known = COMMANDS[words.join(' ')];
    if (!known?.includes(word)) break;
    words.push(word);
  }
  return words.join(' ');
}
