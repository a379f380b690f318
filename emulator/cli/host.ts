/** `arraylab host add|remove|map|unmap|list|show|add-initiator|remove-initiator`: host affinity. */
import type { Argv } from 'yargs';
import type { HostListView, HostView, IscsiSessionView } from '../../proto/views.js';
import { checkIscsiName, IscsiNameError } from '../array/iscsiNames.js';
import { HOST_NAME_PATTERN, MAX_LUN } from '../array/types.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { keyValues, print, printJson, table } from '../../proto/util/table.js';

/** Checked here too, so a typo is a usage error (exit 2) before anything is sent. */
function hostName(text: unknown, command: string): string {
  const name = String(text);
  if (!HOST_NAME_PATTERN.test(name)) {
    throw new UsageError(
      `host name ${JSON.stringify(name)} is not valid; use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      command,
    );
  }
  return name;
}

function initiatorName(text: unknown, flag: string, command: string): string {
  try {
    return checkIscsiName(String(text));
  } catch (err) {
    if (err instanceof IscsiNameError) throw new UsageError(`${flag}: ${err.message}`, command);
    throw err;
  }
}

function lunOption(text: unknown, command: string): number | undefined {
  if (text === undefined) return undefined;
  const s = String(text).trim();
  const n = Number(s);
  if (!/^\d+$/.test(s) || n > MAX_LUN) {
    throw new UsageError(
      `--lun: ${JSON.stringify(String(text))} is not a LUN; give a whole number from 0 to ${MAX_LUN}, or leave --lun out for the lowest free one`,
      command,
    );
  }
  return n;
}

/** A repeatable string option arrives as a string or an array of them. */
function many(value: unknown): unknown[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

export function hostCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <name>',
      'define a host by the iSCSI initiator names it logs in with; it then sees only the volumes mapped to it',
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true, describe: "host name: letters, digits, '.', '_', '-'" })
          .option('initiator', { type: 'string', demandOption: true, requiresArg: true, describe: 'initiator name (iqn., eui. or naa.); repeat for several' }),
      async (a) => {
        const name = hostName(a.name, 'host add');
        const initiators = many(a.initiator).map((i) => initiatorName(i, '--initiator', 'host add'));
        const host = await withClient(a, (client) => client.createHost(name, initiators));
        if (a.json) return printJson(host);
        print(
          `added host ${host.name} with initiator${host.initiators.length === 1 ? '' : 's'} ${host.initiators.join(', ')}; map volumes to it with: arraylab host map ${host.name} VOLUME`,
        );
      },
    )
    .command(
      ['remove <name>', 'rm <name>'],
      'remove a host (refused while it has LUNs mapped, unless --force)',
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .option('force', { type: 'boolean', default: false, describe: 'also when volumes are mapped to it: they are unmapped' }),
      async (a) => {
        const name = hostName(a.name, 'host remove');
        const { unmapped } = await withClient(a, (client) => client.deleteHost(name, { force: a.force }));
        if (a.json) return printJson({ removed: name, unmapped });
        const luns = unmapped.length
          ? ` and unmapped its ${unmapped.length === 1 ? 'LUN' : `${unmapped.length} LUNs`} (${unmapped.map((l) => `LUN ${l.lun} ${l.volume}`).join(', ')})`
          : '';
        print(`removed host ${name}${luns}`);
      },
    )
    .command(
      'map <name> <volume>',
      "map a volume into a host's LUN map",
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true, describe: 'host' })
          .positional('volume', { type: 'string', demandOption: true })
          .option('lun', { type: 'string', requiresArg: true, describe: `LUN number 0-${MAX_LUN} [default: the lowest free one]` }),
      async (a) => {
        const name = hostName(a.name, 'host map');
        const lun = lunOption(a.lun, 'host map');
        const volume = String(a.volume);
        const r = await withClient(a, (client) => client.mapVolume(name, volume, lun));
        if (a.json) return printJson({ host: name, volume, lun: r.lun });
        print(`mapped volume ${volume} to host ${name} at LUN ${r.lun}`);
      },
    )
    .command(
      'unmap <name> <volume>',
      "remove a volume from a host's LUN map",
      (c) => c.positional('name', { type: 'string', demandOption: true, describe: 'host' }).positional('volume', { type: 'string', demandOption: true }),
      async (a) => {
        const name = hostName(a.name, 'host unmap');
        const volume = String(a.volume);
        const r = await withClient(a, (client) => client.unmapVolume(name, volume));
        if (a.json) return printJson({ host: name, volume, lun: r.lun });
        print(`unmapped volume ${volume} (LUN ${r.lun}) from host ${name}`);
      },
    )
    .command(
      ['list', 'ls'],
      'list hosts with their initiators, LUN counts and logged-in sessions',
      (c) => c,
      async (a) => {
        const list = await withClient(a, (client) => client.listHosts());
        if (a.json) return printJson(list);
        print(hostList(list));
      },
    )
    .command(
      'show <name>',
      'show one host: initiators, LUN map and sessions',
      (c) => c.positional('name', { type: 'string', demandOption: true }),
      async (a) => {
        const name = hostName(a.name, 'host show');
        const host = await withClient(a, (client) => client.getHost(name));
        if (a.json) return printJson(host);
        print(hostDetails(host));
      },
    )
    .command(
      'add-initiator <name> <initiator>',
      'add an initiator name to a host',
      (c) => c.positional('name', { type: 'string', demandOption: true }).positional('initiator', { type: 'string', demandOption: true }),
      async (a) => {
        const name = hostName(a.name, 'host add-initiator');
        const initiator = initiatorName(a.initiator, 'initiator', 'host add-initiator');
        const host = await withClient(a, (client) => client.addHostInitiator(name, initiator));
        if (a.json) return printJson(host);
        print(`added initiator ${initiator} to host ${name}`);
      },
    )
    .command(
      'remove-initiator <name> <initiator>',
      'remove an initiator name from a host (not its last one)',
      (c) => c.positional('name', { type: 'string', demandOption: true }).positional('initiator', { type: 'string', demandOption: true }),
      async (a) => {
        const name = hostName(a.name, 'host remove-initiator');
        const initiator = String(a.initiator);
        const host = await withClient(a, (client) => client.removeHostInitiator(name, initiator));
        if (a.json) return printJson(host);
        print(`removed initiator ${initiator.toLowerCase()} from host ${name}`);
      },
    )
    .demandCommand(1, 'host needs a subcommand: add, remove, map, unmap, list, show, add-initiator or remove-initiator');
}

function hostList(l: HostListView): string {
  const lines: string[] = [];
  if (l.hosts.length === 0) {
    if (l.hostAffinity) {
      lines.push(
        'no hosts, and host affinity is required (iscsi.requireHostAffinity): no initiator sees any volume; add one with: arraylab host add NAME --initiator IQN',
      );
    } else {
      const seen = l.defaultLuns.length ? l.defaultLuns.map((d) => `LUN ${d.lun} ${d.volume}`).join(', ') : 'no volumes yet';
      lines.push(`no hosts: host affinity is off, so every initiator sees every volume (${seen}); add one with: arraylab host add NAME --initiator IQN`);
    }
  } else {
    type Row = { host?: HostView; initiator: string };
    const rows: Row[] = l.hosts.flatMap((h) => h.initiators.map((initiator, i) => (i === 0 ? { host: h, initiator } : { initiator })));
    lines.push(
      table(rows, [
        { header: 'HOST', value: (r) => r.host?.name ?? '' },
        { header: 'INITIATORS', value: (r) => r.initiator },
        { header: 'LUNS', value: (r) => (r.host ? String(r.host.luns.length) : ''), right: true },
        { header: 'SESSIONS', value: (r) => (r.host ? String(r.host.sessions.length) : ''), right: true },
      ]).trimEnd(),
    );
    lines.push("host affinity on: an initiator sees only its host's LUNs; one in no host sees none");
  }
  if (l.otherSessions.length > 0) lines.push(`sessions of initiators in no host: ${l.otherSessions.map(sessionText).join('; ')}`);
  return lines.join('\n');
}

function hostDetails(h: HostView): string {
  const head = keyValues([
    ['name', h.name],
    ['initiators', h.initiators.join(', ')],
    ['created', h.createdAt],
    ['sessions', h.sessions.length ? h.sessions.map(sessionText).join('; ') : 'none'],
    ['luns', h.luns.length ? String(h.luns.length) : `none; map one with: arraylab host map ${h.name} VOLUME`],
  ]);
  if (h.luns.length === 0) return head;
  const luns = table(h.luns, [
    { header: 'LUN', value: (l) => String(l.lun), right: true },
    { header: 'VOLUME', value: (l) => l.volume },
    { header: 'UUID', value: (l) => l.volumeUuid },
  ]);
  return `${head}\n${luns}`;
}

function sessionText(s: IscsiSessionView): string {
  return `${s.initiatorName} from ${s.remoteAddresses.join(', ') || '?'} (${s.luns.length} LUN${s.luns.length === 1 ? '' : 's'})`;
}
