/**
 * ext4 and xfs on a volume with a volatile write cache recover from a power cut (issue 15):
 * export → qemu-storage-daemon FUSE → losetup → mkfs → mount → a file tree, synced; a second
 * tree whose data the kernel is told to write back (fadvise DONTNEED: writes, no flush), so
 * the array holds acknowledged, unflushed writes; then `arraylab power-cut` while mounted.
 * Afterwards, on a fresh attachment: mount (journal or log replay), unmount, fsck.ext4 -n -f
 * or xfs_repair -n report a clean filesystem, and the synced tree reads back unchanged.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PowerCutView } from '../../proto/views.js';
import { cliJson, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { attachNbd, type AttachedVolume } from '../support/blockAttach.js';
import { checksums, writeTree } from '../support/fsTree.js';
import { requireTool, SYSTEM_PYTHON } from '../support/tools.js';
import { sleep } from '../support/wait.js';

const FILESYSTEMS = [
  // No lazy initialisation: no background writes of the kernel's own after mkfs.
  { type: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0'], fsck: (dev: string) => ['fsck.ext4', '-n', '-f', dev] },
  { type: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], fsck: (dev: string) => ['xfs_repair', '-n', dev] },
] as const;
const POLICIES = ['drop-unflushed', 'torn'] as const;

let lab: Arraylab;
let work: string;

function sh(argv: readonly string[], timeout = 120_000): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout });
}

/** Starts writeback of every file under root without a flush (posix_fadvise DONTNEED on dirty pages). */
function writeBack(root: string): void {
  const script = [
    'import os, sys',
    'for d, _, fs in os.walk(sys.argv[1]):',
    '    for f in fs:',
    '        fd = os.open(os.path.join(d, f), os.O_RDONLY)',
    '        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)',
    '        os.close(fd)',
  ].join('\n');
  execFileSync(SYSTEM_PYTHON, ['-c', script, root]);
}

/** After a cut the device fails every I/O: unmount anyway (lazily if the kernel insists). */
function forceUnmount(mnt: string): void {
  try {
    sh(['umount', mnt], 60_000);
  } catch {
    sh(['umount', '-l', mnt]);
  }
}

beforeAll(async () => {
  for (const fs of FILESYSTEMS) {
    requireTool(fs.mkfs[0]);
    requireTool(fs.fsck('x')[0]!);
  }
  requireTool('qemu-storage-daemon');
  requireTool('losetup');
  work = makeTempDir('arraylab-powercut-fs-');
  lab = await startArraylab({ dataDir: join(work, 'data'), config: { volumes: [] } });
});

afterAll(async () => {
  await lab?.stop();
});

describe.each(FILESYSTEMS)('$type on a volatile-cache volume', (fs) => {
  it.each(POLICIES)('recovers from a %s power cut: journal replay, a clean check, the synced files intact', async (policy) => {
    const volume = `${fs.type}-${policy}`;
    // xfs needs 300 MiB; thin, so only what the filesystem writes is allocated.
    const r = await lab.cli(['volume', 'create', volume, '--size', '320MiB', '--write-cache', 'volatile']);
    expect(r.code, r.stderr).toBe(0);
    const mnt = join(work, `mnt-${volume}`);
    mkdirSync(mnt, { recursive: true });

    let dev: AttachedVolume = await attachNbd({ port: lab.nbdPort, exportName: volume, dir: work });
    let synced: Map<string, string>;
    let report: PowerCutView;
    try {
      sh([...fs.mkfs, dev.loop]);
      sh(['mount', dev.loop, mnt]);
      writeTree(join(mnt, 'synced'), 0x5eed, { dirs: 2, files: 5 });
      sh(['sync', '-f', mnt]);
      synced = checksums(join(mnt, 'synced'));
      writeTree(join(mnt, 'unsynced'), 0xdead, { dirs: 2, files: 5 });
      writeBack(join(mnt, 'unsynced'));
      // Wait until the written-back data is in the array's cache, then cut at once.
      for (let i = 0; ((await cliJson(lab, ['volume', 'show', volume, '--json'])).writeCacheDirtyBytes as number) === 0; i++) {
        if (i > 100) throw new Error('no unflushed write reached the array');
        await sleep(50);
      }
      const cut = await lab.cli(['power-cut', '--policy', policy, '--seed', '11', '--json']);
      expect(cut.code, cut.stderr).toBe(0);
      report = JSON.parse(cut.stdout) as PowerCutView;
      forceUnmount(mnt);
    } finally {
      await dev.detach();
    }
    const lost = report.volumes.find((v) => v.name === volume)!;
    expect(lost.writesLost + lost.writesTorn).toBeGreaterThan(0);

    // The array is back: a fresh attachment, as after the host reconnects.
    dev = await attachNbd({ port: lab.nbdPort, exportName: volume, dir: work });
    try {
      sh(['mount', dev.loop, mnt]); // replays the journal (ext4) or the log (xfs)
      sh(['umount', mnt]);
      sh(fs.fsck(dev.loop)); // exits non-zero on any inconsistency
      sh(['mount', '-o', 'ro', dev.loop, mnt]);
      try {
        expect(checksums(join(mnt, 'synced'))).toEqual(synced);
      } finally {
        sh(['umount', mnt]);
      }
    } finally {
      await dev.detach();
    }
  });
});
