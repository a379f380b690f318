/**
 * The --api option shared by the client commands, their credential options, and the client
 * they make. Address precedence: --api, then ARRAYLAB_API, then 127.0.0.1:7390. Credential:
 * --token-file, then ARRAYLAB_TOKEN / ARRAYLAB_TOKEN_FILE, then the admin token an array started
 * by this user linked for it (proto/auth/credentials.ts). TLS: --tls-ca (and --tls-cert and
 * --tls-key for mutual TLS), or ARRAYLAB_TLS_CA, ARRAYLAB_TLS_CERT, ARRAYLAB_TLS_KEY.
 */
import type { Argv } from 'yargs';
import { DEFAULT_API_ADDRESS, formatHostPort, parseHostPort, type HostPort } from '../../proto/util/address.js';
import type { ArrayClient } from '../../proto/ArrayClient.js';
import { UsageError } from './errors.js';

export interface ApiArgs {
  api?: string;
  json: boolean;
}

/** The credential options a client command may carry. */
export interface CredentialArgs {
  'token-file'?: string | undefined;
  'tls-ca'?: string | undefined;
  'tls-cert'?: string | undefined;
  'tls-key'?: string | undefined;
}

export function withApiOption<T>(y: Argv<T>) {
  return y
    .option('api', {
      type: 'string',
      describe: `control API address HOST:PORT [env ARRAYLAB_API; default ${formatHostPort(DEFAULT_API_ADDRESS)}]`,
      requiresArg: true,
    })
    .option('token-file', {
      type: 'string',
      requiresArg: true,
      describe: 'file holding the API token [env ARRAYLAB_TOKEN, ARRAYLAB_TOKEN_FILE; default: the admin token of an array this user started]',
    })
    .option('tls-ca', { type: 'string', requiresArg: true, describe: "CA (PEM) of the API's TLS certificate [env ARRAYLAB_TLS_CA]" })
    .option('tls-cert', { type: 'string', requiresArg: true, describe: 'client certificate (PEM) for mutual TLS [env ARRAYLAB_TLS_CERT]' })
    .option('tls-key', { type: 'string', requiresArg: true, describe: 'client key (PEM) for mutual TLS [env ARRAYLAB_TLS_KEY]' });
}

/** A client for --api / ARRAYLAB_API. gRPC is loaded here, not at start-up, so --help stays quick. */
export async function connect(args: { api?: string | undefined } & CredentialArgs, env: NodeJS.ProcessEnv = process.env): Promise<ArrayClient> {
  const fromEnv = env.ARRAYLAB_API !== undefined && env.ARRAYLAB_API !== '' ? env.ARRAYLAB_API : undefined;
  const text = args.api ?? fromEnv ?? formatHostPort(DEFAULT_API_ADDRESS);
  let address: HostPort;
  try {
    address = parseHostPort(text);
  } catch (err) {
    const source = args.api !== undefined ? '--api' : 'ARRAYLAB_API';
    throw new UsageError(`${source}: ${(err as Error).message}`);
  }
  const { ArrayClient } = await import('../../proto/ArrayClient.js');
  const last = (v: string | string[] | undefined) => (Array.isArray(v) ? v[v.length - 1] : v);
  const tls = {
    ...(last(args['tls-ca']) ? { ca: last(args['tls-ca'])! } : {}),
    ...(last(args['tls-cert']) ? { cert: last(args['tls-cert'])! } : {}),
    ...(last(args['tls-key']) ? { key: last(args['tls-key'])! } : {}),
  };
  const tokenFile = last(args['token-file']);
  return new ArrayClient(address, { ...(tokenFile ? { tokenFile } : {}), ...(Object.keys(tls).length > 0 ? { tls } : {}) });
}

/** Runs fn with a client and closes it whatever happens. */
export async function withClient<R>(args: { api?: string | undefined } & CredentialArgs, fn: (client: ArrayClient) => Promise<R>): Promise<R> {
  const client = await connect(args);
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}
