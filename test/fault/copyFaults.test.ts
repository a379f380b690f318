/**
 * copy-error faults on the real server, through the CLI and real NBD clients: an EC pair and
 * an OPC go error-suspended with the reason, which `copy show`, `copy list` and WatchCopies
 * give, and which survives a kill -9 and restart (the journal); hosts get EIO with the reason
 * where the session says so; EC resume recovers once the fault is removed, OPC is cancelled.
 * On a volume, the fault fails whichever session's copy I/O touches it, and nothing else.
 * Bad blocks are on the medium: the copy engine's reads meet them and its writes heal them.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { CopyEventView, FaultEventView } from '../../proto/views.js';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { waitFor } from '../support/wait.js';

const run = promisify(execFile);
const qemuIo = (uri: string, cmd: string) =>
  run(requireTool('qemu-io'), ['-f', 'raw', '-c', cmd, uri]).then(
    (r) => ({ ok: true, out: r.stdout + r.stderr }),
    (e: { stdout?: string; stderr?: string }) => ({ ok: false, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );

describe('copy-error faults (real server, CLI, qemu-io)', () => {
  const labs: Arraylab[] = [];
  afterAll(async () => {
    for (const l of labs) await l.stop().catch(() => undefined);
  });
  const start = async (dataDir: string): Promise<Arraylab> => {
    const l = await startArraylab({ dataDir, config: { volumes: [] } });
    labs.push(l);
    return l;
  };
  const state = async (l: Arraylab, id: string) => (await cliJson(l, ['copy', 'show', id])) as { state: string; error: string };
  /** Starts a session with the CLI; its id. */
  const startCopy = async (l: Arraylab, type: string, src: string, dst: string): Promise<string> =>
    ((await cliJson(l, ['copy', 'start', '--type', type, '--src', src, '--dst', dst])) as { id: string }).id;
  /** Waits until the session is in that state; its show. */
  const reach = (l: Arraylab, id: string, want: string) =>
    waitFor(
      () => state(l, id),
      (s) => s.state === want,
      { timeoutMs: 30_000, intervalMs: 100 },
    );

  it('EC: error-suspended with the reason in show, list and WatchCopies, kept across kill -9; resume recovers once the fault is gone', async () => {
    const dataDir = makeTempDir('arraylab-copyfault-');
    let lab = await start(dataDir);
    for (const v of ['src', 'dst']) await cliOk(lab, ['volume', 'create', v, '--size', '16MiB']);
    expect((await qemuIo(lab.nbdUri('src'), 'write -P 0x11 0 1M')).ok).toBe(true);
    const id = ((await cliJson(lab, ['copy', 'start', '--type', 'ec', '--src', 'src', '--dst', 'dst'])) as { id: string }).id;
    await waitFor(
      () => state(lab, id),
      (s) => s.state === 'equivalent',
      { timeoutMs: 30_000, intervalMs: 100 },
    );

    const client = new ArrayClient(lab.apiAddress);
    const events: CopyEventView[] = [];
    const watch = client.watchCopies({ id }, (e) => events.push(e));
    const fault = (await cliOk(lab, ['fault', 'add', 'copy-error', '--session', id, '--ops', 'write', '--once'])).trim();
    expect((await qemuIo(lab.nbdUri('src'), 'write -P 0x22 0 64k')).ok).toBe(true); // the host's write stands

    const s = await state(lab, id);
    expect(s.state).toBe('error-suspended');
    expect(s.error).toMatch(
      new RegExp(`^EC session ${id} \\(src -> dst\\) is error-suspended: a mirrored write failed: .*\\(fault ${fault}\\); .*resume the session`),
    );
    const shown = await cliOk(lab, ['copy', 'show', id]);
    expect(shown).toMatch(/^state:\s+error-suspended$/m);
    expect(shown).toMatch(/^error:\s+EC session /m);
    expect(shown).toContain(s.error);
    expect(await cliOk(lab, ['copy', 'list'])).toContain(`${id}: ${s.error}`);
    await waitFor(
      () => events,
      (es) => es.some((e) => e.kind === 'error'),
      { timeoutMs: 10_000, intervalMs: 50 },
    );
    expect(events.find((e) => e.kind === 'error')).toMatchObject({ sessionId: id, state: 'error-suspended', message: s.error });
    watch.cancel();
    client.close();
    // Hosts cannot use the destination: it holds no usable image.
    const r = await qemuIo(lab.nbdUri('dst'), 'read 0 512');
    expect(r.ok).toBe(false);
    expect(r.out).toMatch(/error-suspended/);

    await lab.kill9();
    lab = await start(dataDir);
    expect(await state(lab, id)).toMatchObject({ state: 'error-suspended', error: s.error });
    await cliOk(lab, ['fault', 'remove', fault]);
    await cliOk(lab, ['copy', 'resume', id]);
    await waitFor(
      () => state(lab, id),
      (x) => x.state === 'equivalent',
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', lab.nbdUri('src'), lab.nbdUri('dst')]);
    expect(cmp.stdout).toMatch(/Images are identical/);
    await cliOk(lab, ['copy', 'cancel', id]);
    await lab.stop();
    labs.splice(labs.indexOf(lab), 1);
  });

  it('OPC: the background copy fails; copied parts of the destination read, the rest fail with the reason; cancel ends it', async () => {
    const lab = await start(makeTempDir('arraylab-copyfault-'));
    for (const v of ['o-src', 'o-dst']) await cliOk(lab, ['volume', 'create', v, '--size', '16MiB']);
    expect((await qemuIo(lab.nbdUri('o-src'), 'write -P 0x33 0 16M')).ok).toBe(true);
    const id = ((await cliJson(lab, ['copy', 'start', '--type', 'opc', '--src', 'o-src', '--dst', 'o-dst', '--rate', '0'])) as { id: string }).id;
    // Unit 0 copied by a destination write (it brings the unit over first), then the copier fails.
    expect((await qemuIo(lab.nbdUri('o-dst'), 'write -P 0x44 0 512')).ok).toBe(true);
    const fault = (await cliOk(lab, ['fault', 'add', 'copy-error', '--session', id, '--ops', 'read'])).trim();
    await cliOk(lab, ['copy', 'rate', id, '--rate', 'unthrottled']);
    await waitFor(
      () => state(lab, id),
      (s) => s.state === 'error-suspended',
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    const s = await state(lab, id);
    expect(s.error).toMatch(
      new RegExp(
        `^OPC session ${id} \\(o-src -> o-dst\\) is error-suspended: the background copy failed: injected copy read error on volume o-src at byte \\d+ \\(fault ${fault}\\); .*cancel the session`,
      ),
    );
    expect((await qemuIo(lab.nbdUri('o-dst'), 'read -P 0x44 0 512')).ok).toBe(true); // a copied unit
    const bad = await qemuIo(lab.nbdUri('o-dst'), 'read 8M 512');
    expect(bad.out).toMatch(/Input\/output error/);
    expect((await qemuIo(lab.nbdUri('o-src'), 'write -P 0x55 8M 64k')).ok).toBe(true); // the source is not held back
    await cliOk(lab, ['copy', 'cancel', id]);
    await cliOk(lab, ['fault', 'clear']);
  });

  it('on a volume: set before any session exists, it fails the copy of whichever session reads it, and neither host I/O nor other pairs', async () => {
    const lab = await start(makeTempDir('arraylab-copyfault-'));
    for (const v of ['v-src', 'v-dst', 'w-src', 'w-dst']) await cliOk(lab, ['volume', 'create', v, '--size', '16MiB']);
    for (const v of ['v-src', 'w-src']) expect((await qemuIo(lab.nbdUri(v), 'write -P 0x66 0 4M')).ok).toBe(true);
    const fault = (await cliOk(lab, ['fault', 'add', 'copy-error', '--volume', 'v-src', '--ops', 'read'])).trim();
    // Host I/O to the volume does not pass this fault: it works, and the fault saw nothing.
    expect((await qemuIo(lab.nbdUri('v-src'), 'read -P 0x66 0 4M')).ok).toBe(true);
    expect((await qemuIo(lab.nbdUri('v-src'), 'write -P 0x67 4M 64k')).ok).toBe(true);
    expect(await cliOk(lab, ['fault', 'list'])).toMatch(new RegExp(`^${fault}\\s+volume:v-src\\s+copy-error\\s+0/0\\s`, 'm'));
    // A pair on other volumes copies on.
    const other = await startCopy(lab, 'ec', 'w-src', 'w-dst');
    await reach(lab, other, 'equivalent');
    // The first session that reads v-src, started after the fault: its background copy fails.
    const id = await startCopy(lab, 'opc', 'v-src', 'v-dst');
    expect((await reach(lab, id, 'error-suspended')).error).toMatch(
      new RegExp(
        `^OPC session ${id} \\(v-src -> v-dst\\) is error-suspended: the background copy failed: injected copy read error on volume v-src at byte \\d+ \\(fault ${fault}\\)`,
      ),
    );
    expect((await state(lab, other)).state).toBe('equivalent');
    const { events } = (await cliJson(lab, ['fault', 'events'])) as unknown as { events: FaultEventView[] };
    const mine = events.filter((e) => e.faultId === fault);
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((e) => e.kind === 'copy-error' && e.target === 'volume:v-src' && e.op === 'read')).toBe(true);
    await cliOk(lab, ['copy', 'cancel', id]);
    await cliOk(lab, ['copy', 'cancel', other]);
    await cliOk(lab, ['fault', 'clear']);
  });

  it('bad blocks are on the medium: a copy that reads one goes error-suspended with the medium error, and a copy that writes one heals it', async () => {
    const lab = await start(makeTempDir('arraylab-copyfault-'));
    // 4 KiB blocks: block 256 is byte 1 MiB (bad blocks are numbered in the volume's own blocks).
    for (const v of ['b-src', 'b-dst']) await cliOk(lab, ['volume', 'create', v, '--size', '16MiB', '--block-size', '4096']);
    expect((await qemuIo(lab.nbdUri('b-src'), 'write -P 0x77 0 4M')).ok).toBe(true);
    const onSrc = (await cliOk(lab, ['fault', 'add', 'bad-blocks', '--volume', 'b-src', '--lba', '256'])).trim();
    const id = await startCopy(lab, 'opc', 'b-src', 'b-dst');
    expect((await reach(lab, id, 'error-suspended')).error).toMatch(
      new RegExp(
        `^OPC session ${id} \\(b-src -> b-dst\\) is error-suspended: the background copy failed: medium error reading block 256 of volume b-src: it is a bad block \\(fault ${onSrc}\\); rewrite it to heal it`,
      ),
    );
    await cliOk(lab, ['copy', 'cancel', id]);
    await cliOk(lab, ['fault', 'remove', onSrc]);

    // A bad block on the destination: hosts cannot read it until something rewrites it; the copy does.
    await cliOk(lab, ['fault', 'add', 'bad-blocks', '--volume', 'b-dst', '--lba', '256']);
    expect((await qemuIo(lab.nbdUri('b-dst'), 'read 1M 4k')).out).toMatch(/Input\/output error/);
    const again = await startCopy(lab, 'opc', 'b-src', 'b-dst');
    await waitFor(
      async () => ((await cliJson(lab, ['copy', 'list'])) as unknown as { sessions: Array<{ id: string }> }).sessions,
      (list) => !list.some((x) => x.id === again),
      { timeoutMs: 30_000, intervalMs: 100 },
    ); // an OPC ends when every unit is copied
    const healed = await qemuIo(lab.nbdUri('b-dst'), 'read -P 0x77 1M 4k');
    expect(healed.ok, healed.out).toBe(true);
    await cliOk(lab, ['fault', 'clear']);
  });
});
