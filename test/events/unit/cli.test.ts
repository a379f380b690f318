/** `arraylab events`: one line per event (JSON lines with --json), --kind and --since, ending at once without --follow. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ArrayServer } from '../../../emulator/ArrayServer.js';
import { readAdminToken } from '../../../emulator/auth/adminCredential.js';
import { parseSince } from '../../../emulator/cli/events.js';
import { run } from '../../../emulator/cli/main.js';
import { parseConfig } from '../../../emulator/config.js';
import { ArrayClient } from '../../../proto/ArrayClient.js';

let server: ArrayServer;
let dataDir: string;
let api: string;
const savedToken = process.env.ARRAYLAB_TOKEN;

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'arraylab-events-cli-'));
  const config = parseConfig(`dataDir: ${dataDir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\napi: {events: on}\n`, 'test', '/tmp');
  server = new ArrayServer(config, pino({ level: 'silent' }), { noCredentialLink: true });
  api = `127.0.0.1:${(await server.start()).api.port}`;
  process.env.ARRAYLAB_TOKEN = readAdminToken(dataDir);
  const admin = new ArrayClient(api, { token: readAdminToken(dataDir) });
  await admin.createVolume({ name: 'v1', sizeBytes: 4 * 2 ** 20 });
  await admin.createHost('h1', ['iqn.2026-12.lab:h1']);
  admin.close();
});

afterAll(async () => {
  if (savedToken === undefined) delete process.env.ARRAYLAB_TOKEN;
  else process.env.ARRAYLAB_TOKEN = savedToken;
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function cli(args: string[]): Promise<{ code: number; out: string[] }> {
  const out: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out.push(
      ...String(chunk)
        .split('\n')
        .filter((l) => l !== ''),
    );
    return true;
  });
  try {
    return { code: await run([...args, '--api', api]), out };
  } finally {
    spy.mockRestore();
  }
}

describe('arraylab events', () => {
  it('prints one line per kept event and ends at once', async () => {
    const r = await cli(['events']);
    expect(r.code).toBe(0);
    expect(r.out).toEqual([
      expect.stringMatching(/^1 \S+ volume\.created volume:v1 volume v1 created/),
      expect.stringMatching(/^2 \S+ host\.created host:h1 host h1 added$/),
    ]);
  });

  it('prints JSON lines with --json, of the kinds asked for and after --since', async () => {
    const r = await cli(['events', '--json', '--kind', 'host']);
    expect(r.out.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ seq: 2, kind: 'host.created', subject: { kind: 'host', name: 'h1' } })]);
    expect((await cli(['events', '--since', '1'])).out).toEqual([expect.stringMatching(/^2 /)]);
    expect((await cli(['events', '--since', '2'])).out).toEqual(['no events match']);
  });

  it('reads --since as a sequence number, a duration or an instant', () => {
    expect(parseSince('120')).toEqual({ sinceSeq: 120 });
    expect(parseSince('1h', 10_000_000)).toEqual({ sinceTime: new Date(10_000_000 - 3_600_000) });
    expect(parseSince('2026-12-06T10:00:00Z')).toEqual({ sinceTime: new Date('2026-12-06T10:00:00Z') });
    expect(() => parseSince('yesterday')).toThrow(/neither a sequence number/);
  });
});
