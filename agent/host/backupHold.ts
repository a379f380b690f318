/**
 * Holding a backup volume exclusively while the array writes it: open(O_RDONLY|O_EXCL) on a
 * block device claims it, so that a mount (or another O_EXCL opener) fails with EBUSY until the
 * descriptor is closed. The descriptor dies with the process, so a crash never leaves it held.
 */
import { constants } from 'node:fs';
import { open, readdir, realpath, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { deviceNumber, readMountinfo } from './mounts.js';
import { describeProcesses, processesWithDeviceOpen } from './processes.js';

export async function holdExclusive(volume: string, device: string): Promise<FileHandle> {
  try {
    return await open(device, constants.O_RDONLY | constants.O_EXCL);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'EBUSY') throw new Error(`cannot lock backup volume ${volume}: open ${device}: ${e.message}; check the device map and that you are root`);
    throw new Error(`cannot lock backup volume ${volume}: ${device} is in use (${await whoHolds(device)}); stop what uses it, then retry`);
  }
}

async function whoHolds(device: string): Promise<string> {
  const parts: string[] = [];
  try {
    const devNo = await deviceNumber(device);
    const mounts = (await readMountinfo()).filter((m) => m.devNo === devNo);
    if (mounts.length) parts.push(`mounted at ${mounts.map((m) => m.mountPoint).join(', ')}`);
    const procs = await processesWithDeviceOpen(devNo);
    if (procs.length) parts.push(`open by ${describeProcesses(procs)}`);
    const name = basename(await realpath(device));
    const holders = await readdir(`/sys/class/block/${name}/holders`).catch(() => [] as string[]);
    if (holders.length) parts.push(`claimed by ${holders.map((h) => `/dev/${h}`).join(', ')} (device-mapper, md or a loop over it)`);
  } catch {
    // describe what we can
  }
  return parts.length ? parts.join('; ') : 'another exclusive opener holds it';
}
