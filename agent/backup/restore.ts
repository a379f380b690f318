/**
 * Restore: copy a generation back onto its transaction volume (or --to another volume).
 *
 * How depends on what the array allows (emulator/copy/README.md):
 *   - OPC / EC generation: an OPC from the backup volume. The target may be in no session and
 *     the backup volume may be no session's destination, so tracking QuickOPC sessions in the
 *     way are cancelled (their generations keep their images; their next backup copies in
 *     full); anything still copying, an EC pair or SnapOPC+ generations of the target refuse.
 *   - QuickOPC generation whose tracking session is the only session of both volumes: the
 *     session is reversed (differential restore), and the next backup turns it round again.
 *   - SnapOPC+: snap volumes cannot be copy sources, so the host copies the device.
 *   - fromTape: the array writes the tape record back.
 * The restore waits until the array's copy has finished, so that when it returns the target
 * is in no session a backup would trip over.
 */
import type { CopySessionView } from '../../emulator/api/model.js';
import { AgentError, type GenerationRecord, type RestoreOptions, type RestoreReport } from '../types.js';
import { isNotFound } from './ArrayPort.js';
import { codeOf, deviceOf, hookOk, percent, type ManagerContext } from './context.js';
import { LockLedger } from './LockLedger.js';

const RM_FIX = 'run arraylab-agent resource-match';

export async function restore(m: ManagerContext, volume: string, opts: RestoreOptions = {}): Promise<RestoreReport> {
  m.requireTransaction(volume);
  const fromTape = opts.fromTape === true;
  const g = pickGeneration(m, volume, opts.generation ?? 1, fromTape);
  const target = opts.to ?? volume;
  if (target !== volume) {
    const bv = m.store.getBackupVolume(target);
    if (bv && bv.inUseBy) throw new AgentError('FAILED_PRECONDITION', `cannot restore onto ${target}: it is a backup volume in use by ${bv.inUseBy}; choose another --to volume`);
  }
  const progress = m.progressOf(opts.onProgress, target);
  const claimed = m.claim(target === volume ? [volume] : [volume, target], 'restore');
  const ledger = new LockLedger(m.store, m.host, m.log, volume, m.owner);
  const hooks: RestoreReport['hooks'] = [];
  try {
    const list = await m.array.listVolumes();
    if (!list.some((v) => v.name === target)) throw new AgentError('NOT_FOUND', `cannot restore onto ${target}: no such volume on the array; create it or choose another --to volume`);
    const devices = await m.host.devices(list);
    const targetDevice = deviceOf(devices, target);
    const bvDevice = deviceOf(devices, g.backupVolume);

    // Decide (and refuse) before anything is locked.
    const copies = await m.array.listCopies();
    let method: RestoreReport['method'];
    let toCancel: CopySessionView[] = [];
    let reverseId = '';
    if (fromTape) {
      method = 'tape';
    } else if (g.type === 'snapopcplus') {
      method = 'host-copy';
      if (!copies.some((s) => s.id === g.sessionId)) {
        throw new AgentError('FAILED_PRECONDITION', `cannot restore ${volume} generation ${g.number}: its SnapOPC+ session ${g.sessionId || '(none)'} is gone, so the snap volume's image is not reliable; ${RM_FIX}`);
      }
      for (const [name, dev] of [[g.backupVolume, bvDevice], [target, targetDevice]] as const) {
        if (!dev) {
          throw new AgentError(
            'FAILED_PRECONDITION',
            `cannot restore ${volume} generation ${g.number} (SnapOPC+): a snap volume cannot be a copy source on the array, so the host copies it, but ${name} has no block device on this host; attach it (NBD or iSCSI) or add it to the device map (--device-map)`,
          );
        }
      }
    } else {
      const own = copies.find((s) => s.id === g.sessionId);
      const involving = (v: string) => copies.filter((s) => s.source === v || s.destination === v);
      if (g.type === 'quickopc' && target === volume && own?.state === 'tracking' && involving(volume).length === 1 && involving(g.backupVolume).length === 1) {
        method = 'array-reverse';
        reverseId = own.id;
      } else {
        method = 'array-opc';
        toCancel = blockers(volume, target, g, copies);
      }
    }

    // Pre-processing: a restore always unmounts the target.
    const mountPoint = await m.mountPointOf(targetDevice);
    const pre = await m.runHook('restore-pre', target, targetDevice, mountPoint, g.backupVolume, g.number);
    hooks.push(pre);
    if (!hookOk(pre)) {
      m.flag(volume, `restore-pre hook failed: ${pre.message}`);
      throw new AgentError('ABORTED', `restore of ${volume} aborted: ${pre.message}; ${volume} needs a resource match: ${RM_FIX}`);
    }
    progress('lock', `unmounting ${target}`);
    try {
      await ledger.take(() => m.host.lockTransaction(target, targetDevice, 'unmount'));
    } catch (err) {
      throw new AgentError('FAILED_PRECONDITION', `cannot restore onto ${target}: ${(err as Error).message}`);
    }

    let copyErr: unknown;
    try {
      progress('copy', `restoring ${volume} generation ${g.number} from ${fromTape ? `tape ${g.tape!.cartridge} record ${g.tape!.record}` : g.backupVolume} (${method})`);
      if (method === 'tape') {
        await m.tape.restoreTape({ cartridge: g.tape!.cartridge, record: g.tape!.record, volume: target, force: true }, (p) => progress('copy', 'tape restore', p.doneBytes, p.totalBytes));
      } else if (method === 'host-copy') {
        await m.host.copyDevice(bvDevice, targetDevice, (p) => progress('copy', 'host copy', p.doneBytes, p.totalBytes));
      } else if (method === 'array-reverse') {
        const s = await m.array.reverseCopy(reverseId);
        await waitCopy(m, s.id, 'tracking', (done, total) => progress('copy', 'differential restore', done, total));
      } else {
        for (const s of toCancel) {
          await m.cancelSession(s.id);
          // The generation keeps its image; its next QuickOPC backup copies in full.
          for (const held of m.store.listGenerations().filter((x) => x.sessionId === s.id)) m.store.updateGeneration(held.transactionVolume, held.number, { sessionId: '' });
          m.log.warn({ sessionId: s.id, source: s.source, destination: s.destination }, 'QuickOPC tracking cancelled for a restore; the next backup of that pair copies in full');
        }
        const s = await m.array.startCopy({ type: 'opc', source: g.backupVolume, destination: target, force: true });
        await waitCopy(m, s.id, 'gone', (done, total) => progress('copy', 'restore copy', done, total));
      }
    } catch (err) {
      copyErr = err;
    }

    // Post-processing, always: the array changed the target underneath the host.
    const errors: string[] = [];
    if (targetDevice) {
      try {
        await m.host.invalidate(targetDevice);
      } catch (err) {
        errors.push(`cannot drop the cached blocks of ${target} (${targetDevice}): ${(err as Error).message}`);
      }
    }
    errors.push(...(await ledger.undoAll()));
    const post = await m.runHook('restore-post', target, targetDevice, mountPoint, g.backupVolume, g.number);
    hooks.push(post);
    if (!hookOk(post)) errors.push(`restore-post hook failed: ${post.message}`);
    if (errors.length > 0) m.flag(volume, `restore post-processing failed: ${errors.join('; ')}`);
    if (copyErr !== undefined) {
      throw new AgentError(codeOf(copyErr), `restore of ${volume} generation ${g.number} onto ${target} failed: ${(copyErr as Error).message}${errors.length ? `; post-processing failed too (${errors.join('; ')}): ${RM_FIX}` : ''}`);
    }
    if (errors.length > 0) throw new AgentError('INTERNAL', `${target} was restored, but post-processing failed: ${errors.join('; ')}; ${volume} needs a resource match: ${RM_FIX}`);
    m.log.info({ volume, target, generation: g.number, method }, 'restored');
    return { volume, target, generation: m.historyEntry(volume, g.number), from: fromTape ? 'tape' : 'disk', method, hooks };
  } finally {
    m.store.releaseOperation(claimed, m.owner);
  }
}

/** Relative generation G: among held ones (disk) or among those with a good tape copy (tape). */
function pickGeneration(m: ManagerContext, volume: string, rel: number, fromTape: boolean): GenerationRecord {
  if (!Number.isInteger(rel) || rel < 1) throw new AgentError('INVALID_ARGUMENT', `--generation ${rel}: give 1 (the newest) or more`);
  const gens = m.store
    .listGenerations(volume)
    .filter((g) => (fromTape ? g.tape?.status === 'ok' && (g.status === 'held' || g.status === 'tape-only') : g.status === 'held'));
  const g = gens[rel - 1];
  if (g === undefined) {
    throw new AgentError(
      'NOT_FOUND',
      gens.length === 0
        ? `${volume} has no ${fromTape ? 'generation with a tape copy' : 'held generation'} to restore; arraylab-agent history ${volume} shows its backups`
        : `${volume} has ${gens.length} ${fromTape ? 'generation(s) with a tape copy' : 'held generation(s)'}; --generation ${rel} is not one of them (1 is the newest)`,
    );
  }
  return g;
}

/**
 * Sessions in the way of an OPC from the backup volume onto the target: the target may be in
 * none, the backup volume may be no session's destination. Tracking QuickOPC ones are returned
 * to cancel; anything else refuses with what to do.
 */
function blockers(volume: string, target: string, g: GenerationRecord, copies: CopySessionView[]): CopySessionView[] {
  const inWay = copies.filter((s) => s.source === target || s.destination === target || s.destination === g.backupVolume);
  const cancel: CopySessionView[] = [];
  for (const s of inWay) {
    const what = `${s.type} session ${s.id} (${s.source} -> ${s.destination})`;
    if (s.type === 'ec') {
      throw new AgentError('FAILED_PRECONDITION', `cannot restore ${volume} generation ${g.number} onto ${target}: ${what} is in the way; cancel it first (arraylab-agent cancel-sync ${s.source})`);
    }
    if (s.state === 'copying') {
      throw new AgentError('FAILED_PRECONDITION', `cannot restore ${volume} generation ${g.number} onto ${target}: ${what} is still copying (${percent(s)}%); wait for it to finish (arraylab copy show ${s.id}) and retry`);
    }
    if (s.type === 'quickopc' && s.state === 'tracking') {
      cancel.push(s);
      continue;
    }
    throw new AgentError('FAILED_PRECONDITION', `cannot restore ${volume} generation ${g.number} onto ${target}: ${what} (${s.state}) is in the way of the copy; cancelling it would lose those generations, so release them first or restore onto another volume (--to)`);
  }
  return cancel;
}

/** Polls a session until it has ended (OPC) or is tracking again (reversed QuickOPC). */
async function waitCopy(m: ManagerContext, id: string, until: 'gone' | 'tracking', onProgress: (done: number, total: number) => void): Promise<void> {
  for (;;) {
    let s: CopySessionView;
    try {
      s = await m.array.getCopy(id);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    onProgress(s.copiedBlocks * s.unitSize, s.totalBlocks * s.unitSize);
    if (until === 'tracking' && s.state === 'tracking') return;
    if (s.state === 'error-suspended') throw new Error(`copy session ${id} failed: ${s.error}`);
    await new Promise((r) => setTimeout(r, m.pollMs));
  }
}
