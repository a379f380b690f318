/**
 * A raw NBD client over node:net, for the hostile and malformed traffic real clients never send.
 * Everything is explicit: the test writes the bytes it means and reads replies field by field.
 */
import { connect, type Socket } from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_TOO_BIG: 0x80000009,
} as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  /** 'simple' or 'chunk' (structured). */
  kind: 'simple' | 'chunk';
  cookie: bigint;
  error: number;
  /** Structured chunks only. */
  flags?: number;
  type?: number;
  payload?: Buffer | undefined;
}

export class WireClient {
  private buf: Buffer = Buffer.alloc(0);
  /** In counting mode, received bytes are counted and dropped (for bulk transfers). */
  private counting = false;
  received = 0;
  private waiter: (() => void) | null = null;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      if (this.counting) {
        this.received += d.length;
        this.waiter?.();
        return;
      }
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.waiter?.();
        resolve();
      });
    });
  }

  /** A client over an already connected socket (e.g. a TLS socket after STARTTLS). */
  static wrap(socket: Socket): WireClient {
    return new WireClient(socket);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const s = connect(port, host, () => {
        s.off('error', reject);
        resolve(new WireClient(s));
      });
      s.once('error', reject);
    });
  }

  /** Exactly n bytes, or an error if the server closed first or `ms` passed. */
  async read(n: number, ms = 5000): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buf.length}/${n} bytes read`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return Buffer.from(out);
  }

  /** From now on, count incoming bytes (including any already buffered) instead of keeping them. */
  countOnly(): void {
    this.counting = true;
    this.received = this.buf.length;
    this.buf = Buffer.alloc(0);
  }

  /** Waits until `total` bytes were counted; false on close or timeout. */
  async receivedAtLeast(total: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.received < total) {
      if (this.ended || Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** True once the server has closed the connection (waits up to ms). */
  async closedWithin(ms: number): Promise<boolean> {
    const t = new Promise<false>((r) => setTimeout(() => r(false), ms));
    return Promise.race([this.closed.then(() => true as const), t]);
  }

  close(): void {
    this.socket.destroy();
  }

  // ---- Handshake ----

  /** Reads the greeting and sends client flags (default: FIXED_NEWSTYLE | NO_ZEROES). */
  async greet(clientFlags = 3): Promise<{ handshakeFlags: number }> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return { handshakeFlags: g.readUInt16BE(16) };
  }

  static option(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): Buffer {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength, 12);
    return Buffer.concat([h, data]);
  }

  sendOption(option: number, data?: Buffer): void {
    this.write(WireClient.option(option, data));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Option replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const all: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      all.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return all;
    }
  }

  static goData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name);
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
    return b;
  }

  static metaData(name: string, queries: string[]): Buffer {
    const parts: Buffer[] = [];
    const n = Buffer.from(name);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(n.length);
    parts.push(head, n);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(queries.length);
    parts.push(c);
    for (const q of queries) {
      const qb = Buffer.from(q);
      const l = Buffer.alloc(4);
      l.writeUInt32BE(qb.length);
      parts.push(l, qb);
    }
    return Buffer.concat(parts);
  }

  /** Full handshake to transmission with GO; returns export size and transmission flags. */
  async connectExport(name: string, opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ size: bigint; flags: number }> {
    await this.greet();
    if (opts.structured) {
      this.sendOption(OPT.STRUCTURED_REPLY);
      const r = await this.readOptionReply();
      if (r.type !== REP.ACK) throw new Error(`STRUCTURED_REPLY refused: ${r.type}`);
    }
    if (opts.meta) {
      this.sendOption(OPT.SET_META_CONTEXT, WireClient.metaData(name, ['base:allocation']));
      const rs = await this.readOptionReplies();
      if (rs.at(-1)!.type !== REP.ACK) throw new Error('SET_META_CONTEXT failed');
    }
    this.sendOption(OPT.GO, WireClient.goData(name, [3]));
    let size = -1n;
    let flags = 0;
    for (const r of await this.readOptionReplies()) {
      if (r.type === REP.INFO && r.data.readUInt16BE(0) === 0) {
        size = r.data.readBigUInt64BE(2);
        flags = r.data.readUInt16BE(10);
      } else if (r.type !== REP.INFO && r.type !== REP.ACK) {
        throw new Error(`GO failed with reply type 0x${r.type.toString(16)}`);
      }
    }
    return { size, flags };
  }

  // ---- Transmission ----

  static request(type: number, opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: number } = {}): Buffer {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(REQUEST_MAGIC, 0);
    b.writeUInt16BE(opts.flags ?? 0, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(opts.cookie ?? 1n, 8);
    b.writeBigUInt64BE(BigInt(opts.offset ?? 0), 16);
    b.writeUInt32BE(opts.length ?? 0, 24);
    return b;
  }

  sendRequest(type: number, opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: number; payload?: Buffer } = {}): void {
    const h = WireClient.request(type, { ...opts, length: opts.length ?? opts.payload?.length ?? 0 });
    this.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
  }

  /** One reply message. A successful simple READ reply's data is read when `readLength` is given. */
  async readReply(readLength = 0, ms = 5000): Promise<Reply> {
    const m = (await this.read(4, ms)).readUInt32BE(0);
    if (m === SIMPLE_REPLY_MAGIC) {
      const h = await this.read(12, ms);
      const error = h.readUInt32BE(0);
      const payload = error === 0 && readLength > 0 ? await this.read(readLength, ms) : undefined;
      return { kind: 'simple', error, cookie: h.readBigUInt64BE(4), payload };
    }
    if (m === STRUCTURED_REPLY_MAGIC) {
      const h = await this.read(16, ms);
      const flags = h.readUInt16BE(0);
      const type = h.readUInt16BE(2);
      const payload = await this.read(h.readUInt32BE(12), ms);
      const error = type & 0x8000 ? payload.readUInt32BE(0) : 0;
      return { kind: 'chunk', flags, type, cookie: h.readBigUInt64BE(4), error, payload };
    }
    throw new Error(`bad reply magic 0x${m.toString(16)}`);
  }
}
