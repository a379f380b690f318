/**
 * One running array: the StorageArray, its NBD server and its control API, built from a
 * resolved configuration.
 *
 * start() brings them up in dependency order and returns the addresses actually bound (the real
 * ports when asked for port 0); stop() takes them down so no acknowledged write is lost: refuse
 * new API calls, stop NBD (no new clients, existing ones closed), flush and close the array,
 * then stop the API.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { ArrayApiServer, type ServerStatus } from './api/ArrayApiServer.js';
import { ARRAYLAB_VERSION } from './api/version.js';
import { StorageArray } from './array/StorageArray.js';
import { ArrayError, type VolumeInfo } from './array/types.js';
import { formatHostPort, type ArraylabConfig, type HostPort, type VolumeSpec } from './config.js';
import { NbdServer } from './nbd/index.js';
import { formatSize } from './units.js';

export interface ServerAddresses {
  nbd: HostPort;
  api: HostPort;
}

export const ISCSI_NOT_AVAILABLE = 'the iSCSI target is not available in this version';

export class ArrayServer {
  private readonly config: ArraylabConfig;
  private readonly log: Logger;
  private storage?: StorageArray;
  private nbd?: NbdServer;
  private api?: ArrayApiServer;
  private bound?: ServerAddresses;
  private startedAt = new Date();
  private starting?: Promise<ServerAddresses>;
  private stopping?: Promise<void>;

  constructor(config: ArraylabConfig, logger: Logger) {
    this.config = config;
    this.log = logger;
  }

  /** The array, once started. */
  get array(): StorageArray {
    if (!this.storage) throw new Error('ArrayServer.array used before start()');
    return this.storage;
  }

  get addresses(): ServerAddresses | undefined {
    return this.bound;
  }

  start(): Promise<ServerAddresses> {
    this.starting ??= this.startUp();
    return this.starting;
  }

  private async startUp(): Promise<ServerAddresses> {
    const { config } = this;
    this.startedAt = new Date();
    try {
      const tls = config.nbd.tls ? readTls(config) : undefined;
      this.storage = await StorageArray.open({
        backend: config.backend,
        ...(config.backend === 'file' ? { dataDir: config.dataDir } : {}),
        logger: this.log,
      });
      await reconcileVolumes(this.storage, config.volumes, this.log);

      this.nbd = new NbdServer({ provider: this.storage, logger: this.log, ...(tls ? { tls } : {}) });
      const nbd = await listenOrExplain('NBD', config.listen.nbd, '--nbd HOST:PORT or listen.nbd', () => this.nbd!.listen(config.listen.nbd.port, config.listen.nbd.host));

      this.api = new ArrayApiServer({ array: this.storage, copy: this.storage, status: () => this.serverStatus(), logger: this.log });
      const api = await this.api.listen(config.listen.api);

      this.bound = { nbd: { host: nbd.host, port: nbd.port }, api };
      if (config.listen.iscsi) this.log.debug({ address: formatHostPort(config.listen.iscsi) }, `listen.iscsi ignored: ${ISCSI_NOT_AVAILABLE}`);
      return this.bound;
    } catch (err) {
      this.stopping ??= this.shutdown();
      await this.stopping.catch((stopErr: unknown) => this.log.error({ err: stopErr }, 'clean-up after a failed start failed'));
      throw err;
    }
  }

  /** Idempotent; waits for a start in progress, and is safe after a failed one. */
  async stop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.api?.drain();
    if (this.nbd) {
      this.log.info('stopping NBD: no new clients; closing connected ones');
      await this.nbd.close();
    }
    if (this.storage) {
      this.log.info('flushing and closing the array');
      await this.storage.flushAll();
      await this.storage.close();
    }
    await this.api?.close();
    this.log.info('stopped');
  }

  private serverStatus(): ServerStatus {
    const listener = (addr: HostPort | undefined) =>
      addr ? { available: true, host: addr.host, port: addr.port, note: '' } : { available: false, host: '', port: 0, note: 'not listening' };
    return {
      version: ARRAYLAB_VERSION,
      startedAt: this.startedAt.toISOString(),
      dataDir: this.config.backend === 'file' ? this.config.dataDir : '',
      backend: this.config.backend,
      listeners: {
        nbd: listener(this.bound?.nbd),
        iscsi: { available: false, host: '', port: 0, note: ISCSI_NOT_AVAILABLE },
        api: listener(this.bound?.api),
      },
    };
  }
}

/**
 * Makes the array hold every volume the config declares: creates missing ones and grows smaller
 * ones. A volume that is larger, or has another block size, stops start-up: shrinking or
 * reformatting would lose data, so the operator decides.
 */
export async function reconcileVolumes(array: StorageArray, specs: VolumeSpec[], log: Logger): Promise<void> {
  for (const spec of specs) {
    let existing: VolumeInfo | undefined;
    try {
      existing = array.getVolume(spec.name);
    } catch (err) {
      if (!(err instanceof ArrayError && err.code === 'NOT_FOUND')) throw err;
    }
    if (!existing) {
      await array.createVolume({
        name: spec.name,
        sizeBytes: spec.sizeBytes,
        blockSize: spec.blockSize,
        provisioning: spec.provisioning,
        readOnly: spec.readOnly,
        description: spec.description,
      });
      log.info({ volume: spec.name, sizeBytes: spec.sizeBytes }, 'created volume declared in config');
      continue;
    }
    if (existing.blockSize !== spec.blockSize) {
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `${spec.origin}: volume ${spec.name} exists with block size ${existing.blockSize}, not ${spec.blockSize}; the block size cannot change: set blockSize: ${existing.blockSize} or delete the volume`,
      );
    }
    if (existing.sizeBytes > spec.sizeBytes) {
      throw new ArrayError(
        'FAILED_PRECONDITION',
        `${spec.origin}: volume ${spec.name} exists with ${formatSize(existing.sizeBytes)} (${existing.sizeBytes} bytes), more than the ${formatSize(spec.sizeBytes)} declared; volumes never shrink: raise size to at least ${existing.sizeBytes} or delete the volume`,
      );
    }
    if (existing.sizeBytes < spec.sizeBytes) {
      await array.resizeVolume(spec.name, spec.sizeBytes);
      log.info({ volume: spec.name, from: existing.sizeBytes, to: spec.sizeBytes }, 'grew volume to the size declared in config');
    }
    if (existing.provisioning !== spec.provisioning || existing.readOnly !== spec.readOnly) {
      log.warn(
        { volume: spec.name, provisioning: existing.provisioning, readOnly: existing.readOnly },
        'volume exists with other provisioning or read-only settings than the config declares; keeping the existing ones',
      );
    }
  }
}

function readTls(config: ArraylabConfig): { key: Buffer; cert: Buffer; ca?: Buffer; require: boolean } {
  const tls = config.nbd.tls!;
  const read = (key: 'cert' | 'key' | 'ca', path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`config ${config.source}: nbd.tls.${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; fix the path`);
    }
  };
  return {
    cert: read('cert', tls.cert),
    key: read('key', tls.key),
    ...(tls.ca ? { ca: read('ca', tls.ca) } : {}),
    require: tls.require,
  };
}

async function listenOrExplain<T>(what: string, addr: HostPort, fix: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'EADDRINUSE' ? 'the address is in use (is another arraylab running?)'
      : code === 'EADDRNOTAVAIL' ? 'no interface has that address'
      : code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)'
      : (err as Error).message;
    throw new Error(`cannot listen for ${what} on ${formatHostPort(addr)}: ${reason}; use ${fix} in the config to pick another address`);
  }
}
