/**
 * Which mount points the agent mounts, unmounts, freezes or thaws when it replays a lock record
 * (post-processing, resource-match, a guest's unlock). A record is data the store (or a guest)
 * hands back: before it becomes a `mount` or `fsfreeze` as root, each mount point must be an
 * absolute, normalised path without `..`, under an allowed prefix (config `mountPrefixes`);
 * with none configured, anything absolute except /, /boot, /proc, /sys, /dev and /run (and
 * what is under those but /).
 */
import { posix } from 'node:path';

/** Refused by default: the system's own mount points (and what is under them, but for /). */
export const SYSTEM_MOUNT_TREES = ['/boot', '/proc', '/sys', '/dev', '/run'] as const;

function isUnder(path: string, prefix: string): boolean {
  return prefix === '/' || path === prefix || path.startsWith(`${prefix}/`);
}

/** Why a path cannot be a mount point prefix setting ('' when it can). */
export function prefixProblem(prefix: string): string {
  if (!prefix.startsWith('/') || posix.normalize(prefix) !== prefix || (prefix.length > 1 && prefix.endsWith('/')))
    return `${JSON.stringify(prefix)} is not an absolute, normalised path (e.g. /srv or /mnt)`;
  return '';
}

/**
 * Why the agent must not mount or unmount at mountPoint from a record ('' when it may).
 * prefixes: the allowed prefixes; empty or missing: the default rule above.
 */
export function mountPointProblem(mountPoint: unknown, prefixes: readonly string[] = []): string {
  if (typeof mountPoint !== 'string' || mountPoint === '') return 'the mount point is empty';
  const shown = JSON.stringify(mountPoint);
  if (!mountPoint.startsWith('/')) return `mount point ${shown} is not an absolute path`;
  if (/[\0\n]/.test(mountPoint)) return `mount point ${shown} holds a NUL or newline`;
  if (mountPoint.split('/').includes('..')) return `mount point ${shown} has a ".." component`;
  if (posix.normalize(mountPoint) !== mountPoint || (mountPoint.length > 1 && mountPoint.endsWith('/')))
    return `mount point ${shown} is not normalised (it should read ${JSON.stringify(posix.normalize(mountPoint).replace(/(.)\/$/, '$1'))})`;
  if (prefixes.length > 0) {
    if (!prefixes.some((p) => isUnder(mountPoint, p)))
      return `mount point ${mountPoint} is not under an allowed prefix (${prefixes.join(', ')}; config mountPrefixes)`;
    return '';
  }
  if (mountPoint === '/') return 'mount point / is the root filesystem';
  const sys = SYSTEM_MOUNT_TREES.find((t) => isUnder(mountPoint, t));
  if (sys) return `mount point ${mountPoint} is ${mountPoint === sys ? '' : 'under '}${sys}, a system directory`;
  return '';
}
