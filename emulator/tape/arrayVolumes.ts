/**
 * The tape library's view of a StorageArray's volumes: each I/O goes to the volume's current
 * top layer, like an export's device, so a snap volume reads as its point-in-time image, an
 * OPC destination as the copy, and copy sessions see restore writes as host writes.
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block/BlockDevice.js';
import type { StorageArray } from '../array/StorageArray.js';
import { ArrayError } from '../array/types.js';
import type { Volume } from '../array/Volume.js';
import { TapeError, type TapeVolume, type TapeVolumes, type VolumeImage } from './types.js';

class TopDevice implements BlockDevice {
  constructor(private readonly v: Volume) {}
  get size(): number {
    return this.v.top.size;
  }
  get blockSize(): number {
    return this.v.top.blockSize;
  }
  get readOnly(): boolean {
    return this.v.record.readOnly || this.v.top.readOnly;
  }
  get thin(): boolean {
    return this.v.top.thin;
  }
  read(offset: number, into: Buffer): Promise<void> {
    return this.v.top.read(offset, into);
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.v.top.write(offset, data, opts);
  }
  flush(): Promise<void> {
    return this.v.top.flush();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.v.top.trim(offset, length, opts);
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.v.top.writeZeroes(offset, length, opts);
  }
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]> {
    return this.v.top.blockStatus(offset, length, maxExtents);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.v.top.cache(offset, length);
  }
}

export function arrayTapeVolumes(array: StorageArray): TapeVolumes {
  return {
    open(name: string): TapeVolume {
      let v: Volume;
      try {
        v = array.volumeObject(name);
      } catch (err) {
        if (err instanceof ArrayError) throw new TapeError(err.code, err.message);
        throw err;
      }
      const device = new TopDevice(v);
      return {
        name: v.name,
        device,
        get readOnly() {
          return device.readOnly;
        },
        readWriteClients: () => [...v.handles].filter((h) => !h.readOnly).length,
        image: () => imageOf(array, v.name),
        copyFinished: (id) => array.copy.endedAs(id) === 'completed',
      };
    },
  };
}

/** The instant a volume's image is of, from the copy session it is the destination of. */
function imageOf(array: StorageArray, name: string): VolumeImage {
  const s = array.copy
    .sessionsOfVolume(name)
    .map((id) => array.copy.get(id))
    .find((i) => i.destination === name);
  if (s === undefined) return { kind: 'live' };
  if (s.state === 'error-suspended') {
    // Not "unknown instant" (an EC pair's imageAt is cleared): there is no whole image to write.
    return { kind: 'broken', why: `volume ${name} is the destination of a copy session the array error-suspended: ${s.error ?? 'no reason given'}` };
  }
  const pair = `EC session ${s.id} (${s.source} -> ${name})`;
  if (s.type === 'ec' && (s.state === 'copying' || s.state === 'equivalent')) {
    return {
      kind: 'moving',
      why: `volume ${name} is the destination of ${pair}, ${s.state}: its image follows the source; suspend or split the session first (arraylab copy suspend ${s.id}), or write the source`,
    };
  }
  if (s.imageAt === undefined) {
    const why = s.reversed
      ? `was reversed, so it is not an image of its source; give the instant its data is of with --point-in-time ISO-8601 (API point_in_time)`
      : `was suspended before arraylab recorded suspend instants; give the image's instant with --point-in-time ISO-8601 (API point_in_time), or resume and suspend the pair again`;
    return { kind: 'unknown', why: `volume ${name} is the destination of ${pair}, ${s.state}, which ${why}` };
  }
  return { kind: 'point-in-time', at: Date.parse(s.imageAt), session: s.id };
}
