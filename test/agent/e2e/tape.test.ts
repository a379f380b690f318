/**
 * Backups to the array's virtual tape library through arraylab-agent: `backup --to both` puts
 * a copy of the backup volume on a cartridge (history shows it, with the image's SHA-256), and
 * `restore --from tape` writes it back onto the transaction volume, verified. `--to tape` only
 * stages on disk: the generation is tape-only afterwards.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CLI_PATH, runCli } from '../../support/arraylab.js';
import { sh, shTry, startAgentLab, type AgentLab } from '../../support/agentLab.js';
import type { BackupReport, HistoryEntry, RestoreReport } from '../../../agent/types.js';

const SIZE = '16MiB';
const MiB = 1 << 20;

describe('arraylab-agent backup to tape', () => {
  let env: AgentLab;

  beforeAll(async () => {
    const help = await runCli(['tape', '--help']);
    if (help.code !== 0) throw new Error(`arraylab tape is not there yet: ${help.stderr}`);
    env = await startAgentLab();
    await env.arraylab(['tape', 'add', 'T1', '--capacity', '1GiB']);
  });
  afterEach(async () => {
    await env.cleanup();
  });
  afterAll(async () => {
    await env?.close();
  });

  function fill(volume: string, pattern: number): void {
    const r = shTry(['qemu-io', '-f', 'raw', '-c', `write -P ${pattern} ${MiB} ${4 * MiB}`, env.lab.nbdUri(volume)]);
    expect(r.code, r.out).toBe(0);
  }

  function holds(volume: string, pattern: number): boolean {
    const r = shTry(['qemu-io', '-r', '-f', 'raw', '-c', `read -P ${pattern} ${MiB} ${4 * MiB}`, env.lab.nbdUri(volume)]);
    return r.code === 0 && !/verification failed|error/i.test(r.out);
  }

  /** SHA-256 of a whole volume image, read over NBD. */
  function imageSha256(volume: string): string {
    const file = join(env.work, `${volume}.raw`);
    sh(['qemu-img', 'convert', '-f', 'raw', '-O', 'raw', env.lab.nbdUri(volume), file]);
    try {
      return createHash('sha256').update(readFileSync(file)).digest('hex');
    } finally {
      rmSync(file, { force: true });
    }
  }

  it('--to both, then restore --from tape returns the image', async () => {
    const agent = env.newAgent();
    const tv = 'tape-tv';
    await env.createVolume(tv, SIZE);
    await env.createVolume(`${tv}-b1`, SIZE);
    await agent.json(['register', 'transaction', tv, '--lock', 'none']); // filled over NBD, no filesystem here
    await agent.json(['register', 'backup', `${tv}-b1`]);
    fill(tv, 0x77);

    const r = await agent.run(['backup', tv, '--to', 'both', '--cartridge', 'T1']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const g = (r.json as BackupReport).volumes[0]!.generation!;
    expect(g).toMatchObject({ status: 'held', backupVolume: `${tv}-b1` });
    expect(g.tape).toMatchObject({ cartridge: 'T1', status: 'ok', error: '' });
    expect(g.tape!.record).toBeGreaterThanOrEqual(1);
    expect(g.tape!.sha256, 'the tape copy should be of the backup volume').toBe(imageSha256(`${tv}-b1`));
    const history = await agent.json<HistoryEntry[]>(['history', tv]);
    expect(history[0]!.tape).toMatchObject({ cartridge: 'T1', record: g.tape!.record, sha256: g.tape!.sha256 });

    fill(tv, 0x88);
    const restore = await agent.run(['restore', tv, '--from', 'tape']);
    expect(restore.code, restore.stdout + restore.stderr).toBe(0);
    expect(restore.json as RestoreReport).toMatchObject({ volume: tv, target: tv, from: 'tape', method: 'tape' });
    expect(holds(tv, 0x77), `${tv} should read as the backup after the restore from tape`).toBe(true);
    const cmp = shTry(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', env.lab.nbdUri(tv), env.lab.nbdUri(`${tv}-b1`)]);
    expect(cmp.code, cmp.out).toBe(0);
  });

  it('--to tape: the disk copy only stages the tape copy', async () => {
    const agent = env.newAgent();
    const tv = 'tape-only';
    await env.createVolume(tv, SIZE);
    await env.createVolume(`${tv}-b1`, SIZE);
    await agent.json(['register', 'transaction', tv, '--lock', 'none']); // filled over NBD, no filesystem here
    await agent.json(['register', 'backup', `${tv}-b1`]);
    fill(tv, 0x99);
    const r = await agent.run(['backup', tv, '--to', 'tape']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const g = (r.json as BackupReport).volumes[0]!.generation!;
    expect(g.tape).toMatchObject({ status: 'ok' });
    const history = await agent.json<HistoryEntry[]>(['history', tv]);
    expect(history[0]).toMatchObject({ number: g.number, status: 'tape-only' });

    fill(tv, 0xaa);
    const restore = await agent.json<RestoreReport>(['restore', tv, '--from', 'tape']);
    expect(restore.from).toBe('tape');
    expect(holds(tv, 0x99)).toBe(true);
  });

  it('restore --from tape refuses a damaged tape copy', async () => {
    await env.arraylab(['tape', 'add', 'T2', '--capacity', '64MiB']);
    const agent = env.newAgent();
    const tv = 'tape-bad';
    await env.createVolume(tv, SIZE);
    await env.createVolume(`${tv}-b1`, SIZE);
    await agent.json(['register', 'transaction', tv, '--lock', 'none']); // filled over NBD, no filesystem here
    await agent.json(['register', 'backup', `${tv}-b1`]);
    fill(tv, 0x5a);
    const r = await agent.run(['backup', tv, '--to', 'both', '--cartridge', 'T2']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(sh([process.execPath, CLI_PATH, 'tape', 'verify', 'T2', '--api', env.lab.apiAddress])).toBeDefined();

    // Flip one byte of the stored data (a run of the pattern) in the cartridge file.
    const file = sh(['find', env.lab.dataDir!, '-name', 'T2.tape']).trim();
    expect(file, 'the cartridge file of T2').not.toBe('');
    const image = readFileSync(file);
    const at = image.indexOf(Buffer.alloc(4096, 0x5a));
    expect(at).toBeGreaterThan(0);
    const fd = openSync(file, 'r+');
    try {
      writeSync(fd, Buffer.from([0xa5]), 0, 1, at + 100);
    } finally {
      closeSync(fd);
    }

    fill(tv, 0x66);
    const restore = await agent.run(['restore', tv, '--from', 'tape']);
    expect(restore.code, `a restore from a damaged tape succeeded: ${restore.stdout}`).toBe(1);
    expect(restore.stderr).toMatch(/crc|checksum|sha-?256/i);
  });
});
