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
  /** Server certificate and key (PEM), both or neither: certificate mode. */
  key?: Buffer | string;
  cert?: Buffer | string;
  /** When set, clients that use certificates must present one signed by this CA. */
  ca?: Buffer | string;
  /**
   * TLS-PSK mode: the key for a client's PSK identity, or undefined to refuse that identity (the
   * handshake then fails). Called during each TLS handshake that offers a PSK, never per request.
   * With cert and key as well, a client may use either.
   */
  psk?: (identity: string) => Buffer | undefined;
  /** Refuse everything but STARTTLS (and ABORT) before TLS (the spec's FORCEDTLS mode). */
  require?: boolean;
}

/**
 * Who a connection's TLS peer proved to be: the PSK identity it used, or its verified client
 * certificate (only when `ca` is set). Opaque to the server; the access policy interprets it.
 */
export interface NbdPeer {
  readonly pskIdentity?: string;
  /** SHA-256 fingerprint of the client certificate, as node prints it: "AB:CD:...", upper case. */
  readonly certFingerprint256?: string;
  /** The certificate subject's common name, if it has one. */
  readonly certSubjectCN?: string;
}

/** The exports a connection may see and use: all of them, or those the set holds. */
export type NbdExportScope = 'all' | { has(name: string): boolean };

/**
 * Which exports a connection sees (NBD_OPT_LIST) and may use (INFO, GO, EXPORT_NAME, meta
 * contexts). `peer` is undefined for a connection without a TLS identity (plaintext, or TLS
 * without a client certificate or PSK). Asked at each of those options, never per request.
 */
export interface NbdAccess {
  exportsFor(peer: NbdPeer | undefined): NbdExportScope;
  /**
   * What a client is told when it names an export outside its scope (NBD_REP_ERR_UNKNOWN): what
   * to do about it. It should read the same whether or not the export exists.
   */
  refusal(peer: NbdPeer | undefined, name: string): string;
}

export interface NbdServerOptions {
  provider: ExportProvider;
  logger: NbdLogger;
  tls?: NbdTlsOptions | undefined;
  /** Per-connection export filter; without it every connection sees every export. */
  access?: NbdAccess | undefined;
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
