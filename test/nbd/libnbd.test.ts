/**
 * Protocol behaviour through libnbd (python bindings): the features and edge cases a real
 * client can ask for, checked from the client's side and, where it matters, at the device.
 */
import { afterEach, describe, expect, test } from 'vitest';
import { BlockDeviceError } from '../../emulator/block/BlockDevice.js';
import { DelayDevice, FaultyDevice, MemoryProvider, RecordingDevice, SlowZeroDevice } from '../support/memoryProvider.js';
import { pattern, python, startServer, waitFor, type Started } from './harness.js';

const MiB = 1024 * 1024;

/** Prelude for every script: argv[1] is the port; open(name, sr=True, meta=True, strict=True). */
const PRELUDE = `
import nbd, sys, json, errno, time
port = int(sys.argv[1])
def open_(name, sr=True, meta=True, strict=True):
    h = nbd.NBD()
    h.set_request_structured_replies(sr)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not strict:
        h.set_strict_mode(0)
    h.set_export_name(name)
    h.connect_tcp("127.0.0.1", str(port))
    return h
def err_of(f):
    try:
        f()
    except nbd.Error as e:
        return e.errno
    return None
`;

let started: Started | undefined;
let provider: MemoryProvider;

async function serve(setup: (p: MemoryProvider) => void): Promise<Started> {
  provider = new MemoryProvider();
  setup(provider);
  started = await startServer(provider);
  return started;
}

async function py(script: string): Promise<unknown> {
  const out = await python(PRELUDE + script, started!.port);
  const last = out.trim().split('\n').at(-1) ?? 'null';
  return JSON.parse(last);
}

afterEach(async () => {
  if (started) {
    await started.server.close();
    expect(provider.allClosedOnce).toBe(true);
    started = undefined;
  }
});

describe('replies', () => {
  test('without structured replies: simple replies, no DF, reads and writes work', async () => {
    await serve((p) => p.add('disk', { size: 4 * MiB }));
    const r = await py(`
h = open_("disk", sr=False, meta=False)
data = bytes(range(256)) * 64
h.pwrite(data, 8192)
back = h.pread(len(data), 8192)
print(json.dumps({"sr": h.get_structured_replies_negotiated(), "df": h.can_df(), "ok": back == data,
                  "meta": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)}))
h.shutdown()
`);
    expect(r).toEqual({ sr: false, df: false, ok: true, meta: false });
  });

  test('with structured replies: a READ is one OFFSET_DATA chunk, DF honoured, errors carry the errno', async () => {
    await serve((p) => p.add('disk', { size: 4 * MiB }));
    const r = await py(`
h = open_("disk")
h.pwrite(b"\\x5a" * 65536, 0)
chunks = []
def cb(buf, offset, status, err):
    chunks.append([offset, len(buf), status])
    return 0
h.pread_structured(65536, 0, cb, flags=nbd.CMD_FLAG_DF)
big = []
def cb2(buf, offset, status, err):
    big.append([offset, len(buf), status])
    return 0
h.pread_structured(1048576, 1048576, cb2)
h2 = open_("disk", strict=False)
past_end = err_of(lambda: h2.pread(4096, 4 * 1048576))
unaligned = err_of(lambda: h2.pread(100, 7))
print(json.dumps({"sr": h.get_structured_replies_negotiated(), "df": h.can_df(), "chunks": chunks,
                  "big": big, "pastEnd": past_end, "unaligned": unaligned}))
`);
    expect(r).toEqual({
      sr: true,
      df: true,
      chunks: [[0, 65536, 1]], // status 1 = LIBNBD_READ_DATA
      big: [[MiB, MiB, 1]],
      pastEnd: 'EINVAL',
      unaligned: 'EINVAL',
    });
  });

  test('reads and writes of exactly 32 MiB are served; 32 MiB + 512 is refused and the connection goes on', async () => {
    await serve((p) => p.add('disk', { size: 80 * MiB }));
    const r = await py(`
h = open_("disk", strict=False)
data = bytes([(i * 7 + 3) & 0xff for i in range(256)]) * (32 * 4096)
assert len(data) == 32 * 1048576
h.pwrite(data, 1048576)
same = h.pread(len(data), 1048576) == data
too_big = err_of(lambda: h.pread(32 * 1048576 + 512, 0))
after = h.pread(512, 1048576) == data[:512]
h2 = open_("disk", sr=False, strict=False)
same_simple = h2.pread(len(data), 1048576) == data
print(json.dumps({"same": same, "sameSimple": same_simple, "tooBig": too_big, "after": after, "max": h.get_block_size(nbd.SIZE_MAXIMUM)}))
`);
    expect(r).toEqual({ same: true, sameSimple: true, tooBig: 'EINVAL', after: true, max: 32 * MiB });
  });
});

describe('block status', () => {
  test('base:allocation extents, clamped to the request; REQ_ONE gives exactly one', async () => {
    await serve((p) => p.add('disk', { size: 8 * MiB }));
    await provider.store('disk').write(MiB, pattern(64 * 1024));
    const r = (await py(`
h = open_("disk")
def collect(out):
    def cb(meta, offset, entries, err):
        out.append([meta, offset, list(entries)])
        return 0
    return cb
full, one, small, mid = [], [], [], []
h.block_status(4 * 1048576, 0, collect(full))
h.block_status(4 * 1048576, 0, collect(one), flags=nbd.CMD_FLAG_REQ_ONE)
h.block_status(4096, 1048576, collect(small))
h.block_status(2 * 1048576, 1048576 + 32768, collect(mid), flags=nbd.CMD_FLAG_REQ_ONE)
print(json.dumps({"full": full, "one": one, "small": small, "mid": mid}))
`)) as Record<string, [string, number, number[]][]>;
    const HZ = 3;
    expect(r.full).toEqual([['base:allocation', 0, [MiB, HZ, 64 * 1024, 0, 3 * MiB - 64 * 1024, HZ]]]);
    expect(r.one).toEqual([['base:allocation', 0, [MiB, HZ]]]);
    // A query inside a long extent never claims more than was asked.
    expect(r.small).toEqual([['base:allocation', MiB, [4096, 0]]]);
    expect(r.mid).toEqual([['base:allocation', MiB + 32768, [32768, 0]]]);
  });

  test('BLOCK_STATUS without a negotiated context is EINVAL', async () => {
    await serve((p) => p.add('disk', { size: MiB }));
    const r = await py(`
h = open_("disk", meta=False, strict=False)
print(json.dumps(err_of(lambda: h.block_status(4096, 0, lambda *a: 0))))
`);
    expect(r).toBe('EINVAL');
  });

  test('LIST_META_CONTEXT lists base:allocation for no query and for base:, nothing for other namespaces', async () => {
    await serve((p) => p.add('disk', { size: MiB }));
    const r = await py(`
def listed(queries):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_tcp("127.0.0.1", str(port))
    h.set_export_name("disk")
    for q in queries:
        h.add_meta_context(q)
    got = []
    h.opt_list_meta_context(lambda name: got.append(name) or 0)
    h.opt_abort()
    return got
print(json.dumps({"none": listed([]), "base": listed(["base:"]), "exact": listed(["base:allocation"]),
                  "other": listed(["qemu:dirty-bitmap:x", "base:nonsense"])}))
`);
    expect(r).toEqual({ none: ['base:allocation'], base: ['base:allocation'], exact: ['base:allocation'], other: [] });
  });
});

describe('writes', () => {
  test('FUA, NO_HOLE and FAST_ZERO reach the device', async () => {
    let rec!: RecordingDevice;
    await serve((p) => p.add('disk', { size: 4 * MiB, wrap: (s) => (rec = new RecordingDevice(s)) }));
    await py(`
h = open_("disk")
h.pwrite(b"\\x01" * 4096, 0, flags=nbd.CMD_FLAG_FUA)
h.pwrite(b"\\x02" * 4096, 4096)
h.zero(65536, 65536, flags=nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, 131072, flags=nbd.CMD_FLAG_FAST_ZERO)
h.trim(65536, 262144, flags=nbd.CMD_FLAG_FUA)
h.flush()
h.cache(65536, 0)
print("null")
`);
    expect(rec.ops).toEqual([
      { op: 'write', offset: 0, length: 4096, opts: { fua: true } },
      { op: 'write', offset: 4096, length: 4096, opts: undefined },
      { op: 'zero', offset: 65536, length: 65536, opts: { fua: false, noHole: true, fastZero: false } },
      { op: 'zero', offset: 131072, length: 65536, opts: { fua: false, noHole: false, fastZero: true } },
      { op: 'trim', offset: 262144, length: 65536, opts: { fua: true } },
      { op: 'flush' },
      { op: 'cache', offset: 0, length: 65536 },
    ]);
  });

  test('FAST_ZERO on a device that would be slow fails ENOTSUP and changes nothing; plain zero works', async () => {
    await serve((p) => p.add('disk', { size: 4 * MiB, wrap: (s) => new SlowZeroDevice(s) }));
    await provider.store('disk').write(0, Buffer.alloc(MiB, 0x77));
    const r = await py(`
h = open_("disk")
fast = err_of(lambda: h.zero(1048576, 0, flags=nbd.CMD_FLAG_FAST_ZERO))
kept = h.pread(4096, 0) == b"\\x77" * 4096
h.zero(1048576, 0)
zeroed = h.pread(4096, 0) == bytes(4096)
print(json.dumps({"fast": fast, "kept": kept, "zeroed": zeroed}))
`);
    expect(r).toEqual({ fast: 'ENOTSUP', kept: true, zeroed: true });
  });

  test('a read-only export refuses WRITE, TRIM and WRITE_ZEROES with EPERM; the handle reports readOnly', async () => {
    await serve((p) => p.add('ro', { size: MiB, readOnly: true }));
    const r = await py(`
h = open_("ro", strict=False)
print(json.dumps({"ro": h.is_read_only(), "write": err_of(lambda: h.pwrite(bytes(512), 0)),
                  "trim": err_of(lambda: h.trim(512, 0)), "zero": err_of(lambda: h.zero(512, 0)),
                  "read": len(h.pread(512, 0))}))
`);
    expect(r).toEqual({ ro: true, write: 'EPERM', trim: 'EPERM', zero: 'EPERM', read: 512 });
    expect(provider.opens[0]!.client.readOnly).toBe(true);
  });

  test('writes past the end are ENOSPC, trims past the end EINVAL', async () => {
    await serve((p) => p.add('disk', { size: MiB }));
    const r = await py(`
h = open_("disk", strict=False)
print(json.dumps({"write": err_of(lambda: h.pwrite(bytes(1024), 1048576 - 512)),
                  "zero": err_of(lambda: h.zero(1024, 1048576 - 512)),
                  "trim": err_of(lambda: h.trim(1024, 1048576 - 512))}))
`);
    expect(r).toEqual({ write: 'ENOSPC', zero: 'ENOSPC', trim: 'EINVAL' });
  });
});

describe('concurrency', () => {
  test('replies leave out of order: a fast read overtakes a slow one', async () => {
    await serve((p) => p.add('disk', { size: 4 * MiB, wrap: (s) => new DelayDevice(s, 0, 400) }));
    const r = await py(`
h = open_("disk")
order = []
b1, b2, b3 = nbd.Buffer(4096), nbd.Buffer(4096), nbd.Buffer(4096)
h.aio_pread(b1, 0, completion=lambda err: order.append("slow") or 1)
h.aio_pread(b2, 1048576, completion=lambda err: order.append("fast1") or 1)
h.aio_pread(b3, 2097152, completion=lambda err: order.append("fast2") or 1)
while h.aio_in_flight() > 0:
    h.poll(-1)
print(json.dumps(order))
`);
    expect(r).toEqual(['fast1', 'fast2', 'slow']);
  });

  test('multi-conn: a FLUSH on connection B after a write on connection A reaches the shared device', async () => {
    let rec!: RecordingDevice;
    await serve((p) => p.add('disk', { size: 4 * MiB, wrap: (s) => (rec = new RecordingDevice(s)) }));
    const r = await py(`
a = open_("disk")
b = open_("disk")
assert a.can_multi_conn() and b.can_multi_conn()
a.pwrite(b"\\xaa" * 4096, 8192)
b.flush()
print(json.dumps(b.pread(4096, 8192) == b"\\xaa" * 4096))
`);
    expect(r).toBe(true);
    expect(rec.ops.map((o) => o.op)).toEqual(['write', 'flush']);
    const ids = new Set(provider.opens.map((o) => o.client.connectionId));
    expect(ids.size).toBe(2);
  });

  test('many requests in flight on one connection all complete with the right data', async () => {
    await serve((p) => p.add('disk', { size: 16 * MiB }));
    const r = await py(`
h = open_("disk")
bufs = []
for i in range(256):
    data = bytes([i & 0xff]) * 65536
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), i * 65536)
    while h.aio_in_flight() >= 128:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
ok = all(h.pread(65536, i * 65536) == bytes([i & 0xff]) * 65536 for i in range(256))
print(json.dumps(ok))
`);
    expect(r).toBe(true);
  });
});

describe('device errors', () => {
  test('EACCES maps to EPERM, ESHUTDOWN passes through, a thrown bug is EIO and logged as an error', async () => {
    const s = await serve((p) => {
      p.add('acc', { size: MiB, wrap: (d) => new FaultyDevice(d, 0, () => new BlockDeviceError('EACCES', 'copy destination not readable')) });
      p.add('shut', { size: MiB, wrap: (d) => new FaultyDevice(d, 0, () => new BlockDeviceError('ESHUTDOWN', 'going away')) });
      p.add('bug', { size: MiB, wrap: (d) => new FaultyDevice(d, 0, () => new TypeError('oops')) });
    });
    const r = await py(`
res = {}
for name in ["acc", "shut", "bug"]:
    for sr in [True, False]:
        h = open_(name, sr=sr)
        res[name + ("-sr" if sr else "")] = err_of(lambda: h.pread(512, 0))
        res[name + ("-sr" if sr else "") + "-ok"] = len(h.pread(512, 512))
print(json.dumps(res))
`);
    expect(r).toEqual({
      'acc-sr': 'EPERM',
      'acc-sr-ok': 512,
      acc: 'EPERM',
      'acc-ok': 512,
      'shut-sr': 'ESHUTDOWN',
      'shut-sr-ok': 512,
      shut: 'ESHUTDOWN',
      'shut-ok': 512,
      'bug-sr': 'EIO',
      'bug-sr-ok': 512,
      bug: 'EIO',
      'bug-ok': 512,
    });
    await waitFor(() => provider.openCount === 0);
    expect(s.at('error').filter((e) => e.msg.includes('device failed'))).toHaveLength(2);
  });
});
