/** `arraylab remote add|list|show|remove`: the other arrays this one mirrors to (REC). */
import type { Argv } from 'yargs';
import type { RemoteView } from '../../proto/views.js';
import { keyValues, print, printJson, table, yesNo } from '../../proto/util/table.js';
import { withApiOption, withClient } from './client.js';

const namePositional = <T>(c: Argv<T>) =>
  c.positional('name', { type: 'string', demandOption: true, describe: "the remote array's name here (see arraylab remote list)" });

export function remoteCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <name>',
      'register another array by its control API address, so REC pairs can mirror to it (copy start --type rec --dst NAME:VOLUME)',
      (c) =>
        namePositional(c)
          .option('api', { type: 'string', demandOption: true, requiresArg: true, describe: "the remote array's control API, HOST:PORT" })
          .option('offline', { type: 'boolean', default: false, describe: 'add it even if it does not answer now' }),
      async (a) => {
        const r = await withClient(a, (client) => client.addRemote(a.name, a.api, { offline: a.offline }));
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
      ['remove <name>', 'rm <name>'],
      'forget a remote array; refused while REC sessions use it',
      (c) => namePositional(c).option('force', { type: 'boolean', default: false, describe: 'remove it although REC sessions use it (they halt)' }),
      async (a) => {
        await withClient(a, (client) => client.removeRemote(a.name, { force: a.force }));
        if (a.json) printJson({ removed: a.name });
        else print(`removed remote ${a.name}`);
      },
    )
    .demandCommand(1, 'give a remote command: add, list, show or remove');
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
    ['added', r.addedAt],
  ]);
}
