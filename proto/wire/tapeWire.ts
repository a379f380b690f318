/**
 * The contract's tape views read back from TapeService messages (arraylab/v1/tape.proto),
 * whose types are generated (proto/gen/).
 */
import type * as pb from '../gen/index.js';
import type { CartridgeView, TapeRecordView, TapeRestoreView } from '../views.js';
import { toByteCount } from './wire.js';

export function cartridgeFromWire(w: pb.Cartridge__Output): CartridgeView {
  return {
    label: w.label,
    capacityBytes: toByteCount(w.capacityBytes, 'capacity'),
    usedBytes: toByteCount(w.usedBytes, 'used'),
    recordCount: w.recordCount,
    createdAt: w.createdAt,
  };
}

export function tapeRecordFromWire(w: pb.TapeRecord__Output): TapeRecordView {
  return {
    cartridge: w.cartridge,
    record: w.record,
    volume: w.volume,
    tag: w.tag,
    sizeBytes: toByteCount(w.sizeBytes, 'size'),
    blockSize: w.blockSize,
    dataBytes: toByteCount(w.dataBytes, 'data bytes'),
    sha256: w.sha256,
    createdAt: w.createdAt,
    imageAt: w.imageAt || w.createdAt,
  };
}

export function tapeRestoreFromWire(w: pb.TapeRestoreResult__Output): TapeRestoreView {
  return { cartridge: w.cartridge, record: w.record, volume: w.volume, bytes: toByteCount(w.bytes, 'bytes'), sha256: w.sha256 };
}
