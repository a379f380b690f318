/** The NBD server: a TCP listener and its connections. */
import { createServer, type Server, type Socket } from 'node:net';
import { InputQueue } from '../net/InputQueue.js';
import { ADOPTABLE } from '../net/ownBuffers.js';
import { createSecureContext, DEFAULT_CIPHERS, type SecureContextOptions } from 'node:tls';
import { BufferPool } from '../net/BufferPool.js';
import { Connection, type ConnectionContext } from './Connection.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, type NbdServerOptions } from './types.js';
import { drainConnections, listenTcp } from '../net/tcpListener.js';

/**
 * Cipher suites with TLS-PSK. TLS 1.3: OpenSSL takes an external PSK only under a SHA-256 suite
 * (the hash its PSK callback assumes); chosen by the server, a SHA-384 suite would drop the PSK
 * and fall back to the certificate (GnuTLS: "Insufficient credentials"). So SHA-256 suites come
 * first and the server's order rules. TLS 1.2: PSK suites, which node's defaults exclude (!PSK).
 */
function pskCiphers(): string {
  const tls13 = ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384'];
  const psk12 = ['ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256'];
  const rest = DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_') && c !== '!PSK');
  return [...tls13, ...psk12, ...rest].join(':');
}

/** How long close() lets connections finish in-flight requests before destroying them. */
const CLOSE_TIMEOUT_MS = 10_000;

export class NbdServer {
  private readonly ctx: ConnectionContext;
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | undefined;

  constructor(opts: NbdServerOptions) {
    this.ctx = {
      provider: opts.provider,
      logger: opts.logger,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      pool: new BufferPool(),
    };
    if (opts.tls !== undefined) {
      const { key, cert, ca, psk } = opts.tls;
      if ((key === undefined) !== (cert === undefined)) throw new Error('NBD TLS: give both key and cert (certificate mode), or neither');
      if (key === undefined && psk === undefined) throw new Error('NBD TLS: give key and cert (certificates), psk (TLS-PSK), or both');
      const options: SecureContextOptions = key === undefined ? {} : { key, cert };
      if (ca !== undefined) options.ca = ca;
      if (psk !== undefined) {
        options.ciphers = pskCiphers();
        options.honorCipherOrder = true;
      }
      // With client certificates requested, OpenSSL refuses to resume a session (and a TLS 1.3
      // PSK handshake is one) whose session id context is unset.
      options.sessionIdContext = 'arraylab-nbd';
      this.ctx.tls = {
        context: createSecureContext(options),
        require: opts.tls.require === true,
        verifyClient: ca !== undefined,
        ...(psk === undefined ? {} : { psk }),
      };
    }
    if (opts.access !== undefined) this.ctx.access = opts.access;
    this.server = createServer(ADOPTABLE, (socket) => this.accept(socket));
    this.server.on('error', (err) => opts.logger.error({ err }, 'NBD listener error'));
    this.server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.server.on('drop', (d) =>
      opts.logger.warn({ remote: `${d?.remoteAddress}:${d?.remotePort}`, limit: this.server.maxConnections }, 'connection refused: too many connections'),
    );
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  async listen(port: number, host = '127.0.0.1'): Promise<{ host: string; port: number }> {
    const addr = await listenTcp(this.server, port, host, 'NBD server');
    const tls = this.ctx.tls;
    this.ctx.logger.info(
      { ...addr, tls: tls === undefined ? 'off' : tls.require ? 'require' : 'on', psk: tls?.psk !== undefined, access: this.ctx.access !== undefined },
      'NBD server listening',
    );
    return addr;
  }

  /** Stop accepting; tell connected clients (ESHUTDOWN on new requests, finish in-flight ones), close all sockets. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await drainConnections(
      this.server,
      this.connections,
      (c) => c.shutdown(),
      CLOSE_TIMEOUT_MS,
      (open) => this.ctx.logger.warn({ connections: open }, 'connections did not finish in time: destroying them'),
    );
    this.ctx.logger.info('NBD server closed');
  }

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const adopted = InputQueue.adopt(socket);
    if (adopted === undefined) return;
    const conn = new Connection(adopted.socket, adopted.input, this.ctx);
    this.connections.add(conn);
    conn.log.debug('client connected');
    void conn.done.finally(() => this.connections.delete(conn));
  }
}
