/**
 * A host-side copy of one whole device onto another: 1 MiB sequential chunks, fsync of the
 * destination at the end, progress at most 4 times a second (and once at the end).
 */
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { HostProgress } from '../types.js';

const CHUNK = 1 << 20;
const PROGRESS_EVERY_MS = 250;

/** Size in bytes of a block device (sysfs, in 512-byte sectors) or a regular file. */
export async function deviceSize(path: string): Promise<number> {
  const st = await stat(path);
  if (st.isBlockDevice()) {
    const name = basename(await realpath(path));
    const sectors = await readFile(`/sys/class/block/${name}/size`, 'utf8');
    return Number(sectors.trim()) * 512;
  }
  return st.size;
}

export async function copyWholeDevice(from: string, to: string, onProgress?: (p: HostProgress) => void): Promise<void> {
  const totalBytes = await deviceSize(from).catch((err: Error) => {
    throw new Error(`cannot copy ${from}: ${err.message}; check that the device exists`);
  });
  const toSize = await deviceSize(to).catch((err: Error) => {
    throw new Error(`cannot copy onto ${to}: ${err.message}; check that the device exists`);
  });
  if ((await stat(to)).isBlockDevice() && toSize < totalBytes) {
    throw new Error(`cannot copy ${from} (${totalBytes} bytes) onto ${to}: it holds only ${toSize} bytes; use a destination at least as large`);
  }
  const src = await open(from, 'r');
  try {
    const dst = await open(to, 'r+');
    try {
      const buf = Buffer.allocUnsafe(CHUNK);
      let done = 0;
      let last = 0;
      while (done < totalBytes) {
        const want = Math.min(CHUNK, totalBytes - done);
        let got = 0;
        while (got < want) {
          let n: number;
          try {
            ({ bytesRead: n } = await src.read(buf, got, want - got, done + got));
          } catch (err) {
            throw new Error(`read of ${from} at offset ${done + got} failed: ${(err as Error).message}; check the device (dmesg)`);
          }
          if (n === 0) throw new Error(`${from} ended at offset ${done + got}, before its size ${totalBytes}; was it resized during the copy?`);
          got += n;
        }
        let put = 0;
        while (put < want) {
          try {
            const { bytesWritten } = await dst.write(buf, put, want - put, done + put);
            put += bytesWritten;
          } catch (err) {
            throw new Error(`write to ${to} at offset ${done + put} failed: ${(err as Error).message}; check the device (dmesg) and that it is not read-only`);
          }
        }
        done += want;
        const now = Date.now();
        if (onProgress && now - last >= PROGRESS_EVERY_MS) {
          last = now;
          onProgress({ doneBytes: done, totalBytes });
        }
      }
      try {
        await dst.sync();
      } catch (err) {
        throw new Error(`fsync of ${to} after copying ${totalBytes} bytes failed: ${(err as Error).message}; the copy is not durable, run it again`);
      }
      onProgress?.({ doneBytes: totalBytes, totalBytes });
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}
