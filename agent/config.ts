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
 *   listen: 127.0.0.1:7391           # serve: AgentService
 *   tokenFile: /etc/arraylab-agent/token
 *   tls: { cert: /etc/arraylab-agent/agent.crt, key: /etc/arraylab-agent/agent.key }
 *   logLevel: info
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseHostPort } from '../proto/util/address.js';
import { isLogLevel, type LogLevel } from '../proto/util/log.js';

export const DEFAULT_CONFIG_FILE = '/etc/arraylab-agent/agent.yaml';
export const DEFAULT_STATE_DIR = '/var/lib/arraylab-agent';
export const DEFAULT_LISTEN = '127.0.0.1:7391';

export interface AgentSettings {
  array: string;
  stateDir: string;
  /** Empty: no map file. */
  deviceMap: string;
  hooksDir: string;
  hookTimeoutMs: number;
  freezeDeadlineMs: number;
  listen: string;
  tokenFile: string;
  tls: { cert: string; key: string } | null;
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
  tokenFile?: string | undefined;
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

const KEYS = ['array', 'stateDir', 'deviceMap', 'hooksDir', 'hookTimeoutSeconds', 'freezeDeadlineSeconds', 'listen', 'tokenFile', 'tls', 'logLevel'] as const;

interface FileConfig {
  array?: string;
  stateDir?: string;
  deviceMap?: string;
  hooksDir?: string;
  hookTimeoutSeconds?: number;
  freezeDeadlineSeconds?: number;
  listen?: string;
  tokenFile?: string;
  tls?: { cert: string; key: string };
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
          parseHostPort(out[key]!);
        } catch (err) {
          throw new ConfigError(`${where}: ${(err as Error).message}`);
        }
        break;
      case 'stateDir':
      case 'deviceMap':
      case 'hooksDir':
      case 'tokenFile':
        out[key] = str();
        break;
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
export function resolveSettings(o: SettingOverrides, env: NodeJS.ProcessEnv = process.env): AgentSettings {
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
  const listen = o.listen ?? file.listen ?? DEFAULT_LISTEN;
  for (const [flag, v] of [
    ['array', array],
    ['listen', listen],
  ] as const) {
    try {
      parseHostPort(v);
    } catch (err) {
      throw new ConfigError(`--${flag}: ${(err as Error).message}`);
    }
  }
  return {
    array,
    stateDir,
    deviceMap: o.deviceMap ?? file.deviceMap ?? '',
    hooksDir: o.hooksDir ?? file.hooksDir ?? join(stateDir, 'hooks'),
    hookTimeoutMs: Math.round(hookTimeout * 1000),
    freezeDeadlineMs: Math.round(freezeDeadline * 1000),
    listen,
    tokenFile: o.tokenFile ?? file.tokenFile ?? join(stateDir, 'agent.token'),
    tls: o.tlsCert !== undefined ? { cert: o.tlsCert, key: o.tlsKey! } : (file.tls ?? null),
    logLevel,
    configFile,
  };
}
