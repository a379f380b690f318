/**
 * Dropping the host's cached blocks of a device whose content the array changed underneath:
 * the block device's buffer cache (blockdev --flushbufs), and for a loop device the page cache
 * of its backing file too (the loop driver reads through it unless it runs with direct I/O).
 */
import { readFile, realpath } from 'node:fs/promises';
import { basename } from 'node:path';
import { run, said } from './run.js';

export async function loopBackingFile(device: string, sysRoot = '/sys'): Promise<string | null> {
  const name = basename(await realpath(device));
  if (!/^loop\d+$/.test(name)) return null;
  try {
    return (await readFile(`${sysRoot}/block/${name}/loop/backing_file`, 'utf8')).trim().replace(/ \(deleted\)$/, '');
  } catch {
    return null; // a loop device with nothing attached
  }
}

export async function invalidateDevice(device: string): Promise<void> {
  const backing = await loopBackingFile(device).catch(() => null);
  if (backing) {
    // Write back dirty pages first: fadvise(DONTNEED), which dd's nocache uses, keeps dirty ones.
    const s = await run('sync', [backing]);
    if (s.code !== 0)
      throw new Error(`cannot drop the cache of ${device}: sync of its backing file ${backing} failed: ${said(s)}; check that the file is reachable`);
    // count=0 with iflag=nocache drops the whole file's cache (coreutils dd).
    const d = await run('dd', [`if=${backing}`, 'iflag=nocache', 'count=0', 'status=none']);
    if (d.code !== 0) throw new Error(`cannot drop the page cache of ${backing} (backing file of ${device}): ${said(d)}; check that the file is readable`);
  }
  const r = await run('blockdev', ['--flushbufs', device]);
  if (r.code !== 0) throw new Error(`cannot drop the buffer cache of ${device}: ${said(r)}; check that the device exists and you are root`);
}
