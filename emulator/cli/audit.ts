/** `arraylab audit`: the calls that changed (or tried to change) the array, newest first. */
import type { Argv } from 'yargs';
import { print, printJson, table } from '../../proto/util/table.js';
import { withApiOption, withClient } from './client.js';
import { UsageError } from './errors.js';
import { parseDuration } from './user.js';

export function auditOptions(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .option('since', { type: 'string', requiresArg: true, describe: 'from this instant (RFC 3339) or this long ago (e.g. 1h, 2d)' })
    .option('user', { type: 'string', requiresArg: true, describe: "only this user's calls" })
    .option('limit', { type: 'number', requiresArg: true, default: 100, describe: 'at most this many entries (up to 10000)' });
}

export async function auditCommand(a: {
  api?: string | undefined;
  since?: string | undefined;
  user?: string | undefined;
  limit: number;
  json: boolean;
  'token-file'?: string | undefined;
}): Promise<void> {
  let since: string | undefined;
  if (a.since !== undefined) {
    if (/^\d+(\.\d+)?\s*[smhd]?$/.test(a.since)) since = new Date(Date.now() - parseDuration(a.since, '--since', 'audit') * 1000).toISOString();
    else if (!Number.isNaN(Date.parse(a.since))) since = new Date(a.since).toISOString();
    else throw new UsageError(`--since: ${JSON.stringify(a.since)} is neither an instant (2026-12-06T10:00:00Z) nor a duration (1h)`, 'audit');
  }
  if (!Number.isInteger(a.limit) || a.limit < 1 || a.limit > 10_000) throw new UsageError('--limit: give a whole number from 1 to 10000', 'audit');
  const entries = await withClient(a, (client) => client.listAudit({ ...(since ? { since } : {}), ...(a.user ? { user: a.user } : {}), limit: a.limit }));
  if (a.json) return printJson({ entries });
  if (entries.length === 0) return print('no audit entries match');
  print(
    table(entries, [
      { header: 'AT', value: (e) => e.at },
      { header: 'USER', value: (e) => e.user || '(none)' },
      { header: 'TENANT', value: (e) => e.tenant || '-' },
      { header: 'PEER', value: (e) => e.peer },
      { header: 'CALL', value: (e) => e.rpc.replace(/^arraylab\.v1\./, '') },
      { header: 'TARGET', value: (e) => e.target || '-' },
      { header: 'RESULT', value: (e) => e.result },
    ]),
  );
}
