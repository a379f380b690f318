/**
 * The backup tests' array in the integration tier: a real `arraylab serve` from dist/ (file
 * backend in a temp dir), and a host's I/O done by qemu-io and qemu-img over NBD.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { ArrayClient } from '../../../proto/ArrayClient.js';
import { startArraylab } from '../../support/arraylab.js';
import { requireTool } from '../../support/tools.js';
import { waitFor } from '../../support/wait.js';
import type { ArrayUnderTest } from './harness.js';

const run = promisify(execFile);

export async function startServedArray(): Promise<ArrayUnderTest> {
  const qemuIo = requireTool('qemu-io');
  const qemuImg = requireTool('qemu-img');
  const lab = await startArraylab();
  return {
    apiAddress: lab.apiAddress,
    async write(volume, pattern, offset, length) {
      await run(qemuIo, ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, lab.nbdUri(volume)]);
    },
    async expectPattern(volume, pattern, offset, length) {
      // qemu-io exits 0 even when the pattern differs; it prints "Pattern verification failed".
      const { stdout, stderr } = await run(qemuIo, ['-r', '-f', 'raw', '-c', `read -P ${pattern} ${offset} ${length}`, lab.nbdUri(volume)]);
      if (/fail/i.test(stdout + stderr)) throw new Error(`${volume} at ${offset}+${length} does not read as pattern ${pattern}: ${stdout}${stderr}`);
    },
    async compare(a, b) {
      try {
        await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', lab.nbdUri(a), lab.nbdUri(b)]);
        return true;
      } catch (err) {
        if ((err as { code?: number }).code === 1) return false;
        throw err;
      }
    },
    // "Devices" are NBD URIs, copied by qemu-img: a real copy through the array.
    device: (volume) => lab.nbdUri(volume),
    async copyDevice(from, to) {
      await run(qemuImg, ['convert', '-n', '-f', 'raw', '-O', 'raw', from, to]);
    },
    async holdOpen(volume) {
      // A real NBD client holding the volume open read-write, seen by the array once connected.
      const child: ChildProcess = spawn(qemuIo, ['-f', 'raw', lab.nbdUri(volume)], { stdio: ['pipe', 'ignore', 'ignore'] });
      const array = new ArrayClient(lab.apiAddress);
      try {
        const connected = async () => ((await array.listExports()).find((e) => e.name === volume)?.connections.length ?? 0) > 0;
        await waitFor(connected, (c) => c, { timeoutMs: 5000, intervalMs: 50 });
      } finally {
        array.close();
      }
      return {
        async stop() {
          const gone = new Promise((r) => child.once('exit', r));
          child.stdin!.end('quit\n');
          await gone;
        },
      };
    },
    stop: () => lab.stop(),
  };
}
