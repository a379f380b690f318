/** The NBD server library: serves an ExportProvider's exports over the NBD protocol. See README.md. */
export { NbdServer } from './NbdServer.js';
export type { NbdAccess, NbdExportScope, NbdLogger, NbdPeer, NbdServerOptions, NbdTlsOptions } from './types.js';
