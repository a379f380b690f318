/**
 * Sizes as people write them ("64MiB", "10G", "4k") and as the CLI prints them.
 *
 * Bare K/M/G/T/P and KiB/MiB/... are binary (powers of 1024), as storage people mean them;
 * KB/MB/... are decimal. Units are case-insensitive. Results are whole byte counts below
 * 2^53, so they are exact JavaScript numbers.
 */

const KI = 1024n;
const UNIT_MULTIPLIERS: Record<string, bigint> = {
  '': 1n,
  b: 1n,
  k: KI,
  ki: KI,
  kib: KI,
  m: KI ** 2n,
  mi: KI ** 2n,
  mib: KI ** 2n,
  g: KI ** 3n,
  gi: KI ** 3n,
  gib: KI ** 3n,
  t: KI ** 4n,
  ti: KI ** 4n,
  tib: KI ** 4n,
  p: KI ** 5n,
  pi: KI ** 5n,
  pib: KI ** 5n,
  kb: 10n ** 3n,
  mb: 10n ** 6n,
  gb: 10n ** 9n,
  tb: 10n ** 12n,
  pb: 10n ** 15n,
};

export const MAX_SIZE_BYTES = Number.MAX_SAFE_INTEGER;

const SIZE_HINT = 'use a number with a unit such as 64MiB or 10GiB';

/** A size that cannot be parsed; the message quotes the input and says what to write instead. */
export class SizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SizeError';
  }
}

/** Parses "512", "64MiB", "1.5GiB", "4k", "10GB" (or a plain number of bytes) to a byte count. */
export function parseSize(input: string | number): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input)) throw new SizeError(`${input} is not a size; ${SIZE_HINT}`);
    if (input < 0) throw new SizeError(`${input} is negative; a size is zero or more bytes`);
    if (!Number.isInteger(input)) throw new SizeError(`${input} is not a whole number of bytes; ${SIZE_HINT}`);
    if (input > MAX_SIZE_BYTES) throw tooLarge(String(input));
    return input;
  }
  const text = input.trim();
  const quoted = JSON.stringify(input);
  if (/^-/.test(text)) throw new SizeError(`${quoted} is negative; a size is zero or more bytes`);
  const m = /^(\d+)(?:\.(\d+))?\s*([a-z]*)$/i.exec(text);
  if (!m) throw new SizeError(`${quoted} is not a size; ${SIZE_HINT}`);
  const [, whole, fraction = '', unitText] = m as unknown as [string, string, string | undefined, string];
  const multiplier = UNIT_MULTIPLIERS[unitText.toLowerCase()];
  if (multiplier === undefined) throw new SizeError(`${quoted} is not a size: unknown unit "${unitText}"; ${SIZE_HINT}`);
  // Exact arithmetic: "1.5GiB" is 1610612736 bytes, "1.1K" is not a whole number of bytes.
  const scale = 10n ** BigInt(fraction.length);
  const numerator = (BigInt(whole) * scale + BigInt(fraction || '0')) * multiplier;
  if (numerator % scale !== 0n) throw new SizeError(`${quoted} is not a whole number of bytes; ${SIZE_HINT}`);
  const bytes = numerator / scale;
  if (bytes > BigInt(MAX_SIZE_BYTES)) throw tooLarge(quoted);
  return Number(bytes);
}

function tooLarge(what: string): SizeError {
  return new SizeError(`${what} is too large; sizes must be below 2^53 bytes (8 PiB)`);
}

/** A resize target: an absolute size, or growth by an amount ("+1GiB"). */
export type SizeChange = { kind: 'absolute'; bytes: number } | { kind: 'grow'; bytes: number };

export function parseSizeChange(input: string): SizeChange {
  const text = input.trim();
  if (text.startsWith('+')) return { kind: 'grow', bytes: parseSize(text.slice(1)) };
  return { kind: 'absolute', bytes: parseSize(text) };
}

const BINARY_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * Formats a byte count for humans with binary units: "512 B", "64 MiB", "1.5 GiB".
 * Exact values print without decimals; others with up to two, trailing zeroes dropped.
 */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return String(bytes);
  let unit = 0;
  let value = bytes;
  // Compare after rounding, so 1048575 bytes reads "1 MiB" rather than "1024 KiB".
  while (Math.round(value * 100) / 100 >= 1024 && unit < BINARY_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, '');
  return `${text} ${BINARY_UNITS[unit]}`;
}
