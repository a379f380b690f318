import { describe, expect, it } from 'vitest';
import { formatSize, parseSize, parseSizeChange, SizeError } from '../../proto/util/units.js';

describe('parseSize', () => {
  it.each([
    ['512', 512],
    ['0', 0],
    ['4k', 4096],
    ['4K', 4096],
    ['64MiB', 64 * 2 ** 20],
    ['64mib', 64 * 2 ** 20],
    ['64 MiB', 64 * 2 ** 20],
    ['10GiB', 10 * 2 ** 30],
    ['10G', 10 * 2 ** 30],
    ['1T', 2 ** 40],
    ['1TiB', 2 ** 40],
    ['2Mi', 2 * 2 ** 20],
    ['1KB', 1000],
    ['10MB', 10_000_000],
    ['10gb', 10_000_000_000],
    ['1TB', 1e12],
    ['100B', 100],
    ['1.5GiB', 1.5 * 2 ** 30],
    ['0.5K', 512],
    ['1.5KB', 1500],
    ['  8M ', 8 * 2 ** 20],
    ['7PiB', 7 * 2 ** 50],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it('accepts whole non-negative numbers', () => {
    expect(parseSize(4096)).toBe(4096);
    expect(parseSize(0)).toBe(0);
  });

  it.each([
    ['10XB', /"10XB" is not a size: unknown unit "XB"; use a number with a unit such as 64MiB or 10GiB/],
    ['abc', /"abc" is not a size; use a number with a unit/],
    ['', /"" is not a size/],
    ['1.2.3G', /is not a size/],
    ['G', /"G" is not a size/],
    ['-1', /"-1" is negative/],
    ['-4GiB', /is negative/],
    ['1.1K', /"1.1K" is not a whole number of bytes/],
    ['0.5', /not a whole number of bytes/],
    ['1e9', /not a size/],
    ['8PiB', /too large; sizes must be below 2\^53 bytes/],
    ['9007199254740992', /too large/],
    ['99999999999999999999999T', /too large/],
  ])('%j is refused', (text, message) => {
    expect(() => parseSize(text)).toThrow(SizeError);
    expect(() => parseSize(text)).toThrow(message);
  });

  it('refuses numbers that are not whole byte counts', () => {
    expect(() => parseSize(-1)).toThrow(/negative/);
    expect(() => parseSize(1.5)).toThrow(/whole number/);
    expect(() => parseSize(2 ** 53)).toThrow(/too large/);
    expect(() => parseSize(NaN)).toThrow(/not a size/);
  });

  it('takes the largest exact size', () => {
    expect(parseSize(String(Number.MAX_SAFE_INTEGER))).toBe(Number.MAX_SAFE_INTEGER);
  });
});

describe('parseSizeChange', () => {
  it('reads absolute sizes and +growth', () => {
    expect(parseSizeChange('2GiB')).toEqual({ kind: 'absolute', bytes: 2 * 2 ** 30 });
    expect(parseSizeChange('+1GiB')).toEqual({ kind: 'grow', bytes: 2 ** 30 });
    expect(() => parseSizeChange('+junk')).toThrow(/"junk" is not a size/);
  });
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [64 * 2 ** 20, '64 MiB'],
    [2 ** 30, '1 GiB'],
    [1.25 * 2 ** 30, '1.25 GiB'],
    [10 * 2 ** 40, '10 TiB'],
    [2 ** 50, '1 PiB'],
    [2 ** 20 - 1, '1 MiB'],
    [1000, '1000 B'],
  ])('%d is %s', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });
});
