/** The options of `arraylab serve`, apart from serve.ts so --help does not load the server. */
import type { Argv } from 'yargs';

const LEVELS = 'fatal, error, warn, info, debug, trace, silent';

export function serveOptions(y: Argv<{ json: boolean }>) {
  return y
    .option('config', { type: 'string', requiresArg: true, describe: 'YAML config file [default: built-in: data in ./arraylab-data, volume demo]' })
    .option('data-dir', { type: 'string', requiresArg: true, describe: 'directory for volume data (file backend)' })
    .option('nbd', { type: 'string', requiresArg: true, describe: 'NBD listen address HOST:PORT (port 0: any free port)' })
    .option('iscsi', {
      type: 'string',
      requiresArg: true,
      describe: 'iSCSI target portal HOST:PORT (port 0: any free port) [default: listen.iscsi; built-in config: 127.0.0.1:3260]',
    })
    .option('require-host-affinity', {
      type: 'boolean',
      describe: 'iSCSI: no initiator sees a volume until it is mapped to its host (arraylab host map) [config iscsi.requireHostAffinity]',
    })
    .option('api', { type: 'string', requiresArg: true, describe: 'control API listen address HOST:PORT (port 0: any free port)' })
    .option('memory', { type: 'boolean', default: false, describe: 'keep volumes in memory (lost at exit); no data dir' })
    .option('log-level', { type: 'string', requiresArg: true, describe: `log level: ${LEVELS} [env ARRAYLAB_LOG_LEVEL; default from config: info]` });
}
