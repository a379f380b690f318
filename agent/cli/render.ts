/** What `arraylab-agent` prints for people (--json prints the records as they are). */
import { table } from '../../emulator/cli/output.js';
import { formatSize } from '../../emulator/units.js';
import type { AgentStatus, BackupReport, DeviceMapping, DoctorCheck, HistoryEntry, HookResult, ProgressEvent, ResourceMatchReport, RestoreReport, SyncView } from '../types.js';

function hookLines(hooks: HookResult[]): string[] {
  return hooks.filter((h) => h.verdict !== 'none' && h.verdict !== 'ok').map((h) => `  hook ${h.phase}: ${h.message}`);
}

function generationText(g: HistoryEntry): string {
  const tape = g.tape ? `, tape ${g.tape.cartridge} record ${g.tape.record}${g.tape.status === 'ok' ? '' : ` (${g.tape.status}: ${g.tape.error})`}` : '';
  return `generation ${g.generation || '-'} (#${g.number}, ${g.type}) on ${g.backupVolume} at ${g.at}${tape}`;
}

export function renderBackup(r: BackupReport): string {
  const lines: string[] = [];
  for (const v of r.volumes) {
    if (v.ok && v.generation) lines.push(`${v.volume}: backed up: ${generationText(v.generation)}`);
    else lines.push(`${v.volume}: FAILED: ${v.error ?? 'unknown error'}`);
    lines.push(...hookLines(v.hooks));
    if (v.needsResourceMatch) lines.push(`  needs a resource match: ${v.needsResourceMatch}; run: arraylab-agent resource-match`);
  }
  const failed = r.volumes.filter((v) => !v.ok).length;
  if (r.volumes.length > 1) lines.push(`${r.volumes.length - failed} of ${r.volumes.length} volumes backed up`);
  return lines.join('\n');
}

export function renderSync(s: SyncView): string {
  return `${s.transactionVolume} -> ${s.backupVolume}: EC session ${s.sessionId}, ${s.state}, ${s.copiedPercent.toFixed(1)}% copied`;
}

export function renderRestore(r: RestoreReport): string {
  return [`restored ${r.volume} ${generationText(r.generation)} onto ${r.target} from ${r.from} (${r.method})`, ...hookLines(r.hooks)].join('\n');
}

export function renderHistory(entries: HistoryEntry[]): string {
  if (entries.length === 0) return 'no backups';
  return table(entries, [
    { header: 'VOLUME', value: (e) => e.transactionVolume },
    { header: 'GEN', value: (e) => (e.generation ? String(e.generation) : '-'), right: true },
    { header: 'NO', value: (e) => String(e.number), right: true },
    { header: 'TIME', value: (e) => e.at },
    { header: 'BACKUP-VOLUME', value: (e) => e.backupVolume },
    { header: 'TYPE', value: (e) => e.type },
    { header: 'PREP', value: (e) => e.prep },
    { header: 'STATUS', value: (e) => e.status + (e.error ? ` (${e.error})` : '') },
    { header: 'TAPE', value: (e) => (e.tape ? `${e.tape.cartridge}#${e.tape.record} ${e.tape.status}` : '-') },
  ]);
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
        { header: 'NOTE', value: (t) => [t.busy && `busy: ${t.busy}`, t.needsResourceMatch && `resource match needed: ${t.needsResourceMatch}`].filter(Boolean).join('; ') },
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
  return lines.length ? lines.join('\n') : "records agree with the host and the array: nothing to repair";
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
