/**
 * The cartridge file format: fixed-size, little-endian structures, each ending in a CRC32C of
 * the bytes before it. See README.md for the layout. Every length a header gives is checked
 * against a fixed bound here, before anyone allocates or reads by it.
 */
import { crc32c } from '../net/crc32c.js';
import { VOLUME_NAME_PATTERN } from '../array/types.js';

export const FORMAT_VERSION = 1;

export const CARTRIDGE_HEADER_SIZE = 256;
export const RECORD_HEADER_SIZE = 256;
export const EXTENT_HEADER_SIZE = 32;
export const TRAILER_SIZE = 64;
export const EOD_SIZE = 32;

/** A tape extent holds at most this much data: restore checks a whole extent before writing it. */
export const EXTENT_MAX = 1024 * 1024;
export const LABEL_MAX = 63;
export const TAG_MAX = 128;

const MAGIC = {
  cartridge: Buffer.from('ARLTAPE\n', 'latin1'),
  record: Buffer.from('ARLTREC\n', 'latin1'),
  extent: Buffer.from('ARLTEXT\n', 'latin1'),
  trailer: Buffer.from('ARLTEND\n', 'latin1'),
  eod: Buffer.from('ARLTEOD\n', 'latin1'),
} as const;

export type MagicKind = keyof typeof MAGIC;

/** A structure that does not parse; `where` says which one, the message what is wrong. */
export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FormatError';
  }
}

export interface CartridgeHeader {
  label: string;
  capacityBytes: number;
  createdMs: number;
}

export interface RecordHeader {
  record: number;
  blockSize: number;
  sizeBytes: number;
  extentCount: number;
  dataBytes: number;
  createdMs: number;
  /**
   * The point-in-time instant of the image (ms), at 244: bytes records written before it
   * existed left zero, so 0 reads as createdMs (decode) and readers that predate it skip it.
   */
  imageMs: number;
  volume: string;
  tag: string;
}

export interface ExtentHeader {
  offset: number;
  length: number;
  dataCrc: number;
}

export interface RecordTrailer {
  record: number;
  dataBytes: number;
  sha256: string;
}

export interface EodMarker {
  recordCount: number;
  offset: number;
}

/** The magic at the start of buf, if it is one of ours. */
export function magicOf(buf: Buffer): MagicKind | undefined {
  if (buf.length < 8) return undefined;
  for (const [kind, magic] of Object.entries(MAGIC) as [MagicKind, Buffer][]) {
    if (buf.subarray(0, 8).equals(magic)) return kind;
  }
  return undefined;
}

function seal(buf: Buffer): Buffer {
  buf.writeUInt32LE(crc32c(buf, 0, buf.length - 4), buf.length - 4);
  return buf;
}

function check(buf: Buffer, kind: MagicKind, size: number): void {
  if (buf.length < size) throw new FormatError(`${kind} structure cut short (${buf.length} of ${size} bytes)`);
  if (!buf.subarray(0, 8).equals(MAGIC[kind])) throw new FormatError(`no ${kind} magic`);
  const stored = buf.readUInt32LE(size - 4);
  const actual = crc32c(buf, 0, size - 4);
  if (stored !== actual) throw new FormatError(`${kind} checksum mismatch (stored ${hex8(stored)}, computed ${hex8(actual)})`);
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function u64(buf: Buffer, at: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(`${what} ${v} is out of range`);
  return Number(v);
}

function putU64(buf: Buffer, at: number, v: number): void {
  buf.writeBigUInt64LE(BigInt(v), at);
}

function text(buf: Buffer, lenAt: number, lenBytes: 1 | 2, at: number, max: number, what: string): string {
  const len = lenBytes === 1 ? buf.readUInt8(lenAt) : buf.readUInt16LE(lenAt);
  if (len > max) throw new FormatError(`${what} length ${len} is more than ${max}`);
  return buf.toString('utf8', at, at + len);
}

function putText(buf: Buffer, lenAt: number, lenBytes: 1 | 2, at: number, max: number, value: string, what: string): void {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length > max) throw new FormatError(`${what} is ${bytes.length} bytes, more than ${max}`);
  if (lenBytes === 1) buf.writeUInt8(bytes.length, lenAt);
  else buf.writeUInt16LE(bytes.length, lenAt);
  bytes.copy(buf, at);
}

// ---- cartridge header: magic, version, header size, capacity, created, label, CRC ----

export function encodeCartridgeHeader(h: CartridgeHeader): Buffer {
  const b = Buffer.alloc(CARTRIDGE_HEADER_SIZE);
  MAGIC.cartridge.copy(b, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  b.writeUInt32LE(CARTRIDGE_HEADER_SIZE, 12);
  putU64(b, 16, h.capacityBytes);
  putU64(b, 24, h.createdMs);
  putText(b, 32, 1, 33, LABEL_MAX, h.label, 'label');
  return seal(b);
}

export function decodeCartridgeHeader(b: Buffer): CartridgeHeader {
  if (b.length >= 8 && magicOf(b) !== 'cartridge') throw new FormatError('not an arraylab tape cartridge (no cartridge magic at offset 0)');
  check(b, 'cartridge', CARTRIDGE_HEADER_SIZE);
  const version = b.readUInt32LE(8);
  if (version !== FORMAT_VERSION) throw new FormatError(`format version ${version} is not supported (this arraylab reads version ${FORMAT_VERSION})`);
  if (b.readUInt32LE(12) !== CARTRIDGE_HEADER_SIZE) throw new FormatError(`header size ${b.readUInt32LE(12)} is not ${CARTRIDGE_HEADER_SIZE}`);
  const label = text(b, 32, 1, 33, LABEL_MAX, 'label');
  if (!VOLUME_NAME_PATTERN.test(label)) throw new FormatError(`label ${JSON.stringify(label)} is not a valid label`);
  return { label, capacityBytes: u64(b, 16, 'capacity'), createdMs: u64(b, 24, 'creation time') };
}

// ---- record header ----

export function encodeRecordHeader(h: RecordHeader): Buffer {
  const b = Buffer.alloc(RECORD_HEADER_SIZE);
  MAGIC.record.copy(b, 0);
  b.writeUInt32LE(h.record, 8);
  b.writeUInt32LE(h.blockSize, 12);
  putU64(b, 16, h.sizeBytes);
  putU64(b, 24, h.extentCount);
  putU64(b, 32, h.dataBytes);
  putU64(b, 40, h.createdMs);
  putText(b, 48, 1, 49, LABEL_MAX, h.volume, 'volume name');
  putText(b, 112, 2, 114, TAG_MAX, h.tag, 'tag');
  putU64(b, 244, h.imageMs);
  return seal(b);
}

export function decodeRecordHeader(b: Buffer): RecordHeader {
  check(b, 'record', RECORD_HEADER_SIZE);
  const blockSize = b.readUInt32LE(12);
  if (blockSize !== 512 && blockSize !== 4096) throw new FormatError(`record block size ${blockSize} is not 512 or 4096`);
  const h: RecordHeader = {
    record: b.readUInt32LE(8),
    blockSize,
    sizeBytes: u64(b, 16, 'record size'),
    extentCount: u64(b, 24, 'extent count'),
    dataBytes: u64(b, 32, 'data bytes'),
    createdMs: u64(b, 40, 'creation time'),
    imageMs: u64(b, 244, 'image time'),
    volume: text(b, 48, 1, 49, LABEL_MAX, 'volume name'),
    tag: text(b, 112, 2, 114, TAG_MAX, 'tag'),
  };
  if (h.imageMs === 0) h.imageMs = h.createdMs;
  if (h.sizeBytes === 0 || h.sizeBytes % blockSize !== 0)
    throw new FormatError(`record size ${h.sizeBytes} is not a positive multiple of its block size ${blockSize}`);
  if (h.dataBytes > h.sizeBytes) throw new FormatError(`record data bytes ${h.dataBytes} exceed its size ${h.sizeBytes}`);
  if (h.extentCount > Math.ceil(h.sizeBytes / blockSize))
    throw new FormatError(`record extent count ${h.extentCount} exceeds its ${h.sizeBytes / blockSize} blocks`);
  return h;
}

// ---- extent header: offset, length, CRC32C of the data that follows, header CRC ----

export function encodeExtentHeader(e: ExtentHeader): Buffer {
  const b = Buffer.alloc(EXTENT_HEADER_SIZE);
  MAGIC.extent.copy(b, 0);
  putU64(b, 8, e.offset);
  b.writeUInt32LE(e.length, 16);
  b.writeUInt32LE(e.dataCrc >>> 0, 20);
  return seal(b);
}

/** Also checks the extent against its record: in range, block-aligned, at most EXTENT_MAX. */
export function decodeExtentHeader(b: Buffer, rec: RecordHeader, notBefore: number): ExtentHeader {
  check(b, 'extent', EXTENT_HEADER_SIZE);
  const e = { offset: u64(b, 8, 'extent offset'), length: b.readUInt32LE(16), dataCrc: b.readUInt32LE(20) };
  if (e.length === 0 || e.length > EXTENT_MAX) throw new FormatError(`extent length ${e.length} is not between 1 and ${EXTENT_MAX}`);
  if (e.offset % rec.blockSize !== 0 || e.length % rec.blockSize !== 0)
    throw new FormatError(`extent at ${e.offset} (+${e.length}) is not aligned to the ${rec.blockSize}-byte block size`);
  if (e.offset < notBefore) throw new FormatError(`extent at ${e.offset} overlaps or precedes the previous one (ends at ${notBefore})`);
  if (e.offset + e.length > rec.sizeBytes) throw new FormatError(`extent at ${e.offset} (+${e.length}) runs past the record's size ${rec.sizeBytes}`);
  return e;
}

// ---- record trailer: SHA-256 of the whole image (holes as zeroes), data bytes, CRC ----

export function encodeTrailer(t: RecordTrailer): Buffer {
  const b = Buffer.alloc(TRAILER_SIZE);
  MAGIC.trailer.copy(b, 0);
  b.writeUInt32LE(t.record, 8);
  putU64(b, 16, t.dataBytes);
  Buffer.from(t.sha256, 'hex').copy(b, 24);
  return seal(b);
}

export function decodeTrailer(b: Buffer): RecordTrailer {
  check(b, 'trailer', TRAILER_SIZE);
  return { record: b.readUInt32LE(8), dataBytes: u64(b, 16, 'trailer data bytes'), sha256: b.toString('hex', 24, 56) };
}

// ---- end-of-data marker: after the last complete record ----

export function encodeEod(m: EodMarker): Buffer {
  const b = Buffer.alloc(EOD_SIZE);
  MAGIC.eod.copy(b, 0);
  b.writeUInt32LE(m.recordCount, 8);
  putU64(b, 16, m.offset);
  return seal(b);
}

export function decodeEod(b: Buffer): EodMarker {
  check(b, 'eod', EOD_SIZE);
  return { recordCount: b.readUInt32LE(8), offset: u64(b, 16, 'end-of-data offset') };
}

/** Bytes a record takes on tape with this many extents and data bytes (EOD not included). */
export function recordBytes(extents: number, dataBytes: number): number {
  return RECORD_HEADER_SIZE + extents * EXTENT_HEADER_SIZE + dataBytes + TRAILER_SIZE;
}
