/**
 * The remote end's side of a REC pair's data path: the export a source array opens
 * (`.rec/PAIR/SECRET`), and the small helpers the array uses to start a REC pair.
 */
import type { BlockDevice, ExportHandle } from '../block/BlockDevice.js';
import { CopyError, REC_MODES, type RecMode } from '../copy/CopySession.js';

/** Export names starting with this are REC data connections, never volumes (volume names have no '.' first). */
export const REPLICA_EXPORT_PREFIX = '.rec/';

/**
 * The handle a source array's NBD connection gets: the remote end's volume below the engine's
 * layer. `onClose` runs once when the connection goes (the remote end then halts).
 */
export function replicaHandle(volume: string, device: BlockDevice, onClose: () => void): ExportHandle {
  let closed = false;
  return {
    name: volume,
    description: `REC data path into ${volume}`,
    device,
    readOnly: false,
    onResize: () => () => undefined,
    close: () => {
      if (closed) return;
      closed = true;
      onClose();
    },
  };
}

/** A start request's REC options, checked; words as the CLI takes them. */
export function recOptions(req: { mode?: string | undefined; split?: string | undefined; recovery?: string | undefined }): {
  mode?: RecMode;
  split?: 'auto' | 'manual';
  recovery?: 'auto' | 'manual';
} {
  const out: { mode?: RecMode; split?: 'auto' | 'manual'; recovery?: 'auto' | 'manual' } = {};
  if (req.mode) {
    if (req.mode === 'consistency') {
      throw new CopyError('INVALID_ARGUMENT', 'REC mode consistency is not supported yet; use sync, or stack (switch to through to drain before a suspend)');
    }
    if (!(REC_MODES as readonly string[]).includes(req.mode))
      throw new CopyError('INVALID_ARGUMENT', `REC mode ${req.mode} is not one of ${REC_MODES.join(', ')}`);
    out.mode = req.mode as RecMode;
  }
  for (const key of ['split', 'recovery'] as const) {
    const v = req[key];
    if (!v) continue;
    if (v !== 'auto' && v !== 'manual') throw new CopyError('INVALID_ARGUMENT', `REC --${key} ${v} is not auto or manual`);
    out[key] = v;
  }
  return out;
}
