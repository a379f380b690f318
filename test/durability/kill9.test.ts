/**
 * Durability through the whole stack: a write acknowledged before a completed FLUSH, or with
 * FUA, survives `kill -9` of the server. A real client (libnbd through Debian's python3) does
 * the I/O over NBD; the server is killed while the client is still connected; a new server on
 * the same data directory must return every such write, and block status must agree with it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startArraylab, type ArraylabProcess } from '../support/arraylab.js';
import { requireNbdsh } from '../support/tools.js';

const VOLUME_BYTES = 64 * 1024 * 1024;

// The client: writes in three classes, reports which writes the server acknowledged in
// which class, then waits to be killed with its connections open.
//   flushed: acknowledged before a FLUSH that completed (FLUSH sent on the *other* connection
//            for half of them: CAN_MULTI_CONN promises that covers every connection's writes)
//   fua:     acknowledged with NBD_CMD_FLAG_FUA
//   loose:   acknowledged, never flushed (may or may not survive; must not corrupt others)
const WRITER = String.raw`
import nbd, sys, random, json
port, seed, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rnd = random.Random(seed)
a = nbd.NBD(); a.connect_uri("nbd://127.0.0.1:%d/%s" % (port, name))
b = nbd.NBD(); b.connect_uri("nbd://127.0.0.1:%d/%s" % (port, name))
assert a.can_multi_conn() and a.can_fua() and a.can_flush() and a.can_trim()
size = a.get_size()
blocks = size // 4096
used = set()
def pick():
    while True:
        n = rnd.randint(1, 8)
        start = rnd.randrange(0, blocks - n)
        if not any(k in used for k in range(start, start + n)):
            used.update(range(start, start + n))
            return start, n
def data(start, n, tag):
    out = bytearray()
    for k in range(start, start + n):
        out += (b"%08x:%02x:" % (k, tag)) * (4096 // 12) + b"\x00" * (4096 % 12)
    return bytes(out)
log = {"flushed": [], "fua": [], "trimmed": [], "loose": []}
for rnd_i in range(6):
    pending = []
    for i in range(rnd.randint(5, 20)):
        start, n = pick()
        h = rnd.choice([a, b])
        tag = rnd.randrange(256)
        h.pwrite(data(start, n, tag), start * 4096)
        pending.append([start, n, tag])
    # one trim of a range that was written and flushed earlier in this run
    if log["flushed"]:
        t = log["flushed"].pop(rnd.randrange(len(log["flushed"])))
        rnd.choice([a, b]).trim(t[1] * 4096, t[0] * 4096)
        log["trimmed"].append([t[0], t[1]])
    rnd.choice([a, b]).flush()
    log["flushed"] += pending
    for i in range(rnd.randint(1, 5)):
        start, n = pick()
        tag = rnd.randrange(256)
        a.pwrite(data(start, n, tag), start * 4096, nbd.CMD_FLAG_FUA)
        log["fua"].append([start, n, tag])
for i in range(30):
    start, n = pick()
    tag = rnd.randrange(256)
    rnd.choice([a, b]).pwrite(data(start, n, tag), start * 4096)
    log["loose"].append([start, n, tag])
print(json.dumps(log), flush=True)
sys.stdin.read()
`;

const CHECKER = String.raw`
import nbd, sys, json
port, name = int(sys.argv[1]), sys.argv[2]
log = json.loads(sys.stdin.read())
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri("nbd://127.0.0.1:%d/%s" % (port, name))
def data(start, n, tag):
    out = bytearray()
    for k in range(start, start + n):
        out += (b"%08x:%02x:" % (k, tag)) * (4096 // 12) + b"\x00" * (4096 % 12)
    return bytes(out)
bad = []
for cls in ("flushed", "fua"):
    for start, n, tag in log[cls]:
        got = h.pread(n * 4096, start * 4096)
        if got != data(start, n, tag):
            bad.append("%s write of %d blocks at block %d lost or corrupted" % (cls, n, start))
        # block status must call every surviving data block allocated
        ext = []
        def collect(ctx, off, entries, err):
            ext.extend(entries)
            return 0
        h.block_status(n * 4096, start * 4096, collect)
        if any(ext[i + 1] & 1 for i in range(0, len(ext), 2)):
            bad.append("%s write at block %d reported as a hole" % (cls, start))
for start, n in log["trimmed"]:
    got = h.pread(n * 4096, start * 4096)
    if got != bytes(n * 4096):
        bad.append("trimmed range at block %d does not read as zeroes" % start)
for start, n, tag in log["loose"]:
    got = h.pread(n * 4096, start * 4096)
    for k in range(n):
        blk = got[k * 4096:(k + 1) * 4096]
        if blk != bytes(4096) and blk != data(start + k, 1, tag):
            bad.append("unflushed write at block %d is torn or foreign" % (start + k))
print(json.dumps({"bad": bad, "checked": sum(len(v) for v in log.values())}))
`;

function runPython(script: string, args: string[], input?: string): { child: ReturnType<typeof spawn>; firstLine: Promise<string> } {
  const py = requireNbdsh();
  const child = spawn(py, ['-c', script, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const firstLine = new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    child.stderr!.on('data', (d) => (err += d));
    child.on('exit', (code) => reject(new Error(`python exited ${code} before answering: ${err}`)));
  });
  if (input !== undefined) child.stdin!.end(input);
  return { child, firstLine };
}

describe('durability across kill -9', () => {
  let work: string | undefined;
  let server: ArraylabProcess | undefined;

  afterEach(async () => {
    await server?.stop().catch(() => undefined);
    server = undefined;
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it.each([1, 2, 3])('keeps every flushed and FUA write (seed %i)', async (seed) => {
    work = mkdtempSync(join(tmpdir(), 'arraylab-kill9-'));
    const dataDir = join(work, 'data');
    server = await startArraylab({ dataDir });
    const created = await server.cli(['volume', 'create', 'durable', '--size', String(VOLUME_BYTES)]);
    expect(created.code, created.stderr).toBe(0);

    const writer = runPython(WRITER, [String(server.nbdPort), String(seed), 'durable']);
    const log = await writer.firstLine;
    await server.kill9();
    writer.child.kill('SIGKILL');

    server = await startArraylab({ dataDir });
    const checker = runPython(CHECKER, [String(server.nbdPort), 'durable'], log);
    const verdict = JSON.parse(await checker.firstLine) as { bad: string[]; checked: number };
    expect(verdict.bad).toEqual([]);
    expect(verdict.checked).toBeGreaterThan(40);
  });
});
