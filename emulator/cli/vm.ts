/**
 * `arraylab vm start|list|stop|console`: lab guests on the array's volumes that outlive the
 * command (qemu detached; see emulator/vm/README.md). Only `start` talks to the array (where
 * its NBD and iSCSI listeners are); the rest work from the run directory.
 */
import type { Argv } from 'yargs';
import type { Socket } from 'node:net';
import { createLogger, isLogLevel, type Logger } from '../../proto/util/log.js';
import type { AttachRequest } from '../vm/attach.js';
import type { NbdPsk } from '../vm/nbdPsk.js';
import { withApiOption, withClient } from './client.js';
import { CommandError, UsageError } from './errors.js';
import { print, printJson, table } from '../../proto/util/table.js';

export interface RunDirArgs {
  'run-dir'?: string | undefined;
}

export function withRunDirOption<T>(y: Argv<T>) {
  return y.option('run-dir', {
    type: 'string',
    requiresArg: true,
    describe: 'where running VMs are recorded [env ARRAYLAB_RUN_DIR; default $XDG_RUNTIME_DIR/arraylab/vms, /run/arraylab/vms for root]',
  });
}

export async function runDirOf(a: RunDirArgs): Promise<string> {
  const { defaultRunDir } = await import('../vm/registry.js');
  return a['run-dir'] ?? defaultRunDir();
}

/** The CLI's own logger: warnings only, unless ARRAYLAB_LOG_LEVEL says otherwise. */
export function cliLogger(): Promise<Logger> {
  const env = process.env.ARRAYLAB_LOG_LEVEL;
  return createLogger({ level: isLogLevel(env) ? env : 'warn' });
}

/** "vol1,vol2:iscsi" (repeatable) with a default --via, into attach requests. */
export function parseAttach(values: unknown, via: string, command: string): AttachRequest[] {
  const list = (Array.isArray(values) ? values : [values])
    .flatMap((v) => String(v).split(','))
    .map((s) => s.trim())
    .filter(Boolean);
  if (list.length === 0) throw new UsageError('--attach: give at least one volume, e.g. --attach vol1,vol2', command);
  return list.map((item) => {
    const m = /^([^:]+)(?::(nbd|iscsi))?$/.exec(item);
    if (!m) throw new UsageError(`--attach: ${JSON.stringify(item)} is not VOLUME or VOLUME:nbd or VOLUME:iscsi; e.g. --attach vol1,vol2:iscsi`, command);
    return { volume: m[1]!, via: (m[2] ?? via) as 'nbd' | 'iscsi' };
  });
}

function seconds(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '-' : `${(ms / 1000).toFixed(2)} s`;
}

function uptime(started: string): string {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(started)) / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export function vmCommands(y: Argv<{ json: boolean }>) {
  return withRunDirOption(y)
    .command(
      'start <name>',
      'boot a lab VM (qemu, detached) with array volumes attached; waits for its shell and prints the boot time',
      (c) =>
        withApiOption(c)
          .positional('name', { type: 'string', demandOption: true, describe: "VM name: letters, digits, '.', '_', '-'" })
          .option('attach', {
            type: 'string',
            demandOption: true,
            requiresArg: true,
            describe: 'volumes, comma-separated (VOL or VOL:nbd / VOL:iscsi); repeatable',
          })
          .option('via', { choices: ['nbd', 'iscsi'] as const, default: 'nbd' as const, describe: 'how volumes attach: NBD as /dev/vdX, iSCSI as /dev/sdX' })
          .option('memory', { type: 'number', default: 1024, requiresArg: true, describe: 'guest memory in MiB (the initramfs lives in it: at least 512)' })
          .option('wait-agent', { type: 'boolean', default: false, describe: 'also wait until the in-guest agent says hello on its port' })
          .option('boot-timeout', { type: 'number', default: 90, requiresArg: true, describe: 'seconds the boot may take' })
          .option('nbd-psk-file', {
            type: 'string',
            requiresArg: true,
            describe:
              "attach NBD disks over TLS-PSK with the key in FILE (psktool IDENTITY:HEX lines, as arraylab host set HOST --nbd-psk prints): the guest sees its host's volumes",
          })
          .option('nbd-psk-identity', { type: 'string', requiresArg: true, describe: 'which key of --nbd-psk-file [default: its only one]' }),
      async (a) => {
        const memory = Number(a.memory);
        if (!Number.isInteger(memory) || memory < 256)
          throw new UsageError(`--memory: ${a.memory} is not a memory size in MiB; give a whole number of at least 512, e.g. 1024`, 'vm start');
        const attach = parseAttach(a.attach, a.via, 'vm start');
        if (a['nbd-psk-identity'] !== undefined && a['nbd-psk-file'] === undefined)
          throw new UsageError('--nbd-psk-identity picks a key of --nbd-psk-file; give the file too', 'vm start');
        let nbdPsk: NbdPsk | undefined;
        if (a['nbd-psk-file'] !== undefined) {
          const { readPskFile } = await import('../vm/nbdPsk.js');
          try {
            nbdPsk = readPskFile(a['nbd-psk-file'], a['nbd-psk-identity']);
          } catch (err) {
            throw new UsageError(`--nbd-psk-file: ${(err as Error).message}`, 'vm start');
          }
        }
        const runDir = await runDirOf(a);
        const log = await cliLogger();
        const { startVm } = await import('../vm/start.js');
        const rec = await withClient(a, (client) =>
          startVm({
            client,
            name: String(a.name),
            attach,
            memoryMiB: memory,
            runDir,
            log,
            bootTimeoutMs: a['boot-timeout'] * 1000,
            ...(a['wait-agent'] ? { waitAgentMs: 120_000 } : {}),
            ...(nbdPsk ? { nbdPsk } : {}),
          }),
        ).catch(asCommandError);
        if (a.json) return printJson({ ...rec, state: 'running' });
        const disks = rec.disks.map((d) => `${d.volume} (${d.via}) as ${d.guestDevice}`).join(', ');
        print(
          [
            `vm ${rec.name} booted to its shell in ${seconds(rec.bootMs)} (pid ${rec.pid})`,
            ...(rec.agentMs !== undefined ? [`agent said hello ${seconds(rec.agentMs)} after launch`] : []),
            `disks: ${disks}`,
            `console: arraylab vm console ${rec.name}${a['run-dir'] ? ` --run-dir ${a['run-dir']}` : ''}`,
            `agent socket: ${rec.sockets.agent}`,
          ].join('\n'),
        );
      },
    )
    .command(
      ['list', 'ls'],
      'list VMs: state, uptime, boot time, disks, agent socket',
      (c) => c,
      async (a) => {
        const { listRecords, vmState } = await import('../vm/registry.js');
        const vms = listRecords(await runDirOf(a)).map((r) => {
          const state = vmState(r);
          return { ...r, state, uptimeSeconds: state === 'exited' ? null : Math.floor((Date.now() - Date.parse(r.started)) / 1000) };
        });
        if (a.json) return printJson(vms);
        if (vms.length === 0) return print('no VMs; start one with: arraylab vm start NAME --attach VOLUME');
        print(
          table(vms, [
            { header: 'NAME', value: (v) => v.name },
            { header: 'STATE', value: (v) => v.state },
            { header: 'PID', value: (v) => String(v.pid), right: true },
            { header: 'UPTIME', value: (v) => (v.state === 'exited' ? '-' : uptime(v.started)) },
            { header: 'BOOT', value: (v) => seconds(v.bootMs) },
            { header: 'DISKS', value: (v) => v.disks.map((d) => `${d.volume}:${d.via}:${d.guestDevice.replace('/dev/', '')}`).join(',') || '-' },
            { header: 'AGENT SOCKET', value: (v) => v.sockets.agent },
          ]),
        );
      },
    )
    .command(
      'stop <name>',
      'power a VM off (sync; poweroff -f on its console, then QMP quit, then SIGKILL)',
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .option('force', { type: 'boolean', default: false, describe: 'skip the guest poweroff: quit qemu at once (unsynced guest writes are lost)' }),
      async (a) => {
        const name = String(a.name);
        const runDir = await runDirOf(a);
        const { readRecord, listRecords } = await import('../vm/registry.js');
        const { stopDetachedGuest } = await import('../vm/detached.js');
        const rec = readRecord(runDir, name);
        if (!rec)
          throw new CommandError(
            unknownVm(
              name,
              runDir,
              listRecords(runDir).map((r) => r.name),
            ),
          );
        const { how, ms } = await stopDetachedGuest(rec, { force: a.force, runDir, log: await cliLogger() }).catch(asCommandError);
        if (a.json) return printJson({ name, stopped: how, ms });
        print(`vm ${name} ${how === 'had already exited' ? 'had already exited; removed its record' : `${how} in ${seconds(ms)}`}`);
      },
    )
    .command(
      'console <name>',
      "attach to a VM's serial console (Ctrl-] detaches), or run one command in it with --command",
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .option('command', {
            alias: 'c',
            type: 'string',
            requiresArg: true,
            describe: 'run this shell command in the guest, print its output, exit with failure unless it exits 0',
          })
          .option('timeout', { type: 'number', default: 120, requiresArg: true, describe: 'seconds --command may take' }),
      async (a) => {
        const name = String(a.name);
        const runDir = await runDirOf(a);
        const { readRecord, listRecords, vmState } = await import('../vm/registry.js');
        const rec = readRecord(runDir, name);
        if (!rec)
          throw new CommandError(
            unknownVm(
              name,
              runDir,
              listRecords(runDir).map((r) => r.name),
            ),
          );
        if (vmState(rec) === 'exited') throw new CommandError(`vm ${name} has exited; see ${rec.files.consoleLog}, remove it with: arraylab vm stop ${name}`);
        const { openConsole } = await import('../vm/detached.js');
        const { shell, socket } = await openConsole(rec).catch(asCommandError);
        try {
          if (a.command !== undefined) {
            const r = await shell.run(a.command, { timeoutMs: a.timeout * 1000 }).catch((err: Error) => {
              throw new CommandError(`${err.message.split('\n')[0]}; is another client attached to its console (arraylab vm console ${name})?`);
            });
            if (a.json) printJson({ name, command: a.command, code: r.code, output: r.output });
            else process.stdout.write(r.output);
            if (r.code !== 0) throw new CommandError(`vm ${name}: \`${a.command}\` exited ${r.code}`);
            return;
          }
          await attachTerminal(name, socket);
        } finally {
          socket.destroy();
        }
      },
    )
    .demandCommand(1, 'vm needs a subcommand: start, list, stop or console');
}

/** Plain errors from emulator/vm are operation failures (exit 1), shown as they are. */
export function asCommandError(err: unknown): never {
  if (err instanceof Error && err.constructor === Error) throw new CommandError(err.message.split('\n').join('\n  '));
  throw err;
}

function unknownVm(name: string, runDir: string, names: string[]): string {
  return `no vm named ${name} in ${runDir} (${names.length ? `there are: ${names.join(', ')}` : 'there are none'}); list them with: arraylab vm list, or give the --run-dir it was started with`;
}

/**
 * stdin to the console, the console to stdout. On a terminal: raw mode, Ctrl-] (0x1d) detaches.
 * From a pipe: what it holds is typed, and once it ends and the console has been quiet for a
 * second, the command detaches.
 */
function attachTerminal(name: string, socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const stdin = process.stdin;
    const tty = stdin.isTTY === true;
    let finished = false;
    let quietTimer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(quietTimer);
      if (tty) stdin.setRawMode(false);
      stdin.pause();
      stdin.removeAllListeners('data');
      if (tty) process.stderr.write(`\r\ndetached from vm ${name}\r\n`);
      resolve();
    };
    const settle = (): void => {
      clearTimeout(quietTimer);
      quietTimer = setTimeout(finish, 1000);
    };
    let stdinEnded = false;
    socket.removeAllListeners('data');
    socket.on('data', (d: Buffer) => {
      process.stdout.write(d);
      if (stdinEnded) settle();
    });
    socket.on('close', finish);
    if (tty) {
      stdin.setRawMode(true);
      process.stderr.write(`connected to vm ${name}'s console; Ctrl-] detaches\r\n`);
    }
    stdin.on('data', (d: Buffer) => {
      const cut = tty ? d.indexOf(0x1d) : -1;
      if (cut >= 0) {
        if (cut > 0) socket.write(d.subarray(0, cut));
        finish();
        return;
      }
      socket.write(d);
    });
    stdin.on('end', () => {
      stdinEnded = true;
      settle();
    });
    // A fresh prompt, so the user sees where they are.
    if (tty) socket.write('\n');
    stdin.resume();
  });
}
