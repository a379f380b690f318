/**
 * What NBD clients see of copy-session destinations, with real clients against `arraylab
 * serve`: an EC destination cannot be attached before the pair is equivalent (the refusal
 * carries the reason), is read-only while equivalent, and writable once suspended; a
 * SnapOPC+ snap volume is read-only.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireNbdsh, requireTool } from '../support/tools.js';

const run = promisify(execFile);

describe('NBD clients and copy destinations', () => {
  let lab: Arraylab;
  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  /** What libnbd sees at GO: 'ro', 'rw', or the refusal's text. */
  const attach = async (vol: string): Promise<string> => {
    const python = requireNbdsh();
    const script = [
      'import nbd, sys',
      'h = nbd.NBD()',
      'try:',
      `    h.connect_uri("${lab.nbdUri(vol)}")`,
      'except nbd.Error as e:',
      '    print("refused", e.string); sys.exit(0)',
      'print("ro" if h.is_read_only() else "rw")',
    ].join('\n');
    return (await run(python, ['-c', script])).stdout.trim();
  };

  it('EC: refused before equivalent with the reason, read-only while equivalent, writable once suspended', async () => {
    const qemuImg = requireTool('qemu-img');
    const qemuIo = requireTool('qemu-io');
    await cliOk(lab, ['volume', 'create', 'ea', '--size', '4MiB']);
    await cliOk(lab, ['volume', 'create', 'eb', '--size', '4MiB']);
    await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x5a 0 4M', lab.nbdUri('ea')]);
    const s = await cliJson(lab, ['copy', 'start', '--type', 'ec', '--src', 'ea', '--dst', 'eb', '--rate', '0']);
    const id = s.id as string;

    // qemu shows the server's words, so the user learns what to do.
    const info = await run(qemuImg, ['info', lab.nbdUri('eb')]).then(
      () => 'opened',
      (e: { stderr: string }) => e.stderr,
    );
    expect(info).toContain(
      `attach refused: volume eb is the destination of EC session ${id}, still copying (0/64 units); wait until the pair is equivalent, or suspend or cancel the session`,
    );
    expect(await attach('eb')).toMatch(/^refused .*server policy prevents NBD_OPT_GO/); // libnbd keeps the text in its debug log
    expect(await attach('ea')).toBe('rw'); // the source is unaffected

    await cliOk(lab, ['copy', 'rate', id, '--rate', 'unthrottled']);
    for (let i = 0; (await cliJson(lab, ['copy', 'show', id])).state !== 'equivalent'; i++) {
      if (i > 100) throw new Error('EC pair did not become equivalent');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await attach('eb')).toBe('ro');
    const read = await run(qemuIo, ['-f', 'raw', '-r', '-c', 'read -P 0x5a 0 4M', lab.nbdUri('eb')]);
    expect(read.stdout).not.toMatch(/verification failed/);
    const write = await run(qemuIo, ['-f', 'raw', '-c', 'write 0 4k', lab.nbdUri('eb')]).then(
      (r) => r.stdout + r.stderr,
      (e: { stdout: string; stderr: string }) => e.stdout + e.stderr,
    );
    expect(write).toMatch(/read-only|Operation not permitted|Permission denied/i);

    await cliOk(lab, ['copy', 'suspend', id]);
    expect(await attach('eb')).toBe('rw');
    await cliOk(lab, ['copy', 'cancel', id]);
  }, 60_000);

  it('SnapOPC+: the snap volume attaches read-only', async () => {
    await cliOk(lab, ['volume', 'create', 'sa', '--size', '4MiB']);
    await cliOk(lab, ['volume', 'create', 'ss', '--size', '4MiB']);
    const g = await cliJson(lab, ['copy', 'start', '--type', 'snapopcplus', '--src', 'sa', '--dst', 'ss']);
    expect(g.state).toBe('snap');
    expect(await attach('ss')).toBe('ro');
    await cliOk(lab, ['copy', 'cancel', g.id as string]);
    expect(await attach('ss')).toBe('rw');
  }, 30_000);
});
