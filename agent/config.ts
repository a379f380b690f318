/**
 * The agent's settings: built-in defaults, then a YAML config file, then environment, then
 * command-line flags (each later one wins). A config file with an unknown key or a value of the
 * wrong kind is refused with the file, the key and the fix, so that a typo never silently
 * changes what a backup does.
 *
 *   array: 127.0.0.1:7390            # the array's control API
 *   stateDir: /var/lib/arraylab-agent
 *   deviceMap: /etc/arraylab-agent/devices
 *   hooksDir: /etc/arraylab-agent/hooks
 *   hookTimeoutSeconds: 60
 *   freezeDeadlineSeconds: 30
 *   arrayTokenFile: /etc/arraylab-agent/array.token   # the array API's token (--token-file)
 *   listen: 127.0.0.1:7391           # serve: AgentService (or unix:/PATH, or unix: RUNDIR/agent.sock)
 *   tokenFile: /etc/arraylab-agent/token              # serve: the daemon's own token (--agent-token-file)
 *   tls: { cert: /etc/arraylab-agent/agent.crt, key: /etc/arraylab-agent/agent.key }
 *   runDir: /run/arraylab-agent      # sockets; default: that as root, else $XDG_RUNTIME_DIR/arraylab-agent
 *   mountPrefixes: [/srv, /mnt]      # where lock records may mount (default: any but system dirs)
 *   logLevel: info
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseHostPort } from '../proto/util/address.js';
import { isLogLevel, type LogLevel } from '../proto/util/log.js';
import { prefixProblem } from './host/mountPolicy.js';

export const DEFAULT_CONFIG_FILE = '/etc/arraylab-agent/agent.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/arraylab-agent';
export const DEFAULT_LISTEN = '127.0.0.1:7391';
/** The run directory of an agent running as root. */
export const ROOT_RUN_DIR = '/run/arraylab-agent';
/** The daemon's socket in the run directory, for --listen unix. */
export const AGENT_SOCKET_NAME = 'agent.sock';

/** The run directory: /run/arraylab-agent as root, else $XDG_RUNTIME_DIR/arraylab-agent, else STATE/run. */
export function defaultRunDir(stateDir: string, env: NodeJS.ProcessEnv, uid: number): string {
  if (uid === 0) return ROOT_RUN_DIR;
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg?.startsWith('/')) return join(xdg, 'arraylab-agent');
  return join(stateDir, 'run');
}

/** Is this a --listen / --agent address of a Unix socket (unix:/PATH)? */
export function isUnixAddress(address: string): boolean {
  return address.startsWith('unix:');
}

/** Checks a --listen value: HOST:PORT, unix:/ABSOLUTE/PATH, or unix (the run directory's socket). */
function checkListen(v: string): void {
  if (v === 'unix' || v === 'unix:') return;
  if (isUnixAddress(v)) {
    if (!v.slice('unix:'.length).startsWith('/')) throw new Error(`${JSON.stringify(v)}: give the socket as unix:/ABSOLUTE/PATH`);
    return;
  }
  parseHostPort(v);
}

export interface AgentSettings {
  array: string;
  stateDir: string;
  /** Empty: no map file. */
  deviceMap: string;
  hooksDir: string;
  hookTimeoutMs: number;
  freezeDeadlineMs: number;
  /** HOST:PORT or unix:/PATH (a bare "unix" is resolved to the run directory's socket). */
  listen: string;
  /** The daemon's own token (serve, and clients with --agent). */
  tokenFile: string;
  /** The array API's token file (--token-file, config arrayTokenFile); '' when none is given. */
  arrayTokenFile: string;
  /** The array API's token from ARRAYLAB_TOKEN ('' when unset, or when --token-file is given). */
  arrayToken: string;
  tls: { cert: string; key: string } | null;
  /** Sockets: 0700, owned by the agent's user. */
  runDir: string;
  /** Where lock records may mount and unmount; empty: anywhere but /, /boot, /proc, /sys, /dev, /run. */
  mountPrefixes: string[];
  logLevel: LogLevel;
  /** The config file read, or '' (for messages). */
  configFile: string;
}

/** What the command line and environment may override. */
export interface SettingOverrides {
  config?: string | undefined;
  array?: string | undefined;
  stateDir?: string | undefined;
  deviceMap?: string | undefined;
  hooksDir?: string | undefined;
  hookTimeout?: number | undefined;
  freezeDeadline?: number | undefined;
  listen?: string | undefined;
  /** --agent-token-file: the daemon's token. */
  agentTokenFile?: string | undefined;
  /** --token-file: the array API's token. */
  arrayTokenFile?: string | undefined;
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  logLevel?: string | undefined;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const KEYS = [
  'array',
  'stateDir',
  'deviceMap',
  'hooksDir',
  'hookTimeoutSeconds',
  'freezeDeadlineSeconds',
  'listen',
  'tokenFile',
  'arrayTokenFile',
  'tls',
  'runDir',
  'mountPrefixes',
  'logLevel',
] as const;

interface FileConfig {
  array?: string;
  stateDir?: string;
  deviceMap?: string;
  hooksDir?: string;
  hookTimeoutSeconds?: number;
  freezeDeadlineSeconds?: number;
  listen?: string;
  tokenFile?: string;
  arrayTokenFile?: string;
  tls?: { cert: string; key: string };
  runDir?: string;
  mountPrefixes?: string[];
  logLevel?: string;
}

/** Reads and checks a config file; every problem names the file and the key. */
export function readConfigFile(path: string): FileConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read the agent config ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; check the path (--config)`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`${path} is not valid YAML: ${(err as Error).message.split('\n')[0]}; fix the file`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`${path}: the config must be a mapping of keys (${KEYS.join(', ')})`);
  const out: FileConfig = {};
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    const where = `${path}: ${key}`;
    const str = () => {
      if (typeof value !== 'string' || value === '') throw new ConfigError(`${where} must be a non-empty string`);
      return value;
    };
    const seconds = () => {
      if (typeof value !== 'number' || !(value > 0) || value > 86_400)
        throw new ConfigError(`${where} must be a number of seconds between 0 and 86400, e.g. 30`);
      return value;
    };
    switch (key) {
      case 'array':
      case 'listen':
        out[key] = str();
        try {
          if (key === 'listen') checkListen(out[key]!);
          else parseHostPort(out[key]!);
        } catch (err) {
          throw new ConfigError(`${where}: ${(err as Error).message}`);
        }
        break;
      case 'stateDir':
      case 'deviceMap':
      case 'hooksDir':
      case 'tokenFile':
      case 'arrayTokenFile':
        out[key] = str();
        break;
      case 'runDir':
        out.runDir = str();
        if (!out.runDir.startsWith('/')) throw new ConfigError(`${where} must be an absolute path, e.g. /run/arraylab-agent`);
        break;
      case 'mountPrefixes': {
        if (!Array.isArray(value) || value.length === 0 || value.some((v) => typeof v !== 'string'))
          throw new ConfigError(`${where} must be a list of absolute paths, e.g. [/srv, /mnt]`);
        const bad = (value as string[]).map(prefixProblem).find(Boolean);
        if (bad) throw new ConfigError(`${where}: ${bad}`);
        out.mountPrefixes = value as string[];
        break;
      }
      case 'hookTimeoutSeconds':
      case 'freezeDeadlineSeconds':
        out[key] = seconds();
        break;
      case 'logLevel':
        if (!isLogLevel(value)) throw new ConfigError(`${where} must be one of fatal, error, warn, info, debug, trace, silent`);
        out.logLevel = value;
        break;
      case 'tls': {
        const t = value as Record<string, unknown> | null;
        if (typeof t !== 'object' || t === null || typeof t.cert !== 'string' || typeof t.key !== 'string' || Object.keys(t).length !== 2) {
          throw new ConfigError(`${where} must be {cert: PEM file, key: PEM file}`);
        }
        out.tls = { cert: t.cert, key: t.key };
        break;
      }
      default:
        throw new ConfigError(`${path}: unknown key ${JSON.stringify(key)}; the keys are ${KEYS.join(', ')}`);
    }
  }
  return out;
}

/** Resolves settings: flags > environment > config file > defaults. */
export function resolveSettings(o: SettingOverrides, env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? -1): AgentSettings {
  const configFile = o.config ?? env.ARRAYLAB_AGENT_CONFIG ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : '');
  const file = configFile ? readConfigFile(configFile) : {};
  const stateDir = o.stateDir ?? env.ARRAYLAB_AGENT_STATE ?? file.stateDir ?? DEFAULT_STATE_DIR;
  const positive = (flag: string, v: number | undefined) => {
    if (v !== undefined && !(v > 0 && v <= 86_400)) throw new ConfigError(`--${flag}: give a number of seconds between 0 and 86400, e.g. 30`);
    return v;
  };
  const hookTimeout = positive('hook-timeout', o.hookTimeout) ?? file.hookTimeoutSeconds ?? 60;
  const freezeDeadline = positive('freeze-deadline', o.freezeDeadline) ?? file.freezeDeadlineSeconds ?? 30;
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new ConfigError('--tls-cert and --tls-key go together; give both or neither');
  const logLevel = o.logLevel ?? env.ARRAYLAB_LOG_LEVEL ?? file.logLevel ?? 'info';
  if (!isLogLevel(logLevel)) throw new ConfigError(`log level ${JSON.stringify(logLevel)} is not one of fatal, error, warn, info, debug, trace, silent`);
  const array = o.array ?? (env.ARRAYLAB_API || undefined) ?? file.array ?? '127.0.0.1:7390';
  const runDir = file.runDir ?? defaultRunDir(stateDir, env, uid);
  let listen = o.listen ?? file.listen ?? DEFAULT_LISTEN;
  try {
    parseHostPort(array);
  } catch (err) {
    throw new ConfigError(`--array: ${(err as Error).message}`);
  }
  try {
    checkListen(listen);
  } catch (err) {
    throw new ConfigError(`--listen: ${(err as Error).message}; or give unix:/PATH for a Unix socket`);
  }
  if (listen === 'unix' || listen === 'unix:') listen = `unix:${join(runDir, AGENT_SOCKET_NAME)}`;
  return {
    array,
    stateDir,
    deviceMap: o.deviceMap ?? file.deviceMap ?? '',
    hooksDir: o.hooksDir ?? file.hooksDir ?? join(stateDir, 'hooks'),
    hookTimeoutMs: Math.round(hookTimeout * 1000),
    freezeDeadlineMs: Math.round(freezeDeadline * 1000),
    listen,
    tokenFile: o.agentTokenFile ?? file.tokenFile ?? join(stateDir, 'agent.token'),
    // --token-file beats ARRAYLAB_TOKEN, which beats the config's file.
    arrayTokenFile: o.arrayTokenFile ?? (env.ARRAYLAB_TOKEN ? '' : (file.arrayTokenFile ?? '')),
    arrayToken: o.arrayTokenFile === undefined ? (env.ARRAYLAB_TOKEN ?? '') : '',
    tls: o.tlsCert !== undefined ? { cert: o.tlsCert, key: o.tlsKey! } : (file.tls ?? null),
    runDir,
    mountPrefixes: file.mountPrefixes ?? [],
    logLevel,
    configFile,
  };
}
