/**
 * `arraylab user add|list|show|rotate|remove|whoami`: who may use the control API, in which
 * role and tenant. Tokens are printed once, at add and rotate; the array keeps only a hash.
 */
import type { Argv } from 'yargs';
import { ApiError } from '../../proto/errors.js';
import { isRole, ROLES } from '../auth/permissions.js';
import type { UserView } from '../../proto/views.js';
import { keyValues, print, printJson, table } from '../../proto/util/table.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';

/** Roles (emulator/auth/permissions.ts has the matrix). */
const ROLE_HELP = ROLES.join(', ');

const namePositional = <T>(c: Argv<T>) => c.positional('name', { type: 'string', demandOption: true, describe: 'the user name' });

/** "8h", "30m", "7d", "90s" or a number of seconds -> seconds. */
export function parseDuration(text: string, flag: string, command: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${flag}: ${JSON.stringify(text)} is not a duration; use e.g. 90s, 30m, 8h or 7d`, command);
  const n = Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? 's') as 's' | 'm' | 'h' | 'd'];
  if (n <= 0) throw new UsageError(`${flag}: give a positive duration`, command);
  return Math.round(n);
}

export function userCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      'add <name>',
      'create a user of the control API; prints its token once',
      (c) =>
        namePositional(c)
          .option('role', { type: 'string', demandOption: true, requiresArg: true, describe: `one of ${ROLE_HELP}` })
          .option('tenant', { type: 'string', requiresArg: true, describe: 'the tenant it belongs to (monitor, backup-operator, operator only)' })
          .option('expires', { type: 'string', requiresArg: true, describe: 'the token expires after this long, e.g. 8h or 7d [default: never]' })
          .option('cert-subject', { type: 'string', requiresArg: true, describe: 'a TLS client certificate with this subject CN is this user (mutual TLS)' })
          .option('cert-fingerprint', { type: 'string', requiresArg: true, describe: 'a TLS client certificate with this SHA-256 fingerprint is this user' })
          .option('token', {
            type: 'boolean',
            default: true,
            // yargs reads --no-token as token=false (boolean negation); an option named
            // "no-token" made --no-token an unknown argument "token".
            describe: 'give the user a token; --no-token: certificate only (with --cert-subject or --cert-fingerprint)',
          }),
      async (a) => {
        const expires = a.expires !== undefined ? parseDuration(a.expires, '--expires', 'user add') : undefined;
        if (!isRole(a.role)) throw new UsageError(`--role: unknown role ${JSON.stringify(a.role)}; use one of ${ROLES.join(', ')}`, 'user add');
        const res = await withClient(a, (client) =>
          client.addUser({
            name: a.name,
            role: a.role,
            ...(a.tenant !== undefined ? { tenant: a.tenant } : {}),
            ...(expires !== undefined ? { expiresInSeconds: expires } : {}),
            ...(a['cert-subject'] !== undefined ? { certSubject: a['cert-subject'] } : {}),
            ...(a['cert-fingerprint'] !== undefined ? { certFingerprint: a['cert-fingerprint'] } : {}),
            noToken: !a.token,
          }),
        );
        if (a.json) return printJson(res);
        print(tokenMessage('added', res.user, res.token));
      },
    )
    .command(
      ['list', 'ls'],
      'list the users',
      (c) => c,
      async (a) => {
        const users = await withClient(a, (client) => client.listUsers());
        if (a.json) return printJson({ users });
        print(
          table(users, [
            { header: 'NAME', value: (u) => u.name },
            { header: 'ROLE', value: (u) => u.role },
            { header: 'TENANT', value: (u) => u.tenant || '-' },
            { header: 'CREDENTIALS', value: (u) => credentials(u) },
            { header: 'EXPIRES', value: (u) => u.expiresAt || 'never' },
          ]),
        );
      },
    )
    .command(
      'show <name>',
      'show one user and what its role allows',
      (c) => namePositional(c),
      async (a) => {
        const u = await withClient(a, (client) => client.getUser(a.name));
        if (a.json) return printJson(u);
        print(showUser(u));
      },
    )
    .command(
      'whoami',
      'show the user this command runs as, and what it may do',
      (c) => c,
      async (a) => {
        // An array with api.auth off serves no AccessService: WhoAmI is UNIMPLEMENTED there.
        const u = await withClient(a, (client) => client.whoAmI()).catch((err: unknown) => {
          if (err instanceof ApiError && /\bUNIMPLEMENTED\b/.test(err.message)) return undefined;
          throw err;
        });
        if (u === undefined || u.name === '') {
          if (a.json) return printJson({ name: '', authentication: 'off' });
          return print('the API has authentication off: every caller may do anything');
        }
        if (a.json) return printJson(u);
        print(showUser(u));
      },
    )
    .command(
      'rotate <name>',
      'give a user a new token (the old one stops working at once); prints it once',
      (c) => namePositional(c).option('expires', { type: 'string', requiresArg: true, describe: 'the new token expires after this long [default: never]' }),
      async (a) => {
        const expires = a.expires !== undefined ? parseDuration(a.expires, '--expires', 'user rotate') : undefined;
        const res = await withClient(a, (client) => client.rotateUser(a.name, expires));
        if (a.json) return printJson(res);
        print(tokenMessage('rotated', res.user, res.token));
      },
    )
    .command(
      ['remove <name>', 'rm <name>'],
      'remove a user (its token stops working at once); the last admin cannot be removed',
      (c) => namePositional(c),
      async (a) => {
        await withClient(a, (client) => client.removeUser(a.name));
        if (a.json) printJson({ removed: a.name });
        else print(`removed user ${a.name}`);
      },
    )
    .demandCommand(1, 'give a user command: add, list, show, whoami, rotate or remove');
}

function credentials(u: UserView): string {
  const c = [u.hasToken ? 'token' : '', u.certSubject ? `cert CN=${u.certSubject}` : '', u.certFingerprint ? `cert ${u.certFingerprint.slice(0, 16)}...` : ''];
  return c.filter((x) => x !== '').join(', ') || '-';
}

function showUser(u: UserView): string {
  return keyValues([
    ['name', u.name],
    ['role', u.role],
    ['tenant', u.tenant || '- (array-wide)'],
    ['credentials', credentials(u)],
    ['created', u.createdAt],
    ['expires', u.expiresAt || 'never'],
    ['token rotated', u.tokenRotatedAt || '-'],
    ['may', u.permissions.join(', ')],
  ]);
}

function tokenMessage(what: string, u: UserView, token: string): string {
  if (token === '') return `${what} user ${u.name} (role ${u.role}${u.tenant ? `, tenant ${u.tenant}` : ''}); it authenticates by certificate only`;
  return [
    `${what} user ${u.name} (role ${u.role}${u.tenant ? `, tenant ${u.tenant}` : ''}${u.expiresAt ? `, expires ${u.expiresAt}` : ''}). Its token, shown only now:`,
    '',
    `  ${token}`,
    '',
    `Keep it in a file only its user can read (chmod 600) and pass --token-file FILE, or set ARRAYLAB_TOKEN.`,
  ].join('\n');
}
