/**
 * The backup tests' array in the unit tier: the real ArrayServer (StorageArray with the memory
 * backend, its tape library, its control API and NBD server on loopback ports) in this process,
 * and a host's I/O done through the array's export handles, the way the NBD and iSCSI front ends
 * reach a volume. No dist/, no qemu.
 */
import { tmpdir } from 'node:os';
import type { Logger } from 'pino';
import type { ExportHandle } from '../../../emulator/block/BlockDevice.js';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { parseConfig } from '../../../emulator/config.js';
import { formatHostPort } from '../../../proto/util/address.js';
import { parseSize } from '../../../proto/util/units.js';
import type { ArrayUnderTest } from './harness.js';

/** Bytes per read or write: big writes go in pieces, as a client's would. */
const CHUNK = 1 << 20;
/** Device paths the RecordingHost gets for these volumes (see device()). */
const DEVICE_PREFIX = 'in-process:';

export async function startInProcessArray(log: Logger): Promise<ArrayUnderTest> {
  const config = parseConfig(
    'backend: memory\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\nvolumes: []\n',
    "the backup tests' in-process array",
    tmpdir(),
  );
  const server = new ArrayServer(config, log);
  const addresses = await server.start();
  let clients = 0;

  const open = (volume: string, readOnly: boolean): ExportHandle => {
    const handle = server.array.openExport(volume, { protocol: 'nbd', connectionId: `backup-test-${++clients}`, remoteAddress: '127.0.0.1:0', readOnly });
    if (!handle) throw new Error(`the array has no export named ${volume}`);
    return handle;
  };

  /** Runs fn on an export opened for it, closed afterwards like a client that disconnects. */
  const withExport = async <T>(volume: string, readOnly: boolean, fn: (h: ExportHandle) => Promise<T>): Promise<T> => {
    const handle = open(volume, readOnly);
    try {
      return await fn(handle);
    } finally {
      handle.close();
    }
  };

  /** Calls each with the pieces of [offset, offset + length), CHUNK bytes at most. */
  const pieces = async (offset: number, length: number, each: (at: number, n: number) => Promise<void>): Promise<void> => {
    for (let at = offset; at < offset + length; at += CHUNK) await each(at, Math.min(CHUNK, offset + length - at));
  };

  const volumeOf = (device: string): string => {
    if (!device.startsWith(DEVICE_PREFIX)) throw new Error(`${device} is not a device of the in-process array (${DEVICE_PREFIX}VOLUME)`);
    return device.slice(DEVICE_PREFIX.length);
  };

  return {
    apiAddress: formatHostPort(addresses.api),
    async write(volume, pattern, offset, length) {
      const bytes = parseSize(length);
      const data = Buffer.alloc(Math.min(CHUNK, bytes), pattern);
      await withExport(volume, false, async (h) => {
        await pieces(offset, bytes, (at, n) => h.device.write(at, data.subarray(0, n)));
        await h.device.flush();
      });
    },
    async expectPattern(volume, pattern, offset, length) {
      await withExport(volume, true, (h) =>
        pieces(offset, parseSize(length), async (at, n) => {
          const buf = Buffer.alloc(n);
          await h.device.read(at, buf);
          const bad = buf.findIndex((b) => b !== pattern);
          if (bad >= 0) throw new Error(`${volume} at ${offset}+${length} does not read as pattern ${pattern}: byte ${at + bad} is ${buf[bad]}`);
        }),
      );
    },
    async compare(a, b) {
      // As qemu-img compare: equal where both have data, and the larger one's rest reads as zeroes.
      return withExport(a, true, (ha) =>
        withExport(b, true, async (hb) => {
          const size = Math.max(ha.device.size, hb.device.size);
          for (let at = 0; at < size; at += CHUNK) {
            const n = Math.min(CHUNK, size - at);
            const [x, y] = [Buffer.alloc(n), Buffer.alloc(n)];
            if (at < ha.device.size) await ha.device.read(at, x.subarray(0, Math.min(n, ha.device.size - at)));
            if (at < hb.device.size) await hb.device.read(at, y.subarray(0, Math.min(n, hb.device.size - at)));
            if (!x.equals(y)) return false;
          }
          return true;
        }),
      );
    },
    device: (volume) => `${DEVICE_PREFIX}${volume}`,
    async copyDevice(from, to) {
      await withExport(volumeOf(from), true, (src) =>
        withExport(volumeOf(to), false, async (dst) => {
          if (dst.device.size < src.device.size) throw new Error(`${to} is smaller than ${from}`);
          const buf = Buffer.alloc(CHUNK);
          await pieces(0, src.device.size, async (at, n) => {
            await src.device.read(at, buf.subarray(0, n));
            await dst.device.write(at, buf.subarray(0, n));
          });
          await dst.device.flush();
        }),
      );
    },
    async holdOpen(volume) {
      const handle = open(volume, false);
      return {
        async stop() {
          handle.close();
        },
      };
    },
    stop: () => server.stop(),
  };
}
