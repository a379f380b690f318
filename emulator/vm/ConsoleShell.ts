/**
 * The guest's serial console as seen from the host: everything it printed, waiting for text,
 * and running shell commands with their output and exit status.
 *
 * A command travels base64-encoded in short lines (the tty's line buffer holds 4 KiB; quoting
 * never matters), runs as `NO_COLOR=1 /bin/sh FILE </dev/null` in the guest (its own shell: a syntax
 * error or `exit` cannot kill the console shell, it cannot eat later input, and Node prints no
 * colour codes on the tty), and its output is cut
 * between two marker lines. The markers are printed with printf from two halves, so the tty's
 * echo of the command line never contains them.
 */
import { PassThrough, type Readable, type Writable } from 'node:stream';

export interface RunResult {
  /** Exit status of the command in the guest. */
  code: number;
  /** What it wrote to stdout and stderr, with the tty's \r\n turned into \n. */
  output: string;
}

export interface RunOptions {
  /** Default 60 s. */
  timeoutMs?: number;
}

/** /init's ready line, then the first prompt: the guest's shell takes commands from here on. */
export const GUEST_READY = /arraylab-guest: ready \(kernel [^\n]*\n[\s\S]*?arraylab-guest[^\n]*# /;

/**
 * What powers a guest off from its console: Ctrl-C first (a command still running would
 * otherwise swallow the line), sync (NBD/iSCSI writes still in the guest's page cache), then
 * poweroff -f (there is no ACPI in the initramfs, so QMP system_powerdown would do nothing).
 */
export const POWEROFF_KEYS = '\x03\nsync; poweroff -f\n';

/** Console output kept for output() and waitFor(): the tail, so a long-running guest stays bounded. */
const KEEP_BYTES = 8 * 1024 * 1024;
const CHUNK = 1024;

export class ConsoleShell {
  /** A copy of everything the console prints, for callers that stream it (e.g. to a log file). */
  readonly stream: Readable = new PassThrough();
  private text = '';
  /** Characters dropped from the front of `text` (offsets stay absolute). */
  private dropped = 0;
  private waiters = new Set<() => void>();
  private closed: Error | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private seq = 0;

  constructor(
    private readonly name: string,
    input: Readable,
    private readonly output: Writable,
  ) {
    input.setEncoding('utf8');
    input.on('data', (d: string) => {
      (this.stream as PassThrough).write(d);
      this.text += d;
      if (this.text.length > KEEP_BYTES) {
        const cut = this.text.length - KEEP_BYTES;
        this.text = this.text.slice(cut);
        this.dropped += cut;
      }
      for (const w of [...this.waiters]) w();
    });
  }

  /** Everything kept so far (the last 8 MiB). */
  all(): string {
    return this.text;
  }

  /** Absolute offset of the end of the output so far: pass it to waitFor to skip what is there. */
  get length(): number {
    return this.dropped + this.text.length;
  }

  /** The console ended (qemu exited): pending and later waits fail with this reason. */
  close(reason: Error): void {
    this.closed = reason;
    (this.stream as PassThrough).end();
    for (const w of [...this.waiters]) w();
  }

  write(text: string): void {
    if (this.closed) throw new Error(`guest ${this.name}: cannot type on the console: ${this.closed.message}`);
    this.output.write(text);
  }

  /** Resolves with the first match of re in the output after offset `from` (default: all). */
  waitFor(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const start = Math.max(0, from - this.dropped);
        const m = re.exec(this.text.slice(start));
        if (m) {
          done();
          resolve(m);
          return true;
        }
        if (this.closed) {
          done();
          reject(new Error(`guest ${this.name}: ${this.closed.message} before the console printed ${re}; last output:\n${this.tail()}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`guest ${this.name}: the console did not print ${re} within ${timeoutMs} ms; last output:\n${this.tail()}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Runs a shell command in the guest; one at a time (calls queue). */
  run(command: string, opts: RunOptions = {}): Promise<RunResult> {
    const next = this.queue.then(() => this.runNow(command, opts.timeoutMs ?? 60_000));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async runNow(command: string, timeoutMs: number): Promise<RunResult> {
    const id = `${process.pid}x${++this.seq}`;
    const file = `/tmp/.arraylab-run-${id}`;
    const b64 = Buffer.from(command, 'utf8').toString('base64');
    const lines = [`: > ${file}.b64`];
    for (let i = 0; i < b64.length; i += CHUNK) lines.push(`echo ${b64.slice(i, i + CHUNK)} >> ${file}.b64`);
    lines.push(
      `base64 -d ${file}.b64 > ${file}; printf '%s%s\\n' '<<arraylab-' 'begin-${id}>>'; NO_COLOR=1 /bin/sh ${file} </dev/null; ` +
        `printf '\\n%s%s %s\\n' '<<arraylab-' 'end-${id}>>' $?; rm -f ${file} ${file}.b64`,
    );
    const from = this.length;
    this.write(`${lines.join('\n')}\n`);
    const re = new RegExp(`<<arraylab-begin-${id}>>\\r?\\n([\\s\\S]*?)\\r?\\n<<arraylab-end-${id}>> (\\d+)\\r?\\n`);
    let m: RegExpExecArray;
    try {
      m = await this.waitFor(re, timeoutMs, from);
    } catch (err) {
      throw new Error(`guest ${this.name}: command did not finish: ${command}\n${(err as Error).message}`);
    }
    return { code: Number(m[2]), output: m[1]!.replace(/\r\n/g, '\n') };
  }

  /** The last lines of output, for error messages. */
  tail(lines = 30): string {
    return this.text.replace(/\r/g, '').split('\n').slice(-lines).join('\n');
  }
}
