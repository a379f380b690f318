/**
 * A real filesystem on an arraylab volume: export → qemu-storage-daemon FUSE → losetup →
 * mkfs → mount → write a file tree → unmount → fsck clean → remount and compare checksums,
 * then the same again after the server restarts on the same data directory.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { startArraylab, type ArraylabProcess } from '../support/arraylab.js';
import { attachNbd } from '../support/blockAttach.js';
import { requireTool } from '../support/tools.js';

const FILESYSTEMS = [
  { type: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], fsck: (dev: string) => ['fsck.ext4', '-n', '-f', dev] },
  { type: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], fsck: (dev: string) => ['xfs_repair', '-n', dev] },
] as const;

/** A deterministic tree of files of assorted sizes, some sparse-looking, some odd-sized. */
function writeTree(root: string, seed: number): void {
  let x = seed >>> 0;
  const rand = () => {
    // xorshift32: a seeded generator so a failure can be replayed
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  for (let d = 0; d < 6; d++) {
    const dir = join(root, `dir${d}`, `sub${d % 3}`);
    mkdirSync(dir, { recursive: true });
    for (let f = 0; f < 12; f++) {
      const size = [0, 1, 511, 4096, 65537, 1 << 20, 3 * (1 << 20) + 123][rand() % 7]!;
      const buf = Buffer.allocUnsafe(size);
      for (let i = 0; i + 4 <= size; i += 4) buf.writeUInt32LE(rand(), i);
      for (let i = size - (size % 4); i < size; i++) buf[i] = rand() & 0xff;
      writeFileSync(join(dir, `file${f}.bin`), buf);
    }
  }
  writeFileSync(join(root, 'README.txt'), `arraylab filesystem test, seed ${seed}\n`);
}

function checksums(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (name === 'lost+found') continue;
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(root, p), createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(root);
  return out;
}

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
