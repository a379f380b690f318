/**
 * Power cuts (issue 15) as hosts see them, against the real `arraylab serve`: qemu-io keeps a
 * session open on a volume with a volatile write cache (over NBD and over iSCSI, libiscsi),
 * writes a flushed region, a FUA write and unflushed writes, and `arraylab power-cut` cuts
 * under each policy. The volume read back over NBD (libnbd) must hold exactly the flushed and
 * FUA data plus what the report says was kept: whole writes (keep-random), 512-byte sectors
 * (torn), nothing (drop-unflushed). Also: the connection drops, --down-ms refuses
 * connections for that long, and a lying-flush fault loses writes the host was told were safe.
 */
import { type ChildProcessWithoutNullStreams, execFileSync, spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { PowerCutView } from '../../proto/views.js';
import { cliJson, startArraylab, type Arraylab, loggedErrors } from '../support/arraylab.js';
import { iscsiPortalOf, iscsiUrl, type Portal } from '../support/iscsi.js';
import { requireNbdsh, requireTool, SYSTEM_PYTHON } from '../support/tools.js';
import { sleep } from '../support/wait.js';

const KiB = 1024;
const SECTOR = 512;
const POLICIES = ['drop-unflushed', 'keep-random', 'torn'] as const;
const PROTOCOLS = ['nbd', 'iscsi'] as const;

let lab: Arraylab;
let client: ArrayClient;
let portal: Portal;
/** Volume name -> iSCSI LUN (default LUNs follow creation order on an array without hosts). */
const luns = new Map<string, number>();

/** One qemu-io process kept open (commands on stdin), so nothing flushes until we say so. */
class QemuIo {
  private out = '';
  private constructor(private readonly p: ChildProcessWithoutNullStreams) {
    p.stdout.on('data', (d) => (this.out += d));
    p.stderr.on('data', (d) => (this.out += d));
  }

  static async open(target: string, cache: 'unsafe' | 'writeback'): Promise<QemuIo> {
    const q = new QemuIo(spawn(requireTool('qemu-io'), ['-f', 'raw', '-t', cache, target], { stdio: ['pipe', 'pipe', 'pipe'] }));
    await q.waitPrompts(1);
    return q;
  }

  /** Runs one command; returns its output. */
  async cmd(c: string): Promise<string> {
    const n = this.prompts();
    const from = this.out.length;
    this.p.stdin.write(`${c}\n`);
    await this.waitPrompts(n + 1);
    return this.out.slice(from);
  }

  async close(): Promise<void> {
    this.p.stdin.end();
    if (this.p.exitCode === null) await new Promise((resolve) => this.p.once('exit', resolve));
  }

  private prompts(): number {
    return this.out.split('qemu-io> ').length - 1;
  }

  private async waitPrompts(n: number): Promise<void> {
    for (let i = 0; this.prompts() < n; i++) {
      if (this.p.exitCode !== null) throw new Error(`qemu-io exited (${this.p.exitCode}): ${this.out}`);
      if (i > 1500) throw new Error(`qemu-io did not answer: ${this.out}`);
      await sleep(20);
    }
  }
}

function target(protocol: 'nbd' | 'iscsi', volume: string): string {
  return protocol === 'nbd' ? lab.nbdUri(volume) : iscsiUrl(portal, luns.get(volume)!);
}

/** The first `length` bytes of a volume, read over NBD with libnbd. */
function readVolume(volume: string, length: number): Buffer {
  const script = 'import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nsys.stdout.buffer.write(h.pread(int(sys.argv[2]), 0))\nh.shutdown()';
  return execFileSync(SYSTEM_PYTHON, ['-c', script, lab.nbdUri(volume), String(length)], { maxBuffer: 64 * 1024 * 1024 });
}

async function createVolume(name: string): Promise<void> {
  const r = await lab.cli(['volume', 'create', name, '--size', '16MiB', '--write-cache', 'volatile']);
  expect(r.code, r.stderr).toBe(0);
  luns.set(name, luns.size);
}

async function dirtyBytes(volume: string): Promise<number> {
  return (await cliJson(lab, ['volume', 'show', volume, '--json'])).writeCacheDirtyBytes as number;
}

async function powerCut(args: string[]): Promise<PowerCutView> {
  const r = await lab.cli(['power-cut', ...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as PowerCutView;
}

beforeAll(async () => {
  requireTool('qemu-io');
  requireNbdsh();
  lab = await startArraylab({ config: { volumes: [] } });
  client = new ArrayClient(lab.apiAddress);
  portal = iscsiPortalOf(lab);
  for (const protocol of PROTOCOLS) for (const policy of POLICIES) await createVolume(`${protocol}-${policy}`);
  await createVolume('lying');
  await createVolume('down');
});

afterAll(async () => {
  client?.close();
  const errors = loggedErrors(lab);
  await lab?.stop();
  expect(errors).toEqual([]);
});

/** The unflushed writes of each scenario: [offset, length, pattern]; the last one overwrites flushed data. */
const UNFLUSHED: Array<[number, number, number]> = [
  ...Array.from({ length: 8 }, (_, i): [number, number, number] => [128 * KiB + i * 16 * KiB, 8 * KiB, 0xb0 + i]),
  [0, 4 * KiB, 0xc1],
];
const FLUSHED: [number, number, number] = [0, 64 * KiB, 0xa1];
/**
 * What seed 7 does to those nine writes on each volume (WriteCache's draws: one per write, or
 * one per sector, from a generator seeded by the cut's seed and the volume's name).
 */
const SEED_7: Record<string, { writesLost: number; writesKept: number; writesTorn: number; bytesLost: number }> = {
  'nbd-drop-unflushed': { writesLost: 9, writesKept: 0, writesTorn: 0, bytesLost: 69632 },
  'nbd-keep-random': { writesLost: 6, writesKept: 3, writesTorn: 0, bytesLost: 49152 },
  'nbd-torn': { writesLost: 0, writesKept: 0, writesTorn: 9, bytesLost: 40448 },
  'iscsi-drop-unflushed': { writesLost: 9, writesKept: 0, writesTorn: 0, bytesLost: 69632 },
  'iscsi-keep-random': { writesLost: 3, writesKept: 6, writesTorn: 0, bytesLost: 20480 },
  'iscsi-torn': { writesLost: 0, writesKept: 0, writesTorn: 9, bytesLost: 37376 },
};
const FUA: [number, number, number] = [64 * KiB, 4 * KiB, 0xf1];

describe.each(PROTOCOLS)('a power cut over %s', (protocol) => {
  it.each(POLICIES)('%s: exactly the unflushed writes are lost, as the report says; flushed and FUA writes survive', async (policy) => {
    const volume = `${protocol}-${policy}`;
    // Flushed: written and flushed by one qemu-io, which then exits.
    const f = await QemuIo.open(target(protocol, volume), 'writeback');
    expect(await f.cmd(`write -P ${FLUSHED[2]} ${FLUSHED[0]} ${FLUSHED[1]}`)).toMatch(/wrote/);
    expect(await f.cmd('flush')).not.toMatch(/failed/);
    await f.close();
    expect(await dirtyBytes(volume)).toBe(0);

    // cache=unsafe: qemu sends no flush at all; the session stays open through the cut.
    const q = await QemuIo.open(target(protocol, volume), 'unsafe');
    expect(await q.cmd(`write -f -P ${FUA[2]} ${FUA[0]} ${FUA[1]}`)).toMatch(/wrote/);
    expect(await dirtyBytes(volume)).toBe(0); // FUA went straight through
    for (const [off, len, pat] of UNFLUSHED) expect(await q.cmd(`write -P ${pat} ${off} ${len}`)).toMatch(/wrote/);
    const unflushedBytes = UNFLUSHED.reduce((n, [, len]) => n + len, 0);
    expect(await dirtyBytes(volume)).toBe(unflushedBytes);

    const report = await powerCut(['--policy', policy, '--seed', '7']);
    expect(report.policy).toBe(policy);
    expect(report.seed).toBe(7);
    expect(report.connectionsDropped).toBeGreaterThanOrEqual(1);
    const r = report.volumes.find((v) => v.name === volume)!;
    expect(r.writesLost + r.writesKept + r.writesTorn).toBe(UNFLUSHED.length);
    // The host's connection is gone: qemu's NBD client fails the next write; libiscsi logs in
    // again (the array is back at once) and the write lands in the now empty cache.
    expect(await q.cmd(`write -P 0x99 ${1024 * KiB} 512`)).toMatch(protocol === 'nbd' ? /failed/ : /wrote/);
    expect(await dirtyBytes(volume)).toBe(protocol === 'nbd' ? 0 : SECTOR);
    await q.close();

    const data = readVolume(volume, 512 * KiB);
    // The FUA write and the flushed region (but for the sectors an unflushed write covered).
    expect(data.subarray(FUA[0], FUA[0] + FUA[1]).every((b) => b === FUA[2])).toBe(true);
    expect(data.subarray(4 * KiB, FLUSHED[1]).every((b) => b === FLUSHED[2])).toBe(true);
    // Each unflushed write, sector by sector: its own data or what was there before.
    let lost = 0;
    let kept = 0;
    let torn = 0;
    let bytesLost = 0;
    for (const [off, len, pat] of UNFLUSHED) {
      const before = off < FLUSHED[1] ? FLUSHED[2] : 0;
      let fresh = 0;
      for (let s = off; s < off + len; s += SECTOR) {
        const sector = data.subarray(s, s + SECTOR);
        if (sector.every((b) => b === pat)) fresh++;
        else {
          expect(
            sector.every((b) => b === before),
            `sector at ${s}: neither the write's data nor the old data`,
          ).toBe(true);
          bytesLost += SECTOR;
        }
      }
      if (fresh === 0) lost++;
      else if (fresh === len / SECTOR) kept++;
      else torn++;
    }
    expect({ lost, kept, torn, bytesLost }).toEqual({ lost: r.writesLost, kept: r.writesKept, torn: r.writesTorn, bytesLost: r.bytesLost });
    if (policy === 'drop-unflushed') expect(r).toMatchObject({ writesLost: UNFLUSHED.length, bytesLost: unflushedBytes });
    if (policy === 'keep-random') {
      expect(torn).toBe(0);
      expect(kept).toBeGreaterThan(0); // seed 7 keeps some and loses some
      expect(lost).toBeGreaterThan(0);
    }
    if (policy === 'torn') expect(torn).toBeGreaterThan(0);
    // The same seed and the same writes lose the same data, whatever other volumes held.
    expect(r).toEqual({ name: volume, ...SEED_7[volume] });
  });
});

describe('around a power cut', () => {
  it('--down-ms refuses connections for that long, then the array serves again', async () => {
    const report = await powerCut(['--down-ms', '1500']);
    expect(report.policy).toBe('drop-unflushed');
    const refused = await QemuIo.open(lab.nbdUri('down'), 'writeback').then(
      async (q) => {
        await q.close();
        return false;
      },
      (err: Error) => (/power cut/.test(err.message) ? true : err.message),
    );
    expect(refused).toBe(true);
    await sleep(1700);
    const q = await QemuIo.open(lab.nbdUri('down'), 'writeback');
    expect(await q.cmd('write -P 0x42 0 4k')).toMatch(/wrote/);
    await q.close();
    expect(readVolume('down', 4 * KiB).every((b) => b === 0x42)).toBe(true);
  });

  it('a lying-flush fault and a power cut lose writes the host was told were flushed', async () => {
    const fault = await client.addFault({ kind: 'lying-flush', target: 'volume:lying', ops: ['flush', 'write'] });
    try {
      const q = await QemuIo.open(lab.nbdUri('lying'), 'writeback');
      expect(await q.cmd('write -P 0xd1 0 4k')).toMatch(/wrote/);
      expect(await q.cmd('flush')).not.toMatch(/failed/); // acknowledged
      expect(await q.cmd('write -f -P 0xd2 8k 4k')).toMatch(/wrote/); // FUA acknowledged
      expect(await dirtyBytes('lying')).toBe(8 * KiB); // and neither honoured
      const report = await powerCut(['--policy', 'drop-unflushed']);
      expect(report.volumes.find((v) => v.name === 'lying')).toMatchObject({ writesLost: 2, bytesLost: 8 * KiB });
      await q.close();
    } finally {
      await client.removeFault(fault.id);
    }
    expect(readVolume('lying', 12 * KiB).every((b) => b === 0)).toBe(true);
    // Without the fault the same flush is honoured and survives.
    const q = await QemuIo.open(lab.nbdUri('lying'), 'writeback');
    expect(await q.cmd('write -P 0xd3 0 4k')).toMatch(/wrote/);
    await q.cmd('flush');
    await powerCut([]);
    await q.close();
    expect(readVolume('lying', 4 * KiB).every((b) => b === 0xd3)).toBe(true);
  });

  it('the CLI: a table by default, one line naming the choices for a bad policy', async () => {
    const r = await lab.cli(['power-cut', '--seed', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^power cut \(drop-unflushed, seed 1\): dropped \d+ connections?$/m);
    expect(r.stdout).toMatch(/^VOLUME\s+LOST\s+KEPT\s+TORN\s+BYTES LOST$/m);
    const bad = await lab.cli(['power-cut', '--policy', 'melt']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/drop-unflushed.*keep-random.*torn/);
    const badSeed = await lab.cli(['power-cut', '--seed', 'x']);
    expect(badSeed.code).toBe(2);
    expect(badSeed.stderr).toMatch(/--seed: "x" is not a whole number from 0 to 4294967295; e\.g\. --seed 7/);
    // Power cuts are in the fault engine's event stream too.
    const events: Array<{ kind: string; target: string; detail: string }> = [];
    await client.watchFaultEvents({ follow: false }, (e) => events.push(e)).done;
    expect(events.filter((e) => e.kind === 'power-cut' && e.target === 'array').at(-1)?.detail).toMatch(/^power cut \(drop-unflushed, seed 1\): dropped/);
    expect(events.some((e) => e.kind === 'power-cut' && e.target === 'volume:lying' && /2 unflushed writes lost \(8192 bytes\)/.test(e.detail))).toBe(true);
  });
});
