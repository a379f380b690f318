/**
 * The real server with its data directory on a small ext4 (a loop device) that fills up.
 *
 *  - A copy start whose journal commit fails (SQLITE_FULL) is refused with one clear line
 *    (RESOURCE_EXHAUSTED: what is full and what to do), and leaves nothing: no session in
 *    `copy list`, the EC destination attachable, deletable once there is room, and no session
 *    after a restart; with space again the same start works.
 *  - `tape add` on the full disk says so, and leaves no cartridge file.
 *  - `volume delete`, `create`, `rename` and `set` are refused with one clear line and change
 *    nothing: the volume is listed as it was, attachable over NBD, its data intact. A refused
 *    resize leaves its grown store (a store cannot shrink), which a restart on the full disk
 *    adopts. With room again the delete works, also after a restart (no files left).
 *  - A background copy whose destination writes fail (ENOSPC) shows the error in `copy list`
 *    and `copy show` (--json too), logs it once, backs off, and clears it when space is back.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanupLoops, makeLoopDisk } from '../agent/host/loopFs.js';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { until } from '../support/wait.js';

describe('a full data directory', () => {
  let mnt: string;
  let dataDir: string;
  let lab: Arraylab | undefined;
  let fillers = 0;

  beforeAll(() => {
    requireTool('mkfs.ext4');
    requireTool('fallocate');
    const disk = makeLoopDisk(48);
    // -m 0: no blocks reserved for root (the server runs as root and would use them).
    execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', disk.device], { stdio: 'pipe' });
    mnt = join(disk.dir, 'mnt');
    mkdirSync(mnt);
    execFileSync('mount', [disk.device, mnt], { stdio: 'pipe' });
  });
  afterAll(async () => {
    await lab?.kill9();
    cleanupLoops(); // unmount, losetup -d, rm: also after a failure
  });

  /**
   * Fills the filesystem with filler files until about `leave` bytes are free (fallocate of
   * all that df shows fails: the extent tree needs blocks too, so it halves and goes on).
   */
  const fill = (leave = 0) => {
    for (let i = 0; i < 64; i++) {
      execFileSync('sync');
      const want = Number(execFileSync('df', ['--output=avail', '-B1', mnt], { encoding: 'utf8' }).split('\n')[1]) - leave;
      if (want <= 1024) return;
      for (let n = want; n >= 1024; n = Math.floor(n / 2)) {
        try {
          execFileSync('fallocate', ['-l', String(n), join(mnt, `filler${fillers++}`)], { stdio: 'pipe' });
          break;
        } catch {
          // too large for what is left: try half
        }
      }
    }
  };
  const free = () => {
    for (let i = 0; i < fillers; i++) rmSync(join(mnt, `filler${i}`), { force: true });
    fillers = 0;
  };
  /** A server on data directory `dir` of the small filesystem (a leftover one from a failed test is killed first). */
  const start = async (dir: string) => {
    if (lab !== undefined && dataDir !== join(mnt, dir)) await lab.kill9();
    dataDir = join(mnt, dir);
    lab = await startArraylab({ dataDir, config: { volumes: [] } });
    return lab;
  };

  it('a refused start leaves no session (list, attach, delete, restart); tape add says the disk is full', async () => {
    const qemuIo = requireTool('qemu-io');
    let l = await start('data1');
    for (const v of ['vol1', 'vol2', 'vol3']) await cliOk(l, ['volume', 'create', v, '--size', '4MiB']);
    execFileSync(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', l.nbdUri('vol1')], { stdio: 'pipe' });
    fill();

    const ec = await l.cli(['copy', 'start', '--type', 'ec', '--src', 'vol1', '--dst', 'vol3', '--rate', '0']);
    expect(ec.code).toBe(1);
    expect(ec.stdout).toBe('');
    expect(ec.stderr).toBe(`arraylab: cannot start EC vol1 -> vol3: the array's data directory ${dataDir} is full (SQLITE_FULL); free space there and retry\n`);
    const opc = await l.cli(['copy', 'start', '--type', 'opc', '--src', 'vol1', '--dst', 'vol2', '--rate', '0']);
    expect(opc.stderr).toBe(
      `arraylab: cannot start OPC vol1 -> vol2: the array's data directory ${dataDir} is full (SQLITE_FULL); free space there and retry\n`,
    );
    expect(await cliJson(l, ['copy', 'list'])).toEqual({ sessions: [] });
    // The EC destination is no copy's destination: hosts attach it (a copying EC destination is refused).
    execFileSync(qemuIo, ['-f', 'raw', '-r', '-c', 'read 0 64k', l.nbdUri('vol3')], { stdio: 'pipe' });

    const tape = await l.cli(['tape', 'add', 'T0001', '--capacity', '1GiB']);
    expect(tape.code).toBe(1);
    expect(tape.stderr).toBe(
      `arraylab: cannot add cartridge T0001: the tape directory ${join(dataDir, 'tape')} is full (ENOSPC); free space there and retry\n`,
    );
    expect(existsSync(join(dataDir, 'tape', 'T0001.tape'))).toBe(false);
    expect(await cliJson(l, ['tape', 'list'])).toEqual({ cartridges: [] });

    free();
    await cliOk(l, ['volume', 'delete', 'vol3']);
    await l.stop(); // its last journal commit has room now: it must not write the refused sessions
    l = await start('data1');
    expect(await cliJson(l, ['copy', 'list'])).toEqual({ sessions: [] });
    expect(await cliJson(l, ['copy', 'start', '--type', 'opc', '--src', 'vol1', '--dst', 'vol2'])).toMatchObject({
      type: 'opc',
      source: 'vol1',
      destination: 'vol2',
    });
    expect(await cliJson(l, ['tape', 'add', 'T0001', '--capacity', '1GiB'])).toMatchObject({ label: 'T0001' });
    await until('the OPC finished', async () => ((await cliJson(l, ['copy', 'list'])).sessions as unknown[]).length === 0);
    await l.stop();
    lab = undefined;
  }, 120_000);

  it('volume delete, create, rename and set are refused whole; the volume stays attachable with its data; a resize is adopted at restart; with room, delete works', async () => {
    const qemuIo = requireTool('qemu-io');
    free();
    let l = await start('data3');
    await cliOk(l, ['volume', 'create', 'keep', '--size', '4MiB']);
    execFileSync(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', l.nbdUri('keep')], { stdio: 'pipe' });
    const keep = await cliJson(l, ['volume', 'show', 'keep']);
    fill();
    const refused = async (args: string[], what: string, code = 'SQLITE_FULL') => {
      const r = await l.cli(args);
      const stderr = `arraylab: cannot ${what}: the array's data directory ${dataDir} is full (${code}); free space there and retry\n`;
      expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 1, stdout: '', stderr });
    };

    await refused(['volume', 'delete', 'keep'], 'delete volume keep');
    await refused(['volume', 'create', 'more', '--size', '4MiB'], 'create volume more', 'ENOSPC'); // its files do not fit
    await refused(['volume', 'rename', 'keep', 'kept'], 'rename volume keep to kept');
    await refused(['volume', 'set', 'keep', '--alloc-limit', '2MiB'], 'set the allocation limit of volume keep');
    // Nothing of them happened: keep is listed as it was, attachable over NBD, its data intact.
    expect(((await cliJson(l, ['volume', 'list'])).volumes as Array<{ name: string }>).map((v) => v.name)).toEqual(['keep']);
    expect(await cliJson(l, ['volume', 'show', 'keep'])).toEqual(keep);
    // Read-write (an overwrite in place needs no new space), then every byte as written.
    const data = execFileSync(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5c 0 64k', '-c', 'read -P 0x5c 0 1M', l.nbdUri('keep')], { encoding: 'utf8' });
    expect(data).toMatch(/read 1048576\/1048576 bytes/);
    expect(data).not.toMatch(/Pattern verification failed/);
    expect(readdirSync(join(dataDir, 'volumes'))).toHaveLength(2); // keep's data and map; none of "more"

    // A resize cannot undo its grown store: a restart on the full disk adopts it, as after a crash.
    await refused(['volume', 'resize', 'keep', '--size', '8MiB'], 'resize volume keep');
    await l.stop();
    l = await start('data3');
    expect(await cliJson(l, ['volume', 'show', 'keep'])).toEqual({ ...keep, sizeBytes: 8 * 2 ** 20 });

    free();
    await cliOk(l, ['volume', 'delete', 'keep']);
    expect(await cliJson(l, ['volume', 'list'])).toEqual({ volumes: [] });
    await l.stop();
    l = await start('data3');
    expect(await cliJson(l, ['volume', 'list'])).toEqual({ volumes: [] });
    expect(readdirSync(join(dataDir, 'volumes'))).toEqual([]);
    await l.stop();
    lab = undefined;
  }, 120_000);

  it('a background copy that hits ENOSPC shows the error once, backs off, and recovers', async () => {
    const qemuIo = requireTool('qemu-io');
    free();
    const l = await start('data2');
    await cliOk(l, ['volume', 'create', 'big', '--size', '8MiB']);
    await cliOk(l, ['volume', 'create', 'bigcopy', '--size', '8MiB']);
    // Data, not zeroes: the copy must allocate (zeroes would stay holes).
    execFileSync(qemuIo, ['-f', 'raw', '-c', 'write -P 0x33 0 8M', l.nbdUri('big')], { stdio: 'pipe' });
    fill(512 * 1024); // room for the journal's commits, not for 8 MiB of data
    const s = await cliJson(l, ['copy', 'start', '--type', 'opc', '--src', 'big', '--dst', 'bigcopy']);
    const id = s.id as string;
    await until('the copy failed', async () => ((await cliJson(l, ['copy', 'show', id])).error as string) !== '');
    const shown = await cliJson(l, ['copy', 'show', id]);
    expect(shown.state).toBe('copying');
    expect(shown.error).toMatch(
      /^background copy of big -> bigcopy failed: .*; retrying with back-off \(1 s doubling to 60 s\) until it works: fix the cause, or cancel the session$/,
    );
    expect(Date.parse(shown.errorSince as string)).toBeGreaterThan(0);
    expect(Date.parse(shown.retryAt as string)).toBeGreaterThan(Date.parse(shown.errorSince as string));
    const table = await cliOk(l, ['copy', 'list']);
    expect(table).toContain(`\n${id}: background copy of big -> bigcopy failed: `);
    expect(table).toMatch(/\(next retry \d{4}-\d\d-\d\dT[\d:.]+Z\)\n$/);
    await new Promise((r) => setTimeout(r, 3500)); // retries at +1 s and +3 s: still one log line
    const warned = () =>
      l
        .logs()
        .split('\n')
        .filter((line) => line.includes('background copy of big -> bigcopy failed')).length;
    expect(warned()).toBe(1);

    free();
    await until('the copy recovered and finished', async () => ((await cliJson(l, ['copy', 'list'])).sessions as unknown[]).length === 0, {
      timeoutMs: 30_000,
    });
    expect(warned()).toBe(1);
    expect(l.logs()).toMatch(/background copy of big -> bigcopy works again \(it had failed \d+ times? since /);
    const copied = execFileSync(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0x33 0 8M', l.nbdUri('bigcopy')], { encoding: 'utf8' });
    expect(copied).toMatch(/read 8388608\/8388608 bytes/);
    expect(copied).not.toMatch(/Pattern verification failed/);
    await l.stop();
    lab = undefined;
  }, 120_000);
});
