/**
 * Copy sessions of real, mounted, busy filesystems. Each case mounts ext4 or xfs on an arraylab
 * volume (qemu-storage-daemon FUSE + losetup), keeps a writer process changing it, and takes the
 * copy at an fsfreeze instant: the copy must fsck clean and hold exactly the files and contents
 * read while frozen, while the source goes on changing. The restore cases damage the source and
 * copy the backup back onto it.
 *
 *   ext4: OPC read while still copying (1 MiB/s), EC suspend, QuickOPC restore (copy reverse)
 *   xfs:  SnapOPC+, EC split + restore from clone (copy restore)
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { attachNbd, type AttachedVolume } from '../support/blockAttach.js';
import { checksums, writeTree } from '../support/fsTree.js';
import { requireTool } from '../support/tools.js';
import { waitFor } from '../support/wait.js';

interface Fs {
  type: 'ext4' | 'xfs';
  mkfs: readonly string[];
  fsck(dev: string): string[];
  /**
   * A frozen ext4 has an empty journal and fscks clean as it is. A frozen xfs leaves its log to
   * be recovered (xfs_repair -n: "valuable metadata changes in a log"; mount -o ro on a read-only
   * device: "cannot mount read-only"), as after a crash: it is mounted first, which replays the
   * log (into an overlay for a copy that must stay as it is), and fscked after the unmount.
   */
  replayBeforeFsck: boolean;
  /** Mount options for a copy: xfs refuses a second filesystem with the source's UUID. */
  mountOptions: string;
  /** Thin volumes, as small as the filesystem allows: every full copy costs seconds here. */
  size: string;
}

const EXT4: Fs = {
  type: 'ext4',
  mkfs: ['mkfs.ext4', '-q', '-F'],
  fsck: (dev) => ['fsck.ext4', '-n', '-f', dev],
  replayBeforeFsck: false,
  mountOptions: '',
  size: '256MiB',
};
const XFS: Fs = {
  type: 'xfs',
  mkfs: ['mkfs.xfs', '-q', '-f'],
  fsck: (dev) => ['xfs_repair', '-n', dev],
  replayBeforeFsck: true,
  mountOptions: 'nouuid',
  size: '320MiB',
}; // mkfs.xfs: more than 300 MB

/** About 10 MiB of files: enough to span many copy units, small enough for a 2-core runner. */
const TREE = { dirs: 4, files: 6 };

type Session = Record<string, unknown> & { id: string; state: string };

function sh(argv: readonly string[]): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** fsck with its exit code and output, so a failure shows what it found. */
function fsck(fs: Fs, dev: string): { code: number | null; out: string } {
  const argv = fs.fsck(dev);
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return { code: r.status, out: `${argv.join(' ')} exited ${r.status}\n${r.stdout}${r.stderr}` };
}

/**
 * A process that keeps creating, overwriting, appending, renaming and deleting files under dir,
 * printing its iteration count; one process, no fork per file, so it leaves the CPU to the server.
 */
const WRITER = `
const fs = require('node:fs'), path = require('node:path'), crypto = require('node:crypto');
const dir = process.argv[1];
fs.mkdirSync(dir, { recursive: true });
let i = 0;
const tick = () => {
  i++;
  const buf = crypto.randomBytes(4096 * (1 + (i % 16)) + (i % 7));
  fs.writeFileSync(path.join(dir, 'f' + (i % 24)), buf);
  fs.appendFileSync(path.join(dir, 'log'), 'iteration ' + i + '\\n');
  if (i % 5 === 0) fs.rmSync(path.join(dir, 'f' + ((i + 12) % 24)), { force: true });
  if (i % 7 === 0) {
    fs.writeFileSync(path.join(dir, 'tmp'), buf);
    fs.renameSync(path.join(dir, 'tmp'), path.join(dir, 'r' + (i % 6)));
  }
  process.stdout.write(i + '\\n');
  setTimeout(tick, 2);
};
tick();
`;

interface Writer {
  /** Iterations completed so far. */
  count(): number;
  /** Resolves once the writer has done n more iterations than now. */
  progress(n: number): Promise<void>;
  stop(): Promise<void>;
}

function startWriter(dir: string): Writer {
  const child: ChildProcess = spawn(process.execPath, ['-e', WRITER, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let count = 0;
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const last = d.trimEnd().split('\n').at(-1);
    if (last) count = Number(last);
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    count: () => count,
    async progress(n) {
      const target = count + n;
      const written = () => {
        if (count < target && child.exitCode !== null) throw new Error(`the writer exited (${child.exitCode}): ${err}`);
        return count;
      };
      await waitFor(written, (c) => c >= target, {
        timeoutMs: 20_000,
        intervalMs: 20,
        onTimeout: (c) => `the writer made no progress (${c}/${target}): ${err}`,
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

describe('copy sessions of mounted filesystems', () => {
  let lab: Arraylab;
  let work: string;
  /** Undone last first after each test, pass or fail. */
  let cleanups: Array<() => unknown> = [];

  beforeAll(async () => {
    for (const tool of ['fsfreeze', 'mkfs.ext4', 'fsck.ext4', 'mkfs.xfs', 'xfs_repair', 'losetup', 'mount', 'umount', 'qemu-storage-daemon']) requireTool(tool);
    lab = await startArraylab({ config: { volumes: [] } });
    work = makeTempDir('arraylab-fs-copy-');
  });

  afterEach(async () => {
    const failures: unknown[] = [];
    for (const undo of cleanups.reverse()) {
      try {
        await undo();
      } catch (err) {
        failures.push(err);
      }
    }
    cleanups = [];
    if (failures.length > 0) throw new AggregateError(failures, `cleanup failed: ${failures.map(String).join('; ')}`);
  });

  afterAll(async () => {
    await lab?.stop();
  });

  const ok = (args: string[]) => cliOk(lab, args);
  const json = async (args: string[]) => (await cliJson(lab, args)) as Session;

  function waitState(id: string, state: string, ms = 30_000): Promise<Session> {
    return waitFor(
      () => json(['copy', 'show', id]),
      (s) => s.state === state,
      {
        timeoutMs: ms,
        onTimeout: (s) => `session ${id} is still ${s.state} (${String(s.copiedBlocks)}/${String(s.totalBlocks)}), not ${state}`,
      },
    );
  }

  /** Ends the session after the test, whatever state it is in (cleanup only). */
  function cancelAfter(id: string): void {
    cleanups.push(async () => {
      const r = await lab.cli(['copy', 'cancel', id]);
      if (r.code !== 0 && !r.stderr.includes(`no copy session ${id}`)) throw new Error(`copy cancel ${id}: ${r.stderr}`);
    });
  }

  async function createVolumes(fs: Fs, ...names: string[]): Promise<void> {
    for (const n of names) await ok(['volume', 'create', n, '--size', fs.size, '--thin']);
  }

  async function attach(volume: string, opts: { readOnly?: boolean; overlay?: boolean } = {}): Promise<AttachedVolume> {
    const dev = await attachNbd({ port: lab.nbdPort, exportName: volume, dir: work, ...opts });
    cleanups.push(() => dev.detach());
    return dev;
  }

  /** Mounts dev; the returned unmount is idempotent and also runs after the test. */
  function mount(dev: string, name: string, options?: string): { mnt: string; unmount(): void } {
    const mnt = join(work, name);
    mkdirSync(mnt, { recursive: true });
    sh(['mount', ...(options ? ['-o', options] : []), dev, mnt]);
    let mounted = true;
    const unmount = () => {
      if (!mounted) return;
      sh(['umount', mnt]);
      mounted = false;
    };
    cleanups.push(unmount);
    return { mnt, unmount };
  }

  interface Source {
    dev: AttachedVolume;
    mnt: string;
    writer: Writer;
    /** Stops the writer, unmounts and detaches (for a restore onto the volume). */
    close(): Promise<void>;
  }

  /** mkfs + mount on a new volume, a seeded tree, and a writer busy in churn/. */
  async function busySource(fs: Fs, volume: string): Promise<Source> {
    const dev = await attach(volume);
    sh([...fs.mkfs, dev.loop]);
    const m = mount(dev.loop, `${volume}.mnt`);
    writeTree(m.mnt, 0xc0b1 + volume.length, TREE);
    const writer = startWriter(join(m.mnt, 'churn'));
    // A writer blocked by a freeze cannot die: thaw first (harmless if not frozen).
    cleanups.push(async () => {
      spawnSync('fsfreeze', ['-u', m.mnt]);
      await writer.stop();
    });
    await writer.progress(20);
    return {
      dev,
      mnt: m.mnt,
      writer,
      async close() {
        await writer.stop();
        m.unmount();
        await dev.detach();
      },
    };
  }

  /**
   * Freezes the filesystem, records its checksums as of the freeze instant (reads do not block
   * on a frozen filesystem), runs cut (the copy operation) and thaws, whatever happens.
   */
  async function atFreeze<T>(mnt: string, cut: () => Promise<T>): Promise<{ frozen: Map<string, string>; result: T }> {
    sh(['fsfreeze', '-f', mnt]);
    try {
      const frozen = checksums(mnt);
      return { frozen, result: await cut() };
    } finally {
      sh(['fsfreeze', '-u', mnt]);
    }
  }

  /**
   * A copy must fsck clean and hold exactly the expected files. Attached read-only (ext4) or
   * through a throwaway overlay (xfs, for the log replay) unless writable: then mounted
   * read-write, as a host would after a restore.
   */
  async function expectImage(fs: Fs, volume: string, expected: Map<string, string>, opts: { writable?: boolean } = {}): Promise<void> {
    const writable = opts.writable ?? false;
    const dev = await attach(volume, writable ? {} : fs.replayBeforeFsck ? { overlay: true } : { readOnly: true });
    const expectFsckClean = () => {
      const f = fsck(fs, dev.loop);
      expect(f.code, f.out).toBe(0);
    };
    if (!fs.replayBeforeFsck) expectFsckClean();
    const ro = !writable && !fs.replayBeforeFsck;
    const m = mount(dev.loop, `${volume}.check`, [ro ? 'ro' : 'rw', fs.mountOptions].filter(Boolean).join(','));
    try {
      expect(checksums(m.mnt)).toEqual(expected);
    } finally {
      m.unmount();
    }
    if (fs.replayBeforeFsck) expectFsckClean();
    await dev.detach();
  }

  /** The source went on changing after the cut: the copy is isolated from it. */
  async function expectSourceMovedOn(src: Source, frozen: Map<string, string>): Promise<void> {
    await src.writer.progress(20);
    // Frozen again for a moment: the writer deletes files, so a walk of the live tree can race.
    const { frozen: now } = await atFreeze(src.mnt, async () => undefined);
    expect(now).not.toEqual(frozen);
    expect(now.get('churn/log')).not.toBe(frozen.get('churn/log'));
  }

  /** Deletes and overwrites files, then wipes the superblock: nothing mounts without a restore. */
  async function damage(fs: Fs, volume: string): Promise<void> {
    const dev = await attach(volume);
    const m = mount(dev.loop, `${volume}.damage`);
    rmSync(join(m.mnt, 'dir0'), { recursive: true });
    writeFileSync(join(m.mnt, 'dir1', 'sub1', 'file0.bin'), Buffer.alloc(100_000, 0xee));
    writeFileSync(join(m.mnt, 'README.txt'), 'damaged\n');
    m.unmount();
    sh(['dd', 'if=/dev/zero', `of=${dev.loop}`, 'bs=4096', 'count=1', 'oflag=direct', 'status=none']);
    const r = spawnSync('mount', ['-o', 'ro', dev.loop, m.mnt], { encoding: 'utf8' });
    if (r.status === 0) sh(['umount', m.mnt]);
    expect(r.status, `${fs.type} mounted after its superblock was wiped`).not.toBe(0);
    await dev.detach();
  }

  it('ext4, OPC: the destination is the freeze-instant image while still copying at 1 MiB/s, and after', async () => {
    await createVolumes(EXT4, 'opc-src', 'opc-dst');
    const src = await busySource(EXT4, 'opc-src');
    const { frozen, result: started } = await atFreeze(src.mnt, () =>
      json(['copy', 'start', '--type', 'opc', '--src', 'opc-src', '--dst', 'opc-dst', '--rate', '1']),
    );
    cancelAfter(started.id);
    expect(started).toMatchObject({ type: 'opc', state: 'copying', source: 'opc-src', destination: 'opc-dst', rateMiBs: 1 });
    expect(frozen.size).toBeGreaterThan(25);

    // The source changes first, so the destination is read after copy-on-writes.
    await expectSourceMovedOn(src, frozen);
    await expectImage(EXT4, 'opc-dst', frozen);
    // Read while the background copy had most of the volume still to do.
    const during = await json(['copy', 'show', started.id]);
    expect(during.state).toBe('copying');
    expect(during.copiedBlocks as number).toBeLessThan(during.totalBlocks as number);

    // Lifted: the session completes and ends; the destination is a plain volume with the image.
    await ok(['copy', 'rate', started.id, '--rate', 'unthrottled']);
    const running = async () => ((await cliJson(lab, ['copy', 'list'])).sessions as Session[]).some((s) => s.id === started.id);
    await waitFor(running, (r) => !r, { timeoutMs: 30_000, onTimeout: () => 'the OPC session did not complete within 30 s' });
    await expectSourceMovedOn(src, frozen);
    await expectImage(EXT4, 'opc-dst', frozen);
  }, 60_000);

  it('ext4, EC suspend: the destination is the suspend-instant image', async () => {
    await createVolumes(EXT4, 'ec-src', 'ec-dst');
    const src = await busySource(EXT4, 'ec-src');
    const started = await json(['copy', 'start', '--type', 'ec', '--src', 'ec-src', '--dst', 'ec-dst']);
    cancelAfter(started.id);
    await waitState(started.id, 'equivalent');
    // Mirrored writes go on while the pair is equivalent.
    await src.writer.progress(10);

    const { frozen, result: suspended } = await atFreeze(src.mnt, () => json(['copy', 'suspend', started.id]));
    expect(suspended).toMatchObject({ id: started.id, type: 'ec', state: 'suspended', source: 'ec-src', destination: 'ec-dst' });

    await expectSourceMovedOn(src, frozen);
    await expectImage(EXT4, 'ec-dst', frozen);
    expect((await json(['copy', 'show', started.id])).state).toBe('suspended');
  }, 60_000);

  it('ext4, QuickOPC restore: copy reverse puts the backup-instant image back onto the damaged source at once', async () => {
    await createVolumes(EXT4, 'qo-src', 'qo-bak');
    const src = await busySource(EXT4, 'qo-src');
    const { frozen, result: started } = await atFreeze(src.mnt, () => json(['copy', 'start', '--type', 'quickopc', '--src', 'qo-src', '--dst', 'qo-bak']));
    cancelAfter(started.id);
    expect(started).toMatchObject({ type: 'quickopc', source: 'qo-src', destination: 'qo-bak' });
    await waitState(started.id, 'tracking');
    await expectSourceMovedOn(src, frozen);

    // The restore overwrites the volume under the filesystem: nothing may have it mounted.
    await src.close();
    await damage(EXT4, 'qo-src');

    // No background copy, so the restored image can only come from the instant reverse.
    await ok(['copy', 'rate', started.id, '--rate', '0']);
    const reversed = await json(['copy', 'reverse', started.id]);
    expect(reversed).toMatchObject({ id: started.id, type: 'quickopc', state: 'copying', source: 'qo-bak', destination: 'qo-src', reversed: true });
    expect(reversed.copiedBlocks as number).toBeLessThan(reversed.totalBlocks as number);
    // The restored volume is usable read-write at once, while the units are still to copy back.
    await expectImage(EXT4, 'qo-src', frozen, { writable: true });
    expect((await json(['copy', 'show', started.id])).state).toBe('copying');

    await ok(['copy', 'rate', started.id, '--rate', 'unthrottled']);
    await waitState(started.id, 'tracking');
    await expectImage(EXT4, 'qo-src', frozen, { writable: true });
  }, 60_000);

  it('xfs, SnapOPC+: the snap volume reads as the freeze-instant image', async () => {
    await createVolumes(XFS, 'snap-src', 'snap-gen');
    const src = await busySource(XFS, 'snap-src');
    const { frozen, result: started } = await atFreeze(src.mnt, () =>
      json(['copy', 'start', '--type', 'snapopcplus', '--src', 'snap-src', '--dst', 'snap-gen']),
    );
    cancelAfter(started.id);
    expect(started).toMatchObject({ type: 'snapopcplus', state: 'snap', source: 'snap-src', destination: 'snap-gen', generation: 1 });
    expect(frozen.size).toBeGreaterThan(25);

    await expectSourceMovedOn(src, frozen);
    // Snap volumes are read-only to hosts: the log replay goes to the overlay.
    await expectImage(XFS, 'snap-gen', frozen);
    expect((await json(['copy', 'show', started.id])).state).toBe('snap');
  }, 60_000);

  it('xfs, EC split and restore from clone: the original gets the split-instant image back', async () => {
    await createVolumes(XFS, 'rc-orig', 'rc-clone');
    const src = await busySource(XFS, 'rc-orig');
    const started = await json(['copy', 'start', '--type', 'ec', '--src', 'rc-orig', '--dst', 'rc-clone']);
    cancelAfter(started.id);
    await waitState(started.id, 'equivalent');
    await src.writer.progress(10);

    const { frozen, result: split } = await atFreeze(src.mnt, () => json(['copy', 'split', started.id]));
    expect(split).toMatchObject({ id: started.id, state: 'split', source: 'rc-orig', destination: 'rc-clone' });
    await expectSourceMovedOn(src, frozen);
    await expectImage(XFS, 'rc-clone', frozen);

    await src.close();
    await damage(XFS, 'rc-orig');

    const restoring = await json(['copy', 'restore', started.id]);
    expect(restoring).toMatchObject({ id: started.id, type: 'ec', source: 'rc-clone', destination: 'rc-orig', reversed: true });
    expect(restoring.state).toMatch(/^(copying|equivalent)$/);
    // While copying the original is not readable by hosts; once equivalent, suspend for read-write.
    await waitState(started.id, 'equivalent');
    expect(await json(['copy', 'suspend', started.id])).toMatchObject({ state: 'suspended', source: 'rc-clone', destination: 'rc-orig' });
    await expectImage(XFS, 'rc-orig', frozen, { writable: true });
  }, 60_000);
});
