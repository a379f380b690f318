/**
 * The remote end's side of a REC pair's data path: the export a source array opens
 * (`.rec/PAIR/SECRET`), and the small helpers the array uses to start a REC pair.
 */
import { BlockDeviceError, type BlockDevice, type Extent, type ExportHandle, type WriteOptions, type ZeroOptions } from '../block/BlockDevice.js';
import { CopyError, REC_MODES, type RecMode } from '../copy/CopySession.js';
import type { CycleStage } from './CycleStage.js';

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

/**
 * What the source's data connection writes to: the volume below the engine's layer, or, while
 * the remote end stages cycles (consistency mode, equivalent), the stage (`staging()`).
 */
export class ReplicaDevice implements BlockDevice {
  constructor(
    private readonly below: BlockDevice,
    private readonly staging: () => CycleStage | undefined,
    /** Why the remote end takes no data now (halted, suspended, gone), or undefined. */
    private readonly refusal: () => string | undefined = () => undefined,
  ) {}

  private gate(): void {
    const why = this.refusal();
    if (why !== undefined) throw new BlockDeviceError('EIO', why);
  }

  get size(): number {
    return this.below.size;
  }
  get blockSize(): number {
    return this.below.blockSize;
  }
  get readOnly(): boolean {
    return false;
  }
  get thin(): boolean {
    return this.below.thin;
  }
  read(offset: number, into: Buffer): Promise<void> {
    return this.below.read(offset, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    try {
      this.gate();
    } catch (err) {
      return Promise.reject(err);
    }
    const s = this.staging();
    return s === undefined ? this.below.write(offset, data, opts) : s.write(offset, data);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    try {
      this.gate();
    } catch (err) {
      return Promise.reject(err);
    }
    const s = this.staging();
    return s === undefined ? this.below.writeZeroes(offset, length, opts) : s.writeZeroes(offset, length);
  }
  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }
  async flush(): Promise<void> {
    await Promise.all([this.staging()?.flush(), this.below.flush()]);
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.below.blockStatus(offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.below.cache(offset, length);
  }
}

/** A start request's REC options, checked; words as the CLI takes them. */
export function recOptions(req: { mode?: string | undefined; split?: string | undefined; recovery?: string | undefined }): {
  mode?: RecMode;
  split?: 'auto' | 'manual';
  recovery?: 'auto' | 'manual';
} {
  const out: { mode?: RecMode; split?: 'auto' | 'manual'; recovery?: 'auto' | 'manual' } = {};
  if (req.mode) {
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

/** OpenRemoteEnd as the array takes it (uint64s as numbers). */
export interface OpenRemoteEndParams {
  pairId: string;
  sourceArrayId: string;
  sourceVolume: string;
  volume: string;
  sizeBytes: number;
  blockSize: number;
  unitSize: number;
  /** A REC mode, or ropc for a ROPC session. */
  mode: string;
  secret: string;
  force: boolean;
}

/** SetRemoteEndState's optional parts. */
export interface RemoteEndStateParams {
  imageAt?: string;
  haltReason?: string;
  mode?: string;
  resynced?: boolean;
}
