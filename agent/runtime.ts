/**
 * Puts a local agent together from its settings: the array client, the host side, the store and
 * backup management. The CLI runs every command through this on the host itself; `serve` keeps
 * one for the daemon's life.
 */
import type { Logger } from 'pino';
import { ArrayClient } from '../emulator/api/ArrayClient.js';
import { BackupManager } from './backup/BackupManager.js';
import type { AgentSettings } from './config.js';
import { runDoctor } from './doctor.js';
import { LinuxHost } from './host/LinuxHost.js';
import type { AgentCore, DoctorCheck } from './types.js';

export interface LocalAgent {
  core: AgentCore;
  doctor(): Promise<DoctorCheck[]>;
  close(): Promise<void>;
}

export async function openLocalAgent(settings: AgentSettings, log: Logger): Promise<LocalAgent> {
  const array = new ArrayClient(settings.array);
  const host = new LinuxHost({
    ...(settings.deviceMap ? { deviceMapFile: settings.deviceMap } : {}),
    hooksDir: settings.hooksDir,
    hookTimeoutMs: settings.hookTimeoutMs,
    freezeDeadlineMs: settings.freezeDeadlineMs,
    log,
  });
  let core: BackupManager;
  try {
    core = await BackupManager.open(settings.stateDir, { array, tape: array, host, log, hookTimeoutMs: settings.hookTimeoutMs, freezeDeadlineMs: settings.freezeDeadlineMs });
  } catch (err) {
    array.close();
    throw err;
  }
  return {
    core,
    doctor: () => runDoctor({ settings, array, host, status: () => core.status() }),
    async close() {
      await core.close();
      array.close();
    },
  };
}

/** Doctor without the store (when the state directory cannot be opened). */
export async function doctorWithoutStore(settings: AgentSettings, log: Logger): Promise<DoctorCheck[]> {
  const array = new ArrayClient(settings.array);
  try {
    const host = new LinuxHost({ ...(settings.deviceMap ? { deviceMapFile: settings.deviceMap } : {}), hooksDir: settings.hooksDir, hookTimeoutMs: settings.hookTimeoutMs, freezeDeadlineMs: settings.freezeDeadlineMs, log });
    return await runDoctor({ settings, array, host });
  } finally {
    array.close();
  }
}
