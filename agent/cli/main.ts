/**
 * `arraylab-agent`: the host side of backups. Every command runs on the host by itself (no
 * daemon needed); with --agent HOST:PORT it is sent to a remote `arraylab-agent serve` instead.
 * Every command takes --json.
 *
 * Failures print one line, `arraylab-agent: ...`, on stderr: exit status 2 for a wrong command
 * line or config, 1 for an operation that failed (a backup of several volumes where one failed
 * included: the others' results are still printed).
 */
import yargs, { type Argv } from 'yargs';
import { StatusError } from '../../proto/errors.js';
import { ARRAYLAB_VERSION } from '../../proto/util/version.js';
import { createLogger, type Logger } from '../../proto/util/log.js';
import { ConfigError, resolveSettings, type AgentSettings } from '../config.js';
import type { AgentCore, DoctorCheck } from '../types.js';
import {
  renderBackup,
  renderDevices,
  renderDoctor,
  renderHistory,
  renderMatch,
  renderRegistered,
  renderRestore,
  renderStatus,
  renderSync,
  progressPrinter,
} from './render.js';
import { readToken } from './token.js';
import { DEFAULT_GUEST_PORT } from '../../proto/guest/protocol.js'; // [G1]

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

class UsageError extends Error {}

const EPILOGUE = `Configuration: flags, then environment, then the config file (--config, ARRAYLAB_AGENT_CONFIG,
or /etc/arraylab-agent/agent.yaml), then defaults.

Environment:
  ARRAYLAB_API           the array's control API (default 127.0.0.1:7390)
  ARRAYLAB_TOKEN         the array API's token (else --token-file, or the config's arrayTokenFile)
  ARRAYLAB_AGENT_STATE   state directory (default /var/lib/arraylab-agent)
  ARRAYLAB_AGENT         send commands to this agent daemon (HOST:PORT or unix:/PATH)
  ARRAYLAB_AGENT_TOKEN   the daemon's token (else --agent-token-file)

Exit status: 0 success, 1 the operation failed, 2 wrong command line or config.`;

interface GlobalArgs {
  json: boolean;
  config?: string | undefined;
  array?: string | undefined;
  'state-dir'?: string | undefined;
  'device-map'?: string | undefined;
  'hooks-dir'?: string | undefined;
  'hook-timeout'?: number | undefined;
  'freeze-deadline'?: number | undefined;
  agent?: string | undefined;
  'token-file'?: string | undefined;
  'agent-token-file'?: string | undefined;
  'tls-ca'?: string | undefined;
  'log-level'?: string | undefined;
  progress?: boolean | undefined;
  /** [G1] the guest's agent socket: the host side is the agent in that guest. */
  guest?: string | undefined;
}

export async function main(argv: string[]): Promise<void> {
  process.exit(await run(argv));
}

function settingsOf(a: GlobalArgs & { listen?: string | undefined; 'tls-cert'?: string | undefined; 'tls-key'?: string | undefined }): AgentSettings {
  return resolveSettings({
    config: a.config,
    array: a.array,
    stateDir: a['state-dir'],
    deviceMap: a['device-map'],
    hooksDir: a['hooks-dir'],
    hookTimeout: a['hook-timeout'],
    freezeDeadline: a['freeze-deadline'],
    listen: a.listen,
    agentTokenFile: a['agent-token-file'],
    arrayTokenFile: a['token-file'],
    tlsCert: a['tls-cert'],
    tlsKey: a['tls-key'],
    logLevel: a['log-level'],
  });
}

/**
 * A CLI command's logger: silent (the command prints its result, and a failure as one line on
 * stderr), unless --log-level or ARRAYLAB_LOG_LEVEL asks for logs; the config's logLevel is the
 * daemon's.
 */
async function cliLogger(a: GlobalArgs, settings: AgentSettings): Promise<Logger> {
  const asked = a['log-level'] !== undefined || (process.env.ARRAYLAB_LOG_LEVEL ?? '') !== '';
  return createLogger({ level: asked ? settings.logLevel : 'silent' });
}

/**
 * Runs fn with an agent: the remote one (--agent / ARRAYLAB_AGENT) or one put together here.
 * The local one is closed afterwards whatever happens.
 */
async function withAgent<R>(a: GlobalArgs, fn: (core: AgentCore & { doctor?: () => Promise<DoctorCheck[]> }) => Promise<R>): Promise<R> {
  const settings = settingsOf(a);
  const remote = a.agent ?? (process.env.ARRAYLAB_AGENT || undefined);
  checkGuestArgs(a, remote); // [G1]
  if (remote) {
    if (a['token-file'] !== undefined && a['agent-token-file'] === undefined)
      throw new UsageError(
        `--token-file is the array API's token, which the agent daemon at ${remote} has its own of; give the daemon's token with --agent-token-file FILE (or ARRAYLAB_AGENT_TOKEN)`,
      );
    const { AgentClient } = await import('../api/AgentClient.js');
    const { readFileSync } = await import('node:fs');
    const token = process.env.ARRAYLAB_AGENT_TOKEN || readToken(settings.tokenFile);
    const client = new AgentClient(remote, { token, ...(a['tls-ca'] ? { tlsCa: readFileSync(a['tls-ca']) } : {}) });
    try {
      return await fn(client);
    } finally {
      await client.close();
    }
  }
  const log = await cliLogger(a, settings);
  const { openLocalAgent } = await import('../runtime.js');
  const agent = await openLocalAgent(settings, log, a.guest ? { guestSocket: a.guest } : {});
  try {
    return await fn(Object.assign(agent.core, { doctor: agent.doctor }));
  } finally {
    await agent.close();
  }
}

// [G1] With --guest, backup management runs here and the host side in the guest: the host-side
// settings belong to guest-serve there, and a remote agent has its own host side.
const GUEST_SIDE_FLAGS = ['device-map', 'hooks-dir', 'hook-timeout', 'freeze-deadline'] as const;
function checkGuestArgs(a: GlobalArgs, remote: string | undefined): void {
  if (a.guest === undefined) return;
  if (remote)
    throw new UsageError(
      `--guest cannot be used with --agent${a.agent ? '' : ' (ARRAYLAB_AGENT is set)'}: --guest runs the command here and reaches the agent in the guest; drop one of them`,
    );
  for (const flag of GUEST_SIDE_FLAGS) {
    if (a[flag] !== undefined)
      throw new UsageError(`--${flag} applies in the guest with --guest; give it to \`arraylab-agent guest-serve\` in the guest instead`);
  }
}

function out(a: GlobalArgs, json: unknown, text: string): void {
  process.stdout.write(a.json ? `${JSON.stringify(json)}\n` : text.endsWith('\n') || text === '' ? text : `${text}\n`);
}

function positiveInt(flag: string, v: unknown, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new UsageError(`--${flag}: give a whole number from 1 to ${max}`);
  return v;
}

export async function run(argv: string[]): Promise<number> {
  let exitCode = EXIT_OK;
  let suggestion: string | undefined;
  const progress = (a: GlobalArgs) => progressPrinter(a.progress ?? (process.stderr.isTTY === true && !a.json));
  const parser = yargs(argv)
    .scriptName('arraylab-agent')
    .usage(
      '$0 <command> [options]\n\nThe host side of arraylab backups: locks, freezes or flushes transaction volumes, dismounts backup volumes, runs hook scripts, and keeps backup generations, history and restore.',
    )
    .option('json', { type: 'boolean', default: false, describe: 'machine-readable JSON on stdout' })
    .option('config', { type: 'string', requiresArg: true, describe: 'agent config file (YAML)' })
    .option('array', { type: 'string', requiresArg: true, describe: "the array's control API HOST:PORT [env ARRAYLAB_API]" })
    .option('state-dir', { type: 'string', requiresArg: true, describe: 'where the agent keeps its records [env ARRAYLAB_AGENT_STATE]' })
    .option('device-map', { type: 'string', requiresArg: true, describe: 'file of "VOLUME DEVICE" lines for devices not found by WWN, serial or NBD export' })
    .option('hooks-dir', { type: 'string', requiresArg: true, describe: 'directory of hook scripts named after their phase (default STATE-DIR/hooks)' })
    .option('hook-timeout', { type: 'number', requiresArg: true, describe: 'seconds a hook script may run (default 60)' })
    .option('freeze-deadline', {
      type: 'number',
      requiresArg: true,
      describe: 'seconds after which a frozen filesystem is thawed whatever happens (default 30)',
    })
    .option('token-file', {
      type: 'string',
      requiresArg: true,
      describe: "the array API's token file (default: the array's local admin credential) [env ARRAYLAB_TOKEN]",
    })
    .option('agent', { type: 'string', requiresArg: true, describe: 'send the command to this agent daemon HOST:PORT or unix:/PATH [env ARRAYLAB_AGENT]' })
    .option('agent-token-file', {
      type: 'string',
      requiresArg: true,
      describe: "the agent daemon's token file (default STATE-DIR/agent.token) [env ARRAYLAB_AGENT_TOKEN]",
    })
    .option('tls-ca', { type: 'string', requiresArg: true, describe: "with --agent: CA certificate (PEM) of the daemon's TLS certificate" })
    .option('log-level', { type: 'string', requiresArg: true, describe: 'fatal|error|warn|info|debug|trace|silent [env ARRAYLAB_LOG_LEVEL]' })
    .option('progress', { type: 'boolean', describe: 'show progress on stderr (default: when stderr is a terminal)' })
    .option('guest', {
      type: 'string',
      requiresArg: true,
      describe: 'the host side is the agent in a guest: its virtio-serial socket (guest-serve runs there)',
    })
    .command('register', 'register a transaction volume (with its backup policy) or a backup volume', (y: Argv<GlobalArgs>) =>
      y
        .command(
          'transaction <volume>',
          'register a transaction volume: how it is locked and how many generations are kept',
          (c) =>
            c
              .positional('volume', { type: 'string', demandOption: true })
              .option('lock', {
                choices: ['unmount', 'freeze', 'none'] as const,
                describe:
                  'unmount (default; remounted afterwards), freeze (fsfreeze; stays mounted) or none (no host-side processing: a crash-consistent copy at best)',
              })
              .option('generations', { type: 'number', requiresArg: true, describe: 'preservation generations (default 1)' })
              .option('flush-only', { type: 'boolean', describe: 'by default only flush the filesystem buffers, without locking (BufferFlushOnly)' })
              .option('type', { choices: ['opc', 'quickopc', 'snapopcplus'] as const, describe: 'snapshot type of backups (default opc)' })
              .option('resync-after-backup', {
                type: 'boolean',
                describe: 'synchronized backups: resume the EC pair right after each backup (--no-resync-after-backup: not)',
              }),
          async (a) => {
            const generations = positiveInt('generations', a.generations, 64);
            const rec = await withAgent(a, (core) =>
              core.registerTransaction(a.volume, {
                ...(a.lock ? { lock: a.lock } : {}),
                ...(generations ? { generations } : {}),
                ...(a['flush-only'] !== undefined ? { flushOnly: a['flush-only'] } : {}),
                ...(a.type ? { defaultType: a.type } : {}),
                ...(a['resync-after-backup'] !== undefined ? { resyncAfterBackup: a['resync-after-backup'] } : {}),
              }),
            );
            out(a, rec, renderRegistered(rec));
          },
        )
        .command(
          'backup <volume>',
          'register a backup volume (a copy destination of the same size as a transaction volume); REMOTE:VOL is a volume of a remote array the array knows (arraylab remote list), for synchronized backups over REC',
          (c) => c.positional('volume', { type: 'string', demandOption: true }),
          async (a) => {
            const rec = await withAgent(a, (core) => core.registerBackup(a.volume));
            out(a, rec, `registered backup volume ${rec.volume} (${rec.sizeBytes} bytes)`);
          },
        )
        .demandCommand(1, 'register what: transaction or backup'),
    )
    .command(
      'unregister <volume>',
      'forget a transaction or backup volume',
      (c) =>
        c
          .positional('volume', { type: 'string', demandOption: true })
          .option('force', { type: 'boolean', default: false, describe: 'also when it holds generations or a sync pair (their records go)' }),
      async (a) => {
        await withAgent(a, (core) => core.unregister(a.volume, { force: a.force }));
        out(a, { volume: a.volume, unregistered: true }, `unregistered ${a.volume}`);
      },
    )
    .command(
      'backup <volumes..>',
      'back up transaction volumes (several: one consistency group; each failure is reported and the rest go on)',
      (c) =>
        c
          .positional('volumes', { type: 'string', array: true, demandOption: true })
          .option('type', {
            choices: ['opc', 'quickopc', 'snapopcplus'] as const,
            describe: "snapshot type (default: the volume's; a synchronized volume is backed up by its EC pair)",
          })
          .option('differential', { type: 'boolean', describe: 'QuickOPC: copy only what changed since the last backup to that volume (= --type quickopc)' })
          .conflicts('differential', 'type')
          .option('flush-only', { type: 'boolean', default: false, describe: 'flush the filesystem buffers instead of locking (Xflush)' })
          .option('to', {
            choices: ['disk', 'tape', 'both'] as const,
            default: 'disk' as const,
            describe: 'where the backup goes; tape copies are made from the backup volume',
          })
          .option('cartridge', { type: 'string', requiresArg: true, describe: 'tape cartridge label (default: one with room)' })
          .option('complete-after', {
            choices: ['disk', 'tape'] as const,
            describe:
              'with --to both: return when the disk history is set (the tape copy goes on in the agent daemon; history shows it pending), or when the tape copy is in the history (default)',
          })
          .option('resync', {
            type: 'boolean',
            describe: "synchronized: resume the EC pair after the backup (default: the volume's --resync-after-backup; --no-resync: not this time)",
          })
          .option('wait-equivalent', {
            type: 'number',
            requiresArg: true,
            describe: 'synchronized: wait up to SECONDS for the pair to be equivalent instead of refusing at once',
          }),
      async (a) => {
        const wait = a['wait-equivalent'];
        if (wait !== undefined && !(Number.isFinite(wait) && wait >= 0)) throw new UsageError(`--wait-equivalent ${wait}: give seconds, 0 or more`);
        await withAgent(a, async (core) => {
          const report = await core.backup(a.volumes as string[], {
            ...(a.type ? { type: a.type } : a.differential ? { type: 'quickopc' as const } : {}),
            flushOnly: a['flush-only'],
            to: a.to,
            ...(a.cartridge ? { cartridge: a.cartridge } : {}),
            ...(a['complete-after'] ? { completeAfter: a['complete-after'] } : {}),
            ...(a.resync !== undefined ? { resync: a.resync } : {}),
            ...(wait !== undefined ? { waitEquivalentSeconds: wait } : {}),
            onProgress: progress(a),
          });
          out(a, report, renderBackup(report));
          if (!report.ok || report.volumes.some((v) => v.resyncError)) exitCode = EXIT_FAILURE;
          // Local: the tape copies of --complete-after disk run in this process; it stays until
          // they end (a daemon, --agent, returns at once).
          const pending = report.volumes.filter((v) => v.generation?.tape?.status === 'pending');
          if (pending.length > 0 && !a.json && !(a.agent ?? process.env.ARRAYLAB_AGENT)) {
            process.stderr.write(
              `arraylab-agent: the tape copy of ${pending.map((v) => v.volume).join(', ')} goes on; waiting for it here (a daemon, arraylab-agent serve with --agent, would return at once)\n`,
            );
          }
        });
      },
    )
    .command(
      'start-sync <volume>',
      'start synchronous processing: resume the suspended EC pair of an unused backup volume (only the changes are copied), or start a new pair to one',
      (c) =>
        c
          .positional('volume', { type: 'string', demandOption: true })
          .option('full', { type: 'boolean', default: false, describe: 'a new pair with a full copy, even where a suspended pair could be resumed' })
          .option('wait', { type: 'boolean', default: false, describe: 'return only once the pair is equivalent (progress meanwhile)' })
          .option('rate', { type: 'number', requiresArg: true, describe: 'background copy rate in MiB/s (0 = none; default unthrottled)' }),
      async (a) => {
        if (a.rate !== undefined && !(Number.isFinite(a.rate) && a.rate >= 0)) throw new UsageError(`--rate ${a.rate}: give MiB/s, 0 or more`);
        const sync = await withAgent(a, (core) =>
          core.startSync(a.volume, { full: a.full, wait: a.wait, ...(a.rate !== undefined ? { rateMiBs: a.rate } : {}), onProgress: progress(a) }),
        );
        out(a, sync, renderSync(sync));
      },
    )
    .command(
      'cancel-sync <volume>',
      'cancel synchronous processing; the backup volume becomes unused',
      (c) => c.positional('volume', { type: 'string', demandOption: true }),
      async (a) => {
        await withAgent(a, (core) => core.cancelSync(a.volume));
        out(a, { volume: a.volume, cancelled: true }, `cancelled synchronous processing of ${a.volume}`);
      },
    )
    .command(
      'restore <volume>',
      'restore a generation onto the transaction volume (locked while it runs) or onto another volume',
      (c) =>
        c
          .positional('volume', { type: 'string', demandOption: true })
          .option('generation', { type: 'number', requiresArg: true, describe: 'generation as history numbers it: 1 = newest (default), from disk or tape' })
          .option('to', { type: 'string', requiresArg: true, describe: 'restore onto this volume instead' })
          .option('from', {
            choices: ['disk', 'tape'] as const,
            default: 'disk' as const,
            describe: "restore from the backup volume or from the generation's tape copy",
          })
          .option('force', {
            type: 'boolean',
            default: false,
            describe: '--to: also onto a registered transaction volume, or one mounted here or open read-write elsewhere',
          }),
      async (a) => {
        const generation = positiveInt('generation', a.generation, 1_000_000);
        const report = await withAgent(a, (core) =>
          core.restore(a.volume, {
            ...(generation ? { generation } : {}),
            ...(a.to ? { to: a.to } : {}),
            fromTape: a.from === 'tape',
            force: a.force,
            onProgress: progress(a),
          }),
        );
        out(a, report, renderRestore(report));
      },
    )
    .command(
      'history [volume]',
      'backup history: generation, time, backup volume, type, status and tape copy',
      (c) => c.positional('volume', { type: 'string' }),
      async (a) => {
        const entries = await withAgent(a, (core) => core.history(a.volume));
        out(a, entries, renderHistory(entries));
      },
    )
    .command(
      'status',
      'registered volumes, sync pairs, held generations, and anything needing a resource match',
      (c) => c,
      async (a) => {
        const st = await withAgent(a, (core) => core.status());
        out(a, st, renderStatus(st));
      },
    )
    .command(
      'devices',
      'which local block device is which array volume, and how the agent knows',
      (c) => c,
      async (a) => {
        const devices = await withAgent(a, (core) => core.devices());
        out(a, devices, renderDevices(devices));
      },
    )
    .command(
      'resource-match',
      "reconcile the agent's records with the host and the array; repair what it can",
      (c) => c,
      async (a) => {
        const report = await withAgent(a, (core) => core.resourceMatch());
        out(a, report, renderMatch(report));
        if (report.remaining.length > 0) exitCode = EXIT_FAILURE;
      },
    )
    .command(
      'doctor',
      'check what the agent needs on this host and say what to fix',
      (c) => c,
      async (a) => {
        const checks = await doctor(a);
        out(a, checks, renderDoctor(checks));
        if (checks.some((c) => !c.ok)) exitCode = EXIT_FAILURE;
      },
    )
    .command(
      'serve',
      'run the agent daemon: AgentService over gRPC (token required) until SIGTERM/SIGINT',
      (c) =>
        c
          .option('listen', {
            type: 'string',
            requiresArg: true,
            describe:
              'HOST:PORT to serve on (default 127.0.0.1:7391; port 0 = any free port; off loopback only with TLS), or unix:/PATH, or unix (RUN-DIR/agent.sock)',
          })
          .option('tls-cert', { type: 'string', requiresArg: true, describe: 'serve TLS with this certificate (PEM)' })
          .option('tls-key', { type: 'string', requiresArg: true, describe: 'and this private key (PEM)' }),
      async (a) => {
        checkGuestArgs(a, undefined); // [G1] the daemon's host side may be the agent in a guest
        const { serve } = await import('./serve.js');
        exitCode = await serve(settingsOf(a), a.json, a.guest);
      },
    )
    // [G1] the agent in a guest, and a check of it from the host
    .command(
      'guest-serve',
      'in a guest: serve the host side (devices, locks, freeze, hooks) to the host over the virtio-serial port, until SIGTERM/SIGINT',
      (c) => c.option('port', { type: 'string', requiresArg: true, default: DEFAULT_GUEST_PORT, describe: 'the virtio-serial port' }),
      async (a) => {
        if (a.guest !== undefined || a.agent !== undefined)
          throw new UsageError('guest-serve runs in the guest and serves the host; it takes no --guest or --agent');
        const settings = settingsOf(a);
        const { guestServe } = await import('../guest/guestServe.js');
        const log = await createLogger({ level: settings.logLevel });
        exitCode = await guestServe({
          port: a.port,
          deviceMap: settings.deviceMap,
          hooksDir: settings.hooksDir,
          hookTimeoutMs: settings.hookTimeoutMs,
          freezeDeadlineMs: settings.freezeDeadlineMs,
          mountPrefixes: settings.mountPrefixes,
          log,
        });
      },
    )
    .command(
      'guest-status',
      'with --guest SOCKET: is the agent in the guest up (its version, hostname, kernel)',
      (c) => c,
      async (a) => {
        if (a.guest === undefined) throw new UsageError("guest-status needs --guest SOCKET (the guest's agent socket)");
        const { GuestHostSide } = await import('../guest/GuestHostSide.js');
        const guest = new GuestHostSide(a.guest, { log: await cliLogger(a, settingsOf(a)), handshakeTimeoutMs: 10_000 });
        try {
          const hello = await guest.hello();
          out(
            a,
            hello,
            `guest agent ${hello.version} on ${hello.hostname} (kernel ${hello.kernel}, pid ${hello.pid}): hook timeout ${hello.hookTimeoutMs / 1000} s, freeze deadline ${hello.freezeDeadlineMs / 1000} s`,
          );
        } finally {
          await guest.close();
        }
      },
    )
    .demandCommand(
      1,
      'give a command: register, backup, start-sync, cancel-sync, restore, history, status, devices, resource-match, doctor, serve, guest-serve or guest-status',
    )
    .recommendCommands()
    .strict()
    .help()
    .alias('h', 'help')
    .version(ARRAYLAB_VERSION)
    .epilogue(EPILOGUE)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((message, err) => {
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
    return report(err);
  }
}

async function doctor(a: GlobalArgs): Promise<DoctorCheck[]> {
  try {
    return await withAgent(a, async (core) => {
      if (!core.doctor) throw new Error('this agent cannot run doctor');
      return core.doctor();
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError || a.agent) throw err;
    // The records could not be opened: still check everything else, and say why.
    const settings = settingsOf(a);
    const { doctorWithoutStore } = await import('../runtime.js');
    const checks = await doctorWithoutStore(settings, await cliLogger(a, settings), a.guest ? { guestSocket: a.guest } : {});
    checks.push({ name: 'records', ok: false, detail: (err as Error).message, fix: `check the state directory ${settings.stateDir} (--state-dir)` });
    return checks;
  }
}

function report(err: unknown): number {
  const say = (line: string) => process.stderr.write(`arraylab-agent: ${line.replace(/\s*\n\s*/g, ' ')}\n`);
  if (err instanceof UsageError) {
    say(err.message.includes('; ') ? err.message : `${err.message} (see 'arraylab-agent --help')`);
    return EXIT_USAGE;
  }
  if (err instanceof ConfigError) {
    say(err.message);
    return EXIT_USAGE;
  }
  if (err instanceof StatusError) {
    say(err.message);
    return EXIT_FAILURE;
  }
  // The host side and the store throw plain Errors whose messages name the fix; the built-in
  // kinds below are bugs.
  if (err instanceof Error && !(err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError || err instanceof SyntaxError)) {
    say(err.message);
    if (process.env.ARRAYLAB_DEBUG) console.error(err);
    return EXIT_FAILURE;
  }
  say(`unexpected error: ${err instanceof Error ? err.message : String(err)}; please report it with the command line used`);
  if (process.env.ARRAYLAB_DEBUG) console.error(err);
  return EXIT_FAILURE;
}
