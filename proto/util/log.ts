/**
 * The emulator's logger: pino, JSON lines on stderr (stdout is kept for the CLI's own output,
 * e.g. `serve --json`), pretty-printed when stderr is a terminal.
 *
 * pino-pretty runs in-process as a stream, not as a worker-thread transport: a worker costs
 * start-up time and tens of MB of RSS, and logs are not busy enough to need one. It is
 * imported only when used.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value);
}

export interface LoggerOptions {
  level: LogLevel;
  /** Default: pretty when stderr is a TTY. */
  pretty?: boolean;
}

export async function createLogger(opts: LoggerOptions): Promise<Logger> {
  const base = { level: opts.level, base: { pid: process.pid }, name: 'arraylab' };
  const pretty = opts.pretty ?? process.stderr.isTTY === true;
  if (pretty) {
    const { default: prettyStream } = await import('pino-pretty');
    return pino(
      base,
      prettyStream({ destination: 2, sync: true, colorize: true, singleLine: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' }),
    );
  }
  // Synchronous writes: the last lines before an exit (e.g. a start-up failure) are never lost.
  return pino(base, pino.destination({ fd: 2, sync: true }));
}

/**
 * The level to use: the --log-level flag, then ARRAYLAB_LOG_LEVEL, then the config's log.level.
 * Throws with the fix when the flag or variable holds something that is not a level.
 */
export function resolveLogLevel(flag: string | undefined, env: NodeJS.ProcessEnv, configLevel: LogLevel): LogLevel {
  if (flag !== undefined) {
    if (!isLogLevel(flag)) throw new Error(`--log-level ${JSON.stringify(flag)} is not a log level; use one of ${LOG_LEVELS.join(', ')}`);
    return flag;
  }
  const fromEnv = env.ARRAYLAB_LOG_LEVEL;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!isLogLevel(fromEnv)) throw new Error(`ARRAYLAB_LOG_LEVEL=${JSON.stringify(fromEnv)} is not a log level; use one of ${LOG_LEVELS.join(', ')}`);
    return fromEnv;
  }
  return configLevel;
}
