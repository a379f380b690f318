/**
 * One cartridge: its file, and the index of its complete records (built by scanning the file's
 * headers and trailers at open; data is only read by verify and restore).
 *
 * Append-only: a new record is written at the end of the last complete record (cutting off
 * whatever a crash left there), followed by the end-of-data marker, then fsync. A write that
 * fails or is cancelled cuts the file back and rewrites the marker, so the cartridge is as
 * before. Nothing here allocates more than EXTENT_MAX bytes at a time.
 */
import { createHash } from 'node:crypto';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { crc32c } from '../net/crc32c.js';
import {
  CARTRIDGE_HEADER_SIZE,
  decodeCartridgeHeader,
  decodeEod,
  decodeExtentHeader,
  decodeRecordHeader,
  decodeTrailer,
  encodeCartridgeHeader,
  encodeEod,
  encodeExtentHeader,
  encodeRecordHeader,
  encodeTrailer,
  EOD_SIZE,
  EXTENT_HEADER_SIZE,
  EXTENT_MAX,
  FormatError,
  magicOf,
  RECORD_HEADER_SIZE,
  recordBytes,
  TRAILER_SIZE,
  type CartridgeHeader,
  type ExtentHeader,
  type RecordHeader,
  type RecordTrailer,
} from './format.js';
import { TapeError, type CartridgeView, type TapeRecordView } from './types.js';

export interface RecordEntry {
  header: RecordHeader;
  trailer: RecordTrailer;
  /** File offset of the record header. */
  offset: number;
  /** File offset just past the trailer. */
  end: number;
}

/** What a scan found besides the records: an ignored incomplete tail, or damage. */
export interface ScanNotes {
  /** A record cut short (crash): ignored, overwritten by the next write. Empty if none. */
  tail: string;
}

export interface NewRecord {
  volume: string;
  tag: string;
  blockSize: number;
  sizeBytes: number;
  /** Upper bounds from block status; the header is corrected if fewer are stored. */
  extents: number;
  dataBytes: number;
  /** The image's point in time (ms); undefined: the record's start (a live volume read now). */
  imageMs?: number | undefined;
}

/** One piece of volume data to store, in increasing offset order, at most EXTENT_MAX bytes. */
export interface DataPiece {
  offset: number;
  data: Buffer;
}

export const ZEROES = Buffer.alloc(EXTENT_MAX);

export class Cartridge {
  private constructor(
    readonly file: string,
    readonly header: CartridgeHeader,
    private entries: RecordEntry[],
    /** Where the next record goes: just past the last complete record. */
    private end: number,
    /** Why records after the last one listed cannot be read (then writes are refused). */
    readonly damage: string,
  ) {}

  get label(): string {
    return this.header.label;
  }
  get records(): readonly RecordEntry[] {
    return this.entries;
  }
  /** Cartridge header and complete records. */
  get usedBytes(): number {
    return this.end;
  }
  /** What one more record may take (the end-of-data marker after it is reserved). */
  get freeBytes(): number {
    return Math.max(0, this.header.capacityBytes - this.end - EOD_SIZE);
  }

  view(): CartridgeView {
    return {
      label: this.label,
      capacityBytes: this.header.capacityBytes,
      usedBytes: this.usedBytes,
      recordCount: this.entries.length,
      createdAt: new Date(this.header.createdMs).toISOString(),
    };
  }

  recordView(e: RecordEntry): TapeRecordView {
    return {
      cartridge: this.label,
      record: e.header.record,
      volume: e.header.volume,
      tag: e.header.tag,
      sizeBytes: e.header.sizeBytes,
      blockSize: e.header.blockSize,
      dataBytes: e.trailer.dataBytes,
      sha256: e.trailer.sha256,
      createdAt: new Date(e.header.createdMs).toISOString(),
      imageAt: new Date(e.header.imageMs).toISOString(),
    };
  }

  record(n: number): RecordEntry {
    const e = this.entries.find((r) => r.header.record === n);
    if (!e) {
      const have = this.entries.length === 0 ? 'it has no records' : `its records are 1 to ${this.entries.length}`;
      throw new TapeError('NOT_FOUND', `cartridge ${this.label} has no record ${n}: ${have}; see arraylab tape show ${this.label}`);
    }
    return e;
  }

  /** Makes a new empty cartridge file (refused if the file exists); durable when it resolves. */
  static async create(file: string, label: string, capacityBytes: number, createdMs = Date.now()): Promise<Cartridge> {
    const header: CartridgeHeader = { label, capacityBytes, createdMs };
    const fh = await fsp.open(file, 'wx', 0o600);
    try {
      await fh.write(encodeCartridgeHeader(header), 0, CARTRIDGE_HEADER_SIZE, 0);
      await fh.write(encodeEod({ recordCount: 0, offset: CARTRIDGE_HEADER_SIZE }), 0, EOD_SIZE, CARTRIDGE_HEADER_SIZE);
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fsp.rm(file, { force: true });
      throw err;
    }
    await fh.close();
    await syncDir(path.dirname(file));
    return new Cartridge(file, header, [], CARTRIDGE_HEADER_SIZE, '');
  }

  /**
   * Opens a cartridge file and indexes its records. A header that does not parse throws a
   * FormatError. A record cut short at the end (a crash during a write) is ignored; a bad
   * record in the middle (the file still ends in an end-of-data marker past it) is damage: the
   * records before it stay readable, writes are refused.
   */
  static async open(file: string): Promise<{ cartridge: Cartridge; notes: ScanNotes }> {
    const fh = await fsp.open(file, 'r');
    try {
      const size = (await fh.stat()).size;
      const header = decodeCartridgeHeader(await readAt(fh, 0, CARTRIDGE_HEADER_SIZE));
      const entries: RecordEntry[] = [];
      let pos = CARTRIDGE_HEADER_SIZE;
      let problem = '';
      for (;;) {
        const head = await readAt(fh, pos, RECORD_HEADER_SIZE);
        if (magicOf(head) === 'eod') {
          try {
            const eod = decodeEod(head.subarray(0, EOD_SIZE));
            if (eod.offset === pos && eod.recordCount === entries.length) break;
            problem = `end-of-data marker at offset ${pos} says ${eod.recordCount} records at offset ${eod.offset}`;
          } catch (err) {
            problem = `at offset ${pos}: ${(err as Error).message}`;
          }
          break;
        }
        if (head.length === 0) {
          problem = `no end-of-data marker at offset ${pos}`;
          break;
        }
        try {
          const e = await scanRecord(fh, pos, size, head, entries.length + 1);
          entries.push(e);
          pos = e.end;
        } catch (err) {
          if (!(err instanceof FormatError)) throw err;
          problem = `record ${entries.length + 1} at offset ${pos}: ${err.message}`;
          break;
        }
      }
      let tail = '';
      let damage = '';
      if (problem !== '') {
        // A clean cartridge always ends in its end-of-data marker: if there is one past this
        // point, the problem is damage in the middle, not a write cut short by a crash.
        const last = size >= pos + EOD_SIZE ? await readAt(fh, size - EOD_SIZE, EOD_SIZE) : Buffer.alloc(0);
        let laterEod = false;
        try {
          if (last.length === EOD_SIZE) {
            const eod = decodeEod(last);
            laterEod = eod.offset === size - EOD_SIZE && eod.offset > pos;
          }
        } catch {
          laterEod = false;
        }
        if (laterEod) damage = problem;
        else tail = problem;
      }
      return { cartridge: new Cartridge(file, header, entries, pos, damage), notes: { tail } };
    } finally {
      await fh.close();
    }
  }

  /** Drops every record; the capacity stays. */
  async erase(): Promise<void> {
    const fh = await fsp.open(this.file, 'r+');
    try {
      await fh.truncate(CARTRIDGE_HEADER_SIZE);
      await fh.write(encodeEod({ recordCount: 0, offset: CARTRIDGE_HEADER_SIZE }), 0, EOD_SIZE, CARTRIDGE_HEADER_SIZE);
      await fh.sync();
    } finally {
      await fh.close();
    }
    this.entries = [];
    this.end = CARTRIDGE_HEADER_SIZE;
    (this as { damage: string }).damage = '';
  }

  /**
   * Appends a record of `pieces` (non-zero data in increasing offset order; everything else
   * reads as zeroes). The caller checked the plan against freeBytes; more data than planned
   * (the volume changed meanwhile) is refused here before it is written.
   */
  async append(rec: NewRecord, pieces: AsyncIterable<DataPiece>, onDone: (doneBytes: number) => void): Promise<RecordEntry> {
    if (this.damage)
      throw new TapeError(
        'FAILED_PRECONDITION',
        `cartridge ${this.label} is damaged (${this.damage}); it takes no more records: read what you can, then erase it`,
      );
    const start = this.end;
    const number = this.entries.length + 1;
    const createdMs = Date.now();
    const header: RecordHeader = {
      record: number,
      blockSize: rec.blockSize,
      sizeBytes: rec.sizeBytes,
      extentCount: rec.extents,
      dataBytes: rec.dataBytes,
      createdMs,
      imageMs: rec.imageMs ?? createdMs,
      volume: rec.volume,
      tag: rec.tag,
    };
    const fh = await fsp.open(this.file, 'r+');
    try {
      try {
        await fh.truncate(start); // whatever a crash left past the last complete record
        let pos = start + RECORD_HEADER_SIZE;
        await writeAll(fh, encodeRecordHeader(header), start);
        const sha = createHash('sha256');
        let hashed = 0;
        let extents = 0;
        let dataBytes = 0;
        const limit = this.header.capacityBytes - EOD_SIZE - TRAILER_SIZE;
        for await (const p of pieces) {
          if (p.offset < hashed || p.data.length === 0 || p.data.length > EXTENT_MAX || p.offset + p.data.length > rec.sizeBytes) {
            throw new Error(`bad data piece at ${p.offset} (+${p.data.length}) after ${hashed}`);
          }
          if (pos + EXTENT_HEADER_SIZE + p.data.length > limit) {
            throw new TapeError(
              'RESOURCE_EXHAUSTED',
              `cartridge ${this.label} filled up while writing volume ${rec.volume} (it gained data during the copy); nothing was kept: write it again to a cartridge with room, or add one: arraylab tape add LABEL --capacity SIZE`,
            );
          }
          hashZeroes(sha, p.offset - hashed);
          sha.update(p.data);
          hashed = p.offset + p.data.length;
          await writeAll(fh, encodeExtentHeader({ offset: p.offset, length: p.data.length, dataCrc: crc32c(p.data) }), pos);
          await writeAll(fh, p.data, pos + EXTENT_HEADER_SIZE);
          pos += EXTENT_HEADER_SIZE + p.data.length;
          extents++;
          dataBytes += p.data.length;
          onDone(hashed);
        }
        hashZeroes(sha, rec.sizeBytes - hashed);
        if (extents !== header.extentCount || dataBytes !== header.dataBytes) {
          // Zero pieces were left out: the header states what is actually stored.
          header.extentCount = extents;
          header.dataBytes = dataBytes;
          await writeAll(fh, encodeRecordHeader(header), start);
        }
        const trailer: RecordTrailer = { record: number, dataBytes, sha256: sha.digest('hex') };
        await writeAll(fh, encodeTrailer(trailer), pos);
        pos += TRAILER_SIZE;
        await writeAll(fh, encodeEod({ recordCount: number, offset: pos }), pos);
        await fh.sync();
        const entry: RecordEntry = { header, trailer, offset: start, end: pos };
        this.entries.push(entry);
        this.end = pos;
        onDone(rec.sizeBytes);
        return entry;
      } catch (err) {
        // Back to the cartridge as it was; if even that fails, the next open ignores the tail.
        await fh.truncate(start).catch(() => undefined);
        await writeAll(fh, encodeEod({ recordCount: this.entries.length, offset: start }), start).catch(() => undefined);
        await fh.sync().catch(() => undefined);
        throw err;
      }
    } finally {
      await fh.close();
    }
  }

  /**
   * Reads a record's extents in order, each checked against its CRC32C before it is yielded,
   * then checks the trailer. Throws TapeError DATA_LOSS naming the cartridge and record.
   */
  async *extents(e: RecordEntry, beforeRead: () => void = () => undefined): AsyncGenerator<DataPiece> {
    const where = `cartridge ${this.label} record ${e.header.record}`;
    const fh = await fsp.open(this.file, 'r');
    try {
      let pos = e.offset;
      try {
        const header = decodeRecordHeader(await readAt(fh, pos, RECORD_HEADER_SIZE));
        if (header.record !== e.header.record || header.extentCount !== e.header.extentCount || header.sizeBytes !== e.header.sizeBytes) {
          throw new FormatError('record header changed since the cartridge was opened');
        }
      } catch (err) {
        throw damaged(where, `its header at offset ${pos}`, err);
      }
      pos += RECORD_HEADER_SIZE;
      let notBefore = 0;
      for (let i = 0; i < e.header.extentCount; i++) {
        let ext: ExtentHeader;
        beforeRead(); // an injected read fault (TapeLibrary), before the extent is read
        try {
          ext = decodeExtentHeader(await readAt(fh, pos, EXTENT_HEADER_SIZE), e.header, notBefore);
        } catch (err) {
          throw damaged(where, `extent ${i + 1} header at offset ${pos}`, err);
        }
        const data = await readAt(fh, pos + EXTENT_HEADER_SIZE, ext.length);
        if (data.length !== ext.length) throw damaged(where, `extent ${i + 1} (volume offset ${ext.offset})`, new FormatError('data cut short'));
        const crc = crc32c(data);
        if (crc !== ext.dataCrc) {
          throw new TapeError(
            'DATA_LOSS',
            `${where} is damaged: extent ${i + 1} (volume offset ${ext.offset}, ${ext.length} bytes, file offset ${pos}) fails its CRC32C (stored ${hex8(ext.dataCrc)}, read ${hex8(crc)}); use another copy of this backup`,
          );
        }
        yield { offset: ext.offset, data };
        notBefore = ext.offset + ext.length;
        pos += EXTENT_HEADER_SIZE + ext.length;
      }
      beforeRead();
      try {
        const t = decodeTrailer(await readAt(fh, pos, TRAILER_SIZE));
        if (t.sha256 !== e.trailer.sha256 || t.dataBytes !== e.trailer.dataBytes) throw new FormatError('trailer changed since the cartridge was opened');
      } catch (err) {
        throw damaged(where, `its trailer at offset ${pos}`, err);
      }
    } finally {
      await fh.close();
    }
  }

  /** Re-reads a record and checks every CRC and the image's SHA-256; never touches a volume. */
  async verify(e: RecordEntry, onDone: (doneBytes: number) => void, beforeRead?: () => void): Promise<void> {
    const sha = createHash('sha256');
    let hashed = 0;
    for await (const p of this.extents(e, beforeRead)) {
      hashZeroes(sha, p.offset - hashed);
      sha.update(p.data);
      hashed = p.offset + p.data.length;
      onDone(hashed);
    }
    hashZeroes(sha, e.header.sizeBytes - hashed);
    const digest = sha.digest('hex');
    if (digest !== e.trailer.sha256) {
      throw new TapeError(
        'DATA_LOSS',
        `cartridge ${this.label} record ${e.header.record} is damaged: its image's SHA-256 is ${digest}, not the recorded ${e.trailer.sha256}; use another copy of this backup`,
      );
    }
    onDone(e.header.sizeBytes);
  }
}

/** Reads up to len bytes at pos (fewer at the end of the file); len is bounded by the caller. */
async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got === len ? buf : buf.subarray(0, got);
}

async function writeAll(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done);
    done += bytesWritten;
  }
}

/** Walks one record's headers (not its data): FormatError if it is not complete and sound. */
async function scanRecord(fh: FileHandle, pos: number, fileSize: number, head: Buffer, expected: number): Promise<RecordEntry> {
  const header = decodeRecordHeader(head);
  if (header.record !== expected) throw new FormatError(`record number ${header.record}, expected ${expected}`);
  if (pos + recordBytes(header.extentCount, header.dataBytes) > fileSize) throw new FormatError('cut short (the file ends inside it)');
  let at = pos + RECORD_HEADER_SIZE;
  let notBefore = 0;
  let data = 0;
  for (let i = 0; i < header.extentCount; i++) {
    const ext = decodeExtentHeader(await readAt(fh, at, EXTENT_HEADER_SIZE), header, notBefore);
    notBefore = ext.offset + ext.length;
    data += ext.length;
    at += EXTENT_HEADER_SIZE + ext.length;
    if (at > fileSize) throw new FormatError('cut short (the file ends inside an extent)');
  }
  if (data !== header.dataBytes) throw new FormatError(`extents hold ${data} bytes, the header says ${header.dataBytes}`);
  const trailer = decodeTrailer(await readAt(fh, at, TRAILER_SIZE));
  if (trailer.record !== header.record || trailer.dataBytes !== data)
    throw new FormatError(`trailer (record ${trailer.record}, ${trailer.dataBytes} bytes) does not match the header`);
  return { header, trailer, offset: pos, end: at + TRAILER_SIZE };
}

function damaged(where: string, what: string, err: unknown): TapeError {
  if (err instanceof TapeError) return err;
  return new TapeError('DATA_LOSS', `${where} is damaged: ${what}: ${(err as Error).message}; use another copy of this backup`);
}

function hashZeroes(sha: ReturnType<typeof createHash>, n: number): void {
  while (n > 0) {
    const k = Math.min(n, ZEROES.length);
    sha.update(ZEROES.subarray(0, k));
    n -= k;
  }
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

export async function syncDir(dir: string): Promise<void> {
  const h = await fsp.open(dir, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
