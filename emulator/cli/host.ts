/** `arraylab host add|remove|map|unmap|list|show|set|add-initiator|remove-initiator`: host affinity and host credentials. */
import { readFileSync, statSync } from 'node:fs';
import type { Argv } from 'yargs';
import type { HostListView, HostView, IscsiSessionView } from '../../proto/views.js';
import { checkIscsiName, IscsiNameError } from '../array/iscsiNames.js';
import { HOST_NAME_PATTERN, MAX_LUN } from '../array/types.js';
import { withApiOption, withClient } from './client.js';
import { CommandError, UsageError } from './errors.js';
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

/**
 * A secret from a file (never from the command line, where ps and shell history would show it):
 * the file's text without one trailing newline. A file others may read gets a warning.
 */
function secretFile(path: unknown, flag: string, command: string): string {
  const file = String(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
    if ((statSync(file).mode & 0o077) !== 0) process.stderr.write(`arraylab: warning: ${file} (${flag}) may be read by other users; chmod 600 it\n`);
  } catch (err) {
    throw new CommandError(`cannot read ${flag} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; give a file holding the secret`);
  }
  const secret = text.replace(/\r?\n$/, '');
  if (secret.length === 0) throw new UsageError(`${flag} ${file} is empty; put the secret in it (12 to 16 characters for Windows initiators)`, command);
  if (/[\r\n]/.test(secret)) throw new UsageError(`${flag} ${file} holds more than one line; put the secret alone on one line`, command);
  return secret;
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
        const { unmapped, after } = await withClient(a, async (client) => ({
          ...(await client.deleteHost(name, { force: a.force })),
          after: await client.listHosts(),
        }));
        if (a.json) return printJson({ removed: name, unmapped, hostAffinity: after.hostAffinity });
        const luns = unmapped.length
          ? ` and unmapped its ${unmapped.length === 1 ? 'LUN' : `${unmapped.length} LUNs`} (${unmapped.map((l) => `LUN ${l.lun} ${l.volume}`).join(', ')})`
          : '';
        // The last host going changes what everyone sees: say which way.
        const last =
          after.hosts.length > 0
            ? ''
            : after.hostAffinity
              ? '; no host is left and host affinity stays on (iscsi.requireHostAffinity): no initiator or NBD client sees any volume'
              : '; no host is left, so host affinity is off: every initiator and NBD client sees every volume (set iscsi.requireHostAffinity to prevent this)';
        print(`removed host ${name}${luns}${last}`);
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
      'set <name>',
      "set or clear a host's NBD identities (TLS-PSK key, certificate) and iSCSI CHAP",
      (c) =>
        c
          .positional('name', { type: 'string', demandOption: true })
          .option('nbd-psk', { type: 'boolean', describe: 'make a new 256-bit TLS-PSK key for NBD and print it once, as IDENTITY:HEX for the client PSK file' })
          .option('nbd-psk-identity', {
            type: 'string',
            requiresArg: true,
            describe: 'PSK identity for --nbd-psk [default: the current one, else the host name]',
          })
          .option('clear-nbd-psk', { type: 'boolean', describe: 'remove the PSK identity and key' })
          .option('nbd-cert-fingerprint', {
            type: 'string',
            requiresArg: true,
            describe: "SHA-256 fingerprint of the host's NBD client certificate (colons optional)",
          })
          .option('clear-nbd-cert-fingerprint', { type: 'boolean' })
          .option('nbd-cert-subject', { type: 'string', requiresArg: true, describe: "subject CN of the host's NBD client certificate" })
          .option('clear-nbd-cert-subject', { type: 'boolean' })
          .option('chap-user', { type: 'string', requiresArg: true, describe: "CHAP user the host's initiators log in with (needs --chap-secret-file)" })
          .option('chap-secret-file', {
            type: 'string',
            requiresArg: true,
            describe: 'file holding the CHAP secret (12 to 255 bytes); never given on the command line',
          })
          .option('mutual-user', { type: 'string', requiresArg: true, describe: 'mutual CHAP: the user the target answers with' })
          .option('mutual-secret-file', { type: 'string', requiresArg: true, describe: "file holding the target's mutual CHAP secret (not the CHAP secret)" })
          .option('clear-chap', { type: 'boolean', describe: "remove the host's CHAP: its initiators then follow iscsi.chap" }),
      async (a) => {
        const command = 'host set';
        const name = hostName(a.name, command);
        const chapGiven = a['chap-user'] !== undefined || a['chap-secret-file'] !== undefined;
        if (chapGiven && (a['chap-user'] === undefined || a['chap-secret-file'] === undefined))
          throw new UsageError('--chap-user and --chap-secret-file go together', command);
        if ((a['mutual-user'] !== undefined || a['mutual-secret-file'] !== undefined) && !chapGiven)
          throw new UsageError('mutual CHAP (--mutual-user, --mutual-secret-file) needs --chap-user and --chap-secret-file too', command);
        if ((a['mutual-user'] === undefined) !== (a['mutual-secret-file'] === undefined))
          throw new UsageError('--mutual-user and --mutual-secret-file go together', command);
        if (a['nbd-psk-identity'] !== undefined && !a['nbd-psk'])
          throw new UsageError('--nbd-psk-identity goes with --nbd-psk (a new identity needs a new key)', command);
        const chap = chapGiven
          ? {
              user: String(a['chap-user']),
              secret: secretFile(a['chap-secret-file'], '--chap-secret-file', command),
              mutualUser: a['mutual-user'] === undefined ? '' : String(a['mutual-user']),
              mutualSecret: a['mutual-secret-file'] === undefined ? '' : secretFile(a['mutual-secret-file'], '--mutual-secret-file', command),
            }
          : undefined;
        const change = {
          generateNbdPsk: a['nbd-psk'] === true,
          clearNbdPsk: a['clear-nbd-psk'] === true,
          clearNbdCertFingerprint: a['clear-nbd-cert-fingerprint'] === true,
          clearNbdCertSubject: a['clear-nbd-cert-subject'] === true,
          clearChap: a['clear-chap'] === true,
          ...(a['nbd-psk-identity'] !== undefined ? { nbdPskIdentity: String(a['nbd-psk-identity']) } : {}),
          ...(a['nbd-cert-fingerprint'] !== undefined ? { nbdCertFingerprint: String(a['nbd-cert-fingerprint']) } : {}),
          ...(a['nbd-cert-subject'] !== undefined ? { nbdCertSubject: String(a['nbd-cert-subject']) } : {}),
          ...(chap ? { chap } : {}),
        };
        const r = await withClient(a, (client) => client.setHostCredentials(name, change));
        const pskLine = r.nbdPsk ? `${r.nbdPsk.identity}:${r.nbdPsk.key.toString('hex')}` : undefined;
        if (a.json)
          return printJson({
            host: r.host,
            ...(pskLine ? { nbdPsk: { identity: r.nbdPsk!.identity, key: r.nbdPsk!.key.toString('hex'), pskFileLine: pskLine } } : {}),
          });
        const lines = [`set credentials of host ${name}: ${credentialsText(r.host) || 'none left'}`];
        if (pskLine) {
          lines.push(
            'the NBD PSK key, shown only now: put this line in the client PSK file (psktool format; qemu tls-creds-psk keys.psk, nbdinfo --psk-file):',
            pskLine,
          );
        }
        print(lines.join('\n'));
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
    .demandCommand(1, 'host needs a subcommand: add, remove, map, unmap, list, show, set, add-initiator or remove-initiator');
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
        { header: 'CREDENTIALS', value: (r) => (r.host ? credentialKinds(r.host) : '') },
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
    ['credentials', credentialsText(h) || `none; set some with: arraylab host set ${h.name} --nbd-psk | --chap-user USER --chap-secret-file FILE`],
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

/** Identities and user names, never a key or secret (the API has none to give). */
function credentialsText(h: HostView): string {
  const c = h.credentials;
  const parts: string[] = [];
  if (c.nbdPskIdentity !== undefined) parts.push(`NBD PSK identity ${c.nbdPskIdentity}`);
  if (c.nbdCertFingerprint !== undefined) parts.push(`NBD certificate SHA-256 ${c.nbdCertFingerprint}`);
  if (c.nbdCertSubject !== undefined) parts.push(`NBD certificate CN ${c.nbdCertSubject}`);
  if (c.chapUser !== undefined) parts.push(`CHAP user ${c.chapUser}${c.chapMutualUser !== undefined ? ` (mutual: ${c.chapMutualUser})` : ''}`);
  return parts.join('; ');
}

/** For `host list`: which kinds are set. */
function credentialKinds(h: HostView): string {
  const c = h.credentials;
  const kinds = [
    c.nbdPskIdentity !== undefined ? 'psk' : '',
    c.nbdCertFingerprint !== undefined || c.nbdCertSubject !== undefined ? 'cert' : '',
    c.chapUser !== undefined ? (c.chapMutualUser !== undefined ? 'chap+mutual' : 'chap') : '',
  ].filter((k) => k !== '');
  return kinds.join(',') || '-';
}

function sessionText(s: IscsiSessionView): string {
  return `${s.initiatorName} from ${s.remoteAddresses.join(', ') || '?'} (${s.luns.length} LUN${s.luns.length === 1 ? '' : 's'})`;
}
