/**
 * Puts a local agent together from its settings: the array client, the host side, the store and
 * backup management. The CLI runs every command through this on the host itself; `serve` keeps
 * one for the daemon's life.
 */
import type { Logger } from 'pino';
import { ArrayClient } from '../proto/ArrayClient.js';
import { BackupManager } from './backup/BackupManager.js';
import type { AgentSettings } from './config.js';
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
    log,
  });
  return { host, close: async () => undefined };
}

export async function openLocalAgent(settings: AgentSettings, log: Logger, opts: LocalAgentOptions = {}): Promise<LocalAgent> {
  const array = new ArrayClient(settings.array);
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
  const array = new ArrayClient(settings.array);
  const side = hostSideFor(settings, log, opts);
  try {
    return await runDoctor({ settings, array, host: side.host, ...(side.guest ? { guest: side.guest } : {}) });
  } finally {
    array.close();
    await side.close();
  }
}
