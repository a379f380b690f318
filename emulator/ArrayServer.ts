/**
 * One running array: the StorageArray, its NBD server, its iSCSI target and its control API,
 * built from a resolved configuration.
 *
 * start() brings them up in dependency order and returns the addresses actually bound (the real
 * ports when asked for port 0); stop() takes them down so no acknowledged write is lost: refuse
 * new API calls, stop NBD and iSCSI (no new clients, existing ones closed), flush and close the
 * array, then stop the API.
 *
 * The iSCSI target sees volumes through the same ExportProvider as NBD, asks the array's host
 * affinity which LUNs an initiator may see, and is told (lunsChanged) after every change to it.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ArrayApiServer, type ServerStatus } from './api/ArrayApiServer.js';
import { ARRAYLAB_VERSION } from '../proto/util/version.js';
import { StorageArray } from './array/StorageArray.js';
import { ArrayError, type VolumeInfo } from './array/types.js';
import { defaultTargetName, formatHostPort, type ArraylabConfig, type HostPort, type VolumeSpec } from './config.js';
import type { IscsiSessionInfo, IscsiTargetOptions } from './iscsi/types.js';
import type { SessionInfo } from './copy/CopySession.js';
import { NbdServer } from './nbd/index.js';
import { NbdExports, nbdAccess, type ReservationBook } from './array/nbdExports.js';
import { formatSize } from '../proto/util/units.js';
import { arrayTapeVolumes } from './tape/arrayVolumes.js'; // tape
import { TapeLibrary } from './tape/TapeLibrary.js'; // tape
import { TapeError } from './tape/types.js'; // tape
import { AccessControl } from './auth/AccessControl.js';
import { ensureAdminCredential, linkCredential, unlinkCredential } from './auth/adminCredential.js';
import { isLoopback } from './api/ArrayApiServer.js';
import { EventLog } from './events/EventLog.js';
import { ArrayMetrics } from './metrics/ArrayMetrics.js';
import { MetricsServer } from './metrics/MetricsServer.js';
import { checkDashboardExposure, DashboardServer } from './dashboard/DashboardServer.js';
import { VolumeIoStats } from './metrics/VolumeIo.js';

export interface ServerAddresses {
  nbd: HostPort;
  api: HostPort;
  /** null when iSCSI is not served (no listen.iscsi). */
  iscsi: HostPort | null;
  /** The /metrics listener; absent without listen.metrics, or when a defaulted one found its port busy. */
  metrics?: HostPort;
  /** The web dashboard; absent unless listen.dashboard or --dashboard asks for one. */
  dashboard?: HostPort;
}

/** What the server uses of the iSCSI target (emulator/iscsi/index.ts's IscsiTarget). */
export interface IscsiTargetLike {
  listen(port: number, host: string): Promise<{ host: string; port: number }>;
  close(): Promise<void>;
  lunsChanged(): void;
  sessions(): IscsiSessionInfo[];
  /** Its SCSI device server: NBD I/O honours the reservations in it. */
  readonly scsi?: { readonly reservations: ReservationBook };
}

export interface ArrayServerOptions {
  /** Makes the iSCSI target (tests); default: emulator/iscsi's IscsiTarget. */
  iscsiTarget?: (opts: IscsiTargetOptions) => IscsiTargetLike;
  /** Make a new admin token even though users exist (serve --reset-admin-token). */
  resetAdminToken?: boolean;
  /** Do not link the admin token from ~/.config/arraylab/credentials (in-process tests pass tokens themselves). */
  noCredentialLink?: boolean;
}

/** Why status shows iSCSI as not available when listen.iscsi is not set. */
export const ISCSI_NOT_CONFIGURED = 'not configured: set listen.iscsi in the config or pass --iscsi HOST:PORT';

/** The one place the target library is loaded; only when iSCSI is served. */
async function loadIscsiTarget(opts: IscsiTargetOptions): Promise<IscsiTargetLike> {
  const { IscsiTarget } = await import('./iscsi/index.js');
  return new IscsiTarget(opts);
}

export class ArrayServer {
  private readonly config: ArraylabConfig;
  private readonly log: Logger;
  private storage?: StorageArray;
  private nbd?: NbdServer;
  /** The volumes as NBD sees them (host affinity by TLS identity, iSCSI reservations). */
  private nbdExports?: NbdExports;
  private iscsi?: IscsiTargetLike;
  private iscsiTargetName = '';
  private offHostChanges?: () => void;
  private api?: ArrayApiServer;
  /** Prometheus metrics, only with listen.metrics. */
  private metrics?: ArrayMetrics;
  /** Host I/O counters per volume and latencies; present whenever metrics are on (listen.metrics). */
  readonly volumeIo: VolumeIoStats | undefined;
  private metricsServer?: MetricsServer;
  private dashboardServer?: DashboardServer;
  /** tape: the tape library, and its temp directory for the memory backend (removed at stop). */
  private tapeLibrary?: TapeLibrary;
  private tapeTempDir?: string;
  private bound?: ServerAddresses;
  /** Access control, when api.auth is on. */
  private accessControl?: AccessControl;
  private tokenFile?: string;
  private tokenDir?: string;
  private credentialLinks: string[] = [];
  private startedAt = new Date();
  private starting?: Promise<ServerAddresses>;
  private stopping?: Promise<void>;

  private readonly opts: ArrayServerOptions;

  constructor(config: ArraylabConfig, logger: Logger, opts: ArrayServerOptions = {}) {
    this.config = config;
    this.log = logger;
    this.opts = opts;
    this.volumeIo = config.listen.metrics ? new VolumeIoStats() : undefined;
  }

  /** The iSCSI target's name (IQN) once started with iSCSI; empty otherwise. */
  get targetName(): string {
    return this.iscsiTargetName;
  }

  /** The array, once started. */
  get array(): StorageArray {
    if (!this.storage) throw new Error('ArrayServer.array used before start()');
    return this.storage;
  }

  /** tape: the tape library, once started. */
  get tape(): TapeLibrary {
    if (!this.tapeLibrary) throw new Error('ArrayServer.tape used before start()');
    return this.tapeLibrary;
  }

  get addresses(): ServerAddresses | undefined {
    return this.bound;
  }

  /** Where the admin token is (api.auth on and the file exists); undefined otherwise. */
  get adminTokenFile(): string | undefined {
    return this.tokenFile;
  }

  /** Users, tenants and the audit log, once started with api.auth on. */
  get access(): AccessControl | undefined {
    return this.accessControl;
  }

  start(): Promise<ServerAddresses> {
    this.starting ??= this.startUp();
    return this.starting;
  }

  private async startUp(): Promise<ServerAddresses> {
    const { config } = this;
    this.startedAt = new Date();
    try {
      // Refused before anything is made: an API others could reach, unprotected.
      checkApiExposure(config);
      checkDashboardExposure(config);
      const apiTls = config.api.tls ? readApiTls(config) : undefined;
      const tls = config.nbd.tls ? readTls(config) : undefined;
      this.storage = await StorageArray.open({
        backend: config.backend,
        ...(config.backend === 'file' ? { dataDir: config.dataDir } : {}),
        logger: this.log,
        requireHostAffinity: config.iscsi.requireHostAffinity,
      });
      await reconcileVolumes(this.storage, config.volumes, this.log);

      // tape: cartridges are files in <dataDir>/tape; the memory backend keeps them in a temp
      // dir for the server's life, so nothing survives a restart, as for its volumes.
      let tapeDir: string;
      if (config.backend === 'file') tapeDir = join(config.dataDir, 'tape');
      else tapeDir = this.tapeTempDir = mkdtempSync(join(tmpdir(), 'arraylab-tape-'));
      const faults = this.storage.faults;
      this.tapeLibrary = await TapeLibrary.open({ dir: tapeDir, volumes: arrayTapeVolumes(this.storage), logger: this.log, faults }); // faults: tape-error
      await reconcileCartridges(this.tapeLibrary, config.tape?.cartridges ?? [], this.log);
      const tapeLibrary = this.tapeLibrary;
      this.storage.tapeExists = (label) => tapeLibrary.list().some((c) => c.label === label);

      const hosts = this.storage.hosts;
      this.nbdExports = new NbdExports(this.storage, this.log.child({ component: 'nbd' }));
      this.nbd = new NbdServer({
        provider: this.nbdExports,
        logger: this.log,
        access: nbdAccess(hosts, tls !== undefined),
        ...(tls ? { tls: { ...tls, ...(config.nbd.tls?.psk ? { psk: (identity: string) => hosts.nbdPsk(identity) } : {}) } } : {}),
      });
      const nbd = await listenOrExplain('NBD', config.listen.nbd, '--nbd HOST:PORT or listen.nbd', () =>
        this.nbd!.listen(config.listen.nbd.port, config.listen.nbd.host),
      );

      const iscsi = config.listen.iscsi ? await this.startIscsi(config.listen.iscsi) : null;

      // The event stream: on unless api.events: off (EventLog keeps a bounded ring).
      let events: EventLog | undefined;
      if (config.api.events !== false) {
        events = new EventLog();
        this.storage.attachEvents(events);
        if (this.tapeLibrary) this.tapeLibrary.events = events; // tape
      }
      if (config.listen.metrics) this.metrics = this.makeMetrics();
      this.storage.io = this.volumeIo;
      const arrayMetrics = this.metrics;
      const access = config.api.auth ? this.startAccess() : undefined;
      if (!config.api.auth) this.log.warn('control API authentication is off (api.auth: off): every local user may do anything');
      this.api = new ArrayApiServer({
        ...(access ? { access } : {}),
        ...(apiTls ? { tls: apiTls } : {}),
        ...(events ? { events } : {}),
        array: this.storage,
        copy: this.storage,
        hosts: this.storage.hosts,
        iscsiSessions: () => this.iscsi?.sessions() ?? [],
        tape: this.tapeLibrary, // tape
        faults: this.storage.faults,
        power: this.storage, // FaultService.PowerCut: volatile write caches lose their unflushed writes
        remote: this.storage, // RemoteService, RemoteCopyService (REC)
        status: () => this.serverStatus(),
        logger: this.log,
        ...(arrayMetrics ? { onCallEnded: (path: string, code: string) => arrayMetrics.apiCallEnded(path, code) } : {}),
      });
      const api = await this.api.listen(config.listen.api);
      if (this.tokenFile && !this.opts.noCredentialLink) this.credentialLinks = linkCredential(api, this.tokenFile, this.log);

      const metrics = config.listen.metrics ? await this.startMetrics(config.listen.metrics) : undefined;

      const dashboard = config.listen.dashboard ? await this.startDashboard(config.listen.dashboard, api, apiTls) : undefined;

      this.bound = { nbd: { host: nbd.host, port: nbd.port }, api, iscsi, ...(metrics ? { metrics } : {}), ...(dashboard ? { dashboard } : {}) };
      return this.bound;
    } catch (err) {
      this.stopping ??= this.shutdown();
      await this.stopping.catch((stopErr: unknown) => this.log.error({ err: stopErr }, 'clean-up after a failed start failed'));
      throw err;
    }
  }

  /** The metrics read what the array lists, at scrape time. */
  private makeMetrics(): ArrayMetrics {
    const storage = this.storage!;
    return new ArrayMetrics({
      volumes: () => storage.listVolumes(),
      connections: () => storage.listConnections(),
      copies: () => storage.listCopies(),
      cartridges: () => this.tapeLibrary?.list() ?? [],
      faults: () => storage.faults.list(),
      faultInjections: () => storage.faults.injections(),
      ...(this.volumeIo ? { io: this.volumeIo } : {}),
      perVolume: this.config.metrics?.perVolume ?? true,
    });
  }

  private async startMetrics(addr: HostPort): Promise<HostPort | undefined> {
    const server = new MetricsServer(this.metrics!, this.log.child({ component: 'metrics' }));
    let bound: HostPort;
    try {
      bound = await listenOrExplain('metrics', addr, '--metrics HOST:PORT or listen.metrics', () => server.listen(addr));
    } catch (err) {
      // Nobody asked for the default address: another array (or anything) on it is no reason not to serve.
      if (this.config.metrics?.listener !== 'default') throw err;
      this.log.warn(
        { address: formatHostPort(addr), err: (err as Error).message },
        `metrics not served: the default address ${formatHostPort(addr)} is busy; pass --metrics HOST:PORT (port 0: any free port) to serve them elsewhere, or --metrics off`,
      );
      return undefined;
    }
    this.metricsServer = server;
    if (!isLoopback(addr.host))
      this.log.warn(
        { address: formatHostPort(bound) },
        '/metrics is unauthenticated and reachable from other machines: it names volumes, hosts and copy sessions',
      );
    this.log.info({ address: formatHostPort(bound), perVolume: this.config.metrics?.perVolume ?? true }, 'metrics listening (/metrics)');
    return bound;
  }

  /** The dashboard: a gateway to the API just bound, over HTTPS with the API's certificate off loopback. */
  private async startDashboard(addr: HostPort, api: HostPort, apiTls: { cert: Buffer; key: Buffer } | undefined): Promise<HostPort> {
    const loopback = isLoopback(addr.host);
    const tlsCert = this.config.api.tls?.cert;
    const server = new DashboardServer({
      api,
      auth: this.config.api.auth,
      ...(tlsCert ? { apiCaFile: tlsCert } : {}),
      ...(!loopback && apiTls ? { tls: { cert: apiTls.cert, key: apiTls.key } } : {}),
      ioOf: (volume) => this.volumeIo?.get(volume),
      log: this.log.child({ component: 'dashboard' }),
    });
    this.dashboardServer = server;
    await server.checkApiTrust();
    const bound = await listenOrExplain('the dashboard', addr, '--dashboard HOST:PORT or listen.dashboard', () => server.listen(addr));
    const url = `${loopback ? 'http' : 'https'}://${formatHostPort(bound)}/`;
    if (this.config.api.auth) this.log.info({ address: url }, 'dashboard listening (log in with a token)');
    else this.log.warn({ address: url }, 'dashboard listening, unauthenticated (api.auth off): anyone on this machine may use it');
    return bound;
  }

  /** Access control over the array's metadata store; the admin credential on a first start. */
  private startAccess() {
    const storage = this.storage!;
    const tape = this.tapeLibrary;
    const control = new AccessControl(
      storage.accessStore,
      {
        volumes: () => storage.listVolumes().map((v) => ({ name: v.name, uuid: v.uuid, sizeBytes: v.sizeBytes })),
        sessions: () => storage.listCopies().map((s) => ({ id: s.id, ...localVolumes(s) })),
        hostNames: () => storage.hosts.listHosts().map((h) => h.name),
        cartridgeLabels: () => tape?.list().map((c) => c.label) ?? [],
      },
      this.log,
    );
    this.accessControl = control;
    // The memory backend keeps its token in a private temp dir for the server's life.
    const dir = this.config.backend === 'file' ? this.config.dataDir : (this.tokenDir = mkdtempSync(join(tmpdir(), 'arraylab-auth-')));
    const tokenFile = ensureAdminCredential(control, dir, this.log, { reset: this.opts.resetAdminToken === true });
    if (tokenFile) this.tokenFile = tokenFile;
    // Point lookups: the tenant filters ask once per listed item.
    const volume = (name: string) => {
      try {
        return storage.getVolume(name);
      } catch {
        return undefined;
      }
    };
    return {
      control,
      dir: {
        volumeUuid: (name: string) => volume(name)?.uuid,
        volumeSize: (name: string) => volume(name)?.sizeBytes,
        session: (id: string) => {
          try {
            return localVolumes(storage.getCopy(id));
          } catch {
            return undefined;
          }
        },
        sessionsInGroup: (group: string) =>
          storage
            .listCopies()
            .filter((c) => c.group === group)
            .map((c) => c.id),
      },
      keys: {
        volumeUuid: (name: string) => storage.getVolume(name).uuid,
        hostExists: (name: string) => storage.hosts.listHosts().some((h) => h.name === name),
        cartridgeExists: (label: string) => tape?.list().some((c) => c.label === label) ?? false,
      },
    };
  }

  private async startIscsi(addr: HostPort): Promise<HostPort> {
    const storage = this.storage!;
    const { iscsi } = this.config;
    this.iscsiTargetName = iscsi.targetName ?? defaultTargetName(storage.arrayId);
    const chap = iscsi.chap;
    const opts: IscsiTargetOptions = {
      targetName: this.iscsiTargetName,
      targetAlias: 'arraylab',
      provider: storage,
      luns: storage.hosts,
      logger: this.log.child({ component: 'iscsi' }),
      reservations: storage.reservations,
      ...(iscsi.chapAlgorithms ? { chapAlgorithms: iscsi.chapAlgorithms } : {}),
      ...(chap
        ? {
            auth: {
              initiator: { username: chap.username, secret: chap.secret },
              ...(chap.mutualUsername !== undefined ? { target: { username: chap.mutualUsername, secret: chap.mutualSecret! } } : {}),
            },
          }
        : {}),
    };
    this.iscsi = await (this.opts.iscsiTarget ? this.opts.iscsiTarget(opts) : loadIscsiTarget(opts));
    if (this.nbdExports && this.iscsi.scsi) this.nbdExports.reservations = this.iscsi.scsi.reservations;
    // Subscribed before listening: no session can log in under a LUN map it is not told about.
    this.offHostChanges = storage.hosts.onChange(() => this.iscsi?.lunsChanged());
    const bound = await listenOrExplain('iSCSI', addr, '--iscsi HOST:PORT or listen.iscsi', () => this.iscsi!.listen(addr.port, addr.host));
    this.log.info(
      {
        address: formatHostPort(bound),
        targetName: this.iscsiTargetName,
        hostAffinity: storage.hosts.hostAffinity,
        chap: chap ? (chap.mutualUsername ? 'mutual' : 'one-way') : 'none',
      },
      'iSCSI target listening',
    );
    return { host: bound.host, port: bound.port };
  }

  /** Idempotent; waits for a start in progress, and is safe after a failed one. */
  async stop(): Promise<void> {
    await this.starting?.catch(() => undefined);
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.api?.drain();
    await this.metricsServer?.close();
    await this.dashboardServer?.close();
    if (this.nbd) {
      this.log.info('stopping NBD: no new clients; closing connected ones');
      await this.nbd.close();
    }
    this.offHostChanges?.();
    if (this.iscsi) {
      this.log.info('stopping iSCSI: no new logins; closing sessions');
      await this.iscsi.close();
    }
    if (this.tapeLibrary) {
      // tape: running writes/restores are cancelled (a write keeps nothing) before the volumes close.
      await this.tapeLibrary.close();
    }
    if (this.storage) {
      this.log.info('flushing and closing the array');
      await this.storage.flushAll();
      await this.storage.close();
    }
    if (this.tapeTempDir) rmSync(this.tapeTempDir, { recursive: true, force: true }); // tape
    await this.api?.close();
    if (this.tokenFile) unlinkCredential(this.credentialLinks, this.tokenFile);
    if (this.tokenDir) rmSync(this.tokenDir, { recursive: true, force: true });
    this.log.info('stopped');
  }

  /** How a listener is protected, as status shows it (labs and tests read it too). */
  private security(which: 'nbd' | 'iscsi' | 'api'): string[] {
    const { nbd, iscsi, api } = this.config;
    const tags: Array<string | false | undefined> =
      which === 'nbd'
        ? [nbd.tls?.cert !== undefined && 'tls', nbd.tls?.psk && 'psk', nbd.tls?.ca !== undefined && 'client-certificates', nbd.tls?.require && 'tls-required']
        : which === 'iscsi'
          ? [iscsi.chap !== null && 'chap', iscsi.chapAlgorithms !== undefined && !iscsi.chapAlgorithms.includes(5) && 'no-md5']
          : [api.auth && 'auth', api.tls !== undefined && 'tls', api.tls?.ca !== undefined && 'mutual-tls'];
    return tags.filter((t): t is string => typeof t === 'string');
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
        nbd: { ...listener(this.bound?.nbd), security: this.security('nbd') },
        iscsi: this.bound?.iscsi
          ? { ...listener(this.bound.iscsi), security: this.security('iscsi') }
          : { available: false, host: '', port: 0, note: this.config.listen.iscsi ? 'not listening' : ISCSI_NOT_CONFIGURED },
        api: { ...listener(this.bound?.api), security: this.security('api') },
      },
      iscsiTargetName: this.bound?.iscsi ? this.iscsiTargetName : '',
      arrayId: this.storage?.arrayId ?? '',
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

/**
 * tape: creates the cartridges the config declares that are missing. One that exists with
 * another capacity is kept as it is (its records matter more), with a warning.
 */
export async function reconcileCartridges(
  tape: TapeLibrary,
  specs: Array<{ label: string; capacityBytes: number; origin: string }>,
  log: Logger,
): Promise<void> {
  const existing = new Map(tape.list().map((c) => [c.label, c]));
  for (const spec of specs) {
    const have = existing.get(spec.label);
    if (have) {
      if (have.capacityBytes !== spec.capacityBytes) {
        log.warn(
          { cartridge: spec.label, capacityBytes: have.capacityBytes, declared: spec.capacityBytes },
          'cartridge exists with another capacity than the config declares; keeping it',
        );
      }
      continue;
    }
    try {
      await tape.add(spec.label, spec.capacityBytes);
    } catch (err) {
      if (err instanceof TapeError) throw new ArrayError('FAILED_PRECONDITION', `${spec.origin}: ${err.message}`);
      throw err;
    }
    log.info({ cartridge: spec.label, capacityBytes: spec.capacityBytes }, 'created cartridge declared in config');
  }
}

function readTls(config: ArraylabConfig): { key?: Buffer; cert?: Buffer; ca?: Buffer; require: boolean } {
  const tls = config.nbd.tls!;
  const read = (key: 'cert' | 'key' | 'ca', path: string) => readPem(config, `nbd.tls.${key}`, path);
  return {
    ...(tls.cert && tls.key ? { cert: read('cert', tls.cert), key: read('key', tls.key) } : {}),
    ...(tls.ca ? { ca: read('ca', tls.ca) } : {}),
    require: tls.require,
  };
}

/** The control API on an address other machines reach needs TLS and authentication. */
function checkApiExposure(config: ArraylabConfig): void {
  const api = config.listen.api;
  if (isLoopback(api.host)) return;
  const missing = [
    config.api.tls ? '' : 'TLS (api.tls.cert and api.tls.key, or --api-tls-cert and --api-tls-key)',
    config.api.auth ? '' : 'authentication (api.auth: on)',
  ]
    .filter((m) => m !== '')
    .join(' and ');
  if (missing !== '') {
    throw new Error(
      `refusing to serve the control API on ${formatHostPort(api)} without ${missing}: other machines could reach it; enable them, or listen on 127.0.0.1`,
    );
  }
}

function readApiTls(config: ArraylabConfig): { cert: Buffer; key: Buffer; ca?: Buffer } {
  const tls = config.api.tls!;
  const read = (key: 'cert' | 'key' | 'ca', path: string) => readPem(config, `api.tls.${key}`, path);
  return { cert: read('cert', tls.cert), key: read('key', tls.key), ...(tls.ca ? { ca: read('ca', tls.ca) } : {}) };
}

/** A PEM file the config names; the error names the config key and the fix. */
function readPem(config: ArraylabConfig, key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`config ${config.source}: ${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; fix the path`);
  }
}

/** A session's volumes on this array: a REC source's destination and a remote end's source are elsewhere (''). */
function localVolumes(s: SessionInfo): { source: string; destination: string } {
  return { source: s.remote?.role === 'remote-end' ? '' : s.source, destination: s.remote?.role === 'source' ? '' : s.destination };
}

async function listenOrExplain<T>(what: string, addr: HostPort, fix: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'EADDRINUSE'
        ? 'the address is in use (is another arraylab running?)'
        : code === 'EADDRNOTAVAIL'
          ? 'no interface has that address'
          : code === 'EACCES'
            ? 'permission denied (ports below 1024 need privileges)'
            : (err as Error).message;
    throw new Error(`cannot listen for ${what} on ${formatHostPort(addr)}: ${reason}; use ${fix} in the config to pick another address`);
  }
}
