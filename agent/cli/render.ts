/** What `arraylab-agent` prints for people (--json prints the records as they are). */
import { table } from '../../proto/util/table.js';
import { formatSize } from '../../proto/util/units.js';
import type {
  AgentStatus,
  BackupReport,
  DeviceMapping,
  DoctorCheck,
  HistoryEntry,
  HookResult,
  ProgressEvent,
  RegisteredTransaction,
  ResourceMatchReport,
  RestoreReport,
  SyncView,
  TapeCopyRecord,
} from '../types.js';

/** Every hook that ran: its verdict, and what it printed (indented), so people see it too. */
function hookLines(hooks: HookResult[]): string[] {
  const lines: string[] = [];
  for (const h of hooks) {
    if (h.verdict === 'none') continue;
    lines.push(h.verdict === 'ok' ? `  hook ${h.phase}: ok (${h.script}, ${h.durationMs} ms)` : `  hook ${h.phase}: ${h.message}`);
    for (const l of h.output.replace(/\s+$/, '').split('\n')) if (l !== '') lines.push(`    | ${l}`);
  }
  return lines;
}

function tapeText(t: TapeCopyRecord): string {
  if (t.status === 'pending') return `tape copy pending (queued ${t.at})`;
  if (t.status === 'failed') return `tape copy failed: ${t.error}`;
  return `tape ${t.cartridge} record ${t.record} (image of ${t.pointInTime || '?'}, written ${t.at})`;
}

function generationText(g: HistoryEntry): string {
  const tape = g.tape ? `, ${tapeText(g.tape)}` : '';
  return `generation ${g.generation || '-'} (#${g.number}, ${g.type}, prep ${g.prep}) on ${g.backupVolume} at ${g.at}${tape}`;
}

export function renderRegistered(r: RegisteredTransaction): string {
  for (const w of r.warnings) process.stderr.write(`arraylab-agent: warning: ${w}\n`);
  const lock = r.flushOnly ? 'flush only' : r.lock === 'none' ? 'none (no host-side processing)' : r.lock;
  return [
    `registered transaction volume ${r.volume}: lock ${lock}, ${r.generations} generation${r.generations === 1 ? '' : 's'}, ${r.defaultType}${r.resyncAfterBackup ? ', resync after backup' : ''}`,
    ...r.notes.map((n) => `note: ${n}`),
  ].join('\n');
}

export function renderBackup(r: BackupReport): string {
  const lines: string[] = [];
  for (const v of r.volumes) {
    if (v.ok && v.generation) lines.push(`${v.volume}: backed up: ${generationText(v.generation)}`);
    else lines.push(`${v.volume}: FAILED: ${v.error ?? 'unknown error'}`);
    lines.push(...hookLines(v.hooks));
    if (v.needsResourceMatch) lines.push(`  needs a resource match: ${v.needsResourceMatch}; run: arraylab-agent resource-match`);
    if (v.resync) lines.push(`  mirroring resumed: ${renderSync(v.resync)}`);
    if (v.resyncError) lines.push(`  resync FAILED: ${v.resyncError}`);
  }
  const failed = r.volumes.filter((v) => !v.ok).length;
  if (r.volumes.length > 1) lines.push(`${r.volumes.length - failed} of ${r.volumes.length} volumes backed up`);
  return lines.join('\n');
}

export function renderSync(s: SyncView): string {
  const how =
    s.start === 'resume'
      ? `resumed (${s.unitsToCopy} of ${s.totalUnits} units changed since its backup)`
      : s.start === 'full'
        ? `new pair (${s.unitsToCopy} of ${s.totalUnits} units to copy)`
        : '';
  return `${s.transactionVolume} -> ${s.backupVolume}: ${s.backupVolume.includes(':') ? 'REC' : 'EC'} session ${s.sessionId}${how ? `, ${how}` : ''}, ${s.state}, ${s.copiedPercent.toFixed(1)}% copied`;
}

export function renderRestore(r: RestoreReport): string {
  return [
    `restored ${r.volume} ${generationText(r.generation)} onto ${r.target} from ${r.from} (${r.method})`,
    ...r.notes.map((n) => `  note: ${n}`),
    ...hookLines(r.hooks),
  ].join('\n');
}

export function renderHistory(entries: HistoryEntry[]): string {
  if (entries.length === 0) return 'no backups';
  // GEN is what restore --generation takes (1 = newest, disk and tape alike); NO never changes.
  return `${table(entries, [
    { header: 'VOLUME', value: (e) => e.transactionVolume },
    { header: 'GEN', value: (e) => (e.generation ? String(e.generation) : '-'), right: true },
    { header: 'NO', value: (e) => `#${e.number}`, right: true },
    { header: 'TIME', value: (e) => e.at },
    { header: 'BACKUP-VOLUME', value: (e) => e.backupVolume },
    { header: 'TYPE', value: (e) => e.type },
    { header: 'PREP', value: (e) => e.prep },
    { header: 'STATUS', value: (e) => e.status + (e.error ? ` (${e.error})` : '') },
    { header: 'TAPE', value: (e) => (e.tape ? (e.tape.status === 'ok' ? `${e.tape.cartridge}#${e.tape.record} written ${e.tape.at}` : e.tape.status) : '-') },
  ])}GEN: 1 = newest restorable generation (restore --generation); NO: the backup's own number, never reused; TIME: the point in time of the image\n`;
}

export function renderStatus(s: AgentStatus): string {
  const parts: string[] = [];
  if (s.transactionVolumes.length === 0) parts.push('no transaction volumes registered (arraylab-agent register transaction VOL)\n');
  else
    parts.push(
      table(s.transactionVolumes, [
        { header: 'TRANSACTION', value: (t) => t.volume },
        { header: 'LOCK', value: (t) => (t.flushOnly ? 'flush' : t.lock) },
        { header: 'TYPE', value: (t) => t.defaultType },
        { header: 'GENS', value: (t) => `${t.heldGenerations}/${t.generations}`, right: true },
        { header: 'DEVICE', value: (t) => t.device || '-' },
        { header: 'MOUNT', value: (t) => t.mountPoint || '-' },
        { header: 'SYNC', value: (t) => (t.sync ? `${t.sync.backupVolume} ${t.sync.state} ${t.sync.copiedPercent.toFixed(0)}%` : '-') },
        {
          header: 'NOTE',
          value: (t) =>
            [
              t.busy && `busy: ${t.busy}`,
              t.needsResourceMatch && `resource match needed: ${t.needsResourceMatch}`,
              ...t.unhealthy,
              t.resyncAfterBackup ? 'resync after backup' : '',
            ]
              .filter(Boolean)
              .join('; '),
        },
      ]),
    );
  if (s.backupVolumes.length > 0)
    parts.push(
      table(s.backupVolumes, [
        { header: 'BACKUP', value: (b) => b.volume },
        { header: 'SIZE', value: (b) => formatSize(b.sizeBytes), right: true },
        { header: 'USED-BY', value: (b) => b.inUseBy || '(unused)' },
        { header: 'NOTE', value: (b) => (b.needsResourceMatch ? `resource match needed: ${b.needsResourceMatch}` : '') },
      ]),
    );
  for (const l of s.outstandingLocks) parts.push(`${l.volume} (${l.role}) is still ${l.action} since ${l.at}; run: arraylab-agent resource-match\n`);
  return parts.join('\n');
}

export function renderDevices(d: DeviceMapping[]): string {
  if (d.length === 0) return 'no array volume has a block device on this host (attach one, or list it in --device-map)';
  return table(d, [
    { header: 'VOLUME', value: (m) => m.volume },
    { header: 'DEVICE', value: (m) => m.device },
    { header: 'FOUND-BY', value: (m) => m.how },
  ]);
}

export function renderMatch(r: ResourceMatchReport): string {
  const lines = [...r.repaired.map((x) => `repaired: ${x}`), ...r.remaining.map((x) => `NOT repaired: ${x}`)];
  return lines.length ? lines.join('\n') : 'records agree with the host and the array: nothing to repair';
}

export function renderDoctor(checks: DoctorCheck[]): string {
  return checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'}  ${c.name}: ${c.detail}${c.ok ? '' : `\n      fix: ${c.fix}`}`).join('\n');
}

/** Progress on stderr: a line per step, and a percentage where bytes are known. */
export function progressPrinter(enabled: boolean): ((p: ProgressEvent) => void) | undefined {
  if (!enabled) return undefined;
  return (p) => {
    const pct = p.totalBytes ? ` ${((100 * (p.doneBytes ?? 0)) / p.totalBytes).toFixed(0)}%` : '';
    process.stderr.write(`[${p.volume}] ${p.step}${pct}: ${p.message}\n`);
  };
}
