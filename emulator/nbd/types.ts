/** The NBD server's public option types. */
import type { ExportProvider } from '../block/BlockDevice.js';

/** The subset of pino's Logger the server uses; a pino logger fits as is. */
export interface NbdLogger {
  debug(o: object | string, msg?: string): void;
  info(o: object | string, msg?: string): void;
  warn(o: object | string, msg?: string): void;
  error(o: object | string, msg?: string): void;
  child(bindings: object): NbdLogger;
}

export interface NbdTlsOptions {
  key: Buffer | string;
  cert: Buffer | string;
  /** When set, clients must present a certificate signed by this CA. */
  ca?: Buffer | string;
  /** Refuse everything but STARTTLS (and ABORT) before TLS (the spec's FORCEDTLS mode). */
  require?: boolean;
}

export interface NbdServerOptions {
  provider: ExportProvider;
  logger: NbdLogger;
  tls?: NbdTlsOptions | undefined;
  /**
   * A client must finish the handshake (including any TLS upgrade) within this time or be
   * disconnected, so that idle or trickling sockets cannot pile up. Default 30 s.
   */
  handshakeTimeoutMs?: number;
  /** Connections beyond this many are refused at accept. Default 1024. */
  maxConnections?: number;
}

export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_CONNECTIONS = 1024;
