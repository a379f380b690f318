/**
 * A real filesystem on an arraylab volume: export → qemu-storage-daemon FUSE → losetup →
 * mkfs → mount → write a file tree → unmount → fsck clean → remount and compare checksums,
 * then the same again after the server restarts on the same data directory.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startArraylab, type ArraylabProcess } from '../support/arraylab.js';
import { attachNbd } from '../support/blockAttach.js';
import { checksums, writeTree } from '../support/fsTree.js';
import { requireTool } from '../support/tools.js';

const FILESYSTEMS = [
  { type: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], fsck: (dev: string) => ['fsck.ext4', '-n', '-f', dev] },
  { type: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], fsck: (dev: string) => ['xfs_repair', '-n', dev] },
] as const;

function sh(argv: readonly string[]): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe.each(FILESYSTEMS)('a $type filesystem on an arraylab volume', (fs) => {
  let work: string;
  let dataDir: string;
  let server: ArraylabProcess | undefined;
  const volume = `fs-${fs.type}`;

  beforeAll(async () => {
    requireTool(fs.mkfs[0]);
    requireTool(fs.fsck('x')[0]!);
    requireTool('qemu-storage-daemon');
    requireTool('losetup');
    work = mkdtempSync(join(tmpdir(), `arraylab-fs-${fs.type}-`));
    dataDir = join(work, 'data');
    server = await startArraylab({ dataDir });
    const r = await server.cli(['volume', 'create', volume, '--size', '512MiB']);
    expect(r.code, r.stderr).toBe(0);
  });

  afterAll(async () => {
    await server?.stop().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });

  it('survives mkfs, writes, fsck, remount and a server restart with identical checksums', async () => {
    const mnt = join(work, 'mnt');
    mkdirSync(mnt, { recursive: true });

    // First life: make the filesystem and fill it.
    let dev = await attachNbd({ port: server!.nbdPort, exportName: volume, dir: work });
    let expected: Map<string, string>;
    try {
      sh([...fs.mkfs, dev.loop]);
      sh(['mount', dev.loop, mnt]);
      try {
        writeTree(mnt, 0x5eed + fs.type.length);
        expected = checksums(mnt);
      } finally {
        sh(['umount', mnt]);
      }
      sh(fs.fsck(dev.loop));
      sh(['mount', dev.loop, mnt]);
      try {
        expect(checksums(mnt)).toEqual(expected);
      } finally {
        sh(['umount', mnt]);
      }
    } finally {
      await dev.detach();
    }
    expect(expected.size).toBeGreaterThan(70);

    // Second life: the same data directory, a new server process.
    await server!.stop();
    server = await startArraylab({ dataDir });
    dev = await attachNbd({ port: server.nbdPort, exportName: volume, dir: work });
    try {
      sh(fs.fsck(dev.loop));
      sh(['mount', '-o', 'ro', dev.loop, mnt]);
      try {
        expect(checksums(mnt)).toEqual(expected);
      } finally {
        sh(['umount', mnt]);
      }
    } finally {
      await dev.detach();
    }
  });
});
