/**
 * The daemon's token: a file of one line, mode 0600. `serve` makes one when there is none, so a
 * fresh install is never served without a token; clients read the same file (or take
 * ARRAYLAB_AGENT_TOKEN).
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

export function readToken(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(
      `cannot read the agent token ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; pass --token-file or set ARRAYLAB_AGENT_TOKEN`,
    );
  }
  const token = text.trim();
  if (token.length < 16 || /\s/.test(token))
    throw new Error(`the agent token in ${path} must be one word of at least 16 characters; generate one with: openssl rand -hex 32 > ${path}`);
  return token;
}

/** Reads the token file, creating it (0600) with a random token when it does not exist. */
export function ensureToken(path: string): { token: string; created: boolean } {
  try {
    statSync(path);
  } catch {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    writeFileSync(path, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    return { token: readToken(path), created: true };
  }
  const mode = statSync(path).mode & 0o077;
  if (mode !== 0) throw new Error(`the agent token ${path} is readable by others (mode ${(statSync(path).mode & 0o777).toString(8)}); chmod 600 ${path}`);
  return { token: readToken(path), created: false };
}
