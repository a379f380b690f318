/**
 * Real peers for the tests. A missing tool fails the test that needs it, with the Debian
 * package to install: in CI (.ci/run installs them all) a missing tool is a failure, never a skip.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { refuseInUnitTier } from './tier.js';

const PACKAGE_OF: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-storage-daemon': 'qemu-system-common',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdfuse: 'libnbd-bin',
  nbdkit: 'nbdkit',
  fio: 'fio',
  'mkfs.ext4': 'e2fsprogs',
  'fsck.ext4': 'e2fsprogs',
  'mkfs.xfs': 'xfsprogs',
  xfs_repair: 'xfsprogs',
  losetup: 'mount',
  fusermount3: 'fuse3',
  openssl: 'openssl',
  'iscsi-ls': 'libiscsi-bin',
  'iscsi-inq': 'libiscsi-bin',
  'iscsi-test-cu': 'libiscsi-bin',
  tgtd: 'tgt',
  tgtadm: 'tgt',
  jq: 'jq',
  chromium: 'chromium',
};

const found = new Map<string, string>();

/** Absolute path of a tool, or a thrown error naming the package that provides it. */
export function requireTool(name: string): string {
  refuseInUnitTier(`the external tool ${name}`);
  const cached = found.get(name);
  if (cached) return cached;
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    const path = `${dir}/${name}`;
    try {
      accessSync(path, constants.X_OK);
      found.set(name, path);
      return path;
    } catch {
      // try the next directory
    }
  }
  const pkg = PACKAGE_OF[name] ?? '(unknown package)';
  throw new Error(`required tool ${name} is not installed; install Debian package ${pkg} (bash .ci/run does)`);
}

/** Debian's python3, which has the libnbd bindings (nbdsh); the python3 first on PATH may not. */
export const SYSTEM_PYTHON = '/usr/bin/python3';

export function requireNbdsh(): string {
  refuseInUnitTier('python3 with the libnbd bindings');
  try {
    execFileSync(SYSTEM_PYTHON, ['-c', 'import nbd'], { stdio: 'pipe' });
  } catch {
    throw new Error(`python module nbd is not importable by ${SYSTEM_PYTHON}; install Debian package python3-libnbd (bash .ci/run does)`);
  }
  return SYSTEM_PYTHON;
}
