/**
 * Shared set-up of the backup manager tests: one real arraylab per test file, an ArrayClient on
 * it, managers over fresh state dirs with a RecordingHost, and qemu-io / qemu-img over NBD.
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { promisify } from 'node:util';
import pino from 'pino';
import { expect } from 'vitest';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import type { CreateVolumeRequest } from '../../../emulator/array/types.js';
import { parseSize } from '../../../proto/util/units.js';
import { BackupManager } from '../../../agent/backup/BackupManager.js';
import { AgentError, type TapePort } from '../../../agent/types.js';
import { makeTempDir, startArraylab, type Arraylab } from '../../support/arraylab.js';
import { requireTool } from '../../support/tools.js';
import { RecordingHost } from './RecordingHost.js';

const run = promisify(execFile);

export const silent = pino({ level: 'silent' });

export interface Lab {
  lab: Arraylab;
  array: ArrayClient;
  tape: TapePort;
  /** Creates volumes (64 MiB thin by default). */
  mk(names: string[], size?: string, opts?: Partial<CreateVolumeRequest>): Promise<void>;
  manager(opts?: { stateDir?: string; host?: RecordingHost }): Promise<{ m: BackupManager; host: RecordingHost; stateDir: string }>;
  write(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
  /** Resolves when every byte of the range reads as pattern, rejects otherwise. */
  expectPattern(volume: string, pattern: number, offset?: number, length?: string): Promise<void>;
  compare(a: string, b: string): Promise<boolean>;
  waitCopy(id: string, until: (s: { state: string } | undefined) => boolean): Promise<void>;
  stop(): Promise<void>;
}

export async function startLab(): Promise<Lab> {
  const qemuIo = requireTool('qemu-io');
  const qemuImg = requireTool('qemu-img');
  const lab = await startArraylab();
  const array = new ArrayClient(lab.apiAddress);
  const managers: BackupManager[] = [];
  // The array's own tape library, with one cartridge.
  await array.addCartridge('T00001', 1 << 30);
  const tape: TapePort = array;
  return {
    lab,
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
    async write(volume, pattern, offset = 0, length = '1M') {
      await run(qemuIo, ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, lab.nbdUri(volume)]);
    },
    async expectPattern(volume, pattern, offset = 0, length = '1M') {
      // qemu-io exits 0 even when the pattern differs; it prints "Pattern verification failed".
      const { stdout, stderr } = await run(qemuIo, ['-r', '-f', 'raw', '-c', `read -P ${pattern} ${offset} ${length}`, lab.nbdUri(volume)]);
      if (/fail/i.test(stdout + stderr)) throw new Error(`${volume} at ${offset}+${length} does not read as pattern ${pattern}: ${stdout}${stderr}`);
    },
    async compare(a, b) {
      try {
        await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', lab.nbdUri(a), lab.nbdUri(b)]);
        return true;
      } catch (err) {
        if ((err as { code?: number }).code === 1) return false;
        throw err;
      }
    },
    async waitCopy(id, until) {
      const deadline = Date.now() + 60_000;
      for (;;) {
        let s: { state: string } | undefined;
        try {
          s = await array.getCopy(id);
        } catch {
          s = undefined;
        }
        if (until(s)) return;
        if (Date.now() > deadline) throw new Error(`copy session ${id} did not reach the expected state within 60 s (now ${s?.state ?? 'gone'})`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      for (const m of managers) await m.close();
      array.close();
      await lab.stop();
    },
  };
}

/**
 * Registers a transaction volume that is attached to the RecordingHost (a fake device, not
 * mounted), as one must be to be locked: the agent refuses to back up a volume it cannot find.
 */
export async function registerAttached(m: BackupManager, host: RecordingHost, volume: string, opts: Parameters<BackupManager['registerTransaction']>[1] = {}): ReturnType<BackupManager['registerTransaction']> {
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
