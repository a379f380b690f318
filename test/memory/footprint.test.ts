/**
 * The array's memory bound: 100 thin 10 GiB volumes with 16 clients connected, each having
 * written and read back a few MiB, fit in 150 MB of resident memory. Thin volumes must cost
 * (almost) nothing until written, and a connection must not hold on to its buffers.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { startArraylab } from '../support/arraylab.js';
import { requireNbdsh } from '../support/tools.js';

const CLIENTS = `
import nbd, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
hs = []
for i in range(n):
    h = nbd.NBD()
    h.connect_uri("nbd://127.0.0.1:%d/vol%03d" % (port, i * 6))
    buf = bytes([65 + i]) * (1 << 20)
    for k in range(4):
        off = (k * 977 + i) * (1 << 20)
        h.pwrite(buf, off)
        assert h.pread(1 << 20, off) == buf
    h.flush()
    hs.append(h)
print("connected", flush=True)
sys.stdin.readline()
`;

describe('memory footprint', () => {
  it('stays within 150 MB RSS with 100 thin 10 GiB volumes and 16 connected clients', async () => {
    const volumes = Array.from({ length: 100 }, (_, i) => ({ name: `vol${String(i).padStart(3, '0')}`, size: '10GiB' }));
    const lab = await startArraylab({ config: { volumes } });
    const listed = await lab.cli(['volume', 'list', '--json']);
    expect((JSON.parse(listed.stdout) as { volumes: unknown[] }).volumes).toHaveLength(100);

    const py = spawn(requireNbdsh(), ['-c', CLIENTS, String(lab.nbdPort), '16'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    py.stderr.on('data', (d) => (err += d));
    await new Promise<void>((resolve, reject) => {
      py.stdout.on('data', (d) => String(d).includes('connected') && resolve());
      py.on('exit', (code) => reject(new Error(`clients exited ${code}: ${err}`)));
    });
    try {
      const exports = JSON.parse((await lab.cli(['export', 'list', '--json'])).stdout) as unknown;
      expect(JSON.stringify(exports)).toContain('vol090');
      // Let the collector run once the I/O burst is over, as it would in a long-running server.
      await new Promise((r) => setTimeout(r, 1500));
      const status = readFileSync(`/proc/${lab.pid}/status`, 'utf8');
      const rssBytes = Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
      console.log(`arraylab RSS with 100 volumes and 16 clients: ${(rssBytes / 1e6).toFixed(1)} MB`);
      expect(rssBytes).toBeLessThanOrEqual(150e6);
    } finally {
      py.stdin.end('\n');
      await lab.stop();
    }
  });
});
