/**
 * A remote end's staged cycle (REC consistency mode): the writes of one cycle, held aside until
 * CommitCycle applies them to the volume as a whole, so the volume never shows half a cycle.
 *
 * File backend: one append-only file per pair (DATA_DIR/rec-stage/PAIR.stage) of records
 * [offset u64][length u32][kind u8: 0 data, 1 zeroes][data]; a flush of the pair's data export
 * fsyncs it. The commit is recorded in the pair's journal record (committedCycle) before the
 * stage is applied, so a crash in between re-applies it at the next start (applying is
 * idempotent: the same writes in the same order); a stage that was never committed is dropped.
 * Memory backend: the records in memory.
 *
 * Bounded: a stage holds at most MAX_STAGE_BYTES; a source that sends more gets ENOSPC.
 */
import { type FileHandle, mkdir, open, rm } from 'node:fs/promises';
import path from 'node:path';
import { BlockDeviceError, type BlockDevice } from '../block/BlockDevice.js';

const HEADER = 13;
/**
 * A file stage also keeps its records in memory up to this many bytes, so a commit applies them
 * from there rather than reading the file back (the file is for a restart only).
 */
const MEMORY_COPY_BYTES = 256 * 1024 * 1024;
/** A REC buffer is 128 MiB by default; a cycle larger than this is refused. */
export const MAX_STAGE_BYTES = 1024 * 1024 * 1024;
const APPLY_CHUNK = 32 * 1024 * 1024;

export class CycleStage {
  private bytes = 0;
  private readonly mem: Array<{ offset: number; length: number; data: Buffer | undefined }> = [];
  /** File stage: mem holds every record written since the last reset (else apply reads the file). */
  private memWhole = true;
  private memBytes = 0;
  private fh: FileHandle | undefined;

  private constructor(
    readonly pairId: string,
    private readonly file: string | undefined,
  ) {}

  /** dir undefined: in memory. An existing file is kept (a committed cycle may wait in it). */
  static async open(pairId: string, dir: string | undefined): Promise<CycleStage> {
    if (dir === undefined) return new CycleStage(pairId, undefined);
    await mkdir(dir, { recursive: true });
    const s = new CycleStage(pairId, path.join(dir, `${pairId}.stage`));
    s.fh = await open(s.file!, 'a+');
    s.bytes = (await s.fh.stat()).size;
    s.memWhole = s.bytes === 0; // records from before a restart are in the file only
    return s;
  }

  get size(): number {
    return this.bytes;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.room(data.length);
    if (this.fh === undefined) {
      this.mem.push({ offset, length: data.length, data: Buffer.from(data) });
      this.bytes += HEADER + data.length;
      return;
    }
    const h = header(offset, data.length, 0);
    const at = this.bytes;
    this.bytes += HEADER + data.length;
    this.remember(offset, data.length, data);
    await this.fh.writev([h, data], at);
  }

  /** The memory copy of a file stage's record (copied: the caller's buffer is reused after the write). */
  private remember(offset: number, length: number, data: Buffer | undefined): void {
    if (!this.memWhole) return;
    if (this.memBytes + length > MEMORY_COPY_BYTES) {
      this.memWhole = false;
      this.mem.length = 0;
      this.memBytes = 0;
      return;
    }
    this.mem.push({ offset, length, data: data === undefined ? undefined : Buffer.from(data) });
    if (data !== undefined) this.memBytes += length;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.room(0);
    if (this.fh === undefined) {
      this.mem.push({ offset, length, data: undefined });
      this.bytes += HEADER;
      return;
    }
    const at = this.bytes;
    this.bytes += HEADER;
    this.remember(offset, length, undefined);
    await this.fh.write(header(offset, length, 1), 0, HEADER, at);
  }

  /** Makes the staged records durable (a flush of the pair's data export). */
  async flush(): Promise<void> {
    await this.fh?.sync();
  }

  /** Applies every staged record, in order, to the volume (below the engine's layer), then flushes it. */
  async apply(target: BlockDevice): Promise<void> {
    if (this.fh === undefined || this.memWhole) {
      for (const r of this.mem) await (r.data === undefined ? target.writeZeroes(r.offset, r.length) : target.write(r.offset, r.data));
    } else {
      const h = Buffer.alloc(HEADER);
      let buf = Buffer.alloc(0);
      for (let at = 0; at + HEADER <= this.bytes; ) {
        await this.fh.read(h, 0, HEADER, at);
        const offset = Number(h.readBigUInt64BE(0));
        const length = h.readUInt32BE(8);
        const kind = h[12];
        at += HEADER;
        if (kind === 1) {
          await target.writeZeroes(offset, length);
          continue;
        }
        if (at + length > this.bytes) break; // a torn last record: never acknowledged, so never committed
        for (let done = 0; done < length; ) {
          const n = Math.min(APPLY_CHUNK, length - done);
          if (buf.length < n) buf = Buffer.alloc(n);
          await this.fh.read(buf, 0, n, at + done);
          await target.write(offset + done, buf.subarray(0, n));
          done += n;
        }
        at += length;
      }
    }
    await target.flush();
  }

  /** Drops what is staged (applied, or never committed). */
  async reset(): Promise<void> {
    this.mem.length = 0;
    this.memBytes = 0;
    this.memWhole = true;
    this.bytes = 0;
    if (this.fh !== undefined) {
      await this.fh.truncate(0);
      await this.fh.sync();
    }
  }

  async close(remove = false): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
    if (remove && this.file !== undefined) await rm(this.file, { force: true });
  }

  private room(n: number): void {
    if (this.bytes + HEADER + n > MAX_STAGE_BYTES) {
      throw new BlockDeviceError('ENOSPC', `REC stage of pair ${this.pairId} is full (${MAX_STAGE_BYTES} bytes in one cycle); lower the source's REC buffer`);
    }
  }
}

function header(offset: number, length: number, kind: 0 | 1): Buffer {
  const h = Buffer.allocUnsafe(HEADER);
  h.writeBigUInt64BE(BigInt(offset), 0);
  h.writeUInt32BE(length, 8);
  h[12] = kind;
  return h;
}
