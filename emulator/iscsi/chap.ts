/**
 * CHAP authentication, target side (RFC 1994 as profiled by RFC 7143 §12.1.3).
 *
 *   initiator: CHAP_A=<A1,A2,...>
 *   target:    CHAP_A=<A> CHAP_I=<I> CHAP_C=<C>
 *   initiator: CHAP_N=<N> CHAP_R=<R>  [CHAP_I=<I2> CHAP_C=<C2>  for mutual CHAP]
 *   target:    [CHAP_N=<target user> CHAP_R=<R2>]
 *
 * R = H(I || secret || C) with I a single octet. Algorithm numbers are the IANA "PPP
 * Authentication Algorithms" registry as the Linux target and open-iscsi use them: 5 = MD5,
 * 6 = SHA-1, 7 = SHA-256, 8 = SHA3-256.
 *
 * Failures throw ChapError; the login layer answers status class 02 detail 01 (authentication
 * failure) for every one of them, so an attacker learns nothing about which check failed.
 * Messages name the user and the check, never a secret, challenge or response.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { LOGIN_AUTH_FAILED, LOGIN_CLASS_INITIATOR_ERROR } from './opcodes.js';
import { decodeBinary, encodeHex, parseNumber, type TextPair } from './text.js';

export const CHAP_MD5 = 5;
export const CHAP_SHA1 = 6;
export const CHAP_SHA256 = 7;
export const CHAP_SHA3_256 = 8;

const HASH: Record<number, { name: string; length: number }> = {
  [CHAP_MD5]: { name: 'md5', length: 16 },
  [CHAP_SHA1]: { name: 'sha1', length: 20 },
  [CHAP_SHA256]: { name: 'sha256', length: 32 },
  [CHAP_SHA3_256]: { name: 'sha3-256', length: 32 },
};

/** Names operators use (config iscsi.chapAlgorithms, logs) -> algorithm number. */
export const CHAP_ALGORITHM_NAMES: Readonly<Record<string, number>> = Object.freeze({
  'SHA3-256': CHAP_SHA3_256,
  'SHA-256': CHAP_SHA256,
  'SHA-1': CHAP_SHA1,
  MD5: CHAP_MD5,
});

/** Every algorithm, strongest first: the default preference. */
export const ALL_CHAP_ALGORITHMS: readonly number[] = Object.freeze([CHAP_SHA3_256, CHAP_SHA256, CHAP_SHA1, CHAP_MD5]);

/** "SHA-256" for 7; the number itself for one we do not know. */
export function chapAlgorithmName(a: number): string {
  return Object.entries(CHAP_ALGORITHM_NAMES).find(([, n]) => n === a)?.[0] ?? String(a);
}

/**
 * CHAP secrets: RFC 7143 asks for at least 96 bits (12 bytes) where the link is not protected
 * by IPsec; 255 bytes is what open-iscsi and libiscsi hold. Windows initiators take 12 to 16.
 */
export const CHAP_SECRET_MIN_BYTES = 12;
export const CHAP_TEXT_MAX_BYTES = 255;

/**
 * What is wrong with a CHAP user name or secret, or undefined. The answer names the rule,
 * never the value (a secret must not reach a log or an error).
 */
export function chapValueProblem(value: string, kind: 'user' | 'secret'): string | undefined {
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes === 0) return 'is empty';
  if (/[\u0000-\u001f\u007f]/.test(value)) return 'contains a control character; use printable characters only';
  if (bytes > CHAP_TEXT_MAX_BYTES) return `is ${bytes} bytes, more than the ${CHAP_TEXT_MAX_BYTES} initiators accept; shorten it`;
  if (kind === 'secret' && bytes < CHAP_SECRET_MIN_BYTES) {
    return `is ${bytes} bytes; a CHAP secret needs at least ${CHAP_SECRET_MIN_BYTES} bytes (96 bits, RFC 7143) and Windows initiators take at most 16: use 12 to 16 characters`;
  }
  return undefined;
}

/** Largest challenge we accept from an initiator (binary bytes). */
export const MAX_INITIATOR_CHALLENGE = 1024;

export interface ChapCredentials {
  username: string;
  secret: string | Buffer;
}

export interface ChapOptions {
  /** What the initiator must present (CHAP_N / secret). */
  initiator: ChapCredentials;
  /** What we present when the initiator asks for mutual CHAP; without it, mutual CHAP fails. */
  target?: ChapCredentials | undefined;
  /** Algorithms we accept; the initiator's order decides among them. Default: all four. */
  algorithms?: readonly number[];
  /** Source of randomness (tests); default crypto.randomBytes. */
  random?: (n: number) => Buffer;
}

export type ChapFailure = 'protocol' | 'unsupported-algorithm' | 'unknown-user' | 'bad-response' | 'reflection' | 'mutual-unavailable';

export class ChapError extends Error {
  readonly statusClass = LOGIN_CLASS_INITIATOR_ERROR;
  readonly statusDetail = LOGIN_AUTH_FAILED;
  constructor(
    readonly failure: ChapFailure,
    message: string,
  ) {
    super(`CHAP authentication failed: ${message}`);
    this.name = 'ChapError';
  }
}

/** H(id || secret || challenge). */
export function chapResponse(algorithm: number, id: number, secret: string | Buffer, challenge: Uint8Array): Buffer {
  const h = HASH[algorithm];
  if (!h) throw new RangeError(`CHAP algorithm ${algorithm} is not supported (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256)`);
  return createHash(h.name)
    .update(Buffer.from([id & 0xff]))
    .update(typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret)
    .update(challenge)
    .digest();
}

type State = 'await-algorithm' | 'await-response' | 'done';

/** One login's CHAP exchange. Feed it the CHAP_* pairs of each security-stage Login Request. */
export class ChapAuthenticator {
  private state: State = 'await-algorithm';
  private algorithm = 0;
  private id = 0;
  private challenge: Buffer = Buffer.alloc(0);
  private readonly algorithms: readonly number[];
  private readonly random: (n: number) => Buffer;

  constructor(private readonly opts: ChapOptions) {
    this.algorithms = opts.algorithms ?? ALL_CHAP_ALGORITHMS;
    for (const a of this.algorithms) if (!HASH[a]) throw new RangeError(`CHAP algorithm ${a} is not supported (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256)`);
    this.random = opts.random ?? randomBytes;
    if (opts.target && Buffer.compare(toBuf(opts.target.secret), toBuf(opts.initiator.secret)) === 0) {
      // RFC 7143 §12.1.3: the secrets for the two directions must differ, else a reflected
      // exchange would authenticate.
      throw new RangeError('mutual CHAP needs different initiator and target secrets; configure a distinct target secret');
    }
  }

  /** True once the initiator is authenticated (and, for mutual CHAP, our answer was produced). */
  get done(): boolean {
    return this.state === 'done';
  }

  /** Processes the CHAP_* pairs of one request and returns the pairs for the response. Throws ChapError. */
  step(pairs: readonly TextPair[]): TextPair[] {
    const get = (k: string) => pairs.find(([key]) => key === k)?.[1];
    switch (this.state) {
      case 'await-algorithm': {
        const a = get('CHAP_A');
        if (a === undefined) throw new ChapError('protocol', 'the initiator sent no CHAP_A after AuthMethod=CHAP');
        const offered = a.split(',').map((s) => parseNumber(s));
        const chosen = offered.find((n) => n !== null && this.algorithms.includes(n));
        if (chosen === undefined || chosen === null) {
          const names = (list: readonly (number | null)[]) => list.map((n) => (n === null ? '?' : chapAlgorithmName(n))).join(', ');
          // libiscsi (qemu, iscsi-ls) offers MD5 only: say so, since refusing MD5 is a deliberate setting.
          const md5Only = offered.length > 0 && offered.every((n) => n === CHAP_MD5) && !this.algorithms.includes(CHAP_MD5);
          throw new ChapError(
            'unsupported-algorithm',
            `the initiator offers CHAP_A=${clip(a)} (${names(offered)}), none of which this target accepts (${names(this.algorithms)})` +
              (md5Only
                ? '; MD5 is refused by iscsi.chapAlgorithms: use an initiator with SHA-256 CHAP (open-iscsi 2.1.2 or later, node.session.auth.chap_algs) or add MD5 back'
                : ''),
          );
        }
        this.algorithm = chosen;
        this.id = this.random(1)[0]!;
        this.challenge = this.random(Math.max(16, HASH[chosen]!.length));
        this.state = 'await-response';
        return [
          ['CHAP_A', String(chosen)],
          ['CHAP_I', String(this.id)],
          ['CHAP_C', encodeHex(this.challenge)],
        ];
      }
      case 'await-response': {
        const n = get('CHAP_N');
        const r = get('CHAP_R');
        if (n === undefined || r === undefined) throw new ChapError('protocol', 'the initiator sent no CHAP_N/CHAP_R in answer to our challenge');
        if (n !== this.opts.initiator.username) throw new ChapError('unknown-user', `user "${clip(n)}" is not the configured CHAP user`);
        const got = decodeBinary(r);
        if (got === null) throw new ChapError('protocol', `CHAP_R from "${clip(n)}" is not a 0x/0b binary value`);
        const want = chapResponse(this.algorithm, this.id, this.opts.initiator.secret, this.challenge);
        if (got.length !== want.length || !timingSafeEqual(got, want)) {
          throw new ChapError('bad-response', `wrong response from user "${clip(n)}" (secret mismatch)`);
        }
        const mi = get('CHAP_I');
        const mc = get('CHAP_C');
        this.state = 'done';
        if (mi === undefined && mc === undefined) return [];
        return this.mutual(mi, mc);
      }
      case 'done':
        throw new ChapError('protocol', 'CHAP keys after authentication completed');
    }
  }

  private mutual(mi: string | undefined, mc: string | undefined): TextPair[] {
    if (mi === undefined || mc === undefined) throw new ChapError('protocol', 'mutual CHAP needs both CHAP_I and CHAP_C');
    const id = parseNumber(mi);
    if (id === null || id > 255) throw new ChapError('protocol', `CHAP_I=${clip(mi)} is not an identifier 0..255`);
    const c = decodeBinary(mc);
    if (c === null || c.length === 0 || c.length > MAX_INITIATOR_CHALLENGE) {
      throw new ChapError('protocol', `initiator's CHAP_C is not a 1..${MAX_INITIATOR_CHALLENGE}-byte binary value`);
    }
    if (c.equals(this.challenge)) throw new ChapError('reflection', 'the initiator returned our own challenge (reflection attack)');
    const t = this.opts.target;
    if (!t) throw new ChapError('mutual-unavailable', 'the initiator asked for mutual CHAP but no target credentials are configured');
    return [
      ['CHAP_N', t.username],
      ['CHAP_R', encodeHex(chapResponse(this.algorithm, id, t.secret, c))],
    ];
  }
}

function toBuf(s: string | Buffer): Buffer {
  return typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
}

function clip(s: string): string {
  return (s.length > 64 ? `${s.slice(0, 64)}...` : s).replace(/[^\x20-\x7e]/g, '?');
}
