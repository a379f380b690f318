/**
 * How the CLI fails: one line on stderr, `arraylab: <what went wrong and the fix>`, and an exit
 * status that tells scripts whether they called it wrongly (2) or the operation failed (1).
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** The command line is wrong: unknown option, missing argument, value that does not parse. */
export class UsageError extends Error {
  /** The command the hint points at, e.g. "volume create". */
  readonly command?: string;
  constructor(message: string, command?: string) {
    super(message);
    this.name = 'UsageError';
    if (command !== undefined) this.command = command;
  }
}

/** The command ran and failed; the message is shown as is. */
export class CommandError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = EXIT_FAILURE) {
    super(message);
    this.name = 'CommandError';
    this.exitCode = exitCode;
  }
}
