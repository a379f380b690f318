/** `arraylab remote add|list|show|remove`: the other arrays this one mirrors to (REC). */
import type { Argv } from 'yargs';
import type { RemoteView } from '../../proto/views.js';
import { keyValues, print, printJson, table, yesNo } from '../../proto/util/table.js';
import { formatSize, parseSize } from '../../proto/util/units.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { readTokenFile } from '../../proto/auth/credentials.js';

const namePositional = <T>(c: Argv<T>) =>
  c.positional('name', { type: 'string', demandOption: true, describe: "the remote array's name here (see arraylab remote list)" });

export function remoteCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <name>',
      'register another array by its control API address, so REC pairs can mirror to it (copy start --type rec --dst NAME:VOLUME)',
      (c) =>
        namePositional(c)
          // --api names the remote here (as `remote add NAME --api HOST:PORT` reads); the array
          // that registers it is --array, else ARRAYLAB_API, else the default address.
          .option('api', { type: 'string', demandOption: true, requiresArg: true, describe: "the REMOTE array's control API, HOST:PORT" })
          .option('array', { type: 'string', requiresArg: true, describe: 'the array that registers it, HOST:PORT [env ARRAYLAB_API; default 127.0.0.1:7390]' })
          // As --api, --token-file is the remote's here: the token this array will call it with.
          .option('token-file', {
            type: 'string',
            requiresArg: true,
            describe:
              'file holding a token of the REMOTE array (a user of role replication there, made with arraylab user add on it) [default: found as the CLI finds one]',
          })
          .option('array-token-file', {
            type: 'string',
            requiresArg: true,
            describe: 'file holding the token for the array that registers it [env ARRAYLAB_TOKEN]',
          })
          .option('offline', { type: 'boolean', default: false, describe: 'add it even if it does not answer now' }),
      async (a) => {
        let token: string | undefined;
        if (a['token-file'] !== undefined) {
          try {
            token = readTokenFile(a['token-file']);
          } catch (err) {
            throw new UsageError(`--token-file: ${(err as Error).message}`, 'remote add');
          }
        }
        const local = { ...a, api: a.array, 'token-file': a['array-token-file'] };
        const r = await withClient(local, (client) => client.addRemote(a.name, a.api, { offline: a.offline, ...(token !== undefined ? { token } : {}) }));
        if (a.json) return printJson(r);
        print(
          r.reachable
            ? `added remote ${r.name}: array ${r.arrayId} at ${r.api}, NBD ${r.nbd || '-'}`
            : `added remote ${r.name} at ${r.api} (not reachable now: ${r.error})`,
        );
      },
    )
    .command(
      ['list', 'ls'],
      'list the remote arrays',
      (c) => c,
      async (a) => {
        const remotes = await withClient(a, (client) => client.listRemotes());
        if (a.json) return printJson({ remotes });
        if (remotes.length === 0) return print('no remote arrays; add one with: arraylab remote add NAME --api HOST:PORT');
        print(
          table(remotes, [
            { header: 'NAME', value: (r) => r.name },
            { header: 'API', value: (r) => r.api },
            { header: 'ARRAY', value: (r) => r.arrayId || '-' },
            { header: 'NBD', value: (r) => r.nbd || '-' },
            { header: 'REACHABLE', value: (r) => (r.error ? `no: ${r.error}` : yesNo(r.reachable)) },
            { header: 'SESSIONS', value: (r) => String(r.sessionCount), right: true },
          ]),
        );
      },
    )
    .command(
      'show <name>',
      'show one remote array; asks it now whether it answers',
      (c) => namePositional(c),
      async (a) => {
        const r = await withClient(a, (client) => client.getRemote(a.name, { probe: true }));
        if (a.json) return printJson(r);
        print(showRemote(r));
      },
    )
    .command(
      'set <name>',
      'change the REC buffer to a remote (consistency mode); pairs on it follow at once',
      (c) =>
        namePositional(c)
          .option('buffer', { type: 'string', requiresArg: true, describe: 'bytes of write data it holds, e.g. 128MiB (1MiB to 8GiB)' })
          .option('halt-wait', { type: 'number', requiresArg: true, describe: 'seconds a write waits for space before the pairs halt: 0, 5, 10 or 15' })
          .option('monitor-time', { type: 'number', requiresArg: true, describe: 'seconds the buffer may stay half full before the pairs halt' })
          .option('cycle-ms', { type: 'number', requiresArg: true, describe: 'a cycle closes this often (ms)' }),
      async (a) => {
        let bytes: number | undefined;
        if (a.buffer !== undefined) {
          try {
            bytes = parseSize(a.buffer);
          } catch (err) {
            throw new UsageError(`--buffer: ${(err as Error).message}`, 'remote set');
          }
        }
        const change = {
          ...(bytes !== undefined ? { bytes } : {}),
          ...(a['halt-wait'] !== undefined ? { haltWaitMs: Math.round(a['halt-wait'] * 1000) } : {}),
          ...(a['monitor-time'] !== undefined ? { monitorMs: Math.round(a['monitor-time'] * 1000) } : {}),
          ...(a['cycle-ms'] !== undefined ? { cycleMs: Math.round(a['cycle-ms']) } : {}),
        };
        if (Object.keys(change).length === 0) throw new UsageError('give at least one of --buffer, --halt-wait, --monitor-time, --cycle-ms', 'remote set');
        const r = await withClient(a, (client) => client.setRemoteBuffer(a.name, change));
        if (a.json) return printJson(r);
        print(showRemote(r));
      },
    )
    .command(
      ['remove <name>', 'rm <name>'],
      'forget a remote array; refused while REC sessions use it',
      (c) => namePositional(c).option('force', { type: 'boolean', default: false, describe: 'remove it although REC sessions use it (they halt)' }),
      async (a) => {
        await withClient(a, (client) => client.removeRemote(a.name, { force: a.force }));
        if (a.json) printJson({ removed: a.name });
        else print(`removed remote ${a.name}`);
      },
    )
    .demandCommand(1, 'give a remote command: add, list, show, set or remove');
}

function showRemote(r: RemoteView): string {
  return keyValues([
    ['name', r.name],
    ['api', r.api],
    ['array id', r.arrayId || '-'],
    ['nbd', r.nbd || '-'],
    ['reachable', r.reachable ? 'yes' : `no${r.error ? `: ${r.error}` : ''}`],
    ['version', r.version || '-'],
    ['REC sessions', String(r.sessionCount)],
    [
      'REC buffer',
      `${formatSize(r.buffer.bytes)}; halt wait ${r.buffer.haltWaitMs / 1000} s; monitoring time ${r.buffer.monitorMs / 1000} s; cycle ${r.buffer.cycleMs} ms`,
    ],
    ['added', r.addedAt],
  ]);
}
