/**
 * Shared set-up of the backup manager tests: one real arraylab per test file, an ArrayClient on
 * it, managers over fresh state dirs with a RecordingHost, and qemu-io / qemu-img over NBD.
 */
import { execFile } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { ArrayClient } from '../../../emulator/api/ArrayClient.js';
import type { CreateVolumeRequest } from '../../../emulator/array/types.js';
import { parseSize } from '../../../emulator/units.js';
import { BackupManager } from '../../../agent/backup/BackupManager.js';
import type { CartridgeView, HostProgress, TapePort, TapeRecordView, TapeRestoreView } from '../../../agent/types.js';
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
  const lab = await startArraylab({ iscsi: false });
  const array = new ArrayClient(lab.apiAddress);
  const managers: BackupManager[] = [];
  const tape = await realTapeOr(array, () => new FileTape(lab, qemuImg));
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
 * The array's own tape library when ArrayClient has it and the server built into dist/ serves
 * it (a cartridge can be added); otherwise FileTape. Work on the tape service is landing in
 * parallel: the fallback goes once it is in every build.
 */
async function realTapeOr(array: ArrayClient, fallback: () => TapePort): Promise<TapePort> {
  const client = array as unknown as Partial<TapePort> & { addCartridge?: (label: string, capacityBytes: number) => Promise<unknown> };
  if (typeof client.writeTape !== 'function' || typeof client.addCartridge !== 'function') return fallback();
  try {
    await client.addCartridge('T00001', 1 << 30);
    return array as unknown as TapePort;
  } catch (err) {
    console.warn(`backup tests: the array's tape service is not usable (${(err as Error).message}); using a file-backed tape double`);
    return fallback();
  }
}

/**
 * A tape library for the tests until ArrayClient has the array's own (writeTape/restoreTape):
 * each record is the volume's image copied with qemu-img into a file.
 */
class FileTape implements TapePort {
  private readonly dir = makeTempDir('agent-tape-');
  private readonly records: TapeRecordView[] = [];
  readonly writes: string[] = [];

  constructor(
    private readonly lab: Arraylab,
    private readonly qemuImg: string,
  ) {}

  async listCartridges(): Promise<CartridgeView[]> {
    return [{ label: 'T00001', capacityBytes: 1 << 30, usedBytes: 0, recordCount: this.records.length, createdAt: new Date().toISOString() }];
  }

  async writeTape(req: { volume: string; cartridge?: string; tag?: string }, onProgress?: (p: HostProgress) => void): Promise<TapeRecordView> {
    if (req.cartridge === 'BROKEN') throw new Error(`cartridge BROKEN is write-protected; choose another cartridge`);
    const record = this.records.length + 1;
    const file = join(this.dir, `r${record}.img`);
    await run(this.qemuImg, ['convert', '-f', 'raw', '-O', 'raw', this.lab.nbdUri(req.volume), file]);
    onProgress?.({ doneBytes: 1, totalBytes: 1 });
    const rec: TapeRecordView = { cartridge: req.cartridge ?? 'T00001', record, volume: req.volume, tag: req.tag ?? '', sizeBytes: 0, blockSize: 512, dataBytes: 0, sha256: 'f'.repeat(64), createdAt: new Date().toISOString() };
    this.records.push(rec);
    return rec;
  }

  async restoreTape(req: { cartridge: string; record: number; volume: string; force?: boolean }): Promise<TapeRestoreView> {
    const file = join(this.dir, `r${req.record}.img`);
    await run(this.qemuImg, ['convert', '-n', '-f', 'raw', '-O', 'raw', file, this.lab.nbdUri(req.volume)]);
    return { cartridge: req.cartridge, record: req.record, volume: req.volume, bytes: 0, sha256: 'f'.repeat(64) };
  }
}

export function cleanup(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
