/**
 * `arraylab-agent serve`: one local agent for the daemon's life behind AgentService. SIGTERM or
 * SIGINT stops taking calls, lets running ones finish (a backup's post-processing must run),
 * then closes the records.
 */
import { readFileSync } from 'node:fs';
import { parseHostPort } from '../../proto/util/address.js';
import { createLogger } from '../../proto/util/log.js';
import { AgentApiServer, refusePlaintext } from '../api/AgentApiServer.js';
import { isUnixAddress, type AgentSettings } from '../config.js';
import { openLocalAgent } from '../runtime.js';
import { ensureToken } from './token.js';

/** guestSocket: the daemon's host side is the agent in that guest (as with --guest on a command). */
export async function serve(settings: AgentSettings, json: boolean, guestSocket?: string): Promise<number> {
  const socket = isUnixAddress(settings.listen) ? settings.listen.slice('unix:'.length) : '';
  const { host, port } = socket ? { host: '', port: 0 } : parseHostPort(settings.listen);
  // Refused before anything is made or opened.
  if (!socket) refusePlaintext(host, port, settings.tls !== null);
  const log = await createLogger({ level: settings.logLevel });
  const { token, created } = ensureToken(settings.tokenFile);
  if (created) log.info({ tokenFile: settings.tokenFile }, 'made a new agent token');
  const agent = await openLocalAgent(settings, log, guestSocket ? { guestSocket } : {});
  const tls = settings.tls ? { cert: readFileSync(settings.tls.cert), key: readFileSync(settings.tls.key) } : undefined;
  const server = new AgentApiServer({ core: agent.core, doctor: agent.doctor, token, log, ...(tls ? { tls } : {}) });
  let bound = 0;
  try {
    if (socket) await server.listenUnix(socket);
    else bound = await server.listen(host, port);
  } catch (err) {
    await agent.close();
    throw err;
  }
  const where = socket ? `unix:${socket}` : `${host}:${bound}`;
  const info = {
    pid: process.pid,
    listen: socket ? { socket } : { host, port: bound },
    tls: tls !== undefined,
    array: settings.array,
    stateDir: settings.stateDir,
    ...(guestSocket ? { guest: guestSocket } : {}),
  };
  log.info(info, 'arraylab-agent serving');
  if (json) process.stdout.write(`${JSON.stringify(info)}\n`);
  else
    process.stdout.write(
      `arraylab-agent serving on ${where}${tls ? ' (TLS)' : ''}; array ${settings.array}; state ${settings.stateDir}${guestSocket ? `; host side: the agent in the guest on ${guestSocket}` : ''}\n`,
    );
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  log.info('arraylab-agent stopping');
  await server.close();
  await agent.close();
  return 0;
}
