/**
 * Bytes received from a socket, waiting to be parsed (NBD requests, iSCSI PDUs).
 *
 * Chunks are kept as the socket delivered them; fixed-size headers are parsed in place and a
 * payload that sits inside one chunk is handed out as a view, so the common case copies
 * nothing. Memory is bounded: the socket is paused once `highWater` bytes (or the size the
 * parser is waiting for, if larger) are buffered, and resumed when the parser wants more.
 */
import type { Duplex } from 'node:stream';

const EMPTY = Buffer.alloc(0);

export class InputQueue {
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

  constructor(
    private readonly stream: Duplex,
    private readonly highWater = 256 * 1024,
  ) {
    stream.on('data', this.onData);
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
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
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
    if (this.waiter !== null && this.length >= this.want) this.wake(true);
    if (!this.paused && this.length >= Math.max(this.highWater, this.want)) {
      this.paused = true;
      this.stream.pause();
    }
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    if (this.waiter !== null) this.wake(false);
  };

  private wake(ok: boolean): void {
    const w = this.waiter!;
    this.waiter = null;
    this.want = 0;
    w(ok);
  }

  private resume(): void {
    this.paused = false;
    this.stream.resume();
  }
}
