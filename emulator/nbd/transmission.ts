/**
 * The transmission phase: read requests continuously, run them concurrently on the device,
 * reply to each as it completes (replies may leave out of order, as the spec allows).
 *
 * Bounds: at most MAX_IN_FLIGHT requests and MAX_IN_FLIGHT_BYTES of payload (write data held,
 * read data not yet sent) per connection, and OUTPUT_LIMIT bytes queued on a slow socket.
 * When a bound is reached the loop stops taking requests, so the input queue fills and pauses
 * the socket: backpressure, never dropping. A single request up to MAX_REQUEST is always
 * admitted once the connection is idle, so the largest legal request never deadlocks.
 */
import { assert } from '../../proto/util/assert.js';
import type { BlockDevice, ExportHandle, ZeroOptions } from '../block/BlockDevice.js';
import {
  CHUNK_HEADER_SIZE,
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_DF,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EINVAL,
  ENOSPC,
  EOVERFLOW,
  EPERM,
  ESHUTDOWN,
  FLAG_SEND_FUA,
  MAX_EXTENTS,
  MAX_IN_FLIGHT,
  MAX_IN_FLIGHT_BYTES,
  MAX_REQUEST,
  META_BASE_ALLOCATION_ID,
  REPLY_FLAG_DONE,
  REPLY_TYPE_OFFSET_DATA,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
} from './constants.js';
import { BufferPool } from '../net/BufferPool.js';
import { wireError } from './errors.js';
import { writeU64 } from './exportInfo.js';
import type { Negotiated } from './handshake.js';
import type { InputQueue } from '../net/InputQueue.js';
import { COPY_MAX, writeChunkHeader, type Output } from './Output.js';
import type { NbdLogger } from './types.js';

/** Reply bytes queued on the socket beyond which no new request is started. */
const OUTPUT_LIMIT = 16 * 1024 * 1024;
const READ_HEADER = CHUNK_HEADER_SIZE + 8;
/** Small buffers kept per connection for reuse (each COPY_MAX bytes): READ replies and WRITE payloads. */
const POOL_MAX = 32;
/**
 * Bytes of a pooled WRITE payload waited for at a time: less than a socket chunk, so each
 * chunk is copied (while still in cache) and released as soon as it arrives. Measured against
 * 128 KiB and whole-payload waits: 1 MiB sequential writes went faster in 6 of 7 paired runs.
 */
const FILL_STEP = 32 * 1024;
/** Refused requests logged at warn per connection before the rest go to debug. */
const MAX_WARNINGS = 20;

const NAMES = ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS'];

/** Command flags each command accepts (FUA is added for all when negotiated). */
const ALLOWED_FLAGS: number[] = [];
ALLOWED_FLAGS[CMD_READ] = CMD_FLAG_DF;
ALLOWED_FLAGS[CMD_WRITE] = 0;
ALLOWED_FLAGS[CMD_FLUSH] = 0;
ALLOWED_FLAGS[CMD_TRIM] = 0;
ALLOWED_FLAGS[CMD_CACHE] = 0;
ALLOWED_FLAGS[CMD_WRITE_ZEROES] = CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO;
ALLOWED_FLAGS[CMD_BLOCK_STATUS] = CMD_FLAG_REQ_ONE;

// Option objects shared by every request: none is mutated by a device.
const FUA = Object.freeze({ fua: true });
const ZERO_OPTS: ZeroOptions[] = [];
for (let i = 0; i < 8; i++) ZERO_OPTS[i] = Object.freeze({ fua: (i & 1) !== 0, noHole: (i & 2) !== 0, fastZero: (i & 4) !== 0 });

export interface TransmissionHost {
  readonly input: InputQueue;
  readonly out: Output;
  readonly log: NbdLogger;
  /** The server's pool of large buffers (READ replies and WRITE payloads above COPY_MAX). */
  readonly pool: BufferPool;
}

/** Why the request loop stopped. */
export type StopReason = 'eof' | 'disc' | 'protocol';

export class Transmission {
  /** Set by the server's close(): new requests get ESHUTDOWN. */
  shuttingDown = false;
  private closed = false;
  private refusals = 0;
  private inflight = 0;
  private inflightBytes = 0;
  private admitCost = 0;
  private admitWaiter: (() => void) | null = null;
  private drainWaiter: (() => void) | null = null;
  /** Highest byte offset a request may reach: the size sent to the client, less if the device shrank. */
  private limit: number;
  private why = '';
  private readonly device: BlockDevice;
  private readonly readOnly: boolean;
  private readonly fuaOk: boolean;
  private readonly blockSize: number;
  private readonly unsubscribe: () => void;
  // Scratch for block status replies, used synchronously in one completion at a time.
  private readonly extLengths: number[] = [];
  private readonly extFlags: number[] = [];
  /** Free small read buffers (see read()). */
  private readonly pool: Buffer[] = [];

  constructor(
    private readonly host: TransmissionHost,
    private readonly neg: Negotiated,
  ) {
    const handle: ExportHandle = neg.handle;
    this.device = handle.device;
    this.readOnly = handle.readOnly;
    this.fuaOk = (neg.flags & FLAG_SEND_FUA) !== 0;
    this.blockSize = this.device.blockSize;
    this.limit = Math.min(neg.size, this.device.size);
    // NBD cannot tell a connected client that the size changed (see README: Resize). This
    // connection keeps the size it negotiated; if the device shrinks below it, the tail is refused.
    this.unsubscribe = handle.onResize((newSize) => {
      this.limit = Math.min(neg.size, newSize);
      host.log.info({ newSize, negotiatedSize: neg.size }, 'export resized; this connection keeps its negotiated size until it reconnects');
    });
    host.out.onDrain(this.wakeAdmission);
  }

  /** Reads and starts requests until the client disconnects, sends DISC, or breaks the protocol. */
  async run(): Promise<StopReason> {
    const header = Buffer.allocUnsafe(REQUEST_SIZE);
    for (;;) {
      const input = this.host.input;
      if (input.length < REQUEST_SIZE && !(await input.need(REQUEST_SIZE))) return 'eof';
      // Parse in place (the header is copied only when it straddles two socket chunks).
      input.consume(REQUEST_SIZE, header);
      const b = input.buf;
      const o = input.off;
      if (b.readUInt32BE(o) !== REQUEST_MAGIC) {
        this.host.log.warn({ magic: b.readUInt32BE(o) }, 'bad request magic: closing');
        return 'protocol';
      }
      const flags = b.readUInt16BE(o + 4);
      const type = b.readUInt16BE(o + 6);
      const cookieHi = b.readUInt32BE(o + 8);
      const cookieLo = b.readUInt32BE(o + 12);
      // Offsets past 2^53 lose precision but stay far past any export's end, so they fail the range check.
      const offset = b.readUInt32BE(o + 16) * 0x1_0000_0000 + b.readUInt32BE(o + 20);
      const length = b.readUInt32BE(o + 24);

      if (type === CMD_DISC) return 'disc';

      const errno = this.shuttingDown ? ESHUTDOWN : this.check(type, flags, offset, length);
      if (type === CMD_WRITE) {
        if (errno !== 0) {
          // The payload still follows the header: drop it as it streams in to stay in step.
          if (!(await input.discard(length))) return 'eof';
          this.refuse(errno, type, cookieHi, cookieLo, offset, length);
          continue;
        }
        // Every payload goes into a reused buffer, given back when the write is done: a fresh
        // buffer per request (or a view pinning a socket chunk) drove V8 into major GCs.
        const small = length <= COPY_MAX;
        const cost = small ? length : BufferPool.bufferSize(length);
        if (!this.canAdmit(cost) && !(await this.admission(cost))) return 'eof';
        if (small) {
          // One of this connection's small buffers (the ones READ replies use).
          if (input.length < length && !(await input.need(length))) return 'eof';
          const buf = this.pool.pop() ?? Buffer.allocUnsafeSlow(COPY_MAX);
          input.copyTo(buf, length);
          this.start(type, flags, offset, length, cookieHi, cookieLo, cost, buf.subarray(0, length), buf);
          continue;
        }
        // A buffer of the server's pool, filled as the payload streams in (or received into
        // directly): no concatenation, no fresh 1 MiB allocation.
        const whole = this.host.pool.acquire(length);
        if (!(await input.fill(whole, length, FILL_STEP))) return 'eof';
        this.start(type, flags, offset, length, cookieHi, cookieLo, cost, whole.subarray(0, length), whole);
        continue;
      }
      if (errno !== 0) {
        this.refuse(errno, type, cookieHi, cookieLo, offset, length);
        continue;
      }
      const cost = type === CMD_READ ? readBytes(length, this.neg.structured) : 0;
      if (!this.canAdmit(cost) && !(await this.admission(cost))) return 'eof';
      this.start(type, flags, offset, length, cookieHi, cookieLo, cost, undefined, undefined);
    }
  }

  /** Resolves when no request is running. */
  drained(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.drainWaiter;
      this.drainWaiter = () => {
        prev?.();
        resolve();
      };
    });
  }

  /** Stops listening for resizes; called once at the end of the connection. */
  dispose(): void {
    this.unsubscribe();
  }

  /** 0, or the error for a request that must not reach the device (reason in this.why). */
  private check(type: number, flags: number, offset: number, length: number): number {
    const allowed = ALLOWED_FLAGS[type];
    if (allowed === undefined) return this.fail(EINVAL, `unknown command ${type}`);
    const ok = allowed | (this.fuaOk ? CMD_FLAG_FUA : 0);
    if ((flags & ~ok) !== 0 || ((flags & CMD_FLAG_DF) !== 0 && !this.neg.structured)) {
      return this.fail(EINVAL, `flags 0x${flags.toString(16)} not valid for ${NAMES[type]}`);
    }
    if (type === CMD_FLUSH) {
      return offset === 0 && length === 0 ? 0 : this.fail(EINVAL, 'FLUSH offset and length must be zero');
    }
    const writes = type === CMD_WRITE || type === CMD_WRITE_ZEROES || type === CMD_TRIM;
    if (writes && this.readOnly) return this.fail(EPERM, 'the export is read-only');
    if (type === CMD_BLOCK_STATUS) {
      if (!this.neg.blockStatus) return this.fail(EINVAL, 'BLOCK_STATUS without a negotiated metadata context');
      if (length === 0) return this.fail(EINVAL, 'BLOCK_STATUS of length 0');
    }
    if ((type === CMD_READ || type === CMD_WRITE) && length > MAX_REQUEST) {
      const errno = (flags & CMD_FLAG_DF) !== 0 ? EOVERFLOW : EINVAL;
      return this.fail(errno, `${NAMES[type]} of ${length} bytes exceeds the ${MAX_REQUEST}-byte maximum`);
    }
    const bs = this.blockSize;
    if (offset % bs !== 0 || length % bs !== 0) {
      return this.fail(EINVAL, `offset ${offset} and length ${length} must be multiples of the ${bs}-byte block size`);
    }
    if (offset + length > this.limit) {
      const errno = type === CMD_WRITE || type === CMD_WRITE_ZEROES ? ENOSPC : EINVAL;
      return this.fail(errno, `offset ${offset} length ${length} runs past the end of the ${this.limit}-byte export`);
    }
    return 0;
  }

  private fail(errno: number, why: string): number {
    this.why = why;
    return errno;
  }

  private refuse(errno: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if (errno !== ESHUTDOWN) {
      // One warning per bad request, up to a cap: a client looping on bad requests must not flood the log.
      const fields = { command: NAMES[type] ?? type, offset, length, errno };
      if (++this.refusals <= MAX_WARNINGS) this.host.log.warn(fields, `request refused: ${this.why}`);
      else this.host.log.debug(fields, `request refused: ${this.why}`);
      if (this.refusals === MAX_WARNINGS) this.host.log.warn(`${MAX_WARNINGS} requests refused; further refusals on this connection are logged at debug`);
    } else {
      this.why = 'the server is shutting down';
    }
    this.replyError(errno, this.why, cookieHi, cookieLo);
  }

  private canAdmit(cost: number): boolean {
    return this.inflight < MAX_IN_FLIGHT && this.host.out.pending <= OUTPUT_LIMIT && (this.inflight === 0 || this.inflightBytes + cost <= MAX_IN_FLIGHT_BYTES);
  }

  /** Waits until the request can start: true, or false if the connection closed meanwhile. */
  private admission(cost: number): Promise<boolean> {
    this.admitCost = cost;
    return new Promise((resolve) => {
      this.admitWaiter = () => resolve(!this.closed);
    });
  }

  private readonly wakeAdmission = (): void => {
    if (this.admitWaiter !== null && (this.closed || this.canAdmit(this.admitCost))) {
      const w = this.admitWaiter;
      this.admitWaiter = null;
      w();
    }
  };

  /** The socket is gone: stop waiting for room that will never come. */
  socketClosed(): void {
    this.closed = true;
    this.wakeAdmission();
  }

  /**
   * `cost`: the request's share of MAX_IN_FLIGHT_BYTES (the buffer it holds). `whole`: the
   * pooled buffer `data` is a view of, returned to the pool once the device is done with it.
   */
  private start(
    type: number,
    flags: number,
    offset: number,
    length: number,
    cookieHi: number,
    cookieLo: number,
    cost: number,
    data: Buffer | undefined,
    whole: Buffer | undefined,
  ): void {
    // The run loop starts requests only after canAdmit(); meanwhile the counters only went down.
    assert(
      this.inflight < MAX_IN_FLIGHT && (this.inflight === 0 || this.inflightBytes + cost <= MAX_IN_FLIGHT_BYTES),
      'NBD: a request starts only within the in-flight bounds',
    );
    this.inflight++;
    this.inflightBytes += cost;
    let p: Promise<void>;
    try {
      p = this.dispatch(type, flags, offset, length, cookieHi, cookieLo, data);
    } catch (err) {
      // A device that throws synchronously instead of rejecting.
      p = Promise.reject(err);
    }
    p.then(
      () => {
        // The write succeeded: the device is done with the payload.
        if (whole !== undefined) {
          if (whole.length !== COPY_MAX) this.host.pool.release(whole);
          else if (this.pool.length < POOL_MAX) this.pool.push(whole);
        }
        this.finish(cost);
      },
      (err: unknown) => {
        // A failed write's payload is dropped, not pooled: a layer may still be writing from it.
        this.deviceError(err, type, offset, length, cookieHi, cookieLo);
        this.finish(cost);
      },
    );
  }

  private finish(cost: number): void {
    assert(this.inflight > 0 && this.inflightBytes >= cost, 'NBD: a request finishes once, giving back the cost it started with');
    this.inflight--;
    this.inflightBytes -= cost;
    assert(this.inflight > 0 || this.inflightBytes === 0, 'NBD: no payload bytes are counted once no request is in flight');
    this.wakeAdmission();
    if (this.inflight === 0 && this.drainWaiter !== null) {
      const w = this.drainWaiter;
      this.drainWaiter = null;
      w();
    }
  }

  /** Starts the device operation; the returned promise replies on success (errors go to deviceError). */
  private dispatch(type: number, flags: number, offset: number, length: number, cookieHi: number, cookieLo: number, data: Buffer | undefined): Promise<void> {
    const dev = this.device;
    const fua = (flags & CMD_FLAG_FUA) !== 0;
    if (type === CMD_READ) return this.read(offset, length, cookieHi, cookieLo);
    if (type === CMD_BLOCK_STATUS) return this.blockStatus(flags, offset, length, cookieHi, cookieLo);
    let op: Promise<void>;
    if (type === CMD_WRITE) op = length === 0 ? Promise.resolve() : dev.write(offset, data!, fua ? FUA : undefined);
    else if (type === CMD_FLUSH) op = dev.flush();
    else if (length === 0)
      op = Promise.resolve(); // the spec leaves empty ranges unspecified: succeed, touch nothing
    else if (type === CMD_TRIM) op = dev.trim(offset, length, fua ? FUA : undefined);
    else if (type === CMD_CACHE) op = dev.cache(offset, length);
    else {
      const i = (fua ? 1 : 0) | ((flags & CMD_FLAG_NO_HOLE) !== 0 ? 2 : 0) | ((flags & CMD_FLAG_FAST_ZERO) !== 0 ? 4 : 0);
      op = dev.writeZeroes(offset, length, ZERO_OPTS[i]);
    }
    return op.then(() => this.host.out.simpleReply(0, cookieHi, cookieLo));
  }

  /**
   * READ: the device fills the data in place. Small replies (header and data in one buffer
   * of this connection's small pool) are copied into Output's slab, so the buffer is free
   * again as soon as send() returns. Larger ones read into a buffer of the server's
   * BufferPool, sent by reference after a header in the slab, and go back to the pool only
   * when the socket write that carried them has completed (never while the socket holds it).
   */
  private async read(offset: number, length: number, cookieHi: number, cookieLo: number): Promise<void> {
    const out = this.host.out;
    const structured = this.neg.structured;
    if (length === 0) {
      if (structured) out.doneChunk(cookieHi, cookieLo);
      else out.simpleReply(0, cookieHi, cookieLo);
      return;
    }
    const hdr = structured ? READ_HEADER : SIMPLE_REPLY_SIZE;
    const total = hdr + length;
    if (total > COPY_MAX) return this.readLarge(offset, length, hdr, cookieHi, cookieLo);
    const whole = this.pool.pop() ?? Buffer.allocUnsafeSlow(COPY_MAX);
    const buf = whole.subarray(0, total);
    // On failure the buffer is dropped, not pooled: a device may still be writing into it.
    await this.device.read(offset, buf.subarray(hdr));
    writeReadHeader(buf, 0, structured, cookieHi, cookieLo, offset, length);
    if (out.send(buf) && this.pool.length < POOL_MAX) this.pool.push(whole);
  }

  private async readLarge(offset: number, length: number, hdr: number, cookieHi: number, cookieLo: number): Promise<void> {
    const pool = this.host.pool;
    const whole = pool.acquire(length);
    // On failure the buffer is dropped, not pooled: a device may still be writing into it.
    await this.device.read(offset, whole.subarray(0, length));
    const { slab, at } = this.host.out.sendOwned(hdr, whole.subarray(0, length), (ok) => {
      if (ok) pool.release(whole);
    });
    writeReadHeader(slab, at, this.neg.structured, cookieHi, cookieLo, offset, length);
  }

  /**
   * BLOCK_STATUS for base:allocation. Extents are clamped to the request (so each length fits
   * 32 bits and never claims bytes the client did not ask about) and to MAX_EXTENTS, or one with REQ_ONE.
   */
  private async blockStatus(flags: number, offset: number, length: number, cookieHi: number, cookieLo: number): Promise<void> {
    const max = (flags & CMD_FLAG_REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
    const extents = await this.device.blockStatus(offset, length, max);
    const lengths = this.extLengths;
    const flagsOut = this.extFlags;
    let n = 0;
    let covered = 0;
    for (let i = 0; i < extents.length && n < max && covered < length; i++) {
      const e = extents[i]!;
      let len = Math.min(e.length, length - covered);
      // Keep descriptors whole blocks (the spec requires multiples of the minimum block size).
      len -= len % this.blockSize;
      if (!(len > 0)) break;
      lengths[n] = len;
      flagsOut[n] = e.flags & 3;
      covered += len;
      n++;
    }
    if (n === 0) {
      // The device told us nothing usable: status 0 ("allocated, contents unknown") is always safe.
      lengths[0] = length;
      flagsOut[0] = 0;
      n = 1;
    }
    this.host.out.blockStatusChunk(cookieHi, cookieLo, META_BASE_ALLOCATION_ID, lengths, flagsOut, n);
  }

  private deviceError(err: unknown, type: number, offset: number, length: number, cookieHi: number, cookieLo: number): void {
    const e = wireError(err);
    if (e.expected) {
      this.host.log.debug({ command: NAMES[type], offset, length, errno: e.errno, msg: e.message }, 'device refused request');
    } else {
      this.host.log.error({ err, command: NAMES[type], offset, length }, 'device failed: replying EIO');
    }
    this.replyError(e.errno, e.message, cookieHi, cookieLo);
  }

  private replyError(errno: number, message: string, cookieHi: number, cookieLo: number): void {
    // With structured replies, errors travel as ERROR chunks (a READ may not get a simple reply at all).
    if (this.neg.structured) this.host.out.errorChunk(errno, message, cookieHi, cookieLo);
    else this.host.out.simpleReply(errno, cookieHi, cookieLo);
  }
}

/** READ reply header for `length` bytes at `offset`: one OFFSET_DATA chunk with DONE, or a simple reply. */
function writeReadHeader(b: Buffer, at: number, structured: boolean, cookieHi: number, cookieLo: number, offset: number, length: number): void {
  if (structured) {
    // One OFFSET_DATA chunk, always: that is what makes NBD_CMD_FLAG_DF free to honour.
    writeChunkHeader(b, at, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookieHi, cookieLo, 8 + length);
    writeU64(b, at + CHUNK_HEADER_SIZE, offset);
  } else {
    b.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
    b.writeUInt32BE(0, at + 4);
    b.writeUInt32BE(cookieHi, at + 8);
    b.writeUInt32BE(cookieLo, at + 12);
  }
}

/** Bytes a READ of `length` holds until its reply is sent: its pooled buffer, or the length for small ones. */
function readBytes(length: number, structured: boolean): number {
  return length + (structured ? READ_HEADER : SIMPLE_REPLY_SIZE) > COPY_MAX ? BufferPool.bufferSize(length) : length;
}
