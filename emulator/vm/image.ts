/**
 * The built guest image (vm-images/build.sh writes vm-images/build/image.json): where its kernel
 * and initramfs are, and what they hold.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface GuestImage {
  /** Absolute paths (image.json holds them relative to the build directory). */
  kernel: string;
  initrd: string;
  /** uname -r in the guest, e.g. 6.1.0-57-cloud-amd64. */
  kernelRelease: string;
  kernelPackage: string;
  kernelPackageVersion: string;
  /** node --version of the runtime in the image. */
  node: string;
  /** Whether the agent is in it (images built from the agent's Debian package always have it). */
  agent: boolean;
  /** The agent's Debian package installed into it (scripts/package-agent.sh), and its SHA-256. */
  agentPackage?: string;
  agentPackageSha256?: string;
  stamp: string;
}

/** vm-images/ of this checkout, found upwards from this file (it runs from src or dist/). */
export function vmImagesDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'vm-images', 'build.sh'))) return join(dir, 'vm-images');
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find vm-images/build.sh above ${fileURLToPath(import.meta.url)}; run from an arraylab checkout`);
    dir = up;
  }
}

export function readGuestImage(buildDir = join(vmImagesDir(), 'build')): GuestImage {
  const file = join(buildDir, 'image.json');
  if (!existsSync(file)) throw new Error(`no guest image in ${buildDir}; build it with: bash ${join(dirname(buildDir), 'build.sh')}`);
  const image = JSON.parse(readFileSync(file, 'utf8')) as GuestImage;
  // Paths are relative to the build directory, so a moved checkout keeps a valid image.
  image.kernel = resolve(buildDir, image.kernel);
  image.initrd = resolve(buildDir, image.initrd);
  for (const path of [image.kernel, image.initrd]) {
    if (!existsSync(path))
      throw new Error(`guest image ${file} names ${path}, which is missing; rebuild it with: bash ${join(dirname(buildDir), 'build.sh')} --force`);
  }
  return image;
}
