/**
 * The --api option shared by the client commands, and the client it makes.
 * Precedence: --api, then ARRAYLAB_API, then 127.0.0.1:7390.
 */
import type { Argv } from 'yargs';
import { DEFAULT_API_ADDRESS, formatHostPort, parseHostPort, type HostPort } from '../../proto/util/address.js';
import type { ArrayClient } from '../../proto/ArrayClient.js';
import { UsageError } from './errors.js';

export interface ApiArgs {
  api?: string;
  json: boolean;
}

export function withApiOption<T>(y: Argv<T>) {
  return y.option('api', {
    type: 'string',
    describe: `control API address HOST:PORT [env ARRAYLAB_API; default ${formatHostPort(DEFAULT_API_ADDRESS)}]`,
    requiresArg: true,
  });
}

/** A client for --api / ARRAYLAB_API. gRPC is loaded here, not at start-up, so --help stays quick. */
export async function connect(args: { api?: string | undefined }, env: NodeJS.ProcessEnv = process.env): Promise<ArrayClient> {
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
  return new ArrayClient(address);
}

/** Runs fn with a client and closes it whatever happens. */
export async function withClient<R>(args: { api?: string | undefined }, fn: (client: ArrayClient) => Promise<R>): Promise<R> {
  const client = await connect(args);
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}
