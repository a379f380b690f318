/**
 * Puts a local agent together from its settings: the array client, the host side, the store and
 * backup management. The CLI runs every command through this on the host itself; `serve` keeps
 * one for the daemon's life.
 */
import type { Logger } from 'pino';
import { ArrayClient } from '../proto/ArrayClient.js';
import { BackupManager } from './backup/BackupManager.js';
import { readFileSync } from 'node:fs';
import { ConfigError, type AgentSettings } from './config.js';
import { runDoctor } from './doctor.js';
import { GuestHostSide } from './guest/GuestHostSide.js';
import { LinuxHost } from './host/LinuxHost.js';
import type { AgentCore, DoctorCheck, HostSide } from './types.js';

export interface LocalAgent {
  core: AgentCore;
  doctor(): Promise<DoctorCheck[]>;
  close(): Promise<void>;
}

// [G1] --guest SOCKET: the host side is the agent in a guest, reached over its virtio-serial port.
export interface LocalAgentOptions {
  /** The guest's agent socket (qemu's end of org.arraylab.agent): use a GuestHostSide. */
  guestSocket?: string;
}

function hostSideFor(settings: AgentSettings, log: Logger, opts: LocalAgentOptions): { host: HostSide; guest?: GuestHostSide; close(): Promise<void> } {
  if (opts.guestSocket) {
    const guest = new GuestHostSide(opts.guestSocket, { log });
    return { host: guest, guest, close: () => guest.close() };
  }
  const host = new LinuxHost({
    ...(settings.deviceMap ? { deviceMapFile: settings.deviceMap } : {}),
    hooksDir: settings.hooksDir,
    hookTimeoutMs: settings.hookTimeoutMs,
    freezeDeadlineMs: settings.freezeDeadlineMs,
    ...(settings.mountPrefixes.length ? { mountPrefixes: settings.mountPrefixes } : {}),
    log,
  });
  return { host, close: async () => undefined };
}

/**
 * The array API's token: ARRAYLAB_TOKEN, or the --token-file / arrayTokenFile file; undefined
 * when none is given (ArrayClient then finds the array's local admin credential by its address).
 */
export function arrayToken(settings: Pick<AgentSettings, 'arrayToken' | 'arrayTokenFile'>): string | undefined {
  if (settings.arrayToken) return settings.arrayToken;
  if (!settings.arrayTokenFile) return undefined;
  let text: string;
  try {
    text = readFileSync(settings.arrayTokenFile, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `cannot read the array token ${settings.arrayTokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; check --token-file (or arrayTokenFile in the config), or set ARRAYLAB_TOKEN`,
    );
  }
  const token = text.trim();
  if (token === '' || /\s/.test(token))
    throw new ConfigError(
      `the array token file ${settings.arrayTokenFile} must hold one token on one line; write the token \`arraylab user add\` printed into it`,
    );
  return token;
}

/** The client of the array's API, with the agent's token for it. */
export function arrayClientOf(settings: AgentSettings): ArrayClient {
  const token = arrayToken(settings);
  return new ArrayClient(settings.array, token !== undefined ? { token } : {});
}

export async function openLocalAgent(settings: AgentSettings, log: Logger, opts: LocalAgentOptions = {}): Promise<LocalAgent> {
  const array = arrayClientOf(settings);
  const side = hostSideFor(settings, log, opts);
  const host = side.host;
  // With a guest, its hook timeout and freeze deadline are guest-serve's: pass none from here.
  const timing = opts.guestSocket ? {} : { hookTimeoutMs: settings.hookTimeoutMs, freezeDeadlineMs: settings.freezeDeadlineMs };
  let core: BackupManager;
  try {
    core = await BackupManager.open(settings.stateDir, { array, tape: array, host, log, ...timing });
  } catch (err) {
    array.close();
    await side.close();
    throw err;
  }
  return {
    core,
    doctor: () => runDoctor({ settings, array, host, status: () => core.status(), ...(side.guest ? { guest: side.guest } : {}) }),
    async close() {
      await core.close();
      array.close();
      await side.close();
    },
  };
}

/** Doctor without the store (when the state directory cannot be opened). */
export async function doctorWithoutStore(settings: AgentSettings, log: Logger, opts: LocalAgentOptions = {}): Promise<DoctorCheck[]> {
  const array = arrayClientOf(settings);
  const side = hostSideFor(settings, log, opts);
  try {
    return await runDoctor({ settings, array, host: side.host, ...(side.guest ? { guest: side.guest } : {}) });
  } finally {
    array.close();
    await side.close();
  }
}
