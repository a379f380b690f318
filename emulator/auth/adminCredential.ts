/**
 * The first credential: on an array's first start (no user yet) `arraylab serve` creates the
 * user "admin" and writes its token to <dataDir>/admin.token, mode 0600, so only the user who
 * started the array can read it. It then links the file from that user's
 * ~/.config/arraylab/credentials/HOST_PORT.token (proto/auth/credentials.ts), where the CLI, the
 * agent and labs on this machine look, and removes the link at a clean stop.
 *
 * A later start keeps the file. If it is gone, the admin is not recreated behind anyone's back:
 * another admin rotates it (arraylab user rotate admin), or `serve --reset-admin-token` does.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { credentialLinkName, credentialsDir } from '../../proto/auth/credentials.js';
import type { HostPort } from '../../proto/util/address.js';
import type { AccessControl } from './AccessControl.js';
import { newToken } from './tokens.js';

export const ADMIN_USER = 'admin';
export const ADMIN_TOKEN_FILE = 'admin.token';

/** Makes sure the admin credential exists; returns the token file's path (absent: none written). */
export function ensureAdminCredential(access: AccessControl, dir: string, log: Logger, opts: { reset?: boolean } = {}): string | undefined {
  const file = join(dir, ADMIN_TOKEN_FILE);
  const users = access.listUsers();
  if (users.length > 0 && !opts.reset) {
    if (!existsSync(file)) {
      log.warn(
        { file },
        'the admin token file is gone; an admin can make a new token with arraylab user rotate admin, or restart with arraylab serve --reset-admin-token',
      );
      return undefined;
    }
    return file;
  }
  const token = newToken();
  if (!users.some((u) => u.name === ADMIN_USER)) access.addUser({ name: ADMIN_USER, role: 'admin' });
  access.setToken(ADMIN_USER, token);
  writePrivate(file, `${token}\n`);
  log.info({ file }, opts.reset ? 'admin token reset' : 'created the admin user; its token is in the data directory');
  return file;
}

/** Writes a file only its owner can read, atomically (a reader never sees half a token). */
export function writePrivate(file: string, text: string): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/** Links the token file for clients of this user; returns the links made. Never fails the start. */
export function linkCredential(address: HostPort, tokenFile: string, log: Logger): string[] {
  const dir = credentialsDir();
  const hosts = address.host === '0.0.0.0' || address.host === '::' ? ['127.0.0.1', 'localhost'] : [address.host];
  const made: string[] = [];
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const host of hosts) {
      const link = join(dir, credentialLinkName({ host, port: address.port }));
      const tmp = `${link}.tmp-${process.pid}`;
      rmSync(tmp, { force: true });
      symlinkSync(resolve(tokenFile), tmp);
      renameSync(tmp, link);
      made.push(link);
    }
  } catch (err) {
    log.warn({ err, dir }, `cannot link the admin token for local clients; they need --token-file ${tokenFile}`);
  }
  return made;
}

/** Removes links that still point at tokenFile (another array may have taken the address since). */
export function unlinkCredential(links: string[], tokenFile: string): void {
  for (const link of links) {
    try {
      if (readlinkSync(link) === resolve(tokenFile)) rmSync(link, { force: true });
    } catch {
      // Already gone.
    }
  }
}

/** The token in a token file (tests and labs that start arrays read it). */
export function readAdminToken(dataDir: string): string {
  return readFileSync(join(dataDir, ADMIN_TOKEN_FILE), 'utf8').trim();
}
