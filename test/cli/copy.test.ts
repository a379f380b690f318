/** `arraylab copy ...` end to end: the real CLI against a spawned `arraylab serve`, real NBD clients. */
import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, holdNbdConnection, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireNbdsh, requireTool } from '../support/tools.js';
import { until } from '../support/wait.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

describe('arraylab copy', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ok = (args: string[]) => cliOk(lab, args);
  const json = (args: string[]) => cliJson(lab, args);
  /** New 4 MiB volumes src (filled with byte) and dst in an EC pair; its id, once equivalent. */
  const equivalentEc = async (src: string, dst: string, byte: number) => {
    for (const v of [src, dst]) await ok(['volume', 'create', v, '--size', '4MiB']);
    await run(requireTool('qemu-io'), ['-f', 'raw', '-c', `write -P ${byte} 0 4M`, lab.nbdUri(src)]);
    const id = (await json(['copy', 'start', '--type', 'ec', '--src', src, '--dst', dst])).id as string;
    await until('equivalent', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    return id;
  };

  it('SnapOPC+: a 9th generation drops the oldest, or is refused with --refuse-if-full', async () => {
    await ok(['volume', 'create', 'gsrc', '--size', '4MiB']);
    for (let i = 1; i <= 10; i++) await ok(['volume', 'create', `gsnap${i}`, '--size', '4MiB']);
    const ids: string[] = [];
    for (let i = 1; i <= 8; i++) {
      const g = await json(['copy', 'start', '--type', 'snapopcplus', '--src', 'gsrc', '--dst', `gsnap${i}`, '--refuse-if-full']);
      expect(g).toMatchObject({ state: 'snap', generation: i });
      ids.push(g.id as string);
    }
    const refused = await lab.cli(['copy', 'start', '--type', 'snapopcplus', '--src', 'gsrc', '--dst', 'gsnap9', '--refuse-if-full']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      `arraylab: source gsrc already has 8 SnapOPC+ generations; cancel the oldest (${ids[0]}) or start without refuse-if-full to drop it\n`,
    );
    expect(((await json(['copy', 'list'])).sessions as Array<{ id: string }>).map((s) => s.id)).toContain(ids[0]);
    const ninth = await json(['copy', 'start', '--type', 'snapopcplus', '--src', 'gsrc', '--dst', 'gsnap10']);
    expect(ninth).toMatchObject({ state: 'snap', generation: 9 });
    const left = ((await json(['copy', 'list'])).sessions as Array<{ id: string; source: string }>).filter((s) => s.source === 'gsrc').map((s) => s.id);
    expect(left).not.toContain(ids[0]);
    expect(left).toHaveLength(8);
    // The array's sequence number counts up; the agent's numbering (1 = newest) is beside it.
    expect(await json(['copy', 'show', ninth.id as string])).toMatchObject({ generation: 9, generationIndex: 1, generationCount: 8 });
    expect(await json(['copy', 'show', ids[1]!])).toMatchObject({ generation: 2, generationIndex: 8, generationCount: 8 });
    expect(await ok(['copy', 'show', ids[1]!])).toMatch(/^generation:\s+8 of 8 \(1 = newest; sequence #2\)$/m);
    const table = (await ok(['copy', 'list'])).split('\n');
    const col = table[0]!.indexOf('GEN(1=newest)');
    expect(col).toBeGreaterThan(0);
    expect(table.find((l) => l.startsWith(ninth.id as string))!.slice(col)).toMatch(/^1\/8 \(#9\)/);
    await ok(['volume', 'create', 'hsrc', '--size', '4MiB']);
    await ok(['volume', 'create', 'hsnap', '--size', '4MiB']);
    const group = await lab.cli([
      'copy',
      'start',
      '--type',
      'snapopcplus',
      '--src',
      'gsrc',
      '--dst',
      'gsnap1',
      '--src',
      'hsrc',
      '--dst',
      'hsnap',
      '--group',
      'gg',
      '--refuse-if-full',
    ]);
    expect(group.code).toBe(1);
    expect(group.stderr).toMatch(/--refuse-if-full applies to single starts/);
    await ok(['copy', 'cancel', ninth.id as string, '--force']); // the newest, and with --force every older generation
    expect(((await json(['copy', 'list'])).sessions as Array<{ source: string }>).filter((s) => s.source === 'gsrc')).toEqual([]);
  }, 60_000);

  it('OPC: the destination reads the point-in-time image over NBD while the rate-limited copy runs', async () => {
    const qemuIo = requireTool('qemu-io');
    const qemuImg = requireTool('qemu-img');
    await ok(['volume', 'create', 'src1', '--size', '16MiB']);
    await ok(['volume', 'create', 'dst1', '--size', '16MiB']);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0xab 0 16M', lab.nbdUri('src1')]);

    const started = await json(['copy', 'start', '--type', 'opc', '--src', 'src1', '--dst', 'dst1', '--rate', '1', '--group', 'g']);
    expect(started).toMatchObject({ state: 'copying', type: 'opc', source: 'src1', destination: 'dst1', rateMiBs: 1, group: 'g', totalBlocks: 256 });
    const id = started.id as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);

    // Overwrite half the source after the start: the destination must not see it.
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0xcd 0 8M', lab.nbdUri('src1')]);
    const ref = join(makeTempDir(), 'ref.img');
    writeFileSync(ref, Buffer.alloc(16 * MiB, 0xab));
    const cmp = await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', ref, lab.nbdUri('dst1')]);
    expect(cmp.stdout).toMatch(/Images are identical/);

    const shown = await json(['copy', 'show', id]);
    expect(shown).toMatchObject({ id, type: 'opc', state: 'copying' });
    expect(shown.copiedBlocks as number).toBeLessThan(shown.totalBlocks as number); // still running
    expect(shown.copiedBlocks as number).toBeGreaterThanOrEqual(128); // the copy-on-writes

    const human = await ok(['copy', 'show', id]);
    expect(human).toMatch(new RegExp(`^id:\\s+${id}$`, 'm'));
    expect(human).toMatch(/^state:\s+copying$/m);
    expect(human).toMatch(/^rate:\s+1 MiB\/s$/m);
    const list = await ok(['copy', 'list']);
    expect(list.split('\n')[0]).toMatch(/^ID\s+TYPE\s+STATE\s+SOURCE\s+DESTINATION\s+PROGRESS\s+RATE\s+ETA\s+GEN\(1=newest\)\s+GROUP$/);
    expect(human).toMatch(new RegExp(`^image at:\\s+${started.imageAt as string}$`, 'm'));
    expect(list).toContain(id);
    expect(((await json(['copy', 'list'])).sessions as Array<{ id: string }>).map((s) => s.id)).toContain(id);

    // Watch it to the end in JSON lines while the rate is lifted.
    const watching = lab.cli(['copy', 'watch', id, '--json', '--interval', '100']);
    await new Promise((r) => setTimeout(r, 300));
    expect(await json(['copy', 'rate', id, '--rate', 'unthrottled'])).toMatchObject({ id, rateMiBs: null });
    const w = await watching;
    expect(w.stderr).toBe('');
    expect(w.code).toBe(0);
    const events = w.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; sessionId: string });
    expect(events[0]).toMatchObject({ kind: 'snapshot', sessionId: id });
    expect(events.at(-1)).toMatchObject({ kind: 'completed', sessionId: id });
    expect(await json(['copy', 'list'])).toEqual({ sessions: [] });
    // Watched once it has ended (a short copy, then a late copy watch): it says how it ended, exit 0.
    const late = await lab.cli(['copy', 'watch', id]);
    expect(late).toMatchObject({ code: 0, stderr: '' });
    expect(late.stdout).toMatch(new RegExp(`^\\S+ ${id} completed: session ${id} had already completed when this watch began\n$`));
    const gone = await lab.cli(['copy', 'show', id]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toBe(`arraylab: no copy session ${id}: it has completed and ended sessions are not kept; list sessions to see their ids\n`);
    const cmp2 = await run(qemuImg, ['compare', '-f', 'raw', '-F', 'raw', ref, lab.nbdUri('dst1')]);
    expect(cmp2.stdout).toMatch(/Images are identical/);
  }, 60_000);

  it('EC life cycle: start, equivalent, suspend, resume, split, reverse, cancel', async () => {
    await ok(['volume', 'create', 'ea', '--size', '4MiB']);
    await ok(['volume', 'create', 'eb', '--size', '4MiB']);
    const out = await ok(['copy', 'start', '--type', 'ec', '--src', 'ea', '--dst', 'eb']);
    const m = /^started EC ea -> eb: session (\S+), (copying|equivalent), \d+\/64 \(\d+%\) units copied\n$/.exec(out);
    expect(m, out).not.toBeNull();
    const id = m![1]!;
    await until('equivalent', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    expect(await json(['copy', 'suspend', id])).toMatchObject({ state: 'suspended' });
    expect((await json(['copy', 'resume', id])).state).toMatch(/copying|equivalent/);
    await until('equivalent again', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    expect(await ok(['copy', 'split', id])).toMatch(/^split EC ea -> eb: session \S+, split,/);
    expect(await json(['copy', 'reverse', id])).toMatchObject({ state: 'split', source: 'eb', destination: 'ea', reversed: true });
    const del = await lab.cli(['volume', 'delete', 'ea']);
    expect(del.code).toBe(1);
    expect(del.stderr).toBe(`arraylab: cannot delete volume ea: volume ea is in copy session ${id} (ec, split); cancel the session first\n`);
    expect(await ok(['copy', 'cancel', id])).toBe(`cancelled copy session ${id}\n`);
    expect(await json(['copy', 'ls'])).toEqual({ sessions: [] });
  }, 60_000);

  it('consistency group: EC pairs started and suspended at one instant while a host writes log then data', async () => {
    const python = requireNbdsh();
    for (const v of ['log', 'data', 'logc', 'datac']) await ok(['volume', 'create', v, '--size', '2MiB']);
    const g = await json(['copy', 'start', '--type', 'ec', '--src', 'log', '--dst', 'logc', '--src', 'data', '--dst', 'datac', '--group', 'db']);
    const sessions = g.sessions as Array<{ id: string; group: string; source: string }>;
    expect(g.group).toBe('db');
    expect(sessions.map((s) => [s.source, s.group])).toEqual([
      ['log', 'db'],
      ['data', 'db'],
    ]);
    await until('both equivalent', async () =>
      ((await json(['copy', 'list'])).sessions as Array<{ group: string; state: string }>)
        .filter((s) => s.group === 'db')
        .every((s) => s.state === 'equivalent'),
    );

    // A database's order: each log record is acknowledged before its data page is written.
    // A cut that is one instant for both volumes can hold data n only with log n.
    const script = [
      'import nbd, struct, sys, time',
      `log = nbd.NBD(); log.connect_uri("${lab.nbdUri('log')}")`,
      `data = nbd.NBD(); data.connect_uri("${lab.nbdUri('data')}")`,
      'end = time.time() + 4',
      'n = 0',
      'while time.time() < end:',
      '    n += 1',
      '    b = struct.pack("<Q", n) * 64',
      '    log.pwrite(b, 0)',
      '    data.pwrite(b, 0)',
      'print(n)',
    ].join('\n');
    const running = run(python, ['-c', script]);
    await new Promise((r) => setTimeout(r, 1500));
    const cut = await json(['copy', 'suspend', '--group', 'db']);
    expect((cut.sessions as Array<{ state: string }>).map((s) => s.state)).toEqual(['suspended', 'suspended']);
    const total = Number((await running).stdout.trim());
    const seqOf = async (vol: string) => {
      const r = await run(python, [
        '-c',
        `import nbd, struct\nh = nbd.NBD(); h.connect_uri("${lab.nbdUri(vol)}")\nprint(struct.unpack("<Q", h.pread(512, 0)[:8])[0])`,
      ]);
      return Number(r.stdout.trim());
    };
    const [logAt, dataAt] = [await seqOf('logc'), await seqOf('datac')];
    expect(dataAt).toBeGreaterThan(0); // the cut fell inside the run
    expect(logAt).toBeLessThan(total);
    expect(logAt === dataAt || logAt === dataAt + 1, `log copy ${logAt}, data copy ${dataAt}`).toBe(true);

    // Usage: a group needs a name; pairs need both ends; --rename is for one clone.
    const noName = await lab.cli(['copy', 'start', '--type', 'ec', '--src', 'a', '--dst', 'b', '--src', 'c', '--dst', 'd']);
    expect(noName.code).toBe(2);
    expect(noName.stderr).toMatch(/^arraylab: several pairs start as one consistency group: name it with --group NAME/);
    const uneven = await lab.cli(['copy', 'start', '--type', 'ec', '--src', 'a', '--src', 'c', '--dst', 'b', '--group', 'x']);
    expect(uneven.code).toBe(2);
    expect(uneven.stderr).toMatch(/^arraylab: give one --dst for each --src \(got 2 --src and 1 --dst\)/);
    const renameMany = await lab.cli(['copy', 'split', '--group', 'db', '--rename', 'x']);
    expect(renameMany.code).toBe(2);
    const noGroup = await lab.cli(['copy', 'suspend', '--group', 'nosuch']);
    expect(noGroup.code).toBe(1);
    expect(noGroup.stderr).toBe('arraylab: no copy sessions in consistency group nosuch; start them with --group nosuch\n');
    // All or none: one member of the group is not equivalent any more, so the split is refused.
    const notAll = await lab.cli(['copy', 'split', sessions[0]!.id, 'bogus-id']);
    expect(notAll.code).toBe(1);
    expect(notAll.stderr).toMatch(/no copy session bogus-id/);
    expect((await json(['copy', 'show', sessions[0]!.id])).state).toBe('suspended');
    for (const s of sessions) await ok(['copy', 'cancel', s.id]);
  }, 60_000);

  it('restores: QuickOPC reverse and EC restore from clone', async () => {
    const qemuIo = requireTool('qemu-io');
    for (const v of ['qa', 'qb', 'ca', 'cb']) await ok(['volume', 'create', v, '--size', '4MiB']);
    const pattern = async (vol: string, byte: number, off = '0', len = '4M') =>
      run(qemuIo, ['-f', 'raw', '-c', `write -P ${byte} ${off} ${len}`, lab.nbdUri(vol)]);
    const verify = async (vol: string, byte: number) => {
      const r = await run(qemuIo, ['-f', 'raw', '-c', `read -P ${byte} 0 4M`, lab.nbdUri(vol)]);
      return !/Pattern verification failed/.test(r.stdout);
    };

    await pattern('qa', 0x11);
    const q = await json(['copy', 'start', '--type', 'quickopc', '--src', 'qa', '--dst', 'qb']);
    await until('tracking', async () => (await json(['copy', 'show', q.id as string])).state === 'tracking');
    await pattern('qa', 0x22, '1M', '64k'); // damage after the backup
    const r = await json(['copy', 'reverse', q.id as string]);
    expect(r).toMatchObject({ source: 'qb', destination: 'qa', reversed: true });
    expect(await verify('qa', 0x11)).toBe(true);
    await until('tracking again', async () => (await json(['copy', 'show', q.id as string])).state === 'tracking');
    // The next backup turns the pair round again.
    expect(await json(['copy', 'start', '--type', 'quickopc', '--src', 'qa', '--dst', 'qb'])).toMatchObject({
      id: q.id,
      source: 'qa',
      destination: 'qb',
      reversed: false,
    });
    await ok(['copy', 'cancel', q.id as string]);

    await pattern('ca', 0x33);
    const e = await json(['copy', 'start', '--type', 'ec', '--src', 'ca', '--dst', 'cb']);
    await until('equivalent', async () => (await json(['copy', 'show', e.id as string])).state === 'equivalent');
    expect(await json(['copy', 'split', e.id as string])).toMatchObject({ state: 'split' });
    await pattern('ca', 0x44, '2M', '1M');
    const restoring = await ok(['copy', 'restore', e.id as string]);
    expect(restoring).toMatch(/^restoring EC cb -> ca: session \S+, (copying|equivalent),/);
    await until('restored', async () => (await json(['copy', 'show', e.id as string])).state === 'equivalent');
    await ok(['copy', 'suspend', e.id as string]);
    expect(await verify('ca', 0x33)).toBe(true);
    await ok(['copy', 'cancel', e.id as string]);
  }, 60_000);

  it('restore from clone: refused while a client writes to the original, unless --force; the output says what the pair is now and how to write the original again', async () => {
    const qemuIo = requireTool('qemu-io');
    const id = await equivalentEc('oa', 'ob', 0x61);
    await ok(['copy', 'split', id]);

    // A real client (libnbd) has the original open read-write.
    const holder = await nbdWriter(lab.nbdUri('oa'));
    try {
      const refused = await lab.cli(['copy', 'restore', id]);
      expect(refused.code).toBe(1);
      expect(refused.stdout).toBe('');
      expect(refused.stderr).toBe(
        `arraylab: cannot restore oa from clone ob (EC session ${id}): oa is exported read-write to 1 connected client; dismount it first or pass --force\n`,
      );
      expect(await json(['copy', 'show', id])).toMatchObject({ state: 'split', source: 'oa', destination: 'ob', reversed: false });

      const forced = await json(['copy', 'restore', id, '--force']);
      expect(forced).toMatchObject({
        id,
        source: 'ob',
        destination: 'oa',
        reversed: true,
        restore: {
          original: 'oa',
          clone: 'ob',
          makeWritable: [`arraylab copy suspend ${id} && arraylab copy reverse ${id}`, `arraylab copy cancel ${id}`, `arraylab copy split ${id}`],
        },
      });
      expect(['copying', 'equivalent']).toContain(forced.state);
      expect((forced.restore as { originalAccess: string }).originalAccess).toBe(
        forced.state === 'copying' ? 'none until the pair is equivalent, then read-only' : 'read-only',
      );
      // What --force risks: the client's next write fails.
      expect(await holder.write()).toBe('failed EPERM');
    } finally {
      holder.close();
    }

    // The way back the output names works: once equivalent, suspend and reverse make oa writable.
    await until('restored', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    await ok(['copy', 'suspend', id]);
    expect(await json(['copy', 'reverse', id])).toMatchObject({ source: 'oa', destination: 'ob', state: 'suspended' });
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x64 0 64k', lab.nbdUri('oa')]);

    // The human output, from a restore with no client on the original.
    const text = await ok(['copy', 'restore', id]);
    const [first, ...rest] = text.split('\n');
    expect(first).toMatch(new RegExp(`^restoring EC ob -> oa: session ${id}, (copying|equivalent), \\d+/64 \\(\\d+%\\) units copied$`));
    expect(rest.join('\n')).toBe(
      [
        "The pair is reversed: clone ob is copied back onto the original oa, which is now the pair's destination. " +
          `Hosts cannot read or write oa until the pair is equivalent (follow it with: arraylab copy watch ${id}); then it is read-only, and writes to ob are mirrored onto it.`,
        'To write to oa again, once the pair is equivalent:',
        `  arraylab copy suspend ${id} && arraylab copy reverse ${id}   (back to oa -> ob, suspended; arraylab copy resume ${id} mirrors oa onto ob again)`,
        `  arraylab copy cancel ${id}   (ends the pair; oa keeps the restored data)`,
        `  arraylab copy split ${id}   (oa becomes independent; a later resume copies ob onto it again)`,
        '',
      ].join('\n'),
    );
    await until('restored again', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    await ok(['copy', 'cancel', id]);
    const r = await run(qemuIo, ['-f', 'raw', '-c', 'read -P 0x61 0 4M', lab.nbdUri('oa')]); // the clone's image, and writable
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x65 0 64k', lab.nbdUri('oa')]);
  }, 60_000);

  it('resume and reverse: refused while a client writes to the volume they overwrite, unless --force', async () => {
    const qemuIo = requireTool('qemu-io');
    for (const v of ['wq', 'wr']) await ok(['volume', 'create', v, '--size', '4MiB']);
    const busy = 'is exported read-write to 1 connected client; dismount it first or pass --force';
    /** `copy <args>` is refused with exactly `message` and leaves the session as it was. */
    const refused = async (id: string, args: string[], message: string) => {
      const before = await json(['copy', 'show', id]);
      const r = await lab.cli(['copy', ...args]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`arraylab: ${message}\n`);
      expect(await json(['copy', 'show', id])).toMatchObject({
        state: before.state,
        source: before.source,
        destination: before.destination,
        reversed: before.reversed,
      });
    };
    const id = await equivalentEc('wa', 'wb', 0x71);
    await ok(['copy', 'suspend', id]);

    // EC resume: the destination (a suspended one is read-write) is overwritten and hosts lose it.
    let holder = await nbdWriter(lab.nbdUri('wb'));
    try {
      await refused(id, ['resume', id], `cannot resume EC wa -> wb (session ${id}): wb ${busy}`);
      expect(await holder.write()).toBe('wrote'); // the client was not disturbed
      expect(['copying', 'equivalent']).toContain((await json(['copy', 'resume', id, '--force'])).state);
      expect(await holder.write()).toBe('failed EPERM'); // what --force risks (NBD has no EACCES)
    } finally {
      holder.close();
    }
    await until('equivalent again', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    await ok(['copy', 'suspend', id]);

    // EC reverse: the source becomes the destination.
    holder = await nbdWriter(lab.nbdUri('wa'));
    try {
      await refused(id, ['reverse', id], `cannot reverse EC wa -> wb (session ${id}): wa ${busy}`);
      expect(await json(['copy', 'reverse', id, '--force'])).toMatchObject({ source: 'wb', destination: 'wa', state: 'suspended', reversed: true });
    } finally {
      holder.close();
    }
    await ok(['copy', 'cancel', id]);

    // QuickOPC reverse (restore): the source is overwritten with the backup.
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x72 0 4M', lab.nbdUri('wq')]);
    const q = (await json(['copy', 'start', '--type', 'quickopc', '--src', 'wq', '--dst', 'wr'])).id as string;
    await until('tracking', async () => (await json(['copy', 'show', q])).state === 'tracking');
    holder = await nbdWriter(lab.nbdUri('wq'));
    try {
      await refused(q, ['reverse', q], `cannot reverse QuickOPC wq -> wr (session ${q}): wq ${busy}`);
      expect(await json(['copy', 'reverse', q, '--force'])).toMatchObject({ source: 'wr', destination: 'wq', reversed: true });
    } finally {
      holder.close();
    }
    await until('restored', async () => (await json(['copy', 'show', q])).state === 'tracking');
    const r = await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0x72 0 4M', lab.nbdUri('wq')]); // the backup's image, the client's write undone
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    await ok(['copy', 'cancel', q]);
  }, 60_000);

  it('split --rename: the clone gets a new name, serial and WWN, and can rejoin', async () => {
    await ok(['volume', 'create', 'ra', '--size', '1MiB']);
    await ok(['volume', 'create', 'rb', '--size', '1MiB']);
    await ok(['volume', 'create', 'taken', '--size', '1MiB']);
    const before = await json(['volume', 'show', 'rb']);
    const s = await json(['copy', 'start', '--type', 'ec', '--src', 'ra', '--dst', 'rb']);
    const id = s.id as string;
    await until('equivalent', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    const clash = await lab.cli(['copy', 'split', id, '--rename', 'taken']);
    expect(clash.code).toBe(1);
    expect(clash.stderr).toMatch(/^arraylab: cannot rename volume rb to taken: volume taken already exists/);
    expect((await json(['copy', 'show', id])).state).toBe('equivalent'); // refused before the split
    expect(await json(['copy', 'split', id, '--rename', 'rb-clone'])).toMatchObject({ state: 'split', destination: 'rb-clone' });
    const after = await json(['volume', 'show', 'rb-clone']);
    expect(after.uuid).toBe(before.uuid);
    expect(after.serial).not.toBe(before.serial);
    expect(after.wwn).not.toBe(before.wwn);
    expect((await lab.cli(['volume', 'show', 'rb'])).code).toBe(1);
    expect((await json(['copy', 'resume', id])).destination).toBe('rb-clone');
    await until('equivalent again', async () => (await json(['copy', 'show', id])).state === 'equivalent');
    await ok(['copy', 'cancel', id]);
  }, 30_000);

  it('refuses a destination exported read-write to a connected client unless --force', async () => {
    await ok(['volume', 'create', 'fa', '--size', '1MiB']);
    await ok(['volume', 'create', 'fb', '--size', '1MiB']);
    const held = await holdNbdConnection(lab.nbdPort, 'fb');
    try {
      const r = await lab.cli(['copy', 'start', '--type', 'ec', '--src', 'fa', '--dst', 'fb']);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe('arraylab: cannot start EC fa -> fb: fb is exported read-write to 1 connected client; dismount it first or pass --force\n');
      const s = await json(['copy', 'start', '--type', 'ec', '--src', 'fa', '--dst', 'fb', '--force', '--rate', '0']);
      expect(s.state).toBe('copying');
      await ok(['copy', 'cancel', s.id as string]);
    } finally {
      held.destroy();
    }
  });

  it('fails with one line: exit 1 for operations, 2 for usage', async () => {
    const missing = await lab.cli(['copy', 'show', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('arraylab: no copy session nope; list sessions to see their ids\n');
    const badType = await lab.cli(['copy', 'start', '--type', 'bogus', '--src', 'a', '--dst', 'b']);
    expect(badType.code).toBe(2);
    expect(badType.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(badType.stderr).toMatch(
      /^arraylab: Invalid values: Argument: type, Given: "bogus", Choices: "opc", "quickopc", "snapopcplus", "ec", "rec", "ropc" \(see 'arraylab copy start --help'\)\n$/,
    );
    const badRate = await lab.cli(['copy', 'start', '--type', 'opc', '--src', 'a', '--dst', 'b', '--rate', 'fast']);
    expect(badRate.code).toBe(2);
    expect(badRate.stderr).toBe('arraylab: --rate: "fast" is not a rate; give MiB/s as a number (0 = no background copy) or "unthrottled"\n');
    const noSrc = await lab.cli(['copy', 'start', '--type', 'opc', '--dst', 'b']);
    expect(noSrc.code).toBe(2);
    expect(noSrc.stderr).toMatch(/^arraylab: Missing required argument: src \(see 'arraylab copy start --help'\)\n$/);
    const noVol = await lab.cli(['copy', 'start', '--type', 'opc', '--src', 'a', '--dst', 'b']);
    expect(noVol.code).toBe(1);
    expect(noVol.stderr).toBe('arraylab: cannot start OPC a -> b: no volume named "a"; list volumes with "arraylab volume list"\n');
    const unreachable = await lab.cli(['copy', 'list', '--api', '127.0.0.1:1']);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/^arraylab: cannot reach the arraylab API at 127\.0\.0\.1:1: connection refused;/);
  });
});

/**
 * A real client (libnbd) holding `uri` open read-write: it writes 4 KiB (0x62) at offset 0 once
 * connected, and again (0x63) on each write(), which resolves with "wrote" or "failed <errno>".
 */
async function nbdWriter(uri: string): Promise<{ write: () => Promise<string>; close: () => void }> {
  const script = [
    'import errno, nbd, sys',
    `h = nbd.NBD(); h.connect_uri("${uri}")`,
    'h.pwrite(b"\\x62" * 4096, 0)',
    'print("ready", flush=True)',
    'while sys.stdin.readline():',
    '    try:',
    '        h.pwrite(b"\\x63" * 4096, 0); print("wrote", flush=True)',
    '    except nbd.Error as e:',
    '        print("failed", errno.errorcode.get(e.errno, e.errno), flush=True)',
  ].join('\n');
  const holder = spawn(requireNbdsh(), ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: holder.stdout })[Symbol.asyncIterator]();
  const next = async () => String((await lines.next()).value);
  const first = await next();
  if (first !== 'ready') {
    holder.kill();
    throw new Error(`the libnbd client could not write to ${uri} (it said: ${first})`);
  }
  return {
    write: () => {
      holder.stdin.write('\n');
      return next();
    },
    close: () => holder.kill(),
  };
}
