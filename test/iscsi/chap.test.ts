import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CHAP_MD5, CHAP_SHA1, CHAP_SHA256, CHAP_SHA3_256, ChapAuthenticator, ChapError, chapResponse } from '../../emulator/iscsi/chap.js';
import * as op from '../../emulator/iscsi/opcodes.js';
import { decodeBinary, encodeHex, type TextPair } from '../../emulator/iscsi/text.js';

const USER = 'iqn.2004-10.com.ubuntu:01:host1';
const SECRET = 'initiator-secret-16';
const TSECRET = 'target-secret-9876';

function auth(extra: Partial<ConstructorParameters<typeof ChapAuthenticator>[0]> = {}) {
  return new ChapAuthenticator({ initiator: { username: USER, secret: SECRET }, ...extra });
}

const get = (pairs: TextPair[], k: string) => pairs.find(([key]) => key === k)?.[1];

/** Plays the initiator: answers the target's challenge with `secret`. */
function answer(a: ChapAuthenticator, algs: string, secret: string, mutual?: TextPair[]): { challenge: TextPair[]; reply: TextPair[] } {
  const challenge = a.step([['CHAP_A', algs]]);
  const alg = Number(get(challenge, 'CHAP_A'));
  const id = Number(get(challenge, 'CHAP_I'));
  const c = decodeBinary(get(challenge, 'CHAP_C')!)!;
  const r = encodeHex(chapResponse(alg, id, secret, c));
  const reply = a.step([['CHAP_N', USER], ['CHAP_R', r], ...(mutual ?? [])]);
  return { challenge, reply };
}

function failure(fn: () => unknown): ChapError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ChapError);
    const ce = e as ChapError;
    expect([ce.statusClass, ce.statusDetail]).toEqual([op.LOGIN_CLASS_INITIATOR_ERROR, op.LOGIN_AUTH_FAILED]);
    expect(ce.message).not.toContain(SECRET);
    expect(ce.message).not.toContain(TSECRET);
    return ce;
  }
  throw new Error('expected ChapError');
}

describe('CHAP response function', () => {
  it('is H(id || secret || challenge) for each algorithm', () => {
    const c = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const input = Buffer.concat([Buffer.from([7]), Buffer.from('s3cret'), c]);
    expect(chapResponse(CHAP_MD5, 7, 's3cret', c).equals(createHash('md5').update(input).digest())).toBe(true);
    expect(chapResponse(CHAP_SHA1, 7, 's3cret', c)).toHaveLength(20);
    expect(chapResponse(CHAP_SHA256, 7, 's3cret', c).equals(createHash('sha256').update(input).digest())).toBe(true);
    expect(chapResponse(CHAP_SHA3_256, 7, Buffer.from('s3cret'), c).equals(createHash('sha3-256').update(input).digest())).toBe(true);
    // RFC 1994 MD5 known answer: id 1, secret "secret", challenge of 16 zero bytes.
    expect(chapResponse(CHAP_MD5, 1, 'secret', Buffer.alloc(16)).toString('hex')).toBe(
      createHash('md5')
        .update(Buffer.concat([Buffer.from([1]), Buffer.from('secret'), Buffer.alloc(16)]))
        .digest('hex'),
    );
    expect(() => chapResponse(99, 0, 'x', c)).toThrow(/not supported/);
  });
});

describe('ChapAuthenticator', () => {
  it('one-way CHAP succeeds; the target picks the first offered algorithm it enables', () => {
    const a = auth({ algorithms: [CHAP_MD5, CHAP_SHA256] });
    const { challenge, reply } = answer(a, '8,7,5', SECRET);
    expect(get(challenge, 'CHAP_A')).toBe('7');
    expect(decodeBinary(get(challenge, 'CHAP_C')!)).toHaveLength(32);
    expect(Number(get(challenge, 'CHAP_I'))).toBeLessThan(256);
    expect(reply).toEqual([]);
    expect(a.done).toBe(true);
  });

  it('uses fresh random challenges', () => {
    const c1 = auth().step([['CHAP_A', '5']]);
    const c2 = auth().step([['CHAP_A', '5']]);
    expect(get(c1, 'CHAP_C')).not.toBe(get(c2, 'CHAP_C'));
    expect(decodeBinary(get(c1, 'CHAP_C')!)).toHaveLength(16);
  });

  it('wrong secret fails with 02/01 and a message without secrets', () => {
    const e = failure(() => answer(auth(), '5', 'not-the-secret'));
    expect(e.failure).toBe('bad-response');
    expect(e.message).toMatch(/wrong response from user "iqn.2004-10.com.ubuntu:01:host1"/);
  });

  it('wrong user, malformed or missing keys, unsupported algorithms', () => {
    expect(failure(() => auth().step([['CHAP_A', '128,129']])).failure).toBe('unsupported-algorithm');
    expect(failure(() => auth({ algorithms: [CHAP_SHA256] }).step([['CHAP_A', '5']])).failure).toBe('unsupported-algorithm');
    expect(failure(() => auth().step([])).failure).toBe('protocol');
    const a = auth();
    a.step([['CHAP_A', '5']]);
    expect(
      failure(() =>
        a.step([
          ['CHAP_N', 'someone-else'],
          ['CHAP_R', '0x00'],
        ]),
      ).failure,
    ).toBe('unknown-user');
    const b = auth();
    b.step([['CHAP_A', '5']]);
    expect(
      failure(() =>
        b.step([
          ['CHAP_N', USER],
          ['CHAP_R', 'plain'],
        ]),
      ).failure,
    ).toBe('protocol');
    const c = auth();
    c.step([['CHAP_A', '5']]);
    expect(
      failure(() =>
        c.step([
          ['CHAP_N', USER],
          ['CHAP_R', '0x0011'],
        ]),
      ).failure,
    ).toBe('bad-response'); // wrong length
    const d = auth();
    d.step([['CHAP_A', '5']]);
    expect(failure(() => d.step([['CHAP_N', USER]])).failure).toBe('protocol');
  });

  it('accepts a base64 CHAP_R', () => {
    const a = auth();
    const ch = a.step([['CHAP_A', '5']]);
    const r = chapResponse(CHAP_MD5, Number(get(ch, 'CHAP_I')), SECRET, decodeBinary(get(ch, 'CHAP_C')!)!);
    expect(
      a.step([
        ['CHAP_N', USER],
        ['CHAP_R', `0b${r.toString('base64')}`],
      ]),
    ).toEqual([]);
  });

  it("mutual CHAP: we answer the initiator's challenge with the target secret", () => {
    const a = auth({ target: { username: 'iqn.2026-01.lab.arraylab:vol1', secret: TSECRET } });
    const ic = Buffer.alloc(16, 0x42);
    const { reply } = answer(a, '5', SECRET, [
      ['CHAP_I', '200'],
      ['CHAP_C', encodeHex(ic)],
    ]);
    expect(get(reply, 'CHAP_N')).toBe('iqn.2026-01.lab.arraylab:vol1');
    expect(decodeBinary(get(reply, 'CHAP_R')!)!.equals(chapResponse(CHAP_MD5, 200, TSECRET, ic))).toBe(true);
    expect(a.done).toBe(true);
    expect(failure(() => a.step([['CHAP_A', '5']])).failure).toBe('protocol');
  });

  it('mutual CHAP refuses a reflected challenge, missing target credentials, and bad CHAP_I/CHAP_C', () => {
    const a = auth({ target: { username: 't', secret: TSECRET } });
    const ch = a.step([['CHAP_A', '5']]);
    const r = encodeHex(chapResponse(CHAP_MD5, Number(get(ch, 'CHAP_I')), SECRET, decodeBinary(get(ch, 'CHAP_C')!)!));
    const e = failure(() =>
      a.step([
        ['CHAP_N', USER],
        ['CHAP_R', r],
        ['CHAP_I', '1'],
        ['CHAP_C', get(ch, 'CHAP_C')!],
      ]),
    );
    expect(e.failure).toBe('reflection');

    expect(
      failure(() =>
        answer(auth(), '5', SECRET, [
          ['CHAP_I', '1'],
          ['CHAP_C', '0x0102'],
        ]),
      ).failure,
    ).toBe('mutual-unavailable');
    const t = { target: { username: 't', secret: TSECRET } };
    expect(
      failure(() =>
        answer(auth(t), '5', SECRET, [
          ['CHAP_I', '256'],
          ['CHAP_C', '0x0102'],
        ]),
      ).failure,
    ).toBe('protocol');
    expect(failure(() => answer(auth(t), '5', SECRET, [['CHAP_I', '1']])).failure).toBe('protocol');
    expect(
      failure(() =>
        answer(auth(t), '5', SECRET, [
          ['CHAP_I', '1'],
          ['CHAP_C', `0x${'00'.repeat(1025)}`],
        ]),
      ).failure,
    ).toBe('protocol');
  });

  it('refuses configurations that would weaken it', () => {
    expect(() => auth({ target: { username: 't', secret: SECRET } })).toThrow(/different initiator and target secrets/);
    expect(() => auth({ algorithms: [4] })).toThrow(/not supported/);
  });
});
