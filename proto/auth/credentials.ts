/**
 * Where a client finds its credential for an array's control API, in this order:
 *
 *   1. a token given in code (ArrayClient's token option; the CLI's --token-file);
 *   2. ARRAYLAB_TOKEN, or the file named by ARRAYLAB_TOKEN_FILE;
 *   3. the local link: `arraylab serve` links its admin token (<dataDir>/admin.token, 0600)
 *      from ~/.config/arraylab/credentials/HOST_PORT.token, so the user who started the array
 *      on this machine needs nothing more; another local user has no link, and could not read
 *      the file through one.
 *
 * TLS for the API: ARRAYLAB_TLS_CA (the CA that signed the API's certificate), and for mutual
 * TLS ARRAYLAB_TLS_CERT and ARRAYLAB_TLS_KEY, or the same as options.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { formatHostPort, type HostPort } from '../util/address.js';

/** The metadata key a bearer token travels in. */
export const AUTHORIZATION = 'authorization';

/** Where `arraylab serve` links its admin token for clients of this user on this machine. */
export function credentialsDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== '' ? env.XDG_CONFIG_HOME : join(homedir(), '.config');
  return join(base, 'arraylab', 'credentials');
}

/** The link's file name for an API address ("127.0.0.1_7390.token"; IPv6 brackets dropped). */
export function credentialLinkName(address: HostPort): string {
  return `${formatHostPort(address)
    .replace(/[[\]]/g, '')
    .replace(/:(\d+)$/, '_$1')
    .replace(/[^A-Za-z0-9._-]/g, '_')}.token`;
}

export interface TlsFiles {
  /** PEM file of the CA that signed the server's certificate. */
  ca?: string;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string;
  key?: string;
}

export interface ResolvedCredential {
  token?: string;
  /** Where the token came from, for error messages ("ARRAYLAB_TOKEN", a file path). */
  source?: string;
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

/** Reads a token file: its first line, trimmed; one line error naming the file and the fix. */
export function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'EACCES'
        ? 'permission denied (the admin token is readable only by the user who started the array)'
        : code === 'ENOENT'
          ? 'no such file'
          : (err as Error).message;
    throw new Error(`cannot read the token file ${path}: ${why}; give a token file you can read (arraylab user add prints tokens)`);
  }
  const token = text.split('\n')[0]?.trim() ?? '';
  if (token === '') throw new Error(`the token file ${path} is empty; put the token printed by arraylab user add (or user rotate) in it`);
  return token;
}

/** The credential for an address: see the header for the order. Throws only for a named file that cannot be read. */
export function resolveCredential(
  address: HostPort,
  given: { token?: string | undefined; tokenFile?: string | undefined; tls?: TlsFiles | undefined } = {},
  env: NodeJS.ProcessEnv = process.env,
): ResolvedCredential {
  const out: ResolvedCredential = {};
  if (given.token !== undefined && given.token !== '') Object.assign(out, { token: given.token, source: 'the token given' });
  else if (given.tokenFile !== undefined && given.tokenFile !== '') Object.assign(out, { token: readTokenFile(given.tokenFile), source: given.tokenFile });
  else if (env.ARRAYLAB_TOKEN !== undefined && env.ARRAYLAB_TOKEN !== '') Object.assign(out, { token: env.ARRAYLAB_TOKEN.trim(), source: 'ARRAYLAB_TOKEN' });
  else if (env.ARRAYLAB_TOKEN_FILE !== undefined && env.ARRAYLAB_TOKEN_FILE !== '')
    Object.assign(out, { token: readTokenFile(env.ARRAYLAB_TOKEN_FILE), source: env.ARRAYLAB_TOKEN_FILE });
  else {
    const link = join(credentialsDir(env), credentialLinkName(address));
    try {
      const token = readFileSync(link, 'utf8').split('\n')[0]?.trim() ?? '';
      if (token !== '') Object.assign(out, { token, source: link });
    } catch {
      // No link (or a stale one): the call goes without a token and the array says what it needs.
    }
  }
  const tlsFiles: TlsFiles = {
    ...(env.ARRAYLAB_TLS_CA ? { ca: env.ARRAYLAB_TLS_CA } : {}),
    ...(env.ARRAYLAB_TLS_CERT ? { cert: env.ARRAYLAB_TLS_CERT } : {}),
    ...(env.ARRAYLAB_TLS_KEY ? { key: env.ARRAYLAB_TLS_KEY } : {}),
    ...given.tls,
  };
  if (tlsFiles.ca !== undefined || tlsFiles.cert !== undefined) {
    const read = (what: string, p: string | undefined) => {
      if (p === undefined) return undefined;
      try {
        return readFileSync(p);
      } catch (err) {
        throw new Error(`cannot read the TLS ${what} file ${p}: ${(err as Error).message}; check ARRAYLAB_TLS_${what.toUpperCase()} or --tls-${what}`);
      }
    };
    const tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
    const ca = read('ca', tlsFiles.ca);
    const cert = read('cert', tlsFiles.cert);
    const key = read('key', tlsFiles.key);
    if (ca) tls.ca = ca;
    if (cert) tls.cert = cert;
    if (key) tls.key = key;
    if ((cert === undefined) !== (key === undefined))
      throw new Error('a TLS client certificate needs its key and the key its certificate: give both --tls-cert and --tls-key');
    out.tls = tls;
  }
  return out;
}
