/**
 * An NBD client (NetworkBlockDevice/nbd doc/proto.md) for the data path of remote copy: one TCP
 * connection to one export of another arraylab array, or of any NBD server (qemu-storage-daemon,
 * qemu-nbd, nbdkit).
 *
 * Choices, and why:
 * - Fixed newstyle and NBD_OPT_GO (NBD_OPT_EXPORT_NAME only when GO is unsupported): GO lets the
 *   server say why it refuses an export, and the owner shows that text to the operator.
 * - Simple replies only: a read reply carries exactly the length we asked for, so the parser
 *   buffers at most one 16-byte header, copies read data straight into the caller's buffer and
 *   never allocates what the peer's bytes announce.
 * - Pipelined: requests carry a cookie and complete in any order; at most maxInFlight are on the
 *   wire and the rest wait here, in order.
 * - Requests issued in one tick leave in one writev (the socket is corked until the next tick),
 *   and a write's payload goes to the socket by reference, never copied: the caller must not
 *   change it until the promise settles.
 * - No reconnect: when the link drops, every pending and later request fails with NbdLinkError
 *   and onClose tells the owner, who knows what must be sent again.
 * The protocol numbers are defined here, not shared with emulator/nbd: the client must not
 * depend on the server.
 */
import { connect as netConnect, type Socket } from 'node:net';

// Magic numbers; the 64-bit ones as 32-bit halves, so that no BigInt is needed.
const NBDMAGIC_HI = 0x4e42444d; // "NBDMAGIC"
const NBDMAGIC_LO = 0x41474943;
const IHAVEOPT_HI = 0x49484156; // "IHAVEOPT"
const IHAVEOPT_LO = 0x454f5054;
const OLDSTYLE_HI = 0x00004202; // 0x00420281861253
const OLDSTYLE_LO = 0x81861253;
const OPT_REPLY_MAGIC_HI = 0x0003e889;
const OPT_REPLY_MAGIC_LO = 0x045565a9;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
const FLAG_C_NO_ZEROES = 1 << 1;

const FLAG_HAS_FLAGS = 1 << 0;
const FLAG_READ_ONLY = 1 << 1;
const FLAG_SEND_FLUSH = 1 << 2;
const FLAG_SEND_FUA = 1 << 3;
const FLAG_SEND_TRIM = 1 << 5;
const FLAG_SEND_WRITE_ZEROES = 1 << 6;

const OPT_EXPORT_NAME = 1;
const OPT_ABORT = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_ERR_BIT = 0x80000000;
const REP_ERR_UNSUP = REP_ERR_BIT + 1;
const REP_ERR_NAMES: Record<number, string> = {
  [REP_ERR_BIT + 1]: 'NBD_REP_ERR_UNSUP',
  [REP_ERR_BIT + 2]: 'NBD_REP_ERR_POLICY',
  [REP_ERR_BIT + 3]: 'NBD_REP_ERR_INVALID',
  [REP_ERR_BIT + 4]: 'NBD_REP_ERR_PLATFORM',
  [REP_ERR_BIT + 5]: 'NBD_REP_ERR_TLS_REQD',
  [REP_ERR_BIT + 6]: 'NBD_REP_ERR_UNKNOWN',
  [REP_ERR_BIT + 7]: 'NBD_REP_ERR_SHUTDOWN',
  [REP_ERR_BIT + 8]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [REP_ERR_BIT + 9]: 'NBD_REP_ERR_TOO_BIG',
};
const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const CMD_TRIM = 4;
const CMD_WRITE_ZEROES = 6;
const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write-zeroes'];
const CMD_FLAG_FUA = 1 << 0;

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};

const REQUEST_SIZE = 28;
const REPLY_SIZE = 16;
const TWO32 = 2 ** 32;
/** Largest READ/WRITE payload sent: the spec's portable 2^25, lowered to the server's maximum. */
const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Largest TRIM/WRITE_ZEROES (no payload: the spec lets them exceed the payload maximum; the length field is 32-bit). */
const MAX_EFFECT = 1024 * 1024 * 1024;
/** Piece size when zeroes must be written as data. */
const ZERO_PIECE = 1024 * 1024;
/** Longest option reply read; the spec caps its strings at 4096 bytes. */
const MAX_OPTION_REPLY = 64 * 1024;
/** Bytes the server may send ahead during the handshake before it counts as misbehaving. */
const MAX_HANDSHAKE_BUFFER = 256 * 1024;
const MAX_NAME = 4096;
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_IN_FLIGHT = 64;
/** After NBD_CMD_DISC the server must close; one that does not is cut off after this. */
const DISCONNECT_GRACE_MS = 5_000;

export interface NbdConnectOptions {
  host: string;
  port: number;
  exportName: string;
  /** Aborts connecting and the handshake (an established client is ended with close() or destroy()). */
  signal?: AbortSignal;
  /** TCP connect plus handshake; default 10 s. */
  connectTimeoutMs?: number;
  /** Requests on the wire at once; more wait in the client, in order. Default 64. */
  maxInFlight?: number;
  /** A request unanswered this long drops the connection (a hung path). Default: no limit. */
  timeoutMs?: number;
}

export interface NbdWriteOptions {
  /** Durable when it resolves (NBD_CMD_FLAG_FUA; emulated with a flush when the server lacks FUA). */
  fua?: boolean;
}

/** The connection is gone (or could not be made); the owner may reconnect and retry. */
export class NbdLinkError extends Error {
  override name = 'NbdLinkError';
}

/** The server refused the export during the handshake; `reply` is the NBD_REP_ERR_* name, `serverMessage` its text. */
export class NbdExportError extends Error {
  override name = 'NbdExportError';
  constructor(
    message: string,
    readonly reply: string,
    readonly serverMessage: string,
  ) {
    super(message);
  }
}

/** The server answered a request with an error; the connection is still usable. */
export class NbdRequestError extends Error {
  override name = 'NbdRequestError';
  constructor(
    readonly op: string,
    readonly offset: number,
    readonly length: number,
    /** 'EIO', 'EPERM', 'ENOSPC', ...; 'NBD_ERROR_<n>' for a value the spec does not define. */
    readonly errno: string,
    /** The error value on the wire. */
    readonly nbdError: number,
    where: string,
  ) {
    super(`NBD ${op} at offset ${offset} length ${length} on ${where} failed: ${errno}`);
  }
}

interface Request {
  cookie: number;
  cmd: number;
  flags: number;
  offset: number;
  length: number;
  /** WRITE: the payload, sent by reference. READ: where the data goes. */
  buf: Buffer | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
  /** performance.now() when sent; kept only with timeoutMs. */
  sentAt: number;
}

interface Negotiated {
  size: number;
  flags: number;
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

type State = 'open' | 'draining' | 'disconnecting' | 'closed';

let zeroBuffer: Buffer | undefined;

export class NbdClient {
  /** Export size in bytes, as negotiated. */
  readonly size: number;
  /** Transmission flags (NBD_FLAG_*). */
  readonly flags: number;
  /** Block sizes the server advertised (1, 4096 and 32 MiB when it did not); requests should be multiples of minBlockSize. */
  readonly minBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maxPayload: number;

  private state: State = 'open';
  private linkError: NbdLinkError | undefined;
  /** Sent and unanswered, in send order (Map keeps insertion order: the first is the oldest). */
  private readonly inflight = new Map<number, Request>();
  private readonly queue: (Request | undefined)[] = [];
  private queueHead = 0;
  private nextCookie = 1;
  private corked = false;
  private readonly header = Buffer.alloc(REPLY_SIZE);
  private headerHave = 0;
  /** The READ whose data is arriving. */
  private payloadReq: Request | undefined;
  private payloadHave = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly closeListeners = new Set<(err: NbdLinkError | undefined) => void>();
  private readonly socketClosed: Promise<void>;
  private readonly chunk: number;
  private readonly where: string;
  private readonly maxInFlight: number;
  private readonly timeoutMs: number | undefined;

  private constructor(
    private readonly socket: Socket,
    where: string,
    n: Negotiated,
    opts: NbdConnectOptions,
    leftover: Buffer[],
  ) {
    this.where = where;
    this.size = n.size;
    this.flags = n.flags & FLAG_HAS_FLAGS ? n.flags : 0;
    this.minBlockSize = n.minBlock;
    this.preferredBlockSize = n.preferredBlock;
    this.maxPayload = n.maxPayload;
    this.chunk = Math.max(n.minBlock, Math.floor(Math.min(MAX_PAYLOAD, n.maxPayload) / n.minBlock) * n.minBlock);
    this.maxInFlight = Math.max(1, opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT);
    this.timeoutMs = opts.timeoutMs !== undefined && opts.timeoutMs > 0 ? opts.timeoutMs : undefined;
    this.socketClosed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', this.onData);
    // After NBD_CMD_DISC the server hanging up is the expected end: only 'close' counts then.
    socket.on('error', (err: Error) => this.state !== 'disconnecting' && this.fail(err.message));
    socket.on('end', () => this.state !== 'disconnecting' && this.fail('the server closed the connection'));
    socket.on('close', () => (this.state === 'disconnecting' ? this.finish(undefined) : this.fail('the connection closed')));
    for (const c of leftover) if (this.state !== 'closed') this.onData(c);
  }

  /** Connects and negotiates the export; rejects with NbdLinkError (network, timeout, protocol) or NbdExportError (refused). */
  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const { host, port, exportName, signal } = opts;
    const endpoint = `${host}:${port}`;
    const where = `${endpoint} export ${exportName === '' ? '""' : exportName}`;
    const name = Buffer.from(exportName, 'utf8');
    if (name.length > MAX_NAME) throw new RangeError(`NBD export name longer than ${MAX_NAME} bytes`);
    signal?.throwIfAborted();
    const socket = netConnect({ host, port });
    socket.setNoDelay(true);
    // Notices a peer that vanished while the link is idle (no request to time out).
    socket.setKeepAlive(true, 15_000);
    const io = new HandshakeIo(socket, where);
    const timeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const timer = setTimeout(() => io.abort(new NbdLinkError(`connecting to ${where}: no handshake within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => io.abort(signal?.reason instanceof Error ? signal.reason : new Error(`connecting to ${where}: aborted`));
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const n = await negotiate(io, socket, name, endpoint, where);
      io.stopListening();
      return new NbdClient(socket, where, n, opts, io.leftover());
    } catch (err) {
      io.stopListening();
      socket.on('error', () => {});
      if (err instanceof NbdExportError) {
        // A polite end: the spec asks clients to abort negotiation rather than just hang up.
        socket.end(optionHeader(OPT_ABORT, 0));
        setTimeout(() => socket.destroy(), 1000).unref();
      } else socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  get readOnly(): boolean {
    return (this.flags & FLAG_READ_ONLY) !== 0;
  }
  get canFlush(): boolean {
    return (this.flags & FLAG_SEND_FLUSH) !== 0;
  }
  get canFua(): boolean {
    return (this.flags & FLAG_SEND_FUA) !== 0;
  }
  get canTrim(): boolean {
    return (this.flags & FLAG_SEND_TRIM) !== 0;
  }
  get canWriteZeroes(): boolean {
    return (this.flags & FLAG_SEND_WRITE_ZEROES) !== 0;
  }
  /** No more requests are accepted: the link is gone, or close()/destroy() was called. */
  get closed(): boolean {
    return this.state !== 'open';
  }
  /** Requests sent and not yet answered (not counting those waiting in the client). */
  get inFlight(): number {
    return this.inflight.size;
  }

  /**
   * Called once when the connection ends: with the NbdLinkError when it was lost (or destroyed),
   * undefined after close(). Called at once (in a microtask) if it already ended. Returns an unsubscribe.
   */
  onClose(listener: (err: NbdLinkError | undefined) => void): () => void {
    if (this.state === 'closed') {
      const err = this.linkError;
      queueMicrotask(() => listener(err));
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Fills `into` from `offset`. */
  read(offset: number, into: Buffer): Promise<void> {
    return this.split(CMD_READ, 0, offset, into.length, into, this.chunk);
  }

  /** Writes `data` at `offset`; `data` is sent by reference and must not change until this settles. */
  write(offset: number, data: Buffer, opts?: NbdWriteOptions): Promise<void> {
    if (opts?.fua && !this.canFua) return this.withFlush(this.split(CMD_WRITE, 0, offset, data.length, data, this.chunk));
    return this.split(CMD_WRITE, opts?.fua ? CMD_FLAG_FUA : 0, offset, data.length, data, this.chunk);
  }

  /** Zeroes a range: NBD_CMD_WRITE_ZEROES, or zeroes written as data (in ZERO_PIECE pieces) when the server lacks it. */
  writeZeroes(offset: number, length: number, opts?: NbdWriteOptions): Promise<void> {
    const fua = opts?.fua === true;
    if (this.canWriteZeroes) {
      const flags = fua && this.canFua ? CMD_FLAG_FUA : 0;
      const done = this.split(CMD_WRITE_ZEROES, flags, offset, length, undefined, MAX_EFFECT);
      return fua && !this.canFua ? this.withFlush(done) : done;
    }
    const bad = checkRange(offset, length);
    if (bad) return Promise.reject(bad);
    if (length === 0) return this.nothing();
    const piece = Math.min(ZERO_PIECE, this.chunk);
    // One shared buffer, never written: it is only ever handed to sockets.
    zeroBuffer ??= Buffer.alloc(ZERO_PIECE);
    const flags = fua && this.canFua ? CMD_FLAG_FUA : 0;
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += piece) {
      const k = Math.min(piece, length - done);
      parts.push(this.submit(CMD_WRITE, flags, offset + done, k, zeroBuffer.subarray(0, k)));
    }
    return fua && !this.canFua ? this.withFlush(all(parts)) : all(parts);
  }

  /** Discards a range (advisory: resolves at once when the server does not offer trim). */
  trim(offset: number, length: number): Promise<void> {
    if (!this.canTrim) {
      const bad = checkRange(offset, length);
      return bad ? Promise.reject(bad) : this.nothing();
    }
    return this.split(CMD_TRIM, 0, offset, length, undefined, MAX_EFFECT);
  }

  /** Makes every completed write durable (resolves at once when the server has no flush: nothing to do). */
  flush(): Promise<void> {
    if (!this.canFlush) return this.nothing();
    return this.submit(CMD_FLUSH, 0, 0, 0, undefined);
  }

  /**
   * Lets the requests already issued finish (new ones are refused), sends NBD_CMD_DISC and ends
   * the connection. Resolves once the socket is closed; never rejects (a link lost meanwhile
   * fails the pending requests and is reported to onClose).
   */
  async close(): Promise<void> {
    if (this.state === 'open') {
      this.state = 'draining';
      this.maybeDisconnect();
    }
    await this.socketClosed;
  }

  /** Drops the connection at once: pending requests fail with NbdLinkError. */
  destroy(reason = 'destroyed by its owner'): void {
    this.fail(reason);
  }

  /** A request with nothing to send: done, unless the client no longer takes requests. */
  private nothing(): Promise<void> {
    return this.state === 'open' ? Promise.resolve() : Promise.reject(this.refusal());
  }

  private withFlush(done: Promise<void>): Promise<void> {
    return this.canFlush ? done.then(() => this.flush()) : done;
  }

  /** One request, or several of at most `max` bytes each; resolves when all are answered. */
  private split(cmd: number, flags: number, offset: number, length: number, buf: Buffer | undefined, max: number): Promise<void> {
    const bad = checkRange(offset, length);
    if (bad) return Promise.reject(bad);
    if (length === 0) return this.nothing();
    if (length <= max) return this.submit(cmd, flags, offset, length, buf);
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += max) {
      const k = Math.min(max, length - done);
      parts.push(this.submit(cmd, flags, offset + done, k, buf?.subarray(done, done + k)));
    }
    return all(parts);
  }

  private submit(cmd: number, flags: number, offset: number, length: number, buf: Buffer | undefined): Promise<void> {
    if (this.state !== 'open') return Promise.reject(this.refusal());
    return new Promise<void>((resolve, reject) => {
      const req: Request = { cookie: 0, cmd, flags, offset, length, buf, resolve, reject, sentAt: 0 };
      if (this.inflight.size < this.maxInFlight && this.queueHead === this.queue.length) this.send(req);
      else this.queue.push(req);
    });
  }

  private send(req: Request): void {
    const cookie = this.nextCookie++;
    req.cookie = cookie;
    const h = Buffer.allocUnsafe(REQUEST_SIZE);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(req.flags, 4);
    h.writeUInt16BE(req.cmd, 6);
    h.writeUInt32BE(Math.floor(cookie / TWO32), 8);
    h.writeUInt32BE(cookie >>> 0, 12);
    h.writeUInt32BE(Math.floor(req.offset / TWO32), 16);
    h.writeUInt32BE(req.offset >>> 0, 20);
    h.writeUInt32BE(req.length, 24);
    this.inflight.set(cookie, req);
    this.cork();
    // socket.write's backpressure signal is not needed: what it buffers is bounded by
    // maxInFlight requests, and a payload is the caller's buffer, held by reference.
    this.socket.write(h);
    if (req.cmd === CMD_WRITE) this.socket.write(req.buf!);
    if (this.timeoutMs !== undefined) {
      req.sentAt = performance.now();
      if (this.timer === undefined) this.timer = setTimeout(this.onTimer, this.timeoutMs);
    }
  }

  /** Everything written in this tick leaves in one writev. */
  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private readonly onData = (chunk: Buffer): void => {
    const n = chunk.length;
    let pos = 0;
    while (pos < n) {
      const r = this.payloadReq;
      if (r !== undefined) {
        const k = Math.min(r.length - this.payloadHave, n - pos);
        chunk.copy(r.buf!, this.payloadHave, pos, pos + k);
        pos += k;
        this.payloadHave += k;
        if (this.payloadHave === r.length) {
          this.payloadReq = undefined;
          this.complete(r, 0);
        }
        continue;
      }
      let h: Buffer;
      let at: number;
      if (this.headerHave === 0 && n - pos >= REPLY_SIZE) {
        h = chunk;
        at = pos;
        pos += REPLY_SIZE;
      } else {
        const k = Math.min(REPLY_SIZE - this.headerHave, n - pos);
        chunk.copy(this.header, this.headerHave, pos, pos + k);
        this.headerHave += k;
        pos += k;
        if (this.headerHave < REPLY_SIZE) return;
        this.headerHave = 0;
        h = this.header;
        at = 0;
      }
      if (!this.onReply(h, at)) return;
    }
  };

  /** One reply header; false when it broke the protocol (the connection is then gone). */
  private onReply(h: Buffer, at: number): boolean {
    if (this.state === 'closed') return false;
    const magic = h.readUInt32BE(at);
    if (magic !== SIMPLE_REPLY_MAGIC) {
      this.fail(
        magic === STRUCTURED_REPLY_MAGIC
          ? 'protocol error: a structured reply, which was not negotiated'
          : `protocol error: bad reply magic 0x${magic.toString(16).padStart(8, '0')}`,
      );
      return false;
    }
    const error = h.readUInt32BE(at + 4);
    const hi = h.readUInt32BE(at + 8);
    const lo = h.readUInt32BE(at + 12);
    const r = hi < 0x200000 ? this.inflight.get(hi * TWO32 + lo) : undefined;
    if (r === undefined) {
      this.fail(`protocol error: a reply for unknown cookie 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}`);
      return false;
    }
    if (r.cmd === CMD_READ && error === 0) {
      this.payloadReq = r;
      this.payloadHave = 0;
      return true;
    }
    this.complete(r, error);
    return true;
  }

  private complete(r: Request, error: number): void {
    this.inflight.delete(r.cookie);
    if (error === 0) r.resolve();
    else {
      const op = CMD_NAMES[r.cmd] ?? `command ${r.cmd}`;
      r.reject(new NbdRequestError(op, r.offset, r.length, ERRNO_NAMES[error] ?? `NBD_ERROR_${error}`, error, this.where));
    }
    while (this.queueHead < this.queue.length && this.inflight.size < this.maxInFlight) {
      const next = this.queue[this.queueHead]!;
      this.queue[this.queueHead++] = undefined;
      this.send(next);
    }
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    if (this.state === 'draining') this.maybeDisconnect();
  }

  /** Fires at the oldest request's deadline (one timer, not one per request). */
  private readonly onTimer = (): void => {
    this.timer = undefined;
    if (this.state === 'closed' || this.timeoutMs === undefined) return;
    const oldest = this.inflight.values().next();
    if (oldest.done) return;
    const r = oldest.value;
    const waited = performance.now() - r.sentAt;
    if (waited >= this.timeoutMs) {
      this.fail(`no reply to ${CMD_NAMES[r.cmd]} at offset ${r.offset} length ${r.length} within ${this.timeoutMs} ms`);
      return;
    }
    this.timer = setTimeout(this.onTimer, this.timeoutMs - waited);
  };

  private maybeDisconnect(): void {
    if (this.state !== 'draining' || this.inflight.size > 0 || this.queueHead < this.queue.length) return;
    this.state = 'disconnecting';
    const h = Buffer.alloc(REQUEST_SIZE);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(CMD_DISC, 6);
    this.socket.end(h);
    setTimeout(() => this.socket.destroy(), DISCONNECT_GRACE_MS).unref();
  }

  private fail(reason: string): void {
    if (this.state === 'closed') return;
    this.linkError = new NbdLinkError(`connection to ${this.where} lost: ${reason}`);
    this.socket.destroy();
    const err = this.linkError;
    for (const r of this.inflight.values()) r.reject(err);
    this.inflight.clear();
    for (let i = this.queueHead; i < this.queue.length; i++) this.queue[i]?.reject(err);
    this.queue.length = 0;
    this.queueHead = 0;
    this.payloadReq = undefined;
    this.finish(err);
  }

  private finish(err: NbdLinkError | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const listeners = [...this.closeListeners];
    this.closeListeners.clear();
    for (const l of listeners) l(err);
  }

  private refusal(): NbdLinkError {
    return this.linkError ?? new NbdLinkError(`connection to ${this.where} closed by its owner`);
  }
}

function all(parts: Promise<void>[]): Promise<void> {
  return Promise.all(parts).then(() => undefined);
}

function checkRange(offset: number, length: number): RangeError | undefined {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length))
    return new RangeError(`NBD request out of range: offset ${offset} length ${length}`);
  return undefined;
}

function optionHeader(option: number, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(IHAVEOPT_HI, 0);
  b.writeUInt32BE(IHAVEOPT_LO, 4);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(length, 12);
  return b;
}

function readU64(b: Buffer, at: number, where: string, what: string): number {
  const hi = b.readUInt32BE(at);
  if (hi >= 0x200000) throw new NbdLinkError(`connecting to ${where}: ${what} is beyond 2^53`);
  return hi * TWO32 + b.readUInt32BE(at + 4);
}

/** Greeting, client flags, then GO (or EXPORT_NAME); returns what the transmission phase needs. */
async function negotiate(io: HandshakeIo, socket: Socket, name: Buffer, endpoint: string, where: string): Promise<Negotiated> {
  const protocolError = (what: string) => new NbdLinkError(`connecting to ${where}: protocol error: ${what}`);
  const greeting = await io.read(18);
  if (greeting.readUInt32BE(0) !== NBDMAGIC_HI || greeting.readUInt32BE(4) !== NBDMAGIC_LO) throw protocolError('not an NBD server (bad greeting magic)');
  const hi = greeting.readUInt32BE(8);
  const lo = greeting.readUInt32BE(12);
  if (hi === OLDSTYLE_HI && lo === OLDSTYLE_LO) throw protocolError('oldstyle negotiation, which this client does not support');
  if (hi !== IHAVEOPT_HI || lo !== IHAVEOPT_LO) throw protocolError('unknown negotiation style');
  const serverFlags = greeting.readUInt16BE(16);
  const fixed = (serverFlags & FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  // Only flags the server offered: a server may hang up on the others.
  clientFlags.writeUInt32BE((fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);

  if (fixed) {
    const go = await optGo(io, socket, name, endpoint, where, protocolError);
    if (go !== undefined) return go;
  }
  // Without GO the server's only way to refuse is to hang up.
  socket.write(Buffer.concat([optionHeader(OPT_EXPORT_NAME, name.length), name]));
  io.closedHint = 'the server closed the connection during NBD_OPT_EXPORT_NAME (unknown or refused export?)';
  const r = await io.read(noZeroes ? 10 : 134);
  return { size: readU64(r, 0, where, 'the export size'), flags: r.readUInt16BE(8), minBlock: 1, preferredBlock: 4096, maxPayload: MAX_PAYLOAD };
}

/** NBD_OPT_GO with an NBD_INFO_BLOCK_SIZE request; undefined when the server does not know GO. */
async function optGo(
  io: HandshakeIo,
  socket: Socket,
  name: Buffer,
  endpoint: string,
  where: string,
  protocolError: (what: string) => NbdLinkError,
): Promise<Negotiated | undefined> {
  const data = Buffer.alloc(4 + name.length + 4);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  data.writeUInt16BE(1, 4 + name.length);
  data.writeUInt16BE(INFO_BLOCK_SIZE, 6 + name.length);
  socket.write(Buffer.concat([optionHeader(OPT_GO, data.length), data]));
  let size: number | undefined;
  let flags = 0;
  let minBlock = 1;
  let preferredBlock = 4096;
  let maxPayload = MAX_PAYLOAD;
  for (;;) {
    const h = await io.read(20);
    if (h.readUInt32BE(0) !== OPT_REPLY_MAGIC_HI || h.readUInt32BE(4) !== OPT_REPLY_MAGIC_LO) throw protocolError('bad option reply magic');
    const option = h.readUInt32BE(8);
    const type = h.readUInt32BE(12);
    const length = h.readUInt32BE(16);
    if (option !== OPT_GO) throw protocolError(`a reply to option ${option} while waiting for NBD_OPT_GO`);
    if (length > MAX_OPTION_REPLY) throw protocolError(`an option reply of ${length} bytes`);
    const payload = await io.read(length);
    if (type === REP_ACK) {
      if (size === undefined) throw protocolError('NBD_OPT_GO acknowledged without NBD_INFO_EXPORT');
      return { size, flags, minBlock, preferredBlock, maxPayload };
    }
    if (type === REP_INFO) {
      if (length < 2) throw protocolError('an empty NBD_REP_INFO');
      const info = payload.readUInt16BE(0);
      if (info === INFO_EXPORT) {
        if (length !== 12) throw protocolError(`NBD_INFO_EXPORT of ${length} bytes`);
        size = readU64(payload, 2, where, 'the export size');
        flags = payload.readUInt16BE(10);
      } else if (info === INFO_BLOCK_SIZE) {
        if (length !== 14) throw protocolError(`NBD_INFO_BLOCK_SIZE of ${length} bytes`);
        const min = payload.readUInt32BE(2);
        const preferred = payload.readUInt32BE(6);
        const max = payload.readUInt32BE(10);
        // The spec's constraints; values outside them are ignored rather than trusted.
        if (min >= 1 && min <= 65536 && (min & (min - 1)) === 0 && max >= min) {
          minBlock = min;
          preferredBlock = preferred >= min ? preferred : Math.max(min, 4096);
          maxPayload = max;
        }
      }
      // Other information types are optional to understand.
      continue;
    }
    if (type === REP_ERR_UNSUP) return undefined;
    if (type & REP_ERR_BIT) {
      const reply = REP_ERR_NAMES[type] ?? `NBD_REP_ERR 0x${type.toString(16)}`;
      const text = payload.toString('utf8');
      const exportLabel = where.slice(endpoint.length + 1);
      throw new NbdExportError(`NBD server ${endpoint} refused ${exportLabel}: ${reply}${text ? `: ${text}` : ''}`, reply, text);
    }
    // Unknown non-error replies carry nothing we need.
  }
}

/** Handshake input: buffers what the socket delivers (bounded) and hands out exact lengths. */
class HandshakeIo {
  /** What a hang-up means at this point of the handshake. */
  closedHint = 'the server closed the connection during the handshake';
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly where: string,
  ) {
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
  }

  read(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    return new Promise((resolve, reject) => {
      this.waiting = { n, resolve, reject };
    });
  }

  abort(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(err);
  }

  stopListening(): void {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onError);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
  }

  /** Bytes received beyond the handshake; throws what ended the connection if something did. */
  leftover(): Buffer[] {
    if (this.failure) throw this.failure;
    const rest = this.chunks;
    this.chunks = [];
    return rest;
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (n === 0) out = Buffer.alloc(0);
    else if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  private readonly onData = (c: Buffer): void => {
    this.chunks.push(c);
    this.buffered += c.length;
    if (this.buffered > MAX_HANDSHAKE_BUFFER) {
      this.abort(new NbdLinkError(`connecting to ${this.where}: protocol error: the server sent more than ${MAX_HANDSHAKE_BUFFER} bytes unasked`));
      return;
    }
    const w = this.waiting;
    if (w !== undefined && this.buffered >= w.n) {
      this.waiting = undefined;
      w.resolve(this.take(w.n));
    }
  };

  private readonly onError = (err: Error): void => {
    this.abort(new NbdLinkError(`cannot connect to ${this.where}: ${err.message}`));
  };

  private readonly onEnd = (): void => {
    this.abort(new NbdLinkError(`connecting to ${this.where}: ${this.closedHint}`));
  };
}
