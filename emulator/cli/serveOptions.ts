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
    .option('api-auth', {
      choices: ['on', 'off'] as const,
      describe: 'control API authentication (tokens, roles, tenants, audit); off only on a loopback address [config api.auth; default on]',
    })
    .option('reset-admin-token', {
      type: 'boolean',
      describe: 'write a new token for the user admin to <dataDir>/admin.token (the old one stops working): when the file was lost',
    })
    .option('api-tls-cert', { type: 'string', requiresArg: true, describe: 'control API TLS certificate (PEM) [config api.tls.cert]' })
    .option('api-tls-key', { type: 'string', requiresArg: true, describe: 'control API TLS private key (PEM) [config api.tls.key]' })
    .option('api-tls-ca', { type: 'string', requiresArg: true, describe: 'CA (PEM) that client certificates must chain to: mutual TLS [config api.tls.ca]' })
    .option('metrics', {
      type: 'string',
      requiresArg: true,
      describe:
        'serve Prometheus /metrics on HOST:PORT (unauthenticated: keep it on loopback), or off [env ARRAYLAB_METRICS; config listen.metrics; default: 127.0.0.1:9390 when the API is on loopback]',
    })
    .option('metrics-per-volume', {
      choices: ['on', 'off'] as const,
      describe: 'per-volume metric series; off for arrays with thousands of volumes [config listen.metrics.perVolume; default on]',
    })
    .option('dashboard', {
      type: 'string',
      requiresArg: true,
      describe:
        'serve the web dashboard on HOST:PORT (loopback: HTTP; another address needs api.tls and serves HTTPS), or off [config listen.dashboard; default: none]',
    })
    .option('events', {
      choices: ['on', 'off'] as const,
      describe: 'the event stream (arraylab events; the last 1000 events in memory) [config api.events; default on]',
    })
    .option('memory', { type: 'boolean', default: false, describe: 'keep volumes in memory (lost at exit); no data dir' })
    .option('log-level', { type: 'string', requiresArg: true, describe: `log level: ${LEVELS} [env ARRAYLAB_LOG_LEVEL; default from config: info]` });
}
