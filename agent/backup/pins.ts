/**
 * Volume pins: a registered volume is pinned to the UUID and WWN the array reported at its
 * registration. Before the agent acts on a local device for a volume, the device must still be
 * that volume: the array must report the same identity for the name (not a volume deleted and
 * created again under it, nor another array at the address), and a device that reports a WWN
 * of its own (a SCSI disk) must report the pinned one (not a device map line or a discovery
 * gone wrong). Otherwise the agent refuses, naming the volume, the pinned and the found WWN,
 * and the fix: re-register the volume if it really was replaced.
 *
 * Volumes registered before pins existed are pinned at their first use (and logged).
 */
import type { Logger } from 'pino';
import type { VolumeInfo } from '../../proto/views.js';
import type { AgentStore, VolumePin } from '../store/AgentStore.js';
import { AgentError, type DeviceMapping } from '../types.js';

/** Pins volume to info's identity (registration). */
export function pin(store: AgentStore, volume: string, info: Pick<VolumeInfo, 'uuid' | 'wwn'>, at: string): void {
  store.putPin({ volume, uuid: info.uuid, wwn: info.wwn.toLowerCase(), pinnedAt: at });
}

/** Why the mapping (or the array's answer) is not the pinned volume, or ''. */
export function pinProblem(p: VolumePin, info: Pick<VolumeInfo, 'uuid' | 'wwn'> | undefined, mapping: DeviceMapping | undefined): string {
  const pinned = `pinned at its registration (${p.pinnedAt}) to WWN ${p.wwn} (UUID ${p.uuid})`;
  if (info && (info.wwn.toLowerCase() !== p.wwn || info.uuid !== p.uuid)) {
    return `${p.volume} was ${pinned}, but the array now reports WWN ${info.wwn.toLowerCase()} (UUID ${info.uuid}) for it: another volume under that name (deleted and created again) or another array`;
  }
  if (mapping?.wwn !== undefined && mapping.wwn.toLowerCase() !== p.wwn) {
    return `${p.volume} was ${pinned}, but its device ${mapping.device} (found by ${mapping.how}) reports WWN ${mapping.wwn.toLowerCase()}: another disk`;
  }
  return '';
}

/**
 * The local device of a registered volume, checked against its pin ('' when it has none here).
 * role names the registration for the fix. Throws AgentError FAILED_PRECONDITION on a mismatch.
 */
export function pinnedDevice(
  store: AgentStore,
  log: Logger,
  devices: DeviceMapping[],
  volume: string,
  info: Pick<VolumeInfo, 'uuid' | 'wwn'> | undefined,
  role: 'transaction' | 'backup',
  at: string,
): string {
  const mapping = devices.find((d) => d.volume === volume);
  if (!mapping) return '';
  let p = store.getPin(volume);
  if (!p) {
    // Registered before pins: pin now, to what the array says it is (and the device checked
    // against that). A volume that is not registered (restore --to) has no pin to keep.
    const registered = store.getTransaction(volume) !== undefined || store.getBackupVolume(volume) !== undefined;
    if (info && registered) {
      pin(store, volume, info, at);
      log.info({ volume, wwn: info.wwn, uuid: info.uuid }, 'volume registered before pins: pinned to its identity now');
      p = store.getPin(volume);
    }
    if (!p) return mapping.device;
  }
  const problem = pinProblem(p, info, mapping);
  if (problem) {
    throw new AgentError(
      'FAILED_PRECONDITION',
      `refusing to act on ${mapping.device} for ${role} volume ${volume}: ${problem}; check the device map and the array, and if ${volume} was really replaced, re-register it: arraylab-agent register ${role} ${volume}`,
    );
  }
  return mapping.device;
}
