/**
 * `arraylab serve`: run the array until SIGTERM or SIGINT, then flush and exit 0.
 *
 * It prints where it listens on stdout once everything is bound: one line per listener, or with
 * --json a single JSON line (the real ports when asked for port 0; the test harness reads it).
 * Logs go to stderr.
 */
import type { Logger } from 'pino';
import { ArrayServer, ISCSI_NOT_AVAILABLE, type ServerAddresses } from '../ArrayServer.js';
import { ARRAYLAB_VERSION } from '../api/version.js';
import { applyOverrides, ConfigError, formatHostPort, loadConfig, type ArraylabConfig } from '../config.js';
import { createLogger, resolveLogLevel } from '../log.js';
import { CommandError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError } from './errors.js';
import { print, printJson } from './output.js';

export interface ServeArgs {
  config?: string | undefined;
  'data-dir'?: string | undefined;
  nbd?: string | undefined;
  iscsi?: string | undefined;
  api?: string | undefined;
  memory: boolean;
  'log-level'?: string | undefined;
  json: boolean;
}

/** Runs until stopped; resolves with the exit status. */
export async function serve(a: ServeArgs): Promise<number> {
  if (a.iscsi !== undefined) {
    throw new UsageError(`--iscsi: ${ISCSI_NOT_AVAILABLE}; remove --iscsi (NBD is served on --nbd)`, 'serve');
  }
  let config: ArraylabConfig;
  try {
    config = applyOverrides(loadConfig(a.config), {
      ...(a['data-dir'] !== undefined ? { dataDir: a['data-dir'] } : {}),
      ...(a.nbd !== undefined ? { nbd: a.nbd } : {}),
      ...(a.api !== undefined ? { api: a.api } : {}),
      memory: a.memory,
    });
  } catch (err) {
    // A bad config is the caller's input, like a bad flag: exit 2, but no --help hint.
    if (err instanceof ConfigError) throw new CommandError(err.message, EXIT_USAGE);
    throw err;
  }
  let level;
  try {
    level = resolveLogLevel(a['log-level'], process.env, config.log.level);
  } catch (err) {
    throw new UsageError((err as Error).message, 'serve');
  }
  const logger = await createLogger({ level });
  logger.info({ version: ARRAYLAB_VERSION, config: config.source, backend: config.backend, ...(config.backend === 'file' ? { dataDir: config.dataDir } : {}) }, 'starting');

  const server = new ArrayServer(config, logger);
  const stopped = handleSignals(server, logger);
  let addresses: ServerAddresses;
  try {
    addresses = await server.start();
  } catch (err) {
    logger.debug({ err }, 'start-up failed');
    throw new CommandError((err as Error).message);
  }
  announce(config, addresses, server, a.json);
  logger.info({ nbd: formatHostPort(addresses.nbd), api: formatHostPort(addresses.api) }, 'serving');
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
      iscsi: null,
      backend: config.backend,
      dataDir: config.backend === 'file' ? config.dataDir : null,
      volumes,
    });
    return;
  }
  const exportNames = volumes.length ? volumes.map((v) => v.name).join(', ') : 'none yet';
  print(
    [
      `NBD     nbd://${formatHostPort(addresses.nbd)}/  (exports: ${exportNames})`,
      `API     ${formatHostPort(addresses.api)}  (arraylab status --api ${formatHostPort(addresses.api)})`,
      `iSCSI   not available in this version`,
      `DATA    ${config.backend === 'file' ? config.dataDir : 'in memory (lost at exit)'}`,
    ].join('\n'),
  );
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
