/**
 * The server-wide status an in-process ArrayApiServer reports when a test serves only its API
 * from a memory array: no NBD or iSCSI listener.
 */
import type { ServerStatus } from '../../emulator/api/ArrayApiServer.js';

export function memoryServerStatus(api = true): ServerStatus {
  return {
    version: '0',
    startedAt: new Date().toISOString(),
    dataDir: '',
    backend: 'memory',
    listeners: {
      nbd: { available: false, host: '', port: 0, note: '' },
      iscsi: { available: false, host: '', port: 0, note: '' },
      api: api ? { available: true, host: '127.0.0.1', port: 0, note: '' } : { available: false, host: '', port: 0, note: '' },
    },
  };
}
