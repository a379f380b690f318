/**
 * NBD over TLS-PSK for guests: the psktool key file (IDENTITY:HEXKEY lines, as `arraylab host set
 * HOST --nbd-psk` prints and qemu's tls-creds-psk reads from DIR/keys.psk), and a probe that
 * tells whether an array's NBD server takes a PSK at all, so `lab up` can say what to change
 * before a guest fails to boot on a disk it cannot open.
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';

/** The file qemu's tls-creds-psk reads in its dir (qemu-object(7)). */
export const QEMU_PSK_FILE = 'keys.psk';

/** A TLS-PSK identity and its key. */
export interface NbdPsk {
  identity: string;
  key: Buffer;
}

/** As the array checks it (emulator/array/HostAffinity.ts NBD_PSK_IDENTITY_PATTERN): no ':' or space. */
const IDENTITY = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$/;

/** One psktool line: IDENTITY:HEXKEY. */
export function pskLine(p: NbdPsk): string {
  return `${p.identity}:${p.key.toString('hex')}`;
}

/** The lines of a psktool file; a line that is not IDENTITY:HEX is an error naming it. */
export function parsePskFile(text: string, file: string): NbdPsk[] {
  const out: NbdPsk[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([^:]+):([0-9A-Fa-f]+)$/.exec(line);
    if (!m || m[2]!.length % 2 !== 0 || !IDENTITY.test(m[1]!)) {
      throw new Error(`${file}: line ${i + 1} is not IDENTITY:HEXKEY; put the line arraylab host set HOST --nbd-psk printed (psktool format) in it`);
    }
    out.push({ identity: m[1]!, key: Buffer.from(m[2]!, 'hex') });
  });
  return out;
}

/** The key for identity (or the file's only one) from a psktool file. */
export function readPskFile(file: string, identity?: string): NbdPsk {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(
      `cannot read the NBD PSK file ${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}; give the file you saved the key of arraylab host set HOST --nbd-psk in`,
    );
  }
  const keys = parsePskFile(text, file);
  if (identity !== undefined) {
    const k = keys.find((x) => x.identity === identity);
    if (!k)
      throw new Error(
        `${file} has no key for PSK identity ${identity} (it has ${keys.map((x) => x.identity).join(', ') || 'none'}); give one of those, or the file that has it`,
      );
    return k;
  }
  if (keys.length !== 1)
    throw new Error(
      `${file} holds ${keys.length === 0 ? 'no key' : `keys for ${keys.map((x) => x.identity).join(', ')}`}; ${keys.length === 0 ? 'put the line arraylab host set HOST --nbd-psk printed in it' : 'say which with --nbd-psk-identity'}`,
    );
  return keys[0]!;
}

/**
 * Writes keys (replacing the file) as psktool lines, the directory 0700 and the file 0600: a key
 * opens the host's volumes.
 */
export function writePskFile(file: string, keys: NbdPsk[]): void {
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
  writeFileSync(file, `${keys.map(pskLine).join('\n')}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/** Writes DIR/keys.psk with one key, for qemu's `-object tls-creds-psk,dir=DIR,username=IDENTITY`. */
export function writeQemuPskDir(dir: string, psk: NbdPsk): void {
  writePskFile(join(dir, QEMU_PSK_FILE), [psk]);
}

export type NbdPskProbe =
  | { ok: true }
  /** no-tls: STARTTLS refused (the array has no nbd.tls); no-psk: the TLS-PSK handshake failed. */
  | { ok: false; why: 'no-tls' | 'no-psk' | 'unreachable'; detail: string };

const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPT_STARTTLS = 5;
const OPT_ABORT = 2;
const REP_ACK = 1;

/**
 * Connects to an NBD server, asks for STARTTLS and does a TLS-PSK handshake with psk; opens no
 * export. Tells apart a server without TLS, one that refuses the key (no nbd.tls.psk, or an
 * identity it does not know), and one that takes it.
 */
export async function probeNbdPsk(host: string, port: number, psk: NbdPsk, timeoutMs = 5000): Promise<NbdPskProbe> {
  const socket = tcpConnect({ host, port });
  let buffered = Buffer.alloc(0);
  let waiting: { n: number; resolve: (b: Buffer) => void } | undefined;
  let failure: Error | undefined;
  let reject: ((e: Error) => void) | undefined;
  const feed = (): void => {
    if (waiting && buffered.length >= waiting.n) {
      const out = buffered.subarray(0, waiting.n);
      buffered = buffered.subarray(waiting.n);
      const w = waiting;
      waiting = undefined;
      w.resolve(out);
    }
  };
  const onData = (d: Buffer): void => {
    buffered = Buffer.concat([buffered, d]);
    feed();
  };
  const fail = (e: Error): void => {
    failure ??= e;
    reject?.(e);
  };
  socket.on('data', onData);
  socket.on('error', fail);
  socket.on('close', () => fail(new Error('the server closed the connection')));
  const read = (n: number): Promise<Buffer> =>
    new Promise((resolve, rej) => {
      if (failure) return rej(failure);
      reject = rej;
      waiting = { n, resolve };
      feed();
    });
  const timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    try {
      await new Promise<void>((resolve, rej) => {
        socket.once('connect', resolve);
        socket.once('error', rej);
      });
      const greeting = await read(18);
      if (greeting.subarray(0, 8).toString('latin1') !== 'NBDMAGIC' || !greeting.subarray(8, 16).equals(IHAVEOPT))
        return { ok: false, why: 'unreachable', detail: `${host}:${port} is not a newstyle NBD server` };
      // Client flags: fixed newstyle, no zeroes; then NBD_OPT_STARTTLS with no data.
      const opt = Buffer.alloc(20);
      opt.writeUInt32BE(3, 0);
      IHAVEOPT.copy(opt, 4);
      opt.writeUInt32BE(OPT_STARTTLS, 12);
      opt.writeUInt32BE(0, 16);
      socket.write(opt);
      const reply = await read(20);
      const type = reply.readUInt32BE(12);
      const len = reply.readUInt32BE(16);
      const said = len > 0 ? (await read(len)).toString('utf8') : '';
      if (type !== REP_ACK) return { ok: false, why: 'no-tls', detail: said || `STARTTLS refused (reply type 0x${type.toString(16)})` };
    } catch (err) {
      return { ok: false, why: 'unreachable', detail: (err as Error).message };
    }
    socket.off('data', onData);
    socket.removeAllListeners('close');
    socket.removeAllListeners('error');
    socket.on('error', () => undefined);
    const secure = tlsConnect({
      socket,
      // OpenSSL keeps an external PSK under TLS 1.3 only with a SHA-256 suite (emulator/nbd/NbdServer.ts).
      ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256',
      pskCallback: () => ({ identity: psk.identity, psk: psk.key }),
      checkServerIdentity: () => undefined,
    });
    return await new Promise<NbdPskProbe>((resolve) => {
      const t = setTimeout(() => resolve({ ok: false, why: 'no-psk', detail: `no TLS handshake within ${timeoutMs} ms` }), timeoutMs);
      secure.once('secureConnect', () => {
        clearTimeout(t);
        // Leave politely: NBD_OPT_ABORT inside TLS.
        const abort = Buffer.alloc(16);
        IHAVEOPT.copy(abort, 0);
        abort.writeUInt32BE(OPT_ABORT, 8);
        secure.end(abort);
        resolve({ ok: true });
      });
      secure.once('error', (err) => {
        clearTimeout(t);
        resolve({ ok: false, why: 'no-psk', detail: err.message });
      });
      secure.once('close', () => {
        clearTimeout(t);
        resolve({ ok: false, why: 'no-psk', detail: 'the server closed the connection during the TLS handshake' });
      });
    }).finally(() => secure.destroy());
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}
