/**
 * A real filesystem on an arraylab volume reached over iSCSI: qemu-storage-daemon's iSCSI
 * initiator (libiscsi) → FUSE export → losetup → mkfs → mount → write a file tree → unmount →
 * log out; then a new session: fsck clean → mount → the same checksums. The second session
 * proves the data is on the array, not in an initiator's cache.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { attachIscsi, type AttachedVolume } from '../support/blockAttach.js';
import { checksums, writeTree } from '../support/fsTree.js';
import { iscsiPortalOf, qemuIscsiOpts, type Portal } from '../support/iscsi.js';
import { requireTool } from '../support/tools.js';

const FILESYSTEMS = [
  { type: 'ext4', lun: 0, mkfs: ['mkfs.ext4', '-q', '-F'], fsck: (dev: string) => ['fsck.ext4', '-n', '-f', dev] },
  { type: 'xfs', lun: 1, mkfs: ['mkfs.xfs', '-q', '-f'], fsck: (dev: string) => ['xfs_repair', '-n', dev] },
] as const;

function sh(argv: readonly string[]): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

let lab: Arraylab;
let portal: Portal;
let work: string;

beforeAll(async () => {
  requireTool('qemu-storage-daemon');
  requireTool('losetup');
  work = makeTempDir('arraylab-iscsi-fs-');
  // 512 MiB: xfs wants at least 300 MiB. 512-byte blocks: see realClients.test.ts on qemu and thin 4096-byte LUNs.
  lab = await startArraylab({
    config: {
      volumes: [
        { name: 'fs-ext4', size: '512MiB' },
        { name: 'fs-xfs', size: '512MiB' },
      ],
    },
    extraArgs: ['--iscsi', '127.0.0.1:0'],
  });
  portal = iscsiPortalOf(lab);
});

afterAll(async () => {
  await lab?.stop();
});

describe.each(FILESYSTEMS)('a $type filesystem on an arraylab volume over iSCSI', (fs) => {
  const attach = (): Promise<AttachedVolume> =>
    attachIscsi({
      blockdev: qemuIscsiOpts(portal, fs.lun, { initiatorName: `iqn.2026-11.lab.arraylab.test:fs-${fs.type}` }),
      name: `fs-${fs.type}`,
      dir: work,
    });

  it('survives mkfs, writes, logout, fsck and a remount in a new session with identical checksums', async () => {
    requireTool(fs.mkfs[0]);
    requireTool(fs.fsck('x')[0]!);
    const mnt = join(work, `mnt-${fs.type}`);
    mkdirSync(mnt, { recursive: true });

    let expected: Map<string, string>;
    let dev = await attach();
    try {
      sh([...fs.mkfs, dev.loop]);
      sh(['mount', dev.loop, mnt]);
      try {
        writeTree(mnt, 0x15c5 + fs.type.length);
        expected = checksums(mnt);
      } finally {
        sh(['umount', mnt]);
      }
    } finally {
      await dev.detach();
    }
    expect(expected.size).toBeGreaterThan(70);

    dev = await attach();
    try {
      sh(fs.fsck(dev.loop)); // exits non-zero on any inconsistency
      sh(['mount', dev.loop, mnt]);
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
