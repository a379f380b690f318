/**
 * The NBD server's replies on one connection, encoded into the connection's BatchedWriter
 * (../net/BatchedWriter.ts: everything produced in one tick goes out in one write).
 *
 * Small messages (reply headers, option replies) are encoded straight into the slab; prepared
 * messages (read replies: header and data in one Buffer) are copied into the slab when small
 * (COPY_MAX), so their buffer is free again at once, or else queued by reference. A large read
 * reply's pooled buffer is queued with sendOwned(), which hands it back once the socket write
 * that carried it has completed (true) or was abandoned (false: the caller must drop it).
 */
import type { Writable } from 'node:stream';
import { BatchedWriter, type SentCallback } from '../net/BatchedWriter.js';
import {
  CHUNK_HEADER_SIZE,
  OPT_REPLY_MAGIC_HI,
  OPT_REPLY_MAGIC_LO,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_NONE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './constants.js';

/** Slab size: NBD's messages are small (headers, read replies up to COPY_MAX copied in); the iSCSI target uses 256 KiB. */
const SLAB = 128 * 1024;
/** Prepared messages up to this size are copied into the slab rather than queued by reference. */
export const COPY_MAX = 16 * 1024 + 64;

export class Output extends BatchedWriter {
  constructor(target: Writable) {
    super(target, SLAB);
  }

  /**
   * Sends a prepared message after everything encoded so far, at the end of this tick.
   * Returns true when its bytes were copied (the caller may reuse `buf` at once), false when
   * the socket keeps a reference to it (the caller must never write into it again).
   */
  send(buf: Buffer): boolean {
    if (buf.length <= COPY_MAX) {
      const at = this.reserve(buf.length);
      buf.copy(this.slab, at);
      return true;
    }
    this.queue(buf);
    return false;
  }

  /**
   * Reserves `head` bytes in the slab for a message's header (the caller fills them at once,
   * at the returned offset in `slab`), followed by `data` sent by reference, at the end of
   * this tick. `onSent` is called exactly once, as BatchedWriter.queue says.
   */
  sendOwned(head: number, data: Buffer, onSent: SentCallback): { slab: Buffer; at: number } {
    const at = this.reserve(head);
    const slab = this.slab;
    this.queue(data, onSent);
    return { slab, at };
  }

  // ---- Handshake ----

  /** An option reply; `data` (if any) must fit in the slab. */
  optionReply(option: number, type: number, data?: Buffer | string): void {
    const len = data === undefined ? 0 : Buffer.byteLength(data);
    let b: Buffer;
    let at = 0;
    if (20 + len > SLAB) b = Buffer.allocUnsafe(20 + len);
    else {
      at = this.reserve(20 + len);
      b = this.slab; // after reserve(): a full slab was just replaced by a fresh one
    }
    b.writeUInt32BE(OPT_REPLY_MAGIC_HI, at);
    b.writeUInt32BE(OPT_REPLY_MAGIC_LO, at + 4);
    b.writeUInt32BE(option, at + 8);
    b.writeUInt32BE(type, at + 12);
    b.writeUInt32BE(len, at + 16);
    if (typeof data === 'string') b.write(data, at + 20, 'utf8');
    else if (data !== undefined) data.copy(b, at + 20);
    if (b !== this.slab) this.send(b);
  }

  /** Raw handshake bytes (greeting, EXPORT_NAME reply). */
  raw(data: Buffer): void {
    const at = this.reserve(data.length);
    data.copy(this.slab, at);
  }

  // ---- Transmission ----

  simpleReply(errno: number, cookieHi: number, cookieLo: number): void {
    const at = this.reserve(SIMPLE_REPLY_SIZE);
    const b = this.slab;
    b.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
    b.writeUInt32BE(errno, at + 4);
    b.writeUInt32BE(cookieHi, at + 8);
    b.writeUInt32BE(cookieLo, at + 12);
  }

  /** NBD_REPLY_TYPE_NONE with DONE: success of a structured reply. */
  doneChunk(cookieHi: number, cookieLo: number): void {
    const at = this.reserve(CHUNK_HEADER_SIZE);
    writeChunkHeader(this.slab, at, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookieHi, cookieLo, 0);
  }

  /** NBD_REPLY_TYPE_ERROR with DONE and a message for the user. */
  errorChunk(errno: number, message: string, cookieHi: number, cookieLo: number): void {
    // Messages are ours and short; cut at 1 KiB anyway so one always fits.
    const msg = message.length > 1024 ? message.slice(0, 1024) : message;
    const mlen = Buffer.byteLength(msg);
    const at = this.reserve(CHUNK_HEADER_SIZE + 6 + mlen);
    const b = this.slab;
    writeChunkHeader(b, at, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + mlen);
    b.writeUInt32BE(errno, at + 20);
    b.writeUInt16BE(mlen, at + 24);
    b.write(msg, at + 26, 'utf8');
  }

  /** One NBD_REPLY_TYPE_BLOCK_STATUS chunk with DONE; `lengths`/`flags` hold n descriptors. */
  blockStatusChunk(cookieHi: number, cookieLo: number, contextId: number, lengths: number[], flags: number[], n: number): void {
    const size = CHUNK_HEADER_SIZE + 4 + 8 * n;
    let b: Buffer;
    let at: number;
    if (size <= 4096) {
      at = this.reserve(size);
      b = this.slab;
    } else {
      b = Buffer.allocUnsafe(size);
      at = 0;
    }
    writeChunkHeader(b, at, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookieHi, cookieLo, 4 + 8 * n);
    b.writeUInt32BE(contextId, at + 20);
    let p = at + 24;
    for (let i = 0; i < n; i++, p += 8) {
      b.writeUInt32BE(lengths[i]!, p);
      b.writeUInt32BE(flags[i]!, p + 4);
    }
    if (b !== this.slab) this.send(b);
  }
}

export function writeChunkHeader(b: Buffer, at: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  b.writeUInt16BE(flags, at + 4);
  b.writeUInt16BE(type, at + 6);
  b.writeUInt32BE(cookieHi, at + 8);
  b.writeUInt32BE(cookieLo, at + 12);
  b.writeUInt32BE(length, at + 16);
}
