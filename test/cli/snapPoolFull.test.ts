/**
 * End to end over the real server: a SnapOPC+ generation whose snap volume runs out of space
 * (a thin volume with a small allocation limit, like a small snap data pool).
 *
 * Every source write still succeeds and reads back; the full generation goes to
 * error-suspended with a message that names the snap volume, its limit and the fix, an
 * 'error' event is streamed (WatchCopies), and an older generation on an unlimited snap
 * volume still reads its exact point-in-time image.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { CopyEventView } from '../../proto/views.js';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);
const MiB = 2 ** 20;

describe('SnapOPC+ with a snap volume at its allocation limit', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('the full generation is error-suspended with a clear error event; the source and the older generation are unharmed', async () => {
    const qemuIo = requireTool('qemu-io');
    const ok = (args: string[]) => cliOk(lab, args);
    const json = (args: string[]) => cliJson(lab, args);
    const io = (uri: string, ...cmds: string[]) => run(qemuIo, ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { maxBuffer: 16 * MiB });
    // Snap volumes are read-only to hosts.
    const ro = (uri: string, ...cmds: string[]) => run(qemuIo, ['-f', 'raw', '-r', ...cmds.flatMap((c) => ['-c', c]), uri], { maxBuffer: 16 * MiB });

    await ok(['volume', 'create', 'src', '--size', '64MiB']);
    await ok(['volume', 'create', 'snapA', '--size', '64MiB']);
    await ok(['volume', 'create', 'snapB', '--size', '64MiB', '--alloc-limit', '1MiB']);
    await io(lab.nbdUri('src'), 'write -P 0x11 0 64M');

    // Generation 1 on the unlimited snap volume; then a change it must save; then generation 2
    // on the limited one.
    const g1 = await json(['copy', 'start', '--type', 'snapopcplus', '--src', 'src', '--dst', 'snapA']);
    expect(g1).toMatchObject({ type: 'snapopcplus', state: 'snap', generation: 1 });
    await io(lab.nbdUri('src'), 'write -P 0x22 0 4M');
    const g2 = await json(['copy', 'start', '--type', 'snapopcplus', '--src', 'src', '--dst', 'snapB']);
    expect(g2).toMatchObject({ state: 'snap', generation: 2, destination: 'snapB' });

    const client = new ArrayClient(lab.apiAddress);
    const events: CopyEventView[] = [];
    const watch = client.watchCopies({}, (e) => events.push(e));
    try {
      await new Promise((r) => setTimeout(r, 200)); // the snapshot events first

      // Overwrite 40 MiB of the source: generation 2 takes 1 MiB of before-images (16 units)
      // and is then full; every write still succeeds.
      const w = await io(lab.nbdUri('src'), 'write -P 0x33 0 40M');
      expect(w.stdout).toMatch(/wrote 41943040\/41943040 bytes/);
      await io(lab.nbdUri('src'), 'read -P 0x33 0 40M', 'read -P 0x11 40M 24M');

      const failed = await json(['copy', 'show', g2.id as string]);
      expect(failed.state).toBe('error-suspended');
      const error = failed.error as string;
      expect(error).toMatch(/^snap volume snapB of SnapOPC\+ generation 2 \(session [0-9a-f-]{36}\) is full: /);
      expect(error).toContain(
        "volume snapB has reached its allocation limit of 1 MiB (1 MiB allocated, the write needs 64 KiB more); raise it with 'arraylab volume set snapB --alloc-limit SIZE', trim data, or use a larger volume",
      );
      expect(error).toMatch(/the generation is error-suspended and can no longer be read; cancel it and use a larger snap volume$/);
      expect(await json(['volume', 'show', 'snapB'])).toMatchObject({ allocatedBytes: MiB, allocLimitBytes: MiB });

      // The error event, streamed to the watcher, once.
      const errors = events.filter((e) => e.kind === 'error');
      expect(errors).toHaveLength(1);
      expect(errors[0]).toMatchObject({ sessionId: g2.id, state: 'error-suspended', message: error });

      // Generation 1 is healthy and reads its exact image (all 0x11: the 0x22 change came after it).
      expect(await json(['copy', 'show', g1.id as string])).toMatchObject({ state: 'snap' });
      const image = await ro(lab.nbdUri('snapA'), 'read -P 0x11 0 64M');
      expect(image.stdout).toMatch(/read 67108864\/67108864 bytes/);
      expect(image.stdout).not.toMatch(/Pattern verification failed/);
      // Generation 2's reads fail: its image is incomplete.
      const broken = await ro(lab.nbdUri('snapB'), 'read 0 64k').then(
        (r) => r.stdout + r.stderr,
        (e: { stdout: string; stderr: string }) => e.stdout + e.stderr,
      );
      // Refused at open with the reason, or (older servers) EIO on the read.
      expect(broken).toMatch(/snap volume snapB of SnapOPC\+ generation 2|Input\/output error/);
      expect(broken).not.toMatch(/read 65536\/65536 bytes/);

      // Cancel the full generation (force: generation 1 reads through it): both go, the source stays.
      await ok(['copy', 'cancel', g2.id as string, '--force']);
      expect(await json(['copy', 'list'])).toEqual({ sessions: [] });
      await io(lab.nbdUri('src'), 'read -P 0x33 0 40M', 'read -P 0x11 40M 24M');
    } finally {
      watch.cancel();
      await watch.done.catch(() => undefined);
      client.close();
    }
  }, 120_000);
});
