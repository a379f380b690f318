/**
 * Restore: copy a generation back onto its transaction volume (or --to another volume).
 *
 * How depends on what the array allows (the copy engine's README in the array's sources):
 *   - EC generation whose suspended pair is still there, onto the transaction volume: restore
 *     from clone (HSMS RESTORE-FROM-CLONE): the pair is reversed and resynchronized, copying back
 *     only what changed, then suspended and turned round again, so the generation keeps its pair.
 *   - OPC / EC generation otherwise: an OPC from the backup volume. The target may be in no
 *     session and the backup volume may be no session's destination, so tracking QuickOPC
 *     sessions and suspended EC pairs in the way are cancelled (their generations keep their
 *     images; their next backup or start-sync copies in full); anything still copying, an
 *     equivalent EC pair or SnapOPC+ generations of the target refuse.
 *   - QuickOPC generation whose tracking session is the only session of both volumes: the
 *     session is reversed (differential restore), and the next backup turns it round again.
 *   - SnapOPC+: snap volumes cannot be copy sources, so the host copies the device.
 *   - fromTape: the array writes the tape record back.
 * The restore waits until the array's copy has finished, so that when it returns the target
 * is in no session a backup would trip over.
 *
 * Safety: the generation must be healthy on the array (generations.ts), the target must have
 * the generation's size, and a target other than the transaction volume must be no registered
 * transaction volume, not mounted here and not open read-write elsewhere, unless --force.
 */
import type { CopySessionView } from '../../proto/views.js';
import type { VolumeInfo } from '../../proto/views.js';
import { formatSize } from '../../proto/util/units.js';
import { AgentError, type GenerationRecord, type RestoreOptions, type RestoreReport } from '../types.js';
import { isNotFound } from './ArrayPort.js';
import { codeOf, hookOk, percent, type ManagerContext } from './context.js';
import { toHistory, type ArrayState } from './generations.js';
import { LockLedger } from './LockLedger.js';
import { isRemoteVolume, isSyncPairType, pairName, remoteOf } from './remote.js';

const RM_FIX = 'run arraylab-agent resource-match';

export async function restore(m: ManagerContext, volume: string, opts: RestoreOptions = {}): Promise<RestoreReport> {
  m.requireTransaction(volume);
  const fromTape = opts.fromTape === true;
  const force = opts.force === true;
  const target = opts.to ?? volume;
  const a = await m.arrayState();
  if (a === undefined)
    throw new AgentError(
      'UNAVAILABLE',
      `cannot restore ${volume}: the array's volumes and sessions could not be read (${m.arrayStateError()}), so neither the generation nor the target can be checked; fix that and retry`,
    );
  const rel = opts.generation ?? 1;
  const g = pickGeneration(m, volume, rel, fromTape, a);
  const what = `restore ${volume} generation ${rel} (#${g.number})`;
  if (!fromTape && isRemoteVolume(g.backupVolume)) {
    // Both ways the array restores an EC generation need its backup volume on this array: a
    // restore from clone reverses the pair, an OPC reads the backup volume; REC has neither
    // (no reverse yet, and an OPC cannot read another array's volume).
    const r = remoteOf(g.backupVolume)!;
    throw new AgentError(
      'FAILED_PRECONDITION',
      `cannot ${what}: restore from a remote backup volume is not supported yet; its image is on ${r.volume} of remote array ${r.remote} (suspended REC pair, session ${g.sessionId || 'none'}), which that array's hosts can read: copy it back from there yourself (e.g. nbdcopy from ${r.volume}'s export on ${r.remote} onto ${target}, with ${target} unmounted), or restore another generation`,
    );
  }
  if (target !== volume) {
    const bv = m.store.getBackupVolume(target);
    if (bv?.inUseBy)
      throw new AgentError('FAILED_PRECONDITION', `cannot ${what} onto ${target}: it is a backup volume in use by ${bv.inUseBy}; choose another --to volume`);
    if (m.store.getTransaction(target) && !force) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${what} onto ${target}: ${target} is a registered transaction volume, whose data the restore would overwrite; choose another --to volume, or pass --force`,
      );
    }
  }
  const targetInfo = a.volumes.get(target);
  if (!targetInfo) throw new AgentError('NOT_FOUND', `cannot ${what} onto ${target}: no such volume on the array; create it or choose another --to volume`);
  checkSize(m, a, g, targetInfo, what);

  const progress = m.progressOf(opts.onProgress, target);
  const claimed = m.claim(target === volume ? [volume] : [volume, target], 'restore');
  const ledger = new LockLedger(m.store, m.host, m.log, volume, m.owner);
  const hooks: RestoreReport['hooks'] = [];
  const notes: string[] = [];
  try {
    const list = [...a.volumes.values()];
    const devices = await m.host.devices(list);
    const targetDevice = m.pinnedDevice(devices, target, targetInfo, m.store.getBackupVolume(target) ? 'backup' : 'transaction');
    const bvDevice = m.pinnedDevice(devices, g.backupVolume, a.volumes.get(g.backupVolume), 'backup');
    if (!force) await checkInUse(m, target, targetDevice, volume, what);

    // Decide (and refuse) before anything is locked.
    const copies = await m.array.listCopies();
    let method: RestoreReport['method'];
    let toCancel: CopySessionView[] = [];
    let sessionId = '';
    if (fromTape) {
      method = 'tape';
    } else if (g.type === 'snapopcplus') {
      method = 'host-copy';
      for (const [name, dev] of [
        [g.backupVolume, bvDevice],
        [target, targetDevice],
      ] as const) {
        if (!dev) {
          throw new AgentError(
            'FAILED_PRECONDITION',
            `cannot ${what} (SnapOPC+): a snap volume cannot be a copy source on the array, so the host copies it, but ${name} has no block device on this host; attach it (NBD or iSCSI) or add it to the device map (--device-map)`,
          );
        }
      }
    } else {
      const own = copies.find((s) => s.id === g.sessionId);
      const involving = (v: string) => copies.filter((s) => s.source === v || s.destination === v);
      const sync = m.store.getSync(volume);
      if (target === volume && sync) {
        throw new AgentError(
          'FAILED_PRECONDITION',
          `cannot ${what}: ${volume} is mirrored to ${sync.backupVolume} (sync pair, session ${sync.sessionId}), which would copy the restore over; cancel it first (arraylab-agent cancel-sync ${volume}), then start-sync again after the restore`,
        );
      }
      if (g.type === 'ec' && target === volume && own?.state === 'suspended' && !own.reversed && own.source === volume) {
        method = 'array-clone';
        sessionId = own.id;
        toCancel = blockers(m, what, target, g, copies, own.id);
      } else if (
        g.type === 'quickopc' &&
        target === volume &&
        own?.state === 'tracking' &&
        involving(volume).length === 1 &&
        involving(g.backupVolume).length === 1
      ) {
        method = 'array-reverse';
        sessionId = own.id;
      } else {
        method = 'array-opc';
        toCancel = blockers(m, what, target, g, copies, '');
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
      progress(
        'copy',
        `restoring ${volume} generation #${g.number} from ${fromTape ? `tape ${g.tape!.cartridge} record ${g.tape!.record}` : g.backupVolume} (${method})`,
      );
      for (const s of toCancel) notes.push(await cancelInTheWay(m, s));
      if (method === 'tape') {
        await m.tape.restoreTape({ cartridge: g.tape!.cartridge, record: g.tape!.record, volume: target, force: true }, (p) =>
          progress('copy', 'tape restore', p.doneBytes, p.totalBytes),
        );
      } else if (method === 'host-copy') {
        await m.host.copyDevice(bvDevice, targetDevice, (p) => progress('copy', 'host copy', p.doneBytes, p.totalBytes));
      } else if (method === 'array-reverse') {
        // force: the target was checked (checkInUse) and is locked on this host.
        const s = await m.array.reverseCopy(sessionId, { force: true });
        await waitCopy(m, s.id, 'tracking', (done, total) => progress('copy', 'differential restore', done, total));
      } else if (method === 'array-clone') {
        // Reverse and resync (only the changed units), then suspend and turn the pair round
        // again: the transaction volume is writable, the backup volume keeps the generation.
        await m.array.restoreFromClone(sessionId, { force: true });
        await waitCopy(m, sessionId, 'equivalent', (done, total) => progress('copy', 'restore from clone', done, total));
        await m.array.suspendCopy(sessionId);
        await m.array.reverseCopy(sessionId, { force: true });
        notes.push(
          `the EC pair ${volume} -> ${g.backupVolume} (session ${sessionId}) is suspended again: ${g.backupVolume} keeps generation #${g.number}, ${volume} is writable`,
        );
      } else {
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
      throw new AgentError(
        codeOf(copyErr),
        `restore of ${volume} generation #${g.number} onto ${target} failed: ${(copyErr as Error).message}${errors.length ? `; post-processing failed too (${errors.join('; ')}): ${RM_FIX}` : ''}`,
      );
    }
    if (errors.length > 0)
      throw new AgentError('INTERNAL', `${target} was restored, but post-processing failed: ${errors.join('; ')}; ${volume} needs a resource match: ${RM_FIX}`);
    m.log.info({ volume, target, generation: g.number, method }, 'restored');
    return { volume, target, generation: m.historyEntry(volume, g.number), from: fromTape ? 'tape' : 'disk', method, hooks, notes };
  } finally {
    m.store.releaseOperation(claimed, m.owner);
  }
}

/**
 * Generation `rel` as history numbers it (1 = newest restorable), from disk or from tape; a
 * generation the array reports broken or gone is refused with the array's reason.
 */
function pickGeneration(m: ManagerContext, volume: string, rel: number, fromTape: boolean, a: ArrayState): GenerationRecord {
  if (!Number.isInteger(rel) || rel < 1) throw new AgentError('INVALID_ARGUMENT', `--generation ${rel}: give 1 (the newest) or more`);
  const hist = toHistory(m.store.listGenerations(volume), a);
  const e = hist.find((x) => x.generation === rel);
  const count = hist.filter((x) => x.generation > 0).length;
  if (e === undefined) {
    throw new AgentError(
      'NOT_FOUND',
      count === 0
        ? `${volume} has no generation to restore; arraylab-agent history ${volume} shows its backups`
        : `${volume} has ${count} restorable generation${count === 1 ? '' : 's'}; --generation ${rel} is not one of them (1 is the newest; arraylab-agent history ${volume} numbers them)`,
    );
  }
  const what = `cannot restore ${volume} generation ${rel} (#${e.number})`;
  const tapeOk = e.tape?.status === 'ok';
  if (fromTape) {
    if (!tapeOk) {
      const why = e.tape ? ` (its tape copy ${e.tape.status === 'pending' ? 'is still being written' : `failed: ${e.tape.error}`})` : '';
      throw new AgentError('FAILED_PRECONDITION', `${what} from tape: it has no good tape copy${why}; restore it from disk (drop --from tape)`);
    }
  } else if (e.status === 'error' || e.status === 'lost') {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `${what}: it is ${e.status} on the array: ${e.error}; restore another generation${tapeOk ? ', or this one from its tape copy (--from tape)' : ''}; ${RM_FIX} to record it`,
    );
  } else if (e.status !== 'held') {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `${what} from disk: it is ${e.status} (its backup volume was reused) and only its tape copy is left; restore it with --from tape`,
    );
  }
  return m.store.getGeneration(volume, e.number)!;
}

/** The target must have the generation's size and block size. */
function checkSize(m: ManagerContext, a: ArrayState, g: GenerationRecord, target: VolumeInfo, what: string): void {
  const image = a.volumes.get(g.transactionVolume) ?? a.volumes.get(g.backupVolume);
  const size = image?.sizeBytes ?? m.store.getBackupVolume(g.backupVolume)?.sizeBytes;
  if (size === undefined) return; // nothing left to compare with; the array's copy refuses a smaller target
  const bs = image?.blockSize ?? target.blockSize;
  if (target.sizeBytes !== size || target.blockSize !== bs) {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `cannot ${what} onto ${target.name}: ${target.name} is ${formatSize(target.sizeBytes)} with ${target.blockSize}-byte blocks, the generation ${formatSize(size)} with ${bs}-byte blocks; restore onto a volume of the same size (arraylab volume create NAME --size ${size} --block-size ${bs})`,
    );
  }
}

/**
 * Refuses a target that is open read-write by connected clients other than this host's own
 * attachment (same rule as arraylab copy start), or, when it is not the transaction volume
 * itself (which the restore locks), mounted on this host.
 */
async function checkInUse(m: ManagerContext, target: string, targetDevice: string, volume: string, what: string): Promise<void> {
  const exp = (await m.array.listExports()).find((e) => e.name === target);
  const rw = exp ? exp.connections.filter((c) => !c.readOnly).length : 0;
  const ours = targetDevice ? 1 : 0;
  if (rw > ours) {
    const others = rw - ours;
    throw new AgentError(
      'FAILED_PRECONDITION',
      `cannot ${what} onto ${target}: ${target} is exported read-write to ${others} connected client${others === 1 ? '' : 's'}${ours ? ' besides this host' : ''} (arraylab export list); dismount it there first or pass --force`,
    );
  }
  if (target !== volume && targetDevice) {
    const mounted = await m.mountPointOf(targetDevice);
    if (mounted) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${what} onto ${target}: it is mounted on this host at ${mounted}; unmount it first, or pass --force (the restore then unmounts it and mounts it back afterwards)`,
      );
    }
  }
}

/**
 * Sessions in the way of the restore: the target may be in none (but the generation's own
 * pair, `keep`), the backup volume may be no other session's destination. Tracking QuickOPC
 * sessions and suspended or split EC pairs between registered volumes are returned to cancel
 * (their images stay); anything else refuses with what to do.
 */
function blockers(m: ManagerContext, what: string, target: string, g: GenerationRecord, copies: CopySessionView[], keep: string): CopySessionView[] {
  const inWay = copies.filter((s) => s.id !== keep && (s.source === target || s.destination === target || s.destination === g.backupVolume));
  const bvs = new Set(m.store.listBackupVolumes().map((b) => b.volume));
  const tvs = new Set(m.store.listTransactions().map((t) => t.volume));
  const cancel: CopySessionView[] = [];
  for (const s of inWay) {
    const which = `${s.type} session ${s.id} (${s.source} -> ${s.destination})`;
    if (s.state === 'copying') {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${what} onto ${target}: ${which} is still copying (${percent(s)}%); wait for it to finish (arraylab copy show ${s.id}) and retry`,
      );
    }
    if (s.type === 'quickopc' && s.state === 'tracking') {
      cancel.push(s);
      continue;
    }
    if (isSyncPairType(s.type) && (s.state === 'suspended' || s.state === 'split') && !s.reversed && tvs.has(s.source) && bvs.has(s.destination)) {
      cancel.push(s);
      continue;
    }
    if (isSyncPairType(s.type)) {
      throw new AgentError(
        'FAILED_PRECONDITION',
        `cannot ${what} onto ${target}: ${which} (${s.state}) is in the way; cancel it first (arraylab-agent cancel-sync ${s.source}, or arraylab copy cancel ${s.id})`,
      );
    }
    throw new AgentError(
      'FAILED_PRECONDITION',
      `cannot ${what} onto ${target}: ${which} (${s.state}) is in the way of the copy; cancelling it would lose those generations, so release them first or restore onto another volume (--to)`,
    );
  }
  return cancel;
}

/** Cancels a session in the way; the generations it served keep their images. Returns a note. */
async function cancelInTheWay(m: ManagerContext, s: CopySessionView): Promise<string> {
  await m.cancelSession(s.id);
  const gens = m.store.listGenerations().filter((x) => x.sessionId === s.id);
  // The generation keeps its image; its next QuickOPC backup, or the next start-sync onto its
  // volume, copies in full.
  for (const held of gens) m.store.updateGeneration(held.transactionVolume, held.number, { sessionId: '' });
  const whose = gens.length ? ` of ${gens.map((x) => `${x.transactionVolume} generation #${x.number}`).join(', ')}` : '';
  const next = s.type === 'quickopc' ? 'the next backup of that pair copies in full' : `a start-sync onto ${s.destination} copies in full`;
  m.log.warn({ sessionId: s.id, source: s.source, destination: s.destination }, `session cancelled for a restore; ${next}`);
  return `${isSyncPairType(s.type) ? pairName(s.destination) : 'QuickOPC session'} ${s.id} (${s.source} -> ${s.destination})${whose} was cancelled for the restore; its image stays on ${s.destination}, and ${next}`;
}

/** Polls a session until it has ended (OPC), is tracking again (reversed QuickOPC) or equivalent (EC). */
async function waitCopy(
  m: ManagerContext,
  id: string,
  until: 'gone' | 'tracking' | 'equivalent',
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  for (;;) {
    let s: CopySessionView;
    try {
      s = await m.array.getCopy(id);
    } catch (err) {
      if (isNotFound(err)) {
        if (until === 'gone') return;
        throw new Error(`copy session ${id} was cancelled on the array before it was ${until}`);
      }
      throw err;
    }
    onProgress(s.copiedBlocks * s.unitSize, s.totalBlocks * s.unitSize);
    if (until !== 'gone' && s.state === until) return;
    if (until !== 'gone' && s.state !== 'copying') throw new Error(`copy session ${id} is ${s.state}, not ${until}${s.error ? `: ${s.error}` : ''}`);
    if (s.state === 'error-suspended') throw new Error(`copy session ${id} failed: ${s.error}`);
    await new Promise((r) => setTimeout(r, m.pollMs));
  }
}
