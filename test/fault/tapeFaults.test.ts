/**
 * tape-error faults end to end: `arraylab tape write|restore|verify` on the real server exit
 * non-zero with the injected error's message on stderr, a failed write leaves the cartridge
 * without a record, and everything works again once the fault is removed.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);

describe('tape-error faults (real server and CLI)', () => {
  let lab: Arraylab;
  beforeAll(async () => {
    lab = await startArraylab({ dataDir: makeTempDir('arraylab-tapefault-'), config: { volumes: [] } });
    await cliOk(lab, ['volume', 'create', 'src', '--size', '16MiB']);
    await cliOk(lab, ['volume', 'create', 'dst', '--size', '16MiB']);
    await run(requireTool('qemu-io'), ['-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 8M 1M', lab.nbdUri('src')]);
    await cliOk(lab, ['tape', 'add', 'T0001', '--capacity', '64MiB']);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('tape write fails with the message and keeps nothing; it works once the fault is removed', async () => {
    const id = (await cliOk(lab, ['fault', 'add', 'tape-error', '--tape', 'T0001', '--ops', 'write'])).trim();
    const w = await lab.cli(['tape', 'write', 'src', '--cartridge', 'T0001']);
    expect(w.code).toBe(1);
    expect(w.stderr.trim()).toBe(
      `arraylab: tape write of volume src to cartridge T0001 failed: tape write error on cartridge T0001 (injected by fault ${id}); remove the fault or use another cartridge; nothing of the record was kept (the cartridge is as before)`,
    );
    expect(await cliJson(lab, ['tape', 'show', 'T0001', '--json'])).toMatchObject({ records: [], cartridge: { recordCount: 0 } });
    await cliOk(lab, ['fault', 'remove', id]);
    await cliOk(lab, ['tape', 'write', 'src', '--cartridge', 'T0001']);
    expect(await cliJson(lab, ['tape', 'show', 'T0001', '--json'])).toMatchObject({ cartridge: { recordCount: 1 } });
  });

  it('tape restore and verify fail with the message while a read fault is set', async () => {
    const id = (await cliOk(lab, ['fault', 'add', 'tape-error', '--tape', 'T0001', '--ops', 'read'])).trim();
    const r = await lab.cli(['tape', 'restore', 'T0001', '1', '--to', 'dst']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(
        `^arraylab: restore of cartridge T0001 record 1 onto volume dst failed: tape read error on cartridge T0001 \\(injected by fault ${id}\\).*; dst holds part of the record; restore it again\\n$`,
      ),
    );
    const v = await lab.cli(['tape', 'verify', 'T0001']);
    expect(v.code).toBe(1);
    expect(v.stderr).toMatch(/tape verify of cartridge T0001 record 1 failed: tape read error on cartridge T0001 \(injected by fault f\d+\)/);
    await cliOk(lab, ['fault', 'remove', id]);
    await cliOk(lab, ['tape', 'restore', 'T0001', '1', '--to', 'dst']);
    await cliOk(lab, ['tape', 'verify', 'T0001']);
    const cmp = await run(requireTool('qemu-img'), ['compare', '-f', 'raw', '-F', 'raw', lab.nbdUri('src'), lab.nbdUri('dst')]);
    expect(cmp.stdout).toMatch(/Images are identical/);
  });
});
