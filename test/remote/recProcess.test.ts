/**
 * REC between two real `arraylab serve` processes (file backends, fixed ports), driven with the
 * real CLI; hosts are libnbd writers, qemu-io, and real ext4/xfs filesystems over FUSE + loop.
 * What users rely on: the remote holds every write a host saw made durable before a suspend;
 * a lost link (a fault, or the remote killed) halts the pair while writes go on, and the pair
 * resumes by itself and resyncs only what changed; a killed source keeps every durable write
 * and resumes the pair after its restart; a suspend in stack/through mode drains the backlog.
 */
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeTempDir } from '../support/arraylab.js';
import { attachNbd, type AttachedVolume } from '../support/blockAttach.js';
import {
  addRemote,
  compareExports,
  missingRecords,
  pattern,
  readExport,
  run,
  runOk,
  type Site,
  startFileWriter,
  startNbdWriter,
  startRec,
  twoArrays,
  type Writer,
} from '../support/twoArrays.js';
import { sleep } from '../support/wait.js';

const MiB = 2 ** 20;
const UNIT = 64 * 1024;
/** 4 KiB slots of the 16 MiB volumes the nbd writers cycle through. */
const SLOTS = (16 * MiB) / 4096;

const sites: Site[] = [];
const writers: Writer[] = [];
const attached: AttachedVolume[] = [];
const mounts: string[] = [];

afterEach(async () => {
  for (const w of writers.splice(0)) w.kill();
  for (const m of mounts.splice(0)) await run('umount', [m]).catch(() => undefined);
  for (const d of attached.splice(0)) await d.detach().catch(() => undefined);
  for (const s of sites.splice(0)) await s.kill9();
});

/** Two arrays, site-b registered on a, vol1 (a) -> site-b:vol1 (b) started; equivalent unless async. */
async function pair(flags: string[] = [], size = '16MiB') {
  const { a, b } = await twoArrays();
  sites.push(a, b);
  await a.createVolume('vol1', size);
  await b.createVolume('vol1', size);
  await addRemote(a, 'site-b', b);
  const id = await startRec(a, 'vol1', 'site-b:vol1', flags);
  if (!flags.includes('stack')) await a.waitState(id, 'equivalent');
  return { a, b, id };
}

function nbdWriter(site: Site, kind: 'nbd-flush' | 'nbd-fua', seed: number, delayMs = 1, stride = 1): Writer {
  const w = startNbdWriter(site.nbdUri('vol1'), kind, { seed, slots: SLOTS, delayMs, stride });
  writers.push(w);
  return w;
}

/** The remote equals the source, byte for byte (the writer must stand still). */
async function expectEqual(a: Site, b: Site): Promise<void> {
  expect(await compareExports(a.nbdUri('vol1'), b.nbdUri('vol1'))).toBe('');
}

async function addFault(site: Site, args: string[]): Promise<string> {
  const f = await site.json<{ id: string }>(['fault', 'add', ...args]);
  return String(f.id);
}

describe('REC between two arraylab processes', () => {
  describe.each([
    { type: 'ext4', mkfs: ['mkfs.ext4', '-q', '-F'], fsck: ['fsck.ext4', '-fn'] },
    // mkfs.xfs refuses under 300 MB unless it runs under xfstests (these variables): 64 MiB is enough here.
    { type: 'xfs', mkfs: ['mkfs.xfs', '-q', '-f'], fsck: ['xfs_repair', '-n'], env: { TEST_DIR: '1', TEST_DEV: '1', QA_CHECK_FS: '1' } },
  ])('a $type filesystem', (fs) => {
    it('every file fsynced before the suspend is on the remote, which fscks clean', async () => {
      const { a, b, id } = await pair([], '64MiB');
      const work = makeTempDir('arraylab-rec-fs-');
      const mnt = join(work, 'mnt');
      mkdirSync(mnt);
      const src = await attachNbd({ port: a.nbdPort, exportName: 'vol1', dir: work });
      attached.push(src);
      await runOk(fs.mkfs[0]!, [...fs.mkfs.slice(1), src.loop], fs.env);
      await runOk('mount', [src.loop, mnt]);
      mounts.push(mnt);
      const seed = 0xf5 + fs.type.length;
      const writer = startFileWriter(mnt, { seed });
      writers.push(writer);
      await writer.more(40);
      expect((await a.show(id)).state).toBe('equivalent');

      // Records the writer reported are fsynced; the suspend is called after this.
      const fsynced = [...writer.acked];
      const suspended = await a.json<{ state: string }>(['copy', 'suspend', id]);
      expect(suspended.state).toBe('suspended');
      await writer.more(10); // the source goes on
      await writer.stop();
      expect(writer.failure).toBeUndefined();
      await runOk('umount', [mnt]);
      mounts.pop();
      await src.detach();

      // The remote end is suspended: hosts there may attach it. The image is crash-consistent:
      // mount it on a throwaway overlay so its journal is replayed there, then check it.
      expect((await b.show(id)).state).toBe('suspended');
      const dst = await attachNbd({ port: b.nbdPort, exportName: 'vol1', dir: work, overlay: true });
      attached.push(dst);
      await runOk('mount', [dst.loop, mnt]);
      await runOk('umount', [mnt]);
      await runOk(fs.fsck[0]!, [...fs.fsck.slice(1), dst.loop]);
      await runOk('mount', ['-o', 'ro', dst.loop, mnt]);
      mounts.push(mnt);
      const wrong: string[] = [];
      for (const seq of fsynced) {
        const want = pattern(seed, seq, 4096 * (1 + (seq % 8)));
        const got = await readFile(join(mnt, `file-${seq}`)).catch((e: Error) => e);
        if (got instanceof Error) wrong.push(`file-${seq}: ${got.message}`);
        else if (!got.equals(want)) wrong.push(`file-${seq}: ${got.length} bytes, not the ${want.length} written`);
      }
      expect(wrong, `${fsynced.length} files were fsynced before the suspend`).toEqual([]);
    });
  });

  it('link down with split auto: both arrays halt, writes go on, and the pair resyncs only the changed units', async () => {
    const { a, b, id } = await pair();
    // The remote registered by its API address; both arrays list the pair.
    const remotes = await a.json<{ remotes: Array<Record<string, unknown>> }>(['remote', 'list']);
    expect(remotes.remotes).toEqual([expect.objectContaining({ name: 'site-b', api: b.apiAddress, nbd: `127.0.0.1:${b.nbdPort}`, reachable: true })]);
    expect(await a.show(id)).toMatchObject({ type: 'rec', state: 'equivalent', remote: { role: 'source', peer: 'site-b', linkUp: true, pendingBytes: 0 } });
    expect(await b.show(id)).toMatchObject({ type: 'rec', state: 'equivalent', destination: 'vol1', remote: { role: 'remote-end' } });

    const seed = 3;
    const writer = nbdWriter(a, 'nbd-flush', seed);
    await writer.more(50);
    // The link drops between two records, after a flush: the write intent (64 MiB regions, this
    // whole volume) is clear then, so what is pending is exactly what the halt recorded.
    await writer.pause();
    const fault = await addFault(a, ['link-down', '--remote', 'site-b']);
    expect(await a.waitState(id, 'halt')).toMatchObject({ remote: { haltReason: 'link-down', linkUp: false } });
    await b.waitState(id, 'halt');
    const atHalt = writer.count;
    writer.resume();
    await writer.more(300); // writes go on while halted
    await writer.pause();
    const units = new Set(writer.acked.slice(atHalt).map((seq) => Math.floor((writer.slotOf(seq) * 4096) / UNIT)));
    const halted = await a.show(id);
    expect(halted.state).toBe('halt');
    expect(halted.remote?.pendingBytes).toBe(units.size * UNIT);
    expect(halted.totalBlocks - halted.copiedBlocks).toBe(units.size);

    writer.resume();
    await a.json(['fault', 'remove', fault]);
    await a.waitState(id, 'equivalent', 30_000);
    await b.waitState(id, 'equivalent');
    await writer.more(20); // mirrored again
    await writer.pause();
    await expectEqual(a, b);
    expect(writer.failure).toBeUndefined();
  });

  it('link down with split manual: host writes fail until the pair is suspended; resume makes it equal again', async () => {
    const { a, b, id } = await pair(['--split', 'manual']);
    const fault = await addFault(a, ['link-down', '--remote', 'site-b']);
    await a.waitState(id, 'halt');
    const write = (fill: string) => run('qemu-io', ['-f', 'raw', '-c', `write -P ${fill} 1M 64k`, a.nbdUri('vol1')]);
    const refused = await write('0x5a');
    expect(refused.out).toMatch(/write failed: Input\/output error/);
    expect(refused.code).not.toBe(0);

    expect((await a.json<{ state: string }>(['copy', 'suspend', id])).state).toBe('suspended');
    const ok = await write('0x5b');
    expect(ok.out).toMatch(/wrote 65536\/65536 bytes/);
    expect(ok.code).toBe(0);

    await a.json(['fault', 'remove', fault]);
    await sleep(1000); // a suspended pair waits for its operator, link or no link
    expect((await a.show(id)).state).toBe('suspended');
    await a.json(['copy', 'resume', id]);
    await a.waitState(id, 'equivalent');
    await expectEqual(a, b);
    const remote = await readExport(b.nbdUri('vol1'));
    expect(remote.subarray(MiB, MiB + UNIT).equals(Buffer.alloc(UNIT, 0x5b))).toBe(true);
  });

  it('kill -9 of the remote array: the source halts and writes go on; the restarted remote resyncs by itself', async () => {
    const { a, b, id } = await pair();
    const writer = nbdWriter(a, 'nbd-flush', 5);
    await writer.more(50);
    await b.kill9();
    expect(await a.waitState(id, 'halt')).toMatchObject({ remote: { haltReason: 'link-down' } });
    await writer.more(200);
    await b.start(); // same data dir, same ports
    await a.waitState(id, 'equivalent', 30_000);
    await b.waitState(id, 'equivalent');
    await writer.more(20);
    await writer.pause();
    await expectEqual(a, b);
    expect(writer.failure).toBeUndefined();
  });

  it('kill -9 of the source array: every FUA write acknowledged before is there, and the pair resumes after the restart', async () => {
    const { a, b, id } = await pair();
    const writer = nbdWriter(a, 'nbd-fua', 6, 0);
    await writer.more(300);
    await a.kill9();
    await writer.exited;
    expect(writer.failure).toMatch(/^fail /); // the connection went with the array
    const acked = [...writer.acked];

    await a.start();
    // A restart is a link loss: the pair came back halted, then resumed by itself.
    expect(a.logs()).toMatch(new RegExp(`REC session ${id} .*halted`));
    expect(missingRecords(await readExport(a.nbdUri('vol1')), writer, acked)).toEqual([]);
    await a.waitState(id, 'equivalent', 30_000);
    await b.waitState(id, 'equivalent');
    await expectEqual(a, b);
  });

  it('stack mode: switched to through and suspended, the remote holds the source as of the suspend', async () => {
    const { a, b, id } = await pair(['--mode', 'stack']);
    await a.waitState(id, (s) => s.state === 'copying' && s.remote?.pendingBytes === 0);
    // A slow link and a writer that moves to the next unit each record, so a backlog builds up.
    await addFault(a, ['link-rate', '--remote', 'site-b', '--mibs', '4']);
    const writer = nbdWriter(a, 'nbd-flush', 7, 0, UNIT / 4096);
    await writer.more(100);
    await a.json(['copy', 'mode', id, 'through']);
    await writer.pause();
    expect((await a.show(id)).remote?.pendingBytes).toBeGreaterThan(0);
    expect((await a.json<{ state: string }>(['copy', 'suspend', id])).state).toBe('suspended');
    const source = await readExport(a.nbdUri('vol1'));
    const remote = await readExport(b.nbdUri('vol1'));
    expect(remote.equals(source)).toBe(true);

    writer.resume();
    await writer.more(50); // the source goes on; the remote stays as of the suspend
    await writer.pause();
    expect((await readExport(b.nbdUri('vol1'))).equals(remote)).toBe(true);
    expect(writer.failure).toBeUndefined();
  });
});
