/**
 * Bearer tokens: 256 random bits, shown once, kept only as their SHA-256. A token this long
 * needs no slow hash (nothing to guess), and a stolen database gives no token. The lookup is by
 * hash; the hashes are then compared in constant time, so the check takes the same time
 * whether or not the token is right.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** Tokens start with this, so a leaked one is easy to recognise (and to scan for). */
export const TOKEN_PREFIX = 'alab_';

export function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Constant-time equality of two hex hashes of the same length. */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

/** Normalises a certificate fingerprint: upper-case hex, no colons. */
export function normaliseFingerprint(fp: string): string {
  return fp.replace(/[:\s]/g, '').toUpperCase();
}
