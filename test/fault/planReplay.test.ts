/**
 * One seeded plan, applied twice under the same sequential workload, injects the same faults
 * at the same operations: the event streams match once timestamps, sequence numbers, fault ids
 * and connection ids (which differ by nature) are left out, and so does what the client read.
 * The real `arraylab serve`, the plan through ArrayClient.applyFaultPlan, libnbd as the client.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ArrayClient } from '../../proto/ArrayClient.js';
import type { FaultEventView } from '../../proto/views.js';
import { startArraylab, type Arraylab } from '../support/arraylab.js';
import { startNbdsh } from '../support/nbdshSession.js';
import { requireNbdsh } from '../support/tools.js';

let lab: Arraylab;
let client: ArrayClient;

const PLAN = `
name: replay
seed: 42
faults:
  - kind: error
    target: volume:vol1
    ops: [read]
    lba: 0-4095
    probability: 0.1
    errno: EIO
  - kind: corrupt
    target: volume:vol1
    ops: [read]
    probability: 0.05
    bits: 2
  - kind: error
    target: volume:vol1
    ops: [write]
    every: 9
    errno: ENOSPC
  - kind: delay
    target: volume:vol1
    ops: [read]
    every: 25
    ms: 2
`;

/** Sequential reads and writes over 3 MiB; per operation, its error or a hash of the data read. */
const WORKLOAD = `
h = connect(URI)
res = []
for i in range(240):
    off = (i * 13 % 768) * 4096
    if i % 4 == 3:
        e = err_of(lambda: h.pwrite(bytes([i % 256]) * 4096, off))
        res.append(["w", off, e["errno"] if e else "ok"])
    else:
        try:
            res.append(["r", off, hashlib.sha1(h.pread(4096, off)).hexdigest()[:12]])
        except nbd.Error as e:
            res.append(["r", off, errno.errorcode.get(e.errno, e.errno)])
h.shutdown()
out = res`;

async function eventsSince(seq: number): Promise<FaultEventView[]> {
  const out: FaultEventView[] = [];
  await client.watchFaultEvents({ sinceSeq: seq, follow: false }, (e) => out.push(e)).done;
  return out;
}

async function lastSeq(): Promise<number> {
  return (await eventsSince(0)).at(-1)?.seq ?? 0;
}

async function run(): Promise<{ events: unknown[]; results: unknown[] }> {
  const from = await lastSeq();
  const faults = await client.applyFaultPlan(PLAN, 'replay.yaml');
  expect(faults.map((f) => f.kind)).toEqual(['error', 'corrupt', 'error', 'delay']);
  const plan = new Map(faults.map((f, i) => [f.id, i]));
  const py = await startNbdsh();
  try {
    // The same data before each run: the first run's writes must not change the second's reads.
    await py.ok(`h0 = connect("${lab.nbdUri('vol1')}")\nh0.pwrite(bytes(range(256)) * ${(3 * 1024 * 1024) / 256}, 0)\nh0.shutdown()`);
    const results = await py.ok<unknown[]>(`URI = "${lab.nbdUri('vol1')}"\n${WORKLOAD}`, 60_000);
    const events = (await eventsSince(from))
      .filter((e) => plan.has(e.faultId))
      .map((e) => ({ fault: plan.get(e.faultId), kind: e.kind, op: e.op, offset: e.offset, length: e.length, detail: e.detail }));
    return { events, results };
  } finally {
    py.close();
  }
}

beforeAll(async () => {
  requireNbdsh();
  lab = await startArraylab({ config: { volumes: [{ name: 'vol1', size: '4MiB', blockSize: 512 }] } });
  client = new ArrayClient(lab.apiAddress);
});

afterAll(async () => {
  client?.close();
  await lab?.stop();
});

it('the same plan and the same sequential workload give the same events and the same data, twice', async () => {
  const first = await run();
  const second = await run();
  const kinds = new Set(first.events.map((e) => (e as { kind: string }).kind));
  expect([...kinds].sort()).toEqual(['corrupt', 'delay', 'error']);
  const failed = first.results.filter((r) => (r as unknown[])[2] === 'EIO').length;
  console.log(`plan replay: ${first.events.length} events, ${failed} of 240 operations failed EIO, both runs`);
  expect(first.events.length).toBeGreaterThan(20);
  expect(second.events).toEqual(first.events);
  expect(second.results).toEqual(first.results);
});
