/**
 * The volatile write cache through the real `arraylab serve` and its CLI (issue 15):
 * `volume create|set --write-cache`, list/show/--json, switching back to write-through
 * destages (a power cut then loses nothing), an OPC started on a source with unflushed
 * writes copies them, the mode survives a restart, an orderly stop destages, and kill -9
 * (a crash of the array itself) loses what was never flushed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { cliJson, cliOk, makeTempDir, startArraylab, type Arraylab } from '../support/arraylab.js';
import { requireNbdsh, SYSTEM_PYTHON } from '../support/tools.js';

const KiB = 1024;
let lab: Arraylab;
let dataDir: string;

/** One libnbd connection: writes (never flushed unless asked), then disconnects. */
function nbdWrite(volume: string, offset: number, length: number, byte: number, opts: { flush?: boolean } = {}): void {
  const script = [
    'import nbd, sys',
    'h = nbd.NBD()',
    'h.connect_uri(sys.argv[1])',
    'h.pwrite(bytes([int(sys.argv[4])]) * int(sys.argv[3]), int(sys.argv[2]))',
    'if sys.argv[5] == "1": h.flush()',
    'h.shutdown()',
  ].join('\n');
  execFileSync(SYSTEM_PYTHON, ['-c', script, lab.nbdUri(volume), String(offset), String(length), String(byte), opts.flush ? '1' : '0']);
}

function nbdRead(volume: string, offset: number, length: number): Buffer {
  const script =
    'import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nsys.stdout.buffer.write(h.pread(int(sys.argv[3]), int(sys.argv[2])))\nh.shutdown()';
  return execFileSync(SYSTEM_PYTHON, ['-c', script, lab.nbdUri(volume), String(offset), String(length)]);
}

const dirty = async (v: string): Promise<number> => (await cliJson(lab, ['volume', 'show', v])).writeCacheDirtyBytes as number;

beforeAll(async () => {
  requireNbdsh();
  dataDir = join(makeTempDir('arraylab-wcache-'), 'data');
  lab = await startArraylab({ dataDir, config: { volumes: [] } });
});

afterAll(async () => {
  await lab?.stop();
});

describe('arraylab volume --write-cache', () => {
  it('creates, shows, lists and switches the mode; write-through destages first', async () => {
    expect(await cliOk(lab, ['volume', 'create', 'c1', '--size', '16MiB', '--write-cache', 'volatile'])).toBe(
      'created volume c1: 16 MiB thin, 512-byte blocks, volatile write cache\n',
    );
    await cliOk(lab, ['volume', 'create', 'c2', '--size', '16MiB']);
    expect(await cliJson(lab, ['volume', 'show', 'c1'])).toMatchObject({ writeCache: 'volatile', writeCacheDirtyBytes: 0 });
    expect(await cliJson(lab, ['volume', 'show', 'c2'])).toMatchObject({ writeCache: 'write-through', writeCacheDirtyBytes: 0 });
    const list = await cliOk(lab, ['volume', 'list']);
    expect(list).toMatch(/^c1\s.*\brw\s+volatile\s*$/m);
    expect(list).toMatch(/^c2\s.*\brw\s+write-through\s*$/m);

    nbdWrite('c1', 0, 8 * KiB, 0x31);
    expect(await dirty('c1')).toBe(8 * KiB);
    expect(await cliOk(lab, ['volume', 'show', 'c1'])).toMatch(/^write cache:\s+volatile \(8 KiB unflushed\)$/m);
    expect(await cliOk(lab, ['volume', 'set', 'c1', '--write-cache', 'write-through'])).toBe('volume c1: write-through (cache destaged and flushed)\n');
    expect(await cliJson(lab, ['volume', 'show', 'c1'])).toMatchObject({ writeCache: 'write-through', writeCacheDirtyBytes: 0 });
    const cut = await cliJson(lab, ['power-cut']);
    expect(cut.volumes).toEqual([]); // no volatile cache left: nothing to lose
    expect(nbdRead('c1', 0, 8 * KiB).every((b) => b === 0x31)).toBe(true);

    const set = await cliJson(lab, ['volume', 'set', 'c2', '--write-cache', 'volatile']);
    expect(set).toMatchObject({ name: 'c2', writeCache: 'volatile' });
    const bad = await lab.cli(['volume', 'set', 'c2', '--write-cache', 'lazy']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/write-cache.*lazy.*volatile.*write-through|Invalid values/s);
  });

  it('an OPC started on a source with unflushed writes copies them (the cut destages first)', async () => {
    await cliOk(lab, ['volume', 'create', 'src', '--size', '16MiB', '--write-cache', 'volatile']);
    await cliOk(lab, ['volume', 'create', 'dst', '--size', '16MiB']);
    nbdWrite('src', 64 * KiB, 64 * KiB, 0x5a); // acknowledged, never flushed
    expect(await dirty('src')).toBe(64 * KiB);
    await cliOk(lab, ['copy', 'start', '--type', 'opc', '--src', 'src', '--dst', 'dst']);
    expect(await dirty('src')).toBe(0);
    nbdWrite('src', 64 * KiB, 64 * KiB, 0x5b); // after the copy's instant: not in the copy
    expect(nbdRead('dst', 64 * KiB, 64 * KiB).every((b) => b === 0x5a)).toBe(true);
  });

  it('the mode survives a restart; an orderly stop destages; kill -9 loses what was never flushed', async () => {
    await cliOk(lab, ['volume', 'create', 'life', '--size', '16MiB', '--write-cache', 'volatile']);
    nbdWrite('life', 0, 4 * KiB, 0x61);
    await lab.stop(); // destages
    lab = await startArraylab({ dataDir, config: { volumes: [] } });
    expect(await cliJson(lab, ['volume', 'show', 'life'])).toMatchObject({ writeCache: 'volatile' });
    expect(nbdRead('life', 0, 4 * KiB).every((b) => b === 0x61)).toBe(true);

    nbdWrite('life', 4 * KiB, 4 * KiB, 0x62, { flush: true });
    nbdWrite('life', 8 * KiB, 4 * KiB, 0x63); // never flushed
    await lab.kill9();
    lab = await startArraylab({ dataDir, config: { volumes: [] } });
    const after = nbdRead('life', 0, 12 * KiB);
    expect(after.subarray(4 * KiB, 8 * KiB).every((b) => b === 0x62)).toBe(true);
    expect(after.subarray(8 * KiB).every((b) => b === 0)).toBe(true);
  });
});
