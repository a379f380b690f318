/**
 * A thin volume's allocation limit seen by real NBD clients (libnbd's python bindings and
 * qemu-io) against the real server: a write past it fails with NBD's ENOSPC and leaves the
 * range as it was; overwrites work; trim frees space for new writes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireTool } from '../support/tools.js';
import { python, run } from './harness.js';

const MiB = 2 ** 20;

describe('allocation limit over NBD', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({ config: { volumes: [] } });
    await cliOk(lab, ['volume', 'create', 'lim', '--size', '8MiB', '--alloc-limit', '1MiB']);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('libnbd: ENOSPC past the limit, nothing written; overwrite works; trim frees space', async () => {
    const out = await python(
      `
import nbd, sys, json
port = int(sys.argv[1])
MiB = 1 << 20
h = nbd.NBD()
h.set_export_name("lim")
h.connect_tcp("127.0.0.1", str(port))
res = {}
h.pwrite(b"\\x11" * MiB, 0)
def err_of(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return None
res["past"] = err_of(lambda: h.pwrite(b"\\x22" * 65536, 4 * MiB))
res["straddle"] = err_of(lambda: h.pwrite(b"\\x22" * 1024, MiB - 512))
res["zero_nohole"] = err_of(lambda: h.zero(65536, 4 * MiB, nbd.CMD_FLAG_NO_HOLE))
res["untouched"] = h.pread(65536, 4 * MiB) == bytes(65536) and h.pread(512, MiB) == bytes(512)
res["overwrite"] = err_of(lambda: h.pwrite(b"\\x33" * 65536, 0))
res["overwritten"] = h.pread(65536, 0) == b"\\x33" * 65536
h.trim(65536, 65536)
res["after_trim"] = err_of(lambda: h.pwrite(b"\\x44" * 65536, 4 * MiB))
res["written"] = h.pread(65536, 4 * MiB) == b"\\x44" * 65536
h.shutdown()
print(json.dumps(res))
`,
      lab.nbdPort,
    );
    const r = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    // libnbd names the errno the server sent.
    expect(r).toEqual({
      past: 'ENOSPC',
      straddle: 'ENOSPC',
      zero_nohole: 'ENOSPC',
      untouched: true,
      overwrite: null,
      overwritten: true,
      after_trim: null,
      written: true,
    });
    expect(await cliJson(lab, ['volume', 'show', 'lim'])).toMatchObject({ allocatedBytes: MiB, allocLimitBytes: MiB });
  });

  it('qemu-io: the write fails with "No space left on device"; after raising the limit it succeeds', async () => {
    const qemuIo = requireTool('qemu-io');
    const full = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x55 6M 1M', lab.nbdUri('lim')]);
    expect(`${full.stdout}${full.stderr}`).toMatch(/No space left on device/);
    await cliOk(lab, ['volume', 'set', 'lim', '--alloc-limit', '2MiB']);
    const ok = await run(qemuIo, ['-f', 'raw', '-c', 'write -P 0x55 6M 1M', '-c', 'read -P 0x55 6M 1M', lab.nbdUri('lim')]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).not.toMatch(/failed/);
  });
});
