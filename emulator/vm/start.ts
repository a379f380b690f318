/**
 * `arraylab vm start` and `lab up` share this: check the name, find the image and qemu, ask the
 * array where the volumes are, start the guest detached, and optionally wait for the agent.
 * With an NBD PSK the guest's NBD disks go over TLS-PSK as that identity (its host's volumes);
 * the key is copied into the VM's own directory (0600), which vm stop removes.
 */
import type { Logger } from 'pino';
import type { ArrayClient } from '../../proto/ArrayClient.js';
import { resolveDisks, type AttachRequest } from './attach.js';
import { findQemu, NBD_PSK_DIR, startDetachedGuest } from './detached.js';
import type { NbdPsk } from './nbdPsk.js';
import { readGuestImage } from './image.js';
import { readRecord, vmDir, vmState, writeRecord, type VmRecord } from './registry.js';
import { join } from 'node:path';

export const VM_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export interface StartVmOptions {
  client: ArrayClient;
  name: string;
  attach: AttachRequest[];
  memoryMiB?: number;
  runDir: string;
  log: Logger;
  /** Also wait (this long, ms) for the in-guest agent's hello on its port. */
  waitAgentMs?: number;
  bootTimeoutMs?: number;
  /** NBD over TLS-PSK as this identity (`host set HOST --nbd-psk`): needed under host affinity. */
  nbdPsk?: NbdPsk;
}

export interface StartedVm extends VmRecord {
  /** The agent's hello answer, with waitAgentMs. */
  agentHello?: unknown;
  agentMs?: number;
}

export async function startVm(o: StartVmOptions): Promise<StartedVm> {
  if (!VM_NAME_PATTERN.test(o.name))
    throw new Error(`vm name ${JSON.stringify(o.name)} is not valid; use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  const existing = readRecord(o.runDir, o.name);
  if (existing && vmState(existing) !== 'exited') {
    throw new Error(
      `vm name ${o.name} is taken: it is running (pid ${existing.pid}, since ${existing.started}); stop it with: arraylab vm stop ${o.name}, or choose another name`,
    );
  }
  findQemu();
  const image = readGuestImage();
  const pskDir = join(vmDir(o.runDir, o.name), NBD_PSK_DIR);
  const disks = await resolveDisks(o.client, o.name, o.attach, o.nbdPsk ? { identity: o.nbdPsk.identity, pskDir } : undefined);
  const rec: StartedVm = await startDetachedGuest({
    name: o.name,
    kernel: image.kernel,
    initrd: image.initrd,
    disks,
    runDir: o.runDir,
    api: o.client.address,
    log: o.log,
    // A VM of the lab runs its agent on the agent port, as a server runs qemu-guest-agent.
    cmdline: 'arraylab.agent=on',
    ...(o.memoryMiB !== undefined ? { memoryMiB: o.memoryMiB } : {}),
    ...(o.bootTimeoutMs !== undefined ? { bootTimeoutMs: o.bootTimeoutMs } : {}),
    ...(o.nbdPsk ? { nbdPsk: o.nbdPsk } : {}),
  });
  if (o.waitAgentMs !== undefined) {
    const t0 = Date.now();
    // The agent's own handshake (agent/guest/, loaded only when asked for).
    const { waitForGuestAgent } = await import('../../proto/guest/waitAgent.js');
    rec.agentHello = await waitForGuestAgent(rec.sockets.agent, o.waitAgentMs, o.log).catch((err: Error) => {
      throw new Error(`vm ${o.name}: ${err.message}; look with: arraylab vm console ${o.name}`);
    });
    rec.agentMs = Date.now() - Date.parse(rec.started);
    writeRecord(o.runDir, rec);
    o.log.debug({ vm: o.name, waitedMs: Date.now() - t0 }, 'agent said hello');
  }
  return rec;
}
