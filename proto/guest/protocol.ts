/**
 * The guest agent protocol over the virtio-serial port: JSON lines (see README.md).
 *
 *   host → guest   {"id":N,"method":"lockTransaction","params":[...]}
 *   guest → host   {"id":N,"progress":{...}}  (zero or more), then
 *                  {"id":N,"result":...}  or  {"id":N,"error":{"message":"...","name":"..."}}
 *
 * A connection starts with {"id":N,"method":"sync","params":[TOKEN]}: the host discards every
 * line until the echo of its random token, so bytes left in the port by an earlier connection
 * never confuse it. Lines are bounded (MAX_LINE_BYTES): the reader never buffers more.
 */
import { AgentError, type AgentErrorCode } from '../errors.js';

/** The port's name; in the guest /dev/virtio-ports/NAME (emulator/vm/qemuArgs.ts names it). */
export const AGENT_PORT_NAME = 'org.arraylab.agent';
export const DEFAULT_GUEST_PORT = `/dev/virtio-ports/${AGENT_PORT_NAME}`;

/** 1 MiB: a longer line is a protocol error (no call's params or result come near it). */
export const MAX_LINE_BYTES = 1 << 20;

export const PROTOCOL_VERSION = 1;

/** The HostSide methods the guest serves, plus the protocol's own. */
export const HOST_METHODS = ['devices', 'mountsOf', 'lockTransaction', 'lockBackup', 'unlock', 'invalidate', 'runHook', 'copyDevice', 'isFrozen'] as const;
export type HostMethod = (typeof HOST_METHODS)[number];
export type GuestMethod = HostMethod | 'sync' | 'hello' | 'doctor';

export interface GuestRequest {
  id: number;
  method: GuestMethod;
  params?: unknown[];
}

export interface WireError {
  message: string;
  name: string;
  /** AgentError's code, so that the host rebuilds the same AgentError. */
  code?: AgentErrorCode;
}

export type GuestReply = { id: number; progress: unknown } | { id: number; result: unknown } | { id: number; error: WireError };

/** What `hello` answers: who the guest agent is, and the settings it applies in the guest. */
export interface GuestHello {
  protocol: number;
  version: string;
  hostname: string;
  /** uname -r */
  kernel: string;
  pid: number;
  /** guest-serve's --hook-timeout and --freeze-deadline (the host times its calls by them). */
  hookTimeoutMs: number;
  freezeDeadlineMs: number;
  /**
   * The guest's wall clock when it answered (ms since the epoch). The host measures the guest's
   * clock against its own with it, since a guest's RTC starts from whole seconds and drifts.
   * Absent from agents before it was added.
   */
  now?: number;
}

export function encodeLine(msg: GuestRequest | GuestReply): string {
  return `${JSON.stringify(msg)}\n`;
}

export function toWireError(err: unknown): WireError {
  if (err instanceof Error) {
    const code = (err as Partial<AgentError>).code;
    return { message: err.message, name: err.name, ...(err instanceof AgentError && code ? { code } : {}) };
  }
  return { message: String(err), name: 'Error' };
}

export function fromWireError(e: WireError): Error {
  if (e.name === 'AgentError' && e.code) return new AgentError(e.code, e.message);
  const err = new Error(e.message);
  // Keep the name for logs; a guest TypeError is still a plain Error here (not a host bug).
  if (e.name && e.name !== 'Error') err.name = e.name;
  return err;
}

/**
 * Splits a byte stream into lines of at most `max` bytes. A longer line is not kept: its bytes
 * are dropped up to the next newline and onOverlong is called once for it (with how many bytes
 * were seen before giving up). reset() forgets a partial line (the peer went away).
 */
export class LineReader {
  private parts: Buffer[] = [];
  private size = 0;
  private skipping = false;

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onOverlong: (bytesSeen: number) => void,
    private readonly max = MAX_LINE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.length : nl;
      if (!this.skipping) {
        if (this.size + (end - start) > this.max) {
          this.skipping = true;
          const seen = this.size + (end - start);
          this.parts = [];
          this.size = 0;
          this.onOverlong(seen);
        } else if (end > start) {
          this.parts.push(chunk.subarray(start, end));
          this.size += end - start;
        }
      }
      if (nl === -1) return;
      if (this.skipping) {
        this.skipping = false;
      } else {
        const line = Buffer.concat(this.parts, this.size).toString('utf8');
        this.parts = [];
        this.size = 0;
        this.onLine(line);
      }
      start = nl + 1;
    }
  }

  reset(): void {
    this.parts = [];
    this.size = 0;
    this.skipping = false;
  }
}

/** Parses one line as a JSON object, or null (garbage, a partial line, another protocol). */
export function parseObject(line: string): Record<string, unknown> | null {
  const t = line.trim();
  if (!t.startsWith('{')) return null;
  try {
    const v: unknown = JSON.parse(t);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
