import { describe, expect, it } from 'vitest';
import {
  buildText,
  decodeBinary,
  encodeHex,
  MAX_LARGE_VALUE_LENGTH,
  parseNumber,
  parseText,
  splitText,
  TextError,
  TextReassembler,
} from '../../emulator/iscsi/text.js';

const t = (s: string) => Buffer.from(s, 'utf8');

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TextError);
    return (e as TextError).code;
  }
  throw new Error('expected a TextError');
}

describe('parseText', () => {
  it('parses pairs in order, splitting at the first "=" and skipping stray NULs', () => {
    expect(parseText(t('InitiatorName=iqn.1994-05.com.redhat:abc\0SessionType=Normal\0\0\0X-com.example.k=a=b\0'))).toEqual([
      ['InitiatorName', 'iqn.1994-05.com.redhat:abc'],
      ['SessionType', 'Normal'],
      ['X-com.example.k', 'a=b'],
    ]);
    expect(parseText(t('InitiatorAlias=\0'))).toEqual([['InitiatorAlias', '']]);
    expect(parseText(t('InitiatorAlias=häst\0'))).toEqual([['InitiatorAlias', 'häst']]);
    expect(parseText(Buffer.alloc(0))).toEqual([]);
  });

  it('rejects malformed text', () => {
    expect(code(() => parseText(t('HeaderDigest=None')))).toBe('no-nul');
    expect(code(() => parseText(t('HeaderDigest\0')))).toBe('missing-equals');
    expect(code(() => parseText(t('=None\0')))).toBe('empty-key');
    expect(code(() => parseText(t('Bad Key=1\0')))).toBe('bad-key');
    expect(code(() => parseText(t(`${'K'.repeat(64)}=1\0`)))).toBe('key-too-long');
    expect(parseText(t(`${'K'.repeat(63)}=1\0`))).toHaveLength(1);
    expect(code(() => parseText(t(`TargetAlias=${'v'.repeat(256)}\0`)))).toBe('value-too-long');
    expect(parseText(t(`TargetAlias=${'v'.repeat(255)}\0`))).toHaveLength(1);
    expect(code(() => parseText(t('A=1\0B=2\0A=3\0')))).toBe('duplicate-key');
    expect(code(() => parseText(Buffer.from([0x41, 0x3d, 0xff, 0xfe, 0])))).toBe('bad-utf8');
  });

  it('allows 8192-byte CHAP values but not more', () => {
    const big = `0x${'ab'.repeat((MAX_LARGE_VALUE_LENGTH - 2) / 2)}`;
    expect(parseText(t(`CHAP_C=${big}\0`))[0]![1]).toHaveLength(8192);
    expect(code(() => parseText(t(`CHAP_R=${big}ab\0`)))).toBe('value-too-long');
  });

  it('bounds total size and key count (10k keys)', () => {
    const many = Array.from({ length: 10_000 }, (_, i) => `K${i}=1\0`).join('');
    expect(code(() => parseText(t(many)))).toBe('too-long');
    expect(code(() => parseText(t(many), { maxTotal: 1 << 20, maxKeys: 1024 }))).toBe('too-many-keys');
    const err = (() => {
      try {
        parseText(t(many));
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    })();
    expect(err).toMatch(/exceeds the 65536-byte limit/);
  });

  it('never echoes control bytes into error messages', () => {
    try {
      parseText(Buffer.from('Key\x1b[31m\0'));
    } catch (e) {
      expect((e as Error).message).not.toMatch(/\x1b/);
    }
  });
});

describe('buildText / reassembly / splitting', () => {
  it('builds key=value\\0 and round-trips', () => {
    const pairs = [
      ['TargetName', 'iqn.2026-01.lab:t1'],
      ['TargetAddress', '10.0.0.1:3260,1'],
      ['TargetAddress', '[fe80::1]:3260,1'],
    ] as const;
    const b = buildText(pairs);
    expect(b.toString()).toBe('TargetName=iqn.2026-01.lab:t1\0TargetAddress=10.0.0.1:3260,1\0TargetAddress=[fe80::1]:3260,1\0');
    expect(() => buildText([['A', 'x\0y']])).toThrow(TextError);
    expect(() => buildText([['', 'x']])).toThrow(TextError);
    const single = [
      ['HeaderDigest', 'None'],
      ['MaxBurstLength', '262144'],
    ] as const;
    expect(parseText(buildText(single))).toEqual(single);
  });

  it('reassembles continued PDUs, even when a pair straddles the boundary', () => {
    const r = new TextReassembler();
    const whole = t('InitiatorName=iqn.2026-01.lab:i\0SessionType=Discovery\0');
    expect(r.push(whole.subarray(0, 10), true)).toBeNull();
    expect(r.inProgress).toBe(true);
    expect(r.push(whole.subarray(10, 20), true)).toBeNull();
    const all = r.push(whole.subarray(20), false)!;
    expect(all.equals(whole)).toBe(true);
    expect(r.inProgress).toBe(false);
    expect(parseText(all)).toHaveLength(2);
  });

  it('refuses continued text beyond the bound and resets', () => {
    const r = new TextReassembler(100);
    r.push(Buffer.alloc(60), true);
    expect(() => r.push(Buffer.alloc(60), true)).toThrow(/exceeds the 100-byte limit/);
    expect(r.inProgress).toBe(false);
  });

  it('splits outgoing text at a segment size', () => {
    const b = Buffer.alloc(20000);
    const parts = splitText(b, 8192);
    expect(parts.map((p) => p.length)).toEqual([8192, 8192, 3616]);
    expect(splitText(Buffer.alloc(10), 8192)).toHaveLength(1);
  });
});

describe('value encodings', () => {
  it('decodes hex and base64 binary values', () => {
    expect(decodeBinary('0x0102ff')!.toString('hex')).toBe('0102ff');
    expect(decodeBinary('0XABC')!.toString('hex')).toBe('0abc');
    expect(decodeBinary('0bAQL/')!.toString('hex')).toBe('0102ff');
    expect(decodeBinary('0BAQI=')!.toString('hex')).toBe('0102');
    for (const bad of ['', '0x', '0xzz', '0b***', '0bAQI', '1234', 'abc']) expect(decodeBinary(bad)).toBeNull();
    expect(encodeHex(Buffer.from([0, 255]))).toBe('0x00ff');
  });

  it('parses decimal and hex numbers', () => {
    expect(parseNumber('262144')).toBe(262144);
    expect(parseNumber('0x40000')).toBe(262144);
    for (const bad of ['', '-1', '1.5', ' 1', '0x', '99999999999999999', 'ten']) expect(parseNumber(bad)).toBeNull();
  });
});
