/**
 * The array server's side of copy sessions on the wire: the engine's SessionInfo as the
 * contract's CopySession message, and a rate from a request. Clients read them back with
 * proto/wire/wire.ts.
 */
import type { SessionInfo } from '../copy/CopySession.js';
import type { SessionBitmap } from '../copy/sessionBitmap.js';
import { ArrayError } from '../array/types.js';
import type * as pb from '../../proto/gen/index.js';
import { copyStateToWire, copyTypeToWire, MiB } from '../../proto/wire/wire.js';

/** A rate in MiB/s from the wire (absent = unthrottled) as bytes/s (Infinity = unthrottled). */
export function rateFromWire(rateMibS: number | null | undefined): number {
  if (rateMibS === undefined || rateMibS === null) return Number.POSITIVE_INFINITY;
  if (typeof rateMibS !== 'number' || !Number.isFinite(rateMibS) || rateMibS < 0) {
    throw new ArrayError(
      'INVALID_ARGUMENT',
      `invalid copy rate ${String(rateMibS)} MiB/s: give a non-negative number, 0 for no background copy, or leave it out for unthrottled`,
    );
  }
  return Math.round(rateMibS * MiB);
}

export function copySessionToWire(s: SessionInfo): pb.CopySession {
  const unthrottled = !Number.isFinite(s.rate);
  return {
    id: s.id,
    type: copyTypeToWire(s.type),
    state: copyStateToWire(s.state),
    source: s.source,
    destination: s.destination,
    copiedBlocks: s.copiedBlocks,
    totalBlocks: s.totalBlocks,
    unitSize: s.unitSize,
    rateMibS: unthrottled ? 0 : s.rate / MiB,
    unthrottled,
    ...(s.etaSeconds !== undefined && Number.isFinite(s.etaSeconds) ? { etaSeconds: s.etaSeconds } : {}),
    group: s.group ?? '',
    createdAt: s.createdAt,
    generation: s.generation ?? 0,
    generationIndex: s.generationIndex ?? 0,
    generationCount: s.generationCount ?? 0,
    reversed: s.reversed ?? false,
    error: s.error ?? '',
    imageAt: s.imageAt ?? '',
    errorSince: s.errorSince ?? '',
    retryAt: s.retryAt ?? '',
    ...(s.remote !== undefined
      ? {
          remote: {
            role: s.remote.role,
            peer: s.remote.peer,
            mode: s.remote.mode,
            split: s.remote.split,
            recovery: s.remote.recovery,
            haltReason: s.remote.haltReason ?? '',
            haltDetail: s.remote.haltDetail ?? '',
            linkUp: s.remote.linkUp,
            pendingBytes: s.remote.pendingBytes,
            drainedAt: s.remote.drainedAt ?? '',
            bufferUsedBytes: s.remote.buffer?.usedBytes ?? 0,
            bufferSizeBytes: s.remote.buffer?.sizeBytes ?? 0,
          },
        }
      : {}),
  };
}

export function copyBitmapToWire(b: SessionBitmap): pb.CopyBitmapResponse {
  return {
    id: b.id,
    type: copyTypeToWire(b.type),
    state: copyStateToWire(b.state),
    units: b.units,
    unitBytes: b.unitBytes,
    unitsPerCell: b.unitsPerCell,
    cells: b.cells,
    copied: b.counts.copied,
    pending: b.counts.pending,
    tracked: b.counts.tracked,
    beforeImage: b.counts.beforeImage,
  };
}
