/**
 * A minimal NBD reader over TLS-PSK, for data checks on an array with hosts: there a plain
 * NBD client sees no volume, and a lab host's key (lab up keeps it in the lab's secrets) shows
 * that host's. Fixed newstyle, NBD_OPT_STARTTLS, NBD_OPT_GO, simple replies, one READ at a
 * time (emulator/remote/NbdClient.ts is the full client; it has no TLS).
 */
import { connect as tcpConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import type { NbdPsk } from '../../../vm/nbdPsk.js';

const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
const OPT_GO = 7;
const OPT_STARTTLS = 5;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Longest option reply read (the spec caps its strings at 4096 bytes). */
const MAX_OPTION_REPLY = 64 * 1024;

/** Reads exact byte counts from a stream. */
class Reader {
  private buf: Buffer = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  constructor(private readonly s: Duplex) {
    s.on('data', this.onData);
    s.on('error', (e: Error) => this.fail(e));
    s.on('close', () => this.fail(new Error('the server closed the connection')));
  }
  private onData = (d: Buffer) => {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    this.feed();
  };
  private feed(): void {
    if (this.want && this.buf.length >= this.want.n) {
      const w = this.want;
      this.want = undefined;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(out);
    }
  }
  private fail(e: Error): void {
    this.failure ??= e;
    this.want?.reject(e);
    this.want = undefined;
  }
  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      if (this.failure) return reject(this.failure);
      this.want = { n, resolve, reject };
      this.feed();
    });
  }
  detach(): void {
    this.s.off('data', this.onData);
    this.s.removeAllListeners('error');
    this.s.removeAllListeners('close');
    this.s.on('error', () => undefined);
  }
}

function option(type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  IHAVEOPT.copy(h, 0);
  h.writeUInt32BE(type, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** An option's replies up to its ACK; the export size from NBD_INFO_EXPORT. Throws the server's refusal. */
async function optionReplies(r: Reader, what: string): Promise<number | undefined> {
  let size: number | undefined;
  for (;;) {
    const h = await r.read(20);
    const type = h.readUInt32BE(12);
    const len = h.readUInt32BE(16);
    if (len > MAX_OPTION_REPLY) throw new Error(`${what}: an option reply of ${len} bytes`);
    const data = len ? await r.read(len) : Buffer.alloc(0);
    if (type === REP_ACK) return size;
    if (type & 0x80000000) throw new Error(`${what}: refused${data.length ? `: ${data.toString('utf8')}` : ''}`);
    if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) size = Number(data.readBigUInt64BE(2));
  }
}

export interface NbdTlsReader {
  size: number;
  read(offset: number, into: Buffer): Promise<void>;
  close(): void;
}

/** Opens exportName over TLS-PSK with key; rejects with what went wrong (no TLS, key refused, export refused). */
export async function openNbdTls(host: string, port: number, exportName: string, key: NbdPsk, timeoutMs = 10_000): Promise<NbdTlsReader> {
  const socket = tcpConnect({ host, port });
  const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    const plain = new Reader(socket);
    const greeting = await plain.read(18);
    if (greeting.subarray(0, 8).toString('latin1') !== 'NBDMAGIC' || !greeting.subarray(8, 16).equals(IHAVEOPT))
      throw new Error(`${host}:${port} is not a newstyle NBD server`);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3, 0); // fixed newstyle, no zeroes
    socket.write(Buffer.concat([flags, option(OPT_STARTTLS)]));
    await optionReplies(plain, 'NBD_OPT_STARTTLS');
    plain.detach();
    const secure = tlsConnect({
      socket,
      // OpenSSL keeps an external PSK under TLS 1.3 only with a SHA-256 suite (emulator/vm/nbdPsk.ts).
      ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256',
      pskCallback: () => ({ identity: key.identity, psk: key.key }),
      checkServerIdentity: () => undefined,
    });
    const r = new Reader(secure);
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    const name = Buffer.from(exportName, 'utf8');
    const go = Buffer.alloc(4 + name.length + 2);
    go.writeUInt32BE(name.length, 0);
    name.copy(go, 4);
    go.writeUInt16BE(0, 4 + name.length); // no information requests: the export info comes anyway
    secure.write(option(OPT_GO, go));
    const size = await optionReplies(r, `NBD export ${exportName} (TLS-PSK identity ${key.identity})`);
    if (size === undefined) throw new Error(`NBD export ${exportName}: the server sent no export size`);
    let cookie = 1;
    return {
      size,
      async read(offset, into) {
        const t = setTimeout(() => secure.destroy(new Error(`NBD read at ${offset}: no answer within ${timeoutMs} ms`)), timeoutMs);
        try {
          await readOnce(offset, into);
        } finally {
          clearTimeout(t);
        }
      },
      close() {
        secure.destroy();
      },
    };
    async function readOnce(offset: number, into: Buffer): Promise<void> {
      const q = Buffer.alloc(28);
      q.writeUInt32BE(REQUEST_MAGIC, 0);
      q.writeUInt16BE(0, 4); // flags
      q.writeUInt16BE(0, 6); // NBD_CMD_READ
      q.writeUInt32BE(0, 8);
      q.writeUInt32BE(cookie++, 12);
      q.writeBigUInt64BE(BigInt(offset), 16);
      q.writeUInt32BE(into.length, 24);
      secure.write(q);
      const h = await r.read(16);
      if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('NBD: not a simple reply');
      const err = h.readUInt32BE(4);
      if (err) throw new Error(`NBD read at ${offset} failed with error ${err}`);
      (await r.read(into.length)).copy(into);
    }
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
