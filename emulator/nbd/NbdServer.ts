/** The NBD server: a TCP listener and its connections. */
import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext } from 'node:tls';
import { BufferPool } from '../net/BufferPool.js';
import { Connection, type ConnectionContext } from './Connection.js';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, type NbdServerOptions } from './types.js';
import { drainConnections, listenTcp } from '../net/tcpListener.js';

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
      const { key, cert, ca } = opts.tls;
      this.ctx.tls = {
        context: createSecureContext(ca === undefined ? { key, cert } : { key, cert, ca }),
        require: opts.tls.require === true,
        verifyClient: ca !== undefined,
      };
    }
    this.server = createServer((socket) => this.accept(socket));
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
    this.ctx.logger.info({ ...addr, tls: this.ctx.tls === undefined ? 'off' : this.ctx.tls.require ? 'require' : 'on' }, 'NBD server listening');
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
    const conn = new Connection(socket, this.ctx);
    this.connections.add(conn);
    conn.log.debug('client connected');
    void conn.done.finally(() => this.connections.delete(conn));
  }
}
