/**
 * `arraylab-agent guest-serve`: in a guest, serves the host side (LinuxHost: devices, locks,
 * freeze guard, hooks) over the virtio-serial port until SIGTERM/SIGINT. The device map, hooks
 * directory, hook timeout and freeze deadline are this process's settings.
 */
import type { Logger } from 'pino';
import { LinuxHost } from '../host/LinuxHost.js';
import { GuestServer } from './GuestServer.js';
import { CharDevicePort } from './port.js';

export interface GuestServeOptions {
  port: string;
  deviceMap: string;
  hooksDir: string;
  hookTimeoutMs: number;
  freezeDeadlineMs: number;
  /** Where lock records may mount (config mountPrefixes); empty: the default rule. */
  mountPrefixes?: readonly string[];
  log: Logger;
}

export async function guestServe(o: GuestServeOptions): Promise<number> {
  const port = await CharDevicePort.open(o.port);
  const host = new LinuxHost({
    ...(o.deviceMap ? { deviceMapFile: o.deviceMap } : {}),
    hooksDir: o.hooksDir,
    hookTimeoutMs: o.hookTimeoutMs,
    freezeDeadlineMs: o.freezeDeadlineMs,
    ...(o.mountPrefixes?.length ? { mountPrefixes: o.mountPrefixes } : {}),
    log: o.log,
  });
  const server = new GuestServer({ host, port, log: o.log, hooksDir: o.hooksDir, hookTimeoutMs: o.hookTimeoutMs, freezeDeadlineMs: o.freezeDeadlineMs });
  o.log.info({ port: o.port, pid: process.pid, hooksDir: o.hooksDir, deviceMap: o.deviceMap || null }, 'arraylab-agent guest-serve: serving the host side');
  const done = server.start();
  const signalled = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  const sig = await Promise.race([signalled, done.then(() => null)]);
  // Freeze guards thaw when this process's pipe to them closes, so exiting never leaves a
  // filesystem frozen; backup holds end with the process.
  o.log.info({ signal: sig, inFlight: server.inFlight }, 'guest-serve stopping');
  void server.stop();
  return 0;
}
