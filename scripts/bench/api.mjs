// Control-API access-control cost (issue 17): the same calls against two arrays in this one
// process, one with api.auth on (token check, role and tenant checks, audit) and one with it
// off, interleaved round by round; prints the median per-call time of each and the ratio.
// Read-only calls (GetStatus, ListVolumes) are not audited; CreateVolume+DeleteVolume are, and
// on the file backend each audit row is a synchronous SQLite commit.
// Usage: scripts/bench/api.sh [--calls N] [--rounds N] [--backend file|memory] [--json FILE]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { ArrayServer } from '../../dist/emulator/ArrayServer.js';
import { parseConfig } from '../../dist/emulator/config.js';
import { ArrayClient } from '../../dist/proto/ArrayClient.js';

const { values: o } = parseArgs({
  options: {
    calls: { type: 'string', default: '300' },
    rounds: { type: 'string', default: '5' },
    backend: { type: 'string', default: 'file' },
    json: { type: 'string' },
  },
});
const calls = Number(o.calls);
const rounds = Number(o.rounds);
const log = pino({ level: 'silent' });
const dirs = [];

async function start(auth) {
  const dir = mkdtempSync(join(tmpdir(), `arraylab-bench-api-${auth}-`));
  dirs.push(dir);
  const yaml = `backend: ${o.backend}\ndataDir: ${dir}\nlisten: {nbd: "127.0.0.1:0", api: "127.0.0.1:0"}\napi: {auth: ${auth}}\nvolumes: [{name: v1, size: 4MiB}]\n`;
  const server = new ArrayServer(parseConfig(yaml, 'bench', dir), log, { noCredentialLink: true });
  const addrs = await server.start();
  const token = server.adminTokenFile ? readFileSync(server.adminTokenFile, 'utf8').trim() : undefined;
  const client = new ArrayClient(`127.0.0.1:${addrs.api.port}`, token ? { token } : { token: 'unused' });
  return { server, client };
}

const WORKLOADS = {
  'GetStatus (read)': (c) => c.getStatus(),
  'ListVolumes (read)': (c) => c.listVolumes(),
  'CreateVolume+DeleteVolume (audited)': async (c, i) => {
    await c.createVolume({ name: `b${i}`, sizeBytes: 1 << 20 });
    await c.deleteVolume(`b${i}`);
  },
};

async function timeCalls(client, fn) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) await fn(client, i);
  return Number(process.hrtime.bigint() - t0) / 1e3 / calls; // µs per call
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const on = await start('on');
const off = await start('off');
const results = [];
try {
  for (const [name, fn] of Object.entries(WORKLOADS)) {
    await timeCalls(on.client, fn); // warm up both
    await timeCalls(off.client, fn);
    const a = [];
    const b = [];
    for (let r = 0; r < rounds; r++) {
      a.push(await timeCalls(on.client, fn));
      b.push(await timeCalls(off.client, fn));
    }
    const row = { workload: name, authOnUs: Math.round(median(a)), authOffUs: Math.round(median(b)), ratio: +(median(a) / median(b)).toFixed(2) };
    results.push(row);
    console.log(
      `${name.padEnd(38)} auth on ${String(row.authOnUs).padStart(6)} µs/call   off ${String(row.authOffUs).padStart(6)} µs/call   on/off ${row.ratio}x`,
    );
  }
} finally {
  on.client.close();
  off.client.close();
  await on.server.stop();
  await off.server.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
if (o.json) writeFileSync(o.json, `${JSON.stringify({ backend: o.backend, calls, rounds, results }, null, 2)}\n`);
