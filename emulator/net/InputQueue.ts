/**
 * Bytes received from a socket, waiting to be parsed (NBD requests, iSCSI PDUs).
 *
 * Chunks are kept as the socket delivered them; fixed-size headers are parsed in place and a
 * payload that sits inside one chunk is handed out as a view, so the common case copies
 * nothing. Memory is bounded: the socket is paused once `highWater` bytes (or the size the
 * parser is waiting for, if larger) are buffered, and resumed when the parser wants more.
 *
 * Two sources. A stream's 'data' events (TLS, and any Duplex), or, for a plain TCP socket,
 * reads into our own buffers (`ownBuffers.ts`: the queue is the socket's ReadTarget). Then
 * bytes land in a few staging slabs per connection, each filled by consecutive reads and
 * reused once everything in it is parsed; and while fill() waits for a large payload, reads
 * go straight into the caller's buffer, so its bytes are copied once, by the kernel.
 * Reuse is what makes slabs cheap: a slab that lived on in views of it survived young GCs
 * and was freed only by major ones (58 mark-compacts in 4 s of 4 KiB writes, 10% of the
 * loop). So in this mode take() copies (a payload may outlive the parse), and consume()'s
 * (buf, off) is valid only until the caller next awaits, as in both modes.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { adoptAccepted, type ReadTarget } from './ownBuffers.js';

const EMPTY = Buffer.alloc(0);
/** A staging slab's size: a read takes at most the room left in it. */
const SLAB_BYTES = 128 * 1024;
/** Another slab is taken when the current one has less room than this (a read this small costs more than it brings). */
const SLAB_MIN_ROOM = 32 * 1024;
/** Slabs a connection keeps for reuse; past that (a parser holding much unparsed input) a new one is used once. */
const SLABS_KEPT = 3;
/**
 * The read after a fill() completed takes at most this much: it is most likely the next
 * header and the start of another large payload, whose bytes would otherwise be read into
 * the slab (as much as it has room for) and copied out again, and use up a slab per request.
 */
const AFTER_FILL_READ = 4 * 1024;

export class InputQueue implements ReadTarget {
  /** Unparsed bytes. */
  length = 0;
  /** After consume(): the bytes consumed, at [buf + off, buf + off + n). */
  buf: Buffer = EMPTY;
  off = 0;

  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private pos = 0;
  private want = 0;
  private waiter: ((ok: boolean) => void) | null = null;
  private ended = false;
  private paused = false;
  private detached = false;
  private stream: Duplex | undefined;

  // Own-buffer mode only.
  private readonly own: boolean;
  private slab: Buffer = EMPTY;
  /** The slabs kept for reuse, the current one among them. */
  private readonly slabs: Buffer[] = [];
  /** The view of the slab last handed to the socket. */
  private slabView: Uint8Array | null = null;
  /** Bytes of `slab` already filled. */
  private slabUsed = 0;
  /** The fill() in progress: reads go to direct[directAt, directEnd). */
  private direct: Buffer | null = null;
  private directAt = 0;
  private directEnd = 0;
  /** The view last handed to the socket as the direct target. */
  private directView: Uint8Array | null = null;
  private directWaiter: ((ok: boolean) => void) | null = null;
  /** Set when a fill() just completed (see AFTER_FILL_READ). */
  private afterFill = false;
  /** Bytes read straight into fill() buffers (own-buffer mode), never copied by us. */
  directBytes = 0;

  /** Reads `stream`'s 'data' events; without one, the queue is a ReadTarget (use adopt()). */
  constructor(
    stream: Duplex | undefined,
    private readonly highWater = 256 * 1024,
  ) {
    this.own = stream === undefined;
    if (stream !== undefined) {
      this.listen(stream);
      stream.on('data', this.onData);
    }
  }

  /**
   * A socket accepted by a server created with ADOPTABLE, reading into a new queue's own
   * buffers from now on; undefined (and `accepted` destroyed) if it is already gone.
   */
  static adopt(accepted: Socket, highWater?: number): { socket: Socket; input: InputQueue } | undefined {
    const input = new InputQueue(undefined, highWater);
    const socket = adoptAccepted(accepted, input);
    if (socket === undefined) return undefined;
    input.listen(socket);
    return { socket, input };
  }

  private listen(stream: Duplex): void {
    this.stream = stream;
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * Resolves true once n bytes are buffered, false if the stream ends first.
   * Callers test `length >= n` first, so the hot path makes no promise.
   */
  need(n: number): Promise<boolean> {
    if (this.length >= n) return Promise.resolve(true);
    if (this.ended) return Promise.resolve(false);
    this.want = n;
    if (this.paused) this.resume();
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  /**
   * Consumes n buffered bytes (n <= length) and exposes them at (buf, off): in place when they
   * sit in one chunk, else copied into `into` (at least n bytes long, or allocated when omitted).
   */
  consume(n: number, into?: Buffer): void {
    if (n === 0) {
      this.buf = EMPTY;
      this.off = 0;
      return;
    }
    const head = this.chunks[0]!;
    if (head.length - this.pos >= n) {
      this.buf = head;
      this.off = this.pos;
      this.advance(n);
      return;
    }
    const out = into ?? Buffer.allocUnsafe(n);
    this.copyOut(out, 0, n);
    this.buf = out;
    this.off = 0;
  }

  /** Moves n buffered bytes (n <= length) to the start of `into`. */
  copyTo(into: Buffer, n: number): void {
    this.copyOut(into, 0, n);
  }

  /** Moves n buffered bytes (n <= length) into out at `at`. */
  private copyOut(out: Buffer, at: number, n: number): void {
    const end = at + n;
    while (at < end) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.pos, end - at);
      c.copy(out, at, this.pos, this.pos + k);
      at += k;
      this.advance(k);
    }
  }

  /** Consumes n bytes (n <= length) as a Buffer of their own or a view of one chunk. */
  take(n: number): Buffer {
    if (this.own) {
      // Slabs are reused: a payload that outlives the parse gets bytes of its own.
      const out = Buffer.allocUnsafe(n);
      this.copyOut(out, 0, n);
      return out;
    }
    this.consume(n);
    return this.off === 0 && this.buf.length === n ? this.buf : this.buf.subarray(this.off, this.off + n);
  }

  /**
   * Copies the next n bytes into `into` (at least n long) as they arrive, waiting for at most
   * `step` bytes at a time, so that no more than about max(step, highWater) of them are
   * ever buffered. Resolves false if the stream ends first.
   */
  async fill(into: Buffer, n: number, step: number): Promise<boolean> {
    let done = 0;
    if (this.own) {
      done = Math.min(n, this.length);
      if (done > 0) this.copyOut(into, 0, done);
      if (done === n) return true;
      return this.fillDirect(into, done, n);
    }
    for (;;) {
      const k = Math.min(n - done, this.length);
      if (k > 0) {
        this.copyOut(into, done, k);
        done += k;
      }
      if (done === n) return true;
      if (!(await this.need(Math.min(n - done, step)))) return false;
    }
  }

  /**
   * Drops the next n bytes as they arrive, never holding more than one chunk of them.
   * Resolves false if the stream ends first.
   */
  async discard(n: number): Promise<boolean> {
    let left = n;
    for (;;) {
      const k = Math.min(left, this.length);
      if (k > 0) {
        this.drop(k);
        left -= k;
      }
      if (left === 0) return true;
      if (!(await this.need(1))) return false;
    }
  }

  /**
   * Stops reading from the stream and forgets everything buffered. Used for STARTTLS: the
   * plaintext after the option must never be interpreted, so none of it survives the upgrade.
   */
  detach(): void {
    this.detached = true;
    this.stream?.off('data', this.onData);
    this.stream?.off('end', this.onEnd);
    this.stream?.off('close', this.onEnd);
    this.direct = null;
    this.directView = null;
    this.chunks = [];
    this.pos = 0;
    this.length = 0;
    this.onEnd();
  }

  private drop(n: number): void {
    while (n > 0) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length - this.pos, n);
      this.advance(k);
      n -= k;
    }
  }

  private advance(k: number): void {
    this.pos += k;
    this.length -= k;
    if (this.pos === this.chunks[0]!.length) {
      this.chunks.shift();
      this.pos = 0;
    }
    if (this.paused && this.length < this.highWater && !this.detached) this.resume();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
    this.arrived();
  };

  private arrived(): void {
    if (this.waiter !== null && this.length >= this.want) this.wake(true);
    if (!this.paused && this.length >= Math.max(this.highWater, this.want)) {
      this.paused = true;
      this.stream!.pause();
    }
  }

  private readonly onEnd = (): void => {
    this.ended = true;
    if (this.waiter !== null) this.wake(false);
    if (this.directWaiter !== null) this.endDirect(false);
  };

  // ---- own-buffer mode (ReadTarget) ----

  /** Waits until reads have filled into[at, end) directly; false if the stream ends first. */
  private fillDirect(into: Buffer, at: number, end: number): Promise<boolean> {
    if (this.ended) return Promise.resolve(false);
    this.direct = into;
    this.directAt = at;
    this.directEnd = end;
    if (this.paused) this.resume();
    return new Promise((resolve) => {
      this.directWaiter = resolve;
    });
  }

  private endDirect(ok: boolean): void {
    const w = this.directWaiter!;
    this.direct = null;
    this.directView = null;
    this.directWaiter = null;
    w(ok);
  }

  buffer(): Uint8Array {
    if (this.direct !== null) {
      this.directView = this.direct.subarray(this.directAt, this.directEnd);
      return this.directView;
    }
    if (this.slab.length - this.slabUsed < SLAB_MIN_ROOM) this.nextSlab();
    this.slabView = this.afterFill ? this.slab.subarray(this.slabUsed, this.slabUsed + AFTER_FILL_READ) : this.slab.subarray(this.slabUsed);
    return this.slabView;
  }

  /**
   * Moves to a slab with nothing unparsed in it. Nothing else refers to a slab's bytes: take()
   * copies, and consume() views are used before the parser next awaits, which is before this
   * runs (it runs in the socket's read callback, a turn of its own).
   */
  private nextSlab(): void {
    this.slabUsed = 0;
    for (const s of this.slabs) {
      if (s !== this.slab && !this.chunks.some((c) => c.buffer === s.buffer)) {
        this.slab = s;
        return;
      }
    }
    this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    if (this.slabs.length < SLABS_KEPT) this.slabs.push(this.slab);
  }

  onRead(n: number, buf: Uint8Array): void {
    if (n <= 0 || this.detached) return;
    if (buf === this.directView) {
      this.directBytes += n;
      this.directAt += n;
      if (this.directAt === this.directEnd) {
        this.endDirect(true);
        this.afterFill = true;
      }
      return;
    }
    this.afterFill = false;
    // Every read lands in the last buffer handed out; anything else would lose bytes.
    if (buf !== this.slabView || n > buf.length) throw new Error('invariant violated: InputQueue: a read lands in the buffer last handed to the socket');
    // Into the slab: extend the last chunk when this read continued it, so that bytes spread
    // over several reads are still one chunk (a header parsed in place, a payload one copy).
    const start = this.slabUsed;
    this.slabUsed += n;
    const last = this.chunks.length > 0 ? this.chunks[this.chunks.length - 1]! : undefined;
    if (last !== undefined && last.buffer === this.slab.buffer && last.byteOffset + last.length === this.slab.byteOffset + start) {
      this.chunks[this.chunks.length - 1] = this.slab.subarray(last.byteOffset - this.slab.byteOffset, this.slabUsed);
    } else {
      this.chunks.push(this.slab.subarray(start, this.slabUsed));
    }
    this.length += n;
    // A fill() began after this read was aimed at the slab: move what it wants across.
    if (this.direct !== null) {
      const k = Math.min(this.length, this.directEnd - this.directAt);
      this.copyOut(this.direct, this.directAt, k);
      this.directAt += k;
      if (this.directAt === this.directEnd) this.endDirect(true);
      return;
    }
    this.arrived();
  }

  private wake(ok: boolean): void {
    const w = this.waiter!;
    this.waiter = null;
    this.want = 0;
    w(ok);
  }

  private resume(): void {
    this.paused = false;
    this.stream?.resume();
  }
}
