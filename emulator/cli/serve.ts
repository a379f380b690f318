/**
 * `arraylab serve`: run the array until SIGTERM or SIGINT, then flush and exit 0.
 *
 * It prints where it listens on stdout once everything is bound: one line per listener, or with
 * --json a single JSON line (the real ports when asked for port 0; the test harness reads it).
 * Logs go to stderr.
 */
import type { Logger } from 'pino';
import { ArrayServer, type ServerAddresses } from '../ArrayServer.js';
import { ARRAYLAB_VERSION } from '../../proto/util/version.js';
import { applyOverrides, ConfigError, formatHostPort, loadConfig, type ArraylabConfig } from '../config.js';
import { createLogger, resolveLogLevel, type LogLevel } from '../../proto/util/log.js';
import { CommandError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './errors.js';
import { print, printJson } from '../../proto/util/table.js';

export interface ServeArgs {
  config?: string | undefined;
  'data-dir'?: string | undefined;
  nbd?: string | undefined;
  iscsi?: string | undefined;
  api?: string | undefined;
  memory: boolean;
  'require-host-affinity'?: boolean | undefined;
  'api-auth'?: 'on' | 'off' | undefined;
  'reset-admin-token'?: boolean | undefined;
  'api-tls-cert'?: string | undefined;
  'api-tls-key'?: string | undefined;
  'api-tls-ca'?: string | undefined;
  'log-level'?: string | undefined;
  metrics?: string | undefined;
  'metrics-per-volume'?: 'on' | 'off' | undefined;
  dashboard?: string | undefined;
  events?: 'on' | 'off' | undefined;
  json: boolean;
}

/** Where serve puts /metrics when nothing says otherwise and the API is on loopback. */
export const DEFAULT_METRICS_ADDRESS = '127.0.0.1:9390';

/** Runs until stopped; resolves with the exit status. */
export async function serve(a: ServeArgs): Promise<number> {
  let config: ArraylabConfig;
  try {
    // A flag given twice arrives as an array; the last one wins, as in most commands.
    const last = (v: string | string[] | undefined) => (Array.isArray(v) ? v[v.length - 1] : v);
    const [dataDir, nbd, api, iscsi] = [last(a['data-dir']), last(a.nbd), last(a.api), last(a.iscsi)];
    // ARRAYLAB_METRICS: --metrics for every serve of an environment (the tests: off, never 9390).
    const metrics = last(a.metrics) ?? (process.env.ARRAYLAB_METRICS || undefined);
    config = applyOverrides(loadConfig(last(a.config)), {
      ...(dataDir !== undefined ? { dataDir } : {}),
      ...(nbd !== undefined ? { nbd } : {}),
      ...(api !== undefined ? { api } : {}),
      ...(iscsi !== undefined ? { iscsi } : {}),
      ...(a['require-host-affinity'] ? { requireHostAffinity: true } : {}),
      ...(a['api-auth'] !== undefined ? { apiAuth: a['api-auth'] } : {}),
      ...(last(a['api-tls-cert']) !== undefined ? { apiTlsCert: last(a['api-tls-cert'])! } : {}),
      ...(last(a['api-tls-key']) !== undefined ? { apiTlsKey: last(a['api-tls-key'])! } : {}),
      ...(last(a['api-tls-ca']) !== undefined ? { apiTlsCa: last(a['api-tls-ca'])! } : {}),
      ...(metrics !== undefined ? { metrics } : {}),
      ...(a['metrics-per-volume'] !== undefined ? { metricsPerVolume: a['metrics-per-volume'] } : {}),
      ...(last(a.dashboard) !== undefined ? { dashboard: last(a.dashboard)! } : {}),
      // On by default on loopback; a busy default port is a warning (ArrayServer), not a failed start.
      metricsDefault: DEFAULT_METRICS_ADDRESS,
      ...(a.events !== undefined ? { events: a.events } : {}),
      memory: a.memory,
    });
  } catch (err) {
    // A bad config is the caller's input, like a bad flag: exit 2, but no --help hint.
    if (err instanceof ConfigError) throw new CommandError(err.message, EXIT_USAGE);
    throw err;
  }
  let level: LogLevel;
  try {
    level = resolveLogLevel(a['log-level'], process.env, config.log.level);
  } catch (err) {
    throw new UsageError((err as Error).message, 'serve');
  }
  const logger = await createLogger({ level });
  logger.info(
    { version: ARRAYLAB_VERSION, config: config.source, backend: config.backend, ...(config.backend === 'file' ? { dataDir: config.dataDir } : {}) },
    'starting',
  );

  const server = new ArrayServer(config, logger, a['reset-admin-token'] ? { resetAdminToken: true } : {});
  const stopped = handleSignals(server, logger);
  let addresses: ServerAddresses;
  try {
    addresses = await server.start();
  } catch (err) {
    logger.debug({ err }, 'start-up failed');
    throw new CommandError((err as Error).message);
  }
  announce(config, addresses, server, a.json);
  logger.info(
    {
      nbd: formatHostPort(addresses.nbd),
      api: formatHostPort(addresses.api),
      iscsi: addresses.iscsi ? formatHostPort(addresses.iscsi) : null,
      ...(addresses.metrics ? { metrics: formatHostPort(addresses.metrics) } : {}),
      ...(addresses.dashboard ? { dashboard: formatHostPort(addresses.dashboard) } : {}),
    },
    'serving',
  );
  return stopped;
}

function announce(config: ArraylabConfig, addresses: ServerAddresses, server: ArrayServer, json: boolean): void {
  const volumes = server.array.listVolumes();
  if (json) {
    printJson({
      version: ARRAYLAB_VERSION,
      pid: process.pid,
      nbd: addresses.nbd,
      api: addresses.api,
      iscsi: addresses.iscsi ? { ...addresses.iscsi, targetName: server.targetName } : null,
      backend: config.backend,
      dataDir: config.backend === 'file' ? config.dataDir : null,
      adminTokenFile: server.adminTokenFile ?? null,
      metrics: addresses.metrics ?? null,
      dashboard: addresses.dashboard ?? null,
      volumes,
    });
    return;
  }
  const exportNames = volumes.length ? volumes.map((v) => v.name).join(', ') : 'none yet';
  const hosts = server.array.hosts;
  const who = hosts.hostAffinity
    ? "host affinity on: initiators see their host's LUNs (arraylab host list)"
    : 'every initiator sees every volume until a host is defined';
  print(
    [
      `NBD     nbd://${formatHostPort(addresses.nbd)}/  (exports: ${exportNames})`,
      `API     ${formatHostPort(addresses.api)}  (arraylab status --api ${formatHostPort(addresses.api)})`,
      addresses.iscsi
        ? `iSCSI   iscsi://${formatHostPort(addresses.iscsi)}/${server.targetName}  (${who})`
        : 'iSCSI   not served (set listen.iscsi or --iscsi HOST:PORT)',
      `DATA    ${config.backend === 'file' ? config.dataDir : 'in memory (lost at exit)'}`,
      server.adminTokenFile
        ? `AUTH    on; admin token in ${server.adminTokenFile} (this user's CLI finds it; others: --token-file or ARRAYLAB_TOKEN)`
        : 'AUTH    off: anyone who reaches the API may do anything',
      // Only when served (by default on loopback; not with --metrics off or a busy default port).
      ...(addresses.metrics ? [`METRICS http://${formatHostPort(addresses.metrics)}/metrics  (Prometheus; unauthenticated)`] : []),
      ...(addresses.dashboard ? [dashboardLine(config, addresses.dashboard)] : []),
    ].join('\n'),
  );
}

/** Where the dashboard is, and who may use it. */
function dashboardLine(config: ArraylabConfig, addr: { host: string; port: number }): string {
  const loopback = addr.host === 'localhost' || addr.host === '::1' || /^127\./.test(addr.host);
  const url = `${loopback ? 'http' : 'https'}://${formatHostPort(addr)}/`;
  return config.api.auth
    ? `WEB     ${url}  (dashboard; log in with a token: each user sees and does what their role allows)`
    : `WEB     ${url}  (dashboard; UNAUTHENTICATED, loopback only: anyone on this machine may use it)`;
}

/**
 * The first SIGTERM or SIGINT stops the server (flushing the array) and resolves with exit 0;
 * a second one, for an operator who will not wait, exits at once with status 1.
 * A crash also stops the server, so acknowledged writes are flushed when at all possible.
 */
function handleSignals(server: ArrayServer, logger: Logger): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (reason: string, code: number) => {
      if (stopping) return;
      stopping = true;
      server.stop().then(
        () => resolve(code),
        (err: unknown) => {
          logger.error({ err }, `stop after ${reason} failed`);
          resolve(EXIT_FAILURE);
        },
      );
    };
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting without waiting for the flush to finish');
        process.exit(EXIT_FAILURE);
      }
      logger.info({ signal }, 'stopping');
      stop(signal, EXIT_OK);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const onCrash = (err: unknown) => {
      logger.fatal({ err }, 'unexpected error; stopping');
      stop('a crash', EXIT_FAILURE);
    };
    process.on('uncaughtException', onCrash);
    process.on('unhandledRejection', onCrash);
  });
}
