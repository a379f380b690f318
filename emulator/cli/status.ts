/** `arraylab status`: what the server is, where it listens, and what it holds. */
import type { ArrayStatus, FaultView, ListenerStatus } from '../../proto/views.js';
import { formatHostPort } from '../../proto/util/address.js';
import { formatSize } from '../../proto/util/units.js';
import { withClient } from './client.js';
import { keyValues, print, printJson } from '../../proto/util/table.js';

export async function statusCommand(a: { api?: string | undefined; json: boolean }): Promise<void> {
  const [status, faults] = await withClient(a, (client) => Promise.all([client.getStatus(), client.listFaults()]));
  if (a.json) return printJson({ ...status, faults });
  print(statusText(status, faults));
}

function listener(l: ListenerStatus, scheme = ''): string {
  if (!l.available) return `not available${l.note ? ` (${l.note})` : ''}`;
  return `${scheme}${formatHostPort(l)}${scheme ? '/' : ''}  (${l.security?.length ? l.security.join(', ') : 'plaintext, open'})`;
}

/** The faults line: a lab or a test must never forget that the array is broken on purpose. */
function faultsLine(faults: FaultView[]): string {
  if (faults.length === 0) return 'none';
  const shown = faults.slice(0, 3).map((f) => `${f.id} ${f.kind} on ${f.target}`);
  return `${faults.length} set (${shown.join(', ')}${faults.length > 3 ? ', ...' : ''}); see arraylab fault list`;
}

export function statusText(s: ArrayStatus, faults: FaultView[] = []): string {
  return keyValues([
    ['version', s.version],
    ['pid', String(s.pid)],
    ['uptime', formatUptime(s.uptimeSeconds)],
    ['backend', s.backend],
    ['data dir', s.dataDir || '-'],
    ['nbd', listener(s.listeners.nbd, 'nbd://')],
    ['iscsi', listener(s.listeners.iscsi, 'iscsi://')],
    ...(s.listeners.iscsi.available
      ? ([
          ['iscsi target', s.iscsiTargetName],
          ['iscsi sessions', String(s.iscsiSessionCount)],
        ] as [string, string][])
      : []),
    ['api', listener(s.listeners.api)],
    ['volumes', String(s.volumeCount)],
    ['provisioned', formatSize(s.totalBytes)],
    ['allocated', formatSize(s.allocatedBytes)],
    ['connections', String(s.connectionCount)],
    ['faults', faultsLine(faults)],
  ]);
}

function formatUptime(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const parts = [d && `${d}d`, (d || h) && `${h}h`, (d || h || m) && `${m}m`, `${s % 60}s`].filter(Boolean);
  return parts.join(' ');
}
