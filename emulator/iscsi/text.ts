/**
 * iSCSI text data (RFC 7143 §6.1): the data segment of Login and Text PDUs is a sequence of
 * "key=value" strings, each terminated by a NUL byte, possibly continued across PDUs (C bit).
 *
 * Everything here is bounded: the total text one negotiation step may accumulate, the number of
 * keys, key length (63) and value length (255, or 8192 for CHAP's large binary values). An
 * initiator that exceeds a bound gets a TextError naming it; the login layer answers with status
 * class 02 (initiator error), the Text layer with a Reject.
 */

/** Bounds on received text. */
export interface TextLimits {
  /** Total bytes across all continued PDUs of one request (default 64 KiB). */
  maxTotal: number;
  /** Keys in one request (default 1024). */
  maxKeys: number;
}

export const DEFAULT_TEXT_LIMITS: TextLimits = { maxTotal: 64 * 1024, maxKeys: 1024 };

/** §6.1: key names are at most 63 characters. */
export const MAX_KEY_LENGTH = 63;
/** §6.1 / §13: values are at most 255 bytes unless the key says otherwise. */
export const MAX_VALUE_LENGTH = 255;
/** CHAP_C / CHAP_R (and other large binary values) may be longer: hex of up to 4 KiB of binary. */
export const MAX_LARGE_VALUE_LENGTH = 8192;

/** Keys whose values may be long. Vendor keys (X-, X#) keep the default limit. */
const LARGE_VALUE_KEYS = new Set(['CHAP_C', 'CHAP_R', 'TargetAddress', 'SendTargets']);

export type TextErrorCode =
  | 'too-long'
  | 'too-many-keys'
  | 'no-nul'
  | 'missing-equals'
  | 'empty-key'
  | 'bad-key'
  | 'key-too-long'
  | 'value-too-long'
  | 'duplicate-key'
  | 'bad-utf8'
  | 'bad-value';

export class TextError extends Error {
  constructor(
    readonly code: TextErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'TextError';
  }
}

/** Letters, digits, '.', '-', '+', '@', '_' (§6.1 key-name). */
const KEY_RE = /^[A-Za-z0-9.\-+@_]+$/;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** One key=value pair in the order received. */
export type TextPair = readonly [key: string, value: string];

/**
 * Parses a complete (reassembled) text data segment. Rejects text whose last pair is not
 * NUL-terminated, pairs without '=', empty or malformed keys, over-long keys or values and
 * duplicate keys. Extra NUL bytes (padding some initiators leave in) are skipped.
 */
export function parseText(data: Uint8Array, limits: TextLimits = DEFAULT_TEXT_LIMITS): TextPair[] {
  if (data.length > limits.maxTotal) {
    throw new TextError('too-long', `text of ${data.length} bytes exceeds the ${limits.maxTotal}-byte limit for one negotiation step`);
  }
  const pairs: TextPair[] = [];
  const seen = new Set<string>();
  let p = 0;
  while (p < data.length) {
    if (data[p] === 0) {
      p++;
      continue;
    }
    const nul = data.indexOf(0, p);
    if (nul < 0) {
      throw new TextError('no-nul', `text ends without a NUL after byte ${p} ("${preview(data, p)}"); each key=value must end with NUL`);
    }
    const eq = data.indexOf(0x3d /* = */, p);
    if (eq < 0 || eq > nul) throw new TextError('missing-equals', `text item "${preview(data, p, nul)}" has no '='`);
    if (eq === p) throw new TextError('empty-key', `text item "${preview(data, p, nul)}" has an empty key`);
    if (eq - p > MAX_KEY_LENGTH) {
      throw new TextError('key-too-long', `key "${preview(data, p, eq)}" is ${eq - p} characters, more than ${MAX_KEY_LENGTH}`);
    }
    const key = String.fromCharCode(...data.subarray(p, eq));
    if (!KEY_RE.test(key)) {
      throw new TextError('bad-key', `key "${printable(key)}" contains characters other than letters, digits and . - + @ _`);
    }
    const max = LARGE_VALUE_KEYS.has(key) ? MAX_LARGE_VALUE_LENGTH : MAX_VALUE_LENGTH;
    if (nul - eq - 1 > max) {
      throw new TextError('value-too-long', `value of ${key} is ${nul - eq - 1} bytes, more than ${max}`);
    }
    let value: string;
    try {
      value = utf8.decode(data.subarray(eq + 1, nul));
    } catch {
      throw new TextError('bad-utf8', `value of ${key} is not valid UTF-8`);
    }
    if (seen.has(key)) throw new TextError('duplicate-key', `key ${key} appears twice in one request`);
    seen.add(key);
    if (pairs.length >= limits.maxKeys) {
      throw new TextError('too-many-keys', `more than ${limits.maxKeys} keys in one request`);
    }
    pairs.push([key, value]);
    p = nul + 1;
  }
  return pairs;
}

function preview(data: Uint8Array, from: number, to = Math.min(data.length, from + 32)): string {
  const end = Math.min(to, from + 32);
  return printable(Buffer.from(data.subarray(from, end)).toString('latin1')) + (to > end ? '...' : '');
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, '?');
}

/** Encodes pairs as key=value\0 ... (UTF-8). */
export function buildText(pairs: Iterable<TextPair>): Buffer {
  const parts: string[] = [];
  for (const [k, v] of pairs) {
    if (k.length === 0 || k.length > MAX_KEY_LENGTH || !KEY_RE.test(k)) throw new TextError('bad-key', `cannot send malformed key "${printable(k)}"`);
    if (v.includes('\0')) throw new TextError('bad-value', `value of ${k} contains NUL`);
    parts.push(`${k}=${v}\0`);
  }
  return Buffer.from(parts.join(''), 'utf8');
}

/**
 * Reassembles text continued over several PDUs (C bit set on all but the last, §11.10.2 /
 * §11.12.2). Bounded by maxTotal: the whole request is held until its last PDU arrives.
 */
export class TextReassembler {
  private chunks: Buffer[] = [];
  private total = 0;

  constructor(private readonly maxTotal = DEFAULT_TEXT_LIMITS.maxTotal) {}

  /** True while a continued request is incomplete. */
  get inProgress(): boolean {
    return this.chunks.length > 0;
  }

  /**
   * Adds one PDU's data segment (copied: the caller's read buffer is reused). Returns the
   * complete text when `continued` is false, else null. Throws TextError('too-long').
   */
  push(segment: Uint8Array, continued: boolean): Buffer | null {
    this.total += segment.length;
    if (this.total > this.maxTotal) {
      this.reset();
      throw new TextError('too-long', `continued text exceeds the ${this.maxTotal}-byte limit for one negotiation step`);
    }
    this.chunks.push(Buffer.from(segment));
    if (continued) return null;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.total);
    this.reset();
    return all;
  }

  reset(): void {
    this.chunks = [];
    this.total = 0;
  }
}

/**
 * Splits outgoing text into segments of at most `maxSegment` bytes (the initiator's
 * MaxRecvDataSegmentLength; 8192 during login). All but the last go out with the C bit.
 */
export function splitText(text: Buffer, maxSegment: number): Buffer[] {
  if (text.length <= maxSegment) return [text];
  const out: Buffer[] = [];
  for (let p = 0; p < text.length; p += maxSegment) out.push(text.subarray(p, Math.min(text.length, p + maxSegment)));
  return out;
}

// ---- Value encodings (§6.1) ----

/**
 * Decodes a binary value: "0x"/"0X" + hex digits, or "0b"/"0B" + base64. Returns null when the
 * value uses neither encoding or is malformed (odd hex digits, bad base64 alphabet).
 */
export function decodeBinary(value: string): Buffer | null {
  if (value.length < 3 || value[0] !== '0') return null;
  const tag = value[1];
  const body = value.slice(2);
  if (tag === 'x' || tag === 'X') {
    // An odd number of digits is legal: the value is right-aligned (leading zero nibble).
    if (!/^[0-9a-fA-F]+$/.test(body)) return null;
    return Buffer.from(body.length % 2 ? `0${body}` : body, 'hex');
  }
  if (tag === 'b' || tag === 'B') {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || body.length % 4 !== 0) return null;
    return Buffer.from(body, 'base64');
  }
  return null;
}

/** Encodes binary as the "0x" hex form (what open-iscsi and libiscsi expect by default). */
export function encodeHex(bytes: Uint8Array): string {
  return `0x${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('hex')}`;
}

/**
 * Parses a numerical value: decimal, or "0x" hex (§6.1 numerical-value). Returns null for
 * anything else or for values beyond 2^53 (none of our keys go near that).
 */
export function parseNumber(value: string): number | null {
  let n: number;
  if (/^[0-9]{1,16}$/.test(value)) n = Number(value);
  else if (/^0[xX][0-9a-fA-F]{1,13}$/.test(value)) n = parseInt(value.slice(2), 16);
  else return null;
  return Number.isSafeInteger(n) ? n : null;
}
