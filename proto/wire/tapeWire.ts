/**
 * TapeService messages (arraylab/v1/tape.proto) as proto-loader presents them, and the
 * contract's views read back from them.
 */
import type { CartridgeView, RecordCheck, TapeRecordView, TapeRestoreView } from '../views.js';
import { toByteCount, type WireUint64 } from './wire.js';

export interface WireCartridge {
  label: string;
  capacityBytes: WireUint64;
  usedBytes: WireUint64;
  recordCount: number;
  createdAt: string;
}

export interface WireTapeRecord {
  cartridge: string;
  record: number;
  volume: string;
  tag: string;
  sizeBytes: WireUint64;
  blockSize: number;
  dataBytes: WireUint64;
  sha256: string;
  createdAt: string;
  /** Empty from a server that predates it: read as createdAt. */
  imageAt?: string;
}

export interface WireTapeRestoreResult {
  cartridge: string;
  record: number;
  volume: string;
  bytes: WireUint64;
  sha256: string;
}

export interface WireTapeProgress {
  doneBytes: WireUint64;
  totalBytes: WireUint64;
  record?: WireTapeRecord | null;
  restored?: WireTapeRestoreResult | null;
  verified?: { checks: RecordCheck[] } | null;
  /** oneof case name, set by proto-loader on receipt. */
  result?: 'record' | 'restored' | 'verified';
}

export function cartridgeFromWire(w: WireCartridge): CartridgeView {
  return { label: w.label, capacityBytes: toByteCount(w.capacityBytes, 'capacity'), usedBytes: toByteCount(w.usedBytes, 'used'), recordCount: w.recordCount, createdAt: w.createdAt };
}

export function tapeRecordFromWire(w: WireTapeRecord): TapeRecordView {
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

export function tapeRestoreFromWire(w: WireTapeRestoreResult): TapeRestoreView {
  return { cartridge: w.cartridge, record: w.record, volume: w.volume, bytes: toByteCount(w.bytes, 'bytes'), sha256: w.sha256 };
}

