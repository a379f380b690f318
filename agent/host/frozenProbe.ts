/**
 * Is a filesystem frozen? Linux does not say (not in mountinfo, not in sysfs), and asking with
 * FIFREEZE would freeze it. So: a child process updates the access time of the mount point's
 * root directory (`touch -a -c`, which needs write access to the filesystem, like every writer);
 * on a frozen filesystem it blocks. No answer within the probe time (1 s) means frozen.
 *
 * Limits: best effort. A filesystem that is merely very slow (a hung device, heavy writeback)
 * looks frozen; a read-only mount is never reported frozen. A probe that blocked stays blocked
 * (uninterruptibly) until the filesystem thaws, then ends by itself.
 */
import { spawn } from 'node:child_process';

export function probeFrozen(mountPoint: string, probeMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn('touch', ['-a', '-c', mountPoint], { stdio: 'ignore', cwd: '/' });
    const timer = setTimeout(() => {
      child.kill('SIGKILL'); // delivered when the freeze lifts
      child.unref();
      resolve(true);
    }, probeMs);
    child.once('error', () => {
      clearTimeout(timer);
      resolve(false);
    });
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
}
