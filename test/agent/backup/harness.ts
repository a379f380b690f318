/**
 * Shared set-up of the backup manager tests: one array per test file, an ArrayClient on it,
 * managers over fresh state dirs with a RecordingHost, and a host's I/O on the array's volumes.
 *
 * The test files run in two tiers (vitest.config.ts), with the same assertions:
 *   unit         the real array in this process (inProcessArray.ts: ArrayServer, memory
 *                backend), I/O through its export handles;
 *   integration  a real `arraylab serve` from dist/ (servedArray.ts), I/O by qemu-io and
 *                qemu-img over NBD.
 *
 * addRemote() starts a second array of the same kind and registers it on the first as a remote
 * array (`arraylab remote add`), for backup volumes on a remote array (REC).
 */
import { rmSync } from 'node:fs';
import pino from 'pino';
import { expect } from 'vitest';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import type { CreateVolumeRequest } from '../../../emulator/array/types.js';
import { parseSize } from '../../../proto/util/units.js';
import { BackupManager } from '../../../agent/backup/BackupManager.js';
import { AgentError, type TapePort } from '../../../agent/types.js';
import { makeTempDir } from '../../support/arraylab.js';
import { testTier } from '../../support/tier.js';
import { waitFor } from '../../support/wait.js';
import { startInProcessArray } from './inProcessArray.js';
import { RecordingHost } from './RecordingHost.js';
import { startServedArray } from './servedArray.js';

export const silent = pino({ level: 'silent' });

/** What differs between the tiers: where the array runs, and how a host does I/O on its volumes. */
export interface ArrayUnderTest {
  /** HOST:PORT of its control API. */
  apiAddress: string;
  write(volume: string, pattern: number, offset: number, length: string): Promise<void>;
  /** Resolves when every byte of the range reads as pattern, rejects otherwise. */
  expectPattern(volume: string, pattern: number, offset: number, length: string): Promise<void>;
  /** Whether the two volumes read the same (as qemu-img compare: a larger one's rest reads as zeroes). */
  compare(a: string, b: string): Promise<boolean>;
  /** The volume's device for the RecordingHost's device map: one that copyDevice understands. */
  device(volume: string): string;
  /** Copies device from onto device to, whole (both from device()). */
  copyDevice(from: string, to: string): Promise<void>;
  /** A client that holds the volume open read-write (the array lists it) until stop(). */
  holdOpen(volume: string): Promise<{ stop(): Promise<void> }>;
  stop(): Promise<void>;
}

export interface Lab extends Omit<ArrayUnderTest, 'apiAddress' | 'write' | 'expectPattern'> {
  array: ArrayClient;
  tape: TapePort;
  /** Creates volumes (64 MiB thin by default). */
  mk(names: string[], size?: string, opts?: Partial<CreateVolumeRequest>): Promise<void>;
  manager(opts?: { stateDir?: string; host?: RecordingHost }): Promise<{ m: BackupManager; host: RecordingHost; stateDir: string }>;
  /** Writes the byte pattern over the range (default: the first MiB). */
  write(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
  expectPattern(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
  waitCopy(id: string, until: (s: { state: string } | undefined) => boolean): Promise<void>;
  /** A second array, registered on this one as remote array `name`; stopped with the lab. */
  addRemote(name: string): Promise<RemoteSite>;
}

/** A remote array of the lab: its own API, volumes and host I/O. */
export interface RemoteSite {
  name: string;
  apiAddress: string;
  /** A client of the remote array's own API. */
  array: ArrayClient;
  mk(names: string[], size?: string): Promise<void>;
  write(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
  expectPattern(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
}

const startArray = (): Promise<ArrayUnderTest> => (testTier() === 'unit' ? startInProcessArray(silent) : startServedArray());

export async function startLab(): Promise<Lab> {
  const under = await startArray();
  const array = new ArrayClient(under.apiAddress);
  const managers: BackupManager[] = [];
  const remotes: Array<{ under: ArrayUnderTest; array: ArrayClient }> = [];
  // The array's own tape library, with one cartridge.
  await array.addCartridge('T00001', 1 << 30);
  const tape: TapePort = array;
  return {
    array,
    tape,
    async mk(names, size = '64MiB', opts = {}) {
      // Through the API client (not the CLI in dist/, which other work may be rebuilding).
      for (const n of names) await array.createVolume({ name: n, sizeBytes: parseSize(size), ...opts });
    },
    async manager(opts = {}) {
      const stateDir = opts.stateDir ?? makeTempDir('agent-state-');
      const host = opts.host ?? new RecordingHost();
      const m = await BackupManager.open(stateDir, { array, tape, host, log: silent, pollMs: 20 });
      managers.push(m);
      return { m, host, stateDir };
    },
    write: (volume, pattern, offset = 0, length = '1M') => under.write(volume, pattern, offset, length),
    expectPattern: (volume, pattern, offset = 0, length = '1M') => under.expectPattern(volume, pattern, offset, length),
    compare: (a, b) => under.compare(a, b),
    device: (volume) => under.device(volume),
    copyDevice: (from, to) => under.copyDevice(from, to),
    holdOpen: (volume) => under.holdOpen(volume),
    async waitCopy(id, until) {
      const state = () => array.getCopy(id).catch(() => undefined);
      await waitFor(state, until, {
        timeoutMs: 60_000,
        intervalMs: 50,
        onTimeout: (s) => `copy session ${id} did not reach the expected state within 60 s (now ${s?.state ?? 'gone'})`,
      });
    },
    async addRemote(name) {
      const r = await startArray();
      const client = new ArrayClient(r.apiAddress);
      remotes.push({ under: r, array: client });
      await array.addRemote(name, r.apiAddress);
      return {
        name,
        apiAddress: r.apiAddress,
        array: client,
        async mk(names, size = '64MiB') {
          for (const n of names) await client.createVolume({ name: n, sizeBytes: parseSize(size) });
        },
        write: (volume, pattern, offset = 0, length = '1M') => r.write(volume, pattern, offset, length),
        expectPattern: (volume, pattern, offset = 0, length = '1M') => r.expectPattern(volume, pattern, offset, length),
      };
    },
    async stop() {
      for (const m of managers) await m.close();
      array.close();
      await under.stop();
      for (const r of remotes) {
        r.array.close();
        await r.under.stop();
      }
    },
  };
}

/**
 * Registers a transaction volume that is attached to the RecordingHost (a fake device, not
 * mounted), as one must be to be locked: the agent refuses to back up a volume it cannot find.
 */
export async function registerAttached(
  m: BackupManager,
  host: RecordingHost,
  volume: string,
  opts: Parameters<BackupManager['registerTransaction']>[1] = {},
): ReturnType<BackupManager['registerTransaction']> {
  if (!host.deviceMap.has(volume)) host.deviceMap.set(volume, `/dev/fake-${volume}`);
  return m.registerTransaction(volume, opts);
}

/** The AgentError an operation is refused with (fails the test when it is not refused). */
export async function rejects(p: Promise<unknown>): Promise<AgentError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(AgentError);
    return err as AgentError;
  }
  throw new Error('expected a rejection');
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
