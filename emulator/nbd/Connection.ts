/**
 * One client connection, from accept to close: handshake, transmission, teardown.
 *
 * Teardown runs exactly once whatever ends the connection (DISC, EOF, reset, protocol error,
 * server shutdown, a bug): in-flight requests are allowed to finish, the socket is closed,
 * and the export handle is closed once.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { ExportHandle, ExportProvider, HandleEvent } from '../block/BlockDevice.js';
import type { BufferPool } from '../net/BufferPool.js';
import { negotiate, type HandshakeHost } from './handshake.js';
import { InputQueue } from '../net/InputQueue.js';
import { Output } from './Output.js';
import { Transmission } from './transmission.js';
import type { NbdAccess, NbdExportScope, NbdLogger, NbdPeer } from './types.js';

export interface ConnectionContext {
  provider: ExportProvider;
  logger: NbdLogger;
  tls?: { context: SecureContext; require: boolean; verifyClient: boolean; psk?: (identity: string) => Buffer | undefined };
  access?: NbdAccess;
  handshakeTimeoutMs: number;
  /** Large I/O buffers shared by the server's connections. */
  pool: BufferPool;
}

/** How long a closing socket may take to flush before it is destroyed. */
const CLOSE_GRACE_MS = 5000;

let nextId = 1;

export class Connection implements HandshakeHost {
  readonly id = `nbd-${nextId++}`;
  readonly log: NbdLogger;
  readonly provider: ExportProvider;
  readonly remoteAddress: string;
  readonly pool: BufferPool;
  input: InputQueue;
  out: Output;
  tlsActive = false;
  /** Who the TLS peer proved to be; undefined until then, or without a client identity. */
  peer: NbdPeer | undefined;
  /** Resolves when the connection is fully closed and its handle released. */
  readonly done: Promise<void>;

  private socket: Socket;
  private handle: ExportHandle | undefined;
  private transmission: Transmission | undefined;
  private shuttingDown = false;
  private finished = false;
  /** Set once the array told this connection to go (HandleEvent 'disconnect'). */
  private dropped = false;
  private unsubscribeEvents: (() => void) | undefined;

  /** `input` reads `socket` (InputQueue.adopt). */
  constructor(
    socket: Socket,
    input: InputQueue,
    private readonly ctx: ConnectionContext,
  ) {
    this.socket = socket;
    this.provider = ctx.provider;
    this.pool = ctx.pool;
    const host = socket.remoteAddress ?? 'unknown';
    this.remoteAddress = host.includes(':') ? `[${host}]:${socket.remotePort}` : `${host}:${socket.remotePort}`;
    this.log = ctx.logger.child({ conn: this.id, remote: this.remoteAddress });
    socket.setNoDelay(true);
    socket.on('error', this.onSocketError);
    this.input = input;
    this.out = new Output(socket);
    // run() handles its own errors; the catch is only so that a bug there can never become an unhandled rejection.
    this.done = this.run().catch((err: unknown) => this.log.error({ err }, 'connection teardown failed'));
  }

  get tlsAvailable(): boolean {
    return this.ctx.tls !== undefined;
  }

  get tlsRequired(): boolean {
    return this.ctx.tls?.require === true;
  }

  /** The exports this connection may see and use now. */
  scope(): NbdExportScope {
    return this.ctx.access?.exportsFor(this.peer) ?? 'all';
  }

  /** What a client naming an export outside its scope is told. */
  refusal(name: string): string {
    return this.ctx.access?.refusal(this.peer, name) ?? `no export named "${name}"`;
  }

  openExport(name: string): ExportHandle | undefined {
    const readOnly = this.provider.describeExport(name)?.readOnly ?? false;
    const handle = this.provider.openExport(name, { protocol: 'nbd', connectionId: this.id, remoteAddress: this.remoteAddress, readOnly });
    // Owned from the moment it exists, so teardown closes it even if negotiation fails after the open.
    if (handle !== undefined) {
      this.handle = handle;
      // Once per open, not per request: the I/O path is untouched.
      this.unsubscribeEvents = handle.onEvent?.(this.onHandleEvent);
    }
    return handle;
  }

  /**
   * The array's word about the open export. 'disconnect' drops the connection at once, like a
   * path that fails: no reply is owed to requests in flight (their replies go nowhere), and
   * teardown still waits for them before it closes the handle, once. 'reset' is ignored: NBD
   * has no reset and no way to tell a client about one; a client's state is the connection.
   * Called synchronously from inside a device call (a triggered fault), so it only flags and
   * closes: nothing here may throw or wait.
   */
  private readonly onHandleEvent = (event: HandleEvent): void => {
    if (event.kind !== 'disconnect' || this.dropped || this.finished) return;
    this.dropped = true;
    this.log.warn({ reason: event.reason }, `connection dropped by the array: ${event.reason}`);
    this.input.detach();
    this.socket.destroy();
  };

  /**
   * After the STARTTLS ACK: forget all buffered plaintext (a client may not smuggle options
   * past the upgrade) and speak TLS on the same socket.
   */
  startTls(): Promise<boolean> {
    const tls = this.ctx.tls!;
    this.input.detach();
    this.out.flush();
    const psk = tls.psk;
    /** The identity whose key this handshake was given (a TLS 1.3 client may offer several). */
    let pskIdentity: string | undefined;
    const secure = new TLSSocket(this.socket, {
      isServer: true,
      secureContext: tls.context,
      requestCert: tls.verifyClient,
      rejectUnauthorized: tls.verifyClient,
      ...(psk === undefined
        ? {}
        : {
            pskCallback: (_socket: TLSSocket, identity: string) => {
              let key: Buffer | undefined;
              try {
                key = psk(identity);
              } catch (err) {
                this.log.error({ err, pskIdentity: identity }, 'PSK lookup failed: refusing the identity');
              }
              if (key === undefined) {
                this.log.warn({ pskIdentity: identity }, 'TLS-PSK identity unknown: handshake refused');
                return null;
              }
              pskIdentity = identity;
              return key;
            },
          }),
    });
    secure.on('error', this.onSocketError);
    this.socket = secure;
    this.input = new InputQueue(secure);
    this.out.retarget(secure);
    return new Promise((resolve) => {
      const settle = (ok: boolean) => {
        secure.off('secure', onSecure);
        secure.off('close', onFail);
        secure.off('error', onFail);
        resolve(ok);
      };
      const onSecure = () => {
        // A bare TLSSocket accepts any client certificate and leaves the verdict to its owner
        // (tls.Server checks it; we are not one): without this, a certificate from any CA passed.
        const refused = tls.verifyClient && pskIdentity === undefined ? clientCertificateError(secure) : undefined;
        if (refused !== undefined) {
          this.log.warn({ reason: refused }, 'client certificate refused: closing');
          secure.destroy();
          settle(false);
          return;
        }
        this.tlsActive = true;
        this.peer = peerOf(secure, pskIdentity, tls.verifyClient);
        this.log.info({ protocol: secure.getProtocol(), cipher: secure.getCipher()?.name, ...this.peer }, 'TLS established');
        settle(true);
      };
      const onFail = (err?: unknown) => {
        this.log.warn({ err: err instanceof Error ? err.message : undefined }, 'TLS handshake failed: closing');
        settle(false);
      };
      secure.once('secure', onSecure);
      secure.once('close', onFail);
      secure.once('error', onFail);
    });
  }

  /** Server shutdown: finish what is running, refuse the rest with ESHUTDOWN, then close. */
  shutdown(): void {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const t = this.transmission;
    if (t === undefined) {
      // Still negotiating: nothing to finish. Dropping the input ends the option loop at once.
      this.input.detach();
      this.endSocket();
      return;
    }
    t.shuttingDown = true;
    void t.drained().then(() => this.endSocket());
  }

  /** Forcibly closes the socket (server close() timed out). */
  destroy(): void {
    this.socket.destroy();
  }

  private async run(): Promise<void> {
    // A client that never finishes negotiating must not hold a socket forever.
    const timer = setTimeout(() => {
      this.log.warn({ timeoutMs: this.ctx.handshakeTimeoutMs }, 'handshake did not complete in time: closing');
      this.input.detach();
      this.socket.destroy();
    }, this.ctx.handshakeTimeoutMs);
    try {
      const neg = await negotiate(this).finally(() => clearTimeout(timer));
      if (neg === undefined) return;
      this.log.info(
        { export: neg.handle.name, size: neg.size, readOnly: neg.handle.readOnly, structured: neg.structured, tls: this.tlsActive, ...this.peer },
        'client connected to export',
      );
      if (this.shuttingDown || this.dropped) return;
      const t = new Transmission(this, neg);
      this.transmission = t;
      if (this.socket.closed) t.socketClosed();
      else this.socket.once('close', () => t.socketClosed());
      const why = await t.run();
      if (why === 'disc') this.log.debug('client sent DISC');
      await t.drained();
    } catch (err) {
      this.log.error({ err }, 'connection failed');
    } finally {
      await this.teardown();
    }
  }

  private async teardown(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    try {
      await this.transmission?.drained();
    } catch {
      // drained() never rejects; belt and braces for teardown.
    }
    try {
      this.transmission?.dispose();
      this.unsubscribeEvents?.();
    } catch (err) {
      this.log.error({ err }, 'resize or event unsubscribe failed');
    }
    this.endSocket();
    if (this.handle !== undefined) {
      const h = this.handle;
      this.handle = undefined;
      try {
        h.close();
      } catch (err) {
        this.log.error({ err }, 'export handle close failed');
      }
    }
    await this.closed();
    this.log.debug('connection closed');
  }

  /** Flushes replies, then ends the socket (for TLS, with close_notify); destroys it if it lingers. */
  private endSocket(): void {
    const s = this.socket;
    this.out.flush();
    if (!s.destroyed && !s.writableEnded) s.end();
    setTimeout(() => s.destroy(), CLOSE_GRACE_MS).unref();
  }

  private closed(): Promise<void> {
    const s = this.socket;
    if (s.destroyed && s.closed) return Promise.resolve();
    return new Promise((resolve) => {
      s.once('close', () => resolve());
      // A socket may be destroyed without a close event still to come.
      if (s.closed) resolve();
    });
  }

  private readonly onSocketError = (err: Error & { code?: string }): void => {
    // Resets and aborts are how clients leave; the connection closes through EOF handling.
    this.log.debug({ code: err.code, msg: err.message }, 'socket error');
  };
}

/**
 * Why the client's certificate chain does not verify against the configured CA, or undefined
 * when it does. Node checks this itself only for sockets of a tls.Server; the handle's
 * verifyError() is what that check calls. Fails closed if the handle lacks it.
 */
function clientCertificateError(secure: TLSSocket): string | undefined {
  const handle = (secure as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'this node cannot verify client certificates';
  const err = handle.verifyError();
  return err === null ? undefined : (err.code ?? err.message);
}

/**
 * The peer's identity after a TLS handshake: the PSK identity when one was accepted (a PSK
 * handshake has no certificates), else the client certificate when one was demanded and
 * verified. A session resumed from a ticket proves neither here: it gets no identity.
 */
function peerOf(secure: TLSSocket, pskIdentity: string | undefined, verifyClient: boolean): NbdPeer | undefined {
  if (pskIdentity !== undefined) return { pskIdentity };
  if (!verifyClient) return undefined;
  const cert = secure.getPeerCertificate();
  if (cert === null || typeof cert.fingerprint256 !== 'string' || cert.fingerprint256 === '') return undefined;
  const cn = cert.subject?.CN;
  const subjectCN = Array.isArray(cn) ? cn[0] : cn;
  return { certFingerprint256: cert.fingerprint256, ...(subjectCN ? { certSubjectCN: subjectCN } : {}) };
}
