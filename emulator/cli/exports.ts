/** `arraylab export list`: every export with the clients connected to it. */
import type { Argv } from 'yargs';
import type { ExportInfo } from '../../proto/views.js';
import { formatSize } from '../../proto/util/units.js';
import { withApiOption, withClient } from './client.js';
import { print, printJson, table } from '../../proto/util/table.js';

export function exportCommands(y: Argv<{ json: boolean }>) {
  return withApiOption(y)
    .command(
      ['list', 'ls'],
      'list exports and their connected clients',
      (c) => c,
      async (a) => {
        const exports = await withClient(a, (client) => client.listExports());
        if (a.json) return printJson({ exports });
        if (exports.length === 0) return print('no exports; every volume is an export: arraylab volume create NAME --size 1GiB');
        print(exportTable(exports));
      },
    )
    .demandCommand(1, 'export needs a subcommand: list');
}

/** One line per connected client; an export without clients gets one line with "-". */
function exportTable(exports: ExportInfo[]): string {
  type Row = { e: ExportInfo; c?: ExportInfo['connections'][number] };
  const rows: Row[] = exports.flatMap((e) => (e.connections.length ? e.connections.map((c) => ({ e, c })) : [{ e }]));
  return table(rows, [
    { header: 'EXPORT', value: (r) => r.e.name },
    { header: 'SIZE', value: (r) => formatSize(r.e.sizeBytes), right: true },
    { header: 'CLIENTS', value: (r) => String(r.e.connections.length), right: true },
    { header: 'PROTOCOL', value: (r) => r.c?.protocol ?? '-' },
    { header: 'REMOTE', value: (r) => (r.c ? r.c.remoteAddress + (r.c.initiator ? ` (${r.c.initiator})` : '') : '-') },
    { header: 'ACCESS', value: (r) => (r.c ? (r.c.readOnly ? 'ro' : 'rw') : '-') },
    { header: 'CONNECTION', value: (r) => r.c?.connectionId ?? '-' },
    { header: 'SINCE', value: (r) => r.c?.openedAt ?? '-' },
  ]);
}
