/**
 * A long-lived libnbd python process a test drives step by step, for what one script cannot
 * do alone: hold a connection open while the test changes the array (adds a fault), then go on.
 *
 *   const py = await startNbdsh();
 *   await py.run(`h = connect("${uri}")`);
 *   await client.addFault({ kind: 'disconnect', target: 'volume:vol1' });
 *   const r = await py.run('out = err_of(lambda: h.pread(512, 0))');   // { errno: 'ESHUTDOWN', ... }
 *   py.close();
 *
 * Helpers in the namespace: connect(uri), err_of(fn) (None or {errno, message}), refusal(uri)
 * (None when the connect succeeds, else {error, debug}: libnbd's debug log, which holds the
 * server's NBD_REP_ERR message).
 *
 * Each run() sends one block of python, executed in one shared namespace; it resolves with
 * `out` (JSON), or with {error, errno, message} when the block raised. A block that takes
 * longer than its timeout kills the process and rejects, so a hung client fails the test.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { afterAll } from 'vitest';
import { requireNbdsh } from './tools.js';

const DRIVER = String.raw`
import nbd, sys, json, errno, time, hashlib, traceback
ns = {"nbd": nbd, "json": json, "errno": errno, "time": time, "hashlib": hashlib}
exec('''
def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h
def refusal(uri):
    # libnbd's error names only the option refused; the server's message is in its debug log.
    msgs = []
    h = nbd.NBD()
    h.set_debug(True)
    h.set_debug_callback(lambda ctx, msg: msgs.append(msg))
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        return {"error": e.string, "debug": "\\n".join(msgs)}
    return None
def err_of(f):
    try:
        f()
    except nbd.Error as e:
        return {"errno": errno.errorcode.get(e.errno, e.errno) if e.errno else None, "message": e.string}
    return None
''', ns)
for line in sys.stdin:
    req = json.loads(line)
    ns["out"] = None
    try:
        exec(req, ns)
        res = {"ok": True, "out": ns.get("out")}
    except nbd.Error as e:
        res = {"ok": False, "errno": errno.errorcode.get(e.errno, e.errno) if e.errno else None, "message": e.string}
    except Exception as e:
        res = {"ok": False, "errno": None, "message": "".join(traceback.format_exception_only(type(e), e)).strip()}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
`;

export type NbdshResult = { ok: true; out: unknown } | { ok: false; errno: string | null; message: string };

export interface NbdshSession {
  /** Runs a block of python; resolves with its result once it is done. */
  run(code: string, timeoutMs?: number): Promise<NbdshResult>;
  /** Like run, but the block must succeed; returns `out`. */
  ok<T = unknown>(code: string, timeoutMs?: number): Promise<T>;
  close(): void;
}

const live = new Set<ChildProcessWithoutNullStreams>();
afterAll(() => {
  for (const c of live) c.kill('SIGKILL');
  live.clear();
});

export async function startNbdsh(): Promise<NbdshSession> {
  const python = requireNbdsh();
  const child = spawn(python, ['-u', '-c', DRIVER], { stdio: ['pipe', 'pipe', 'pipe'] });
  live.add(child);
  let stderr = '';
  let buf = '';
  const waiting: Array<(line: string) => void> = [];
  let exited = false;
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      waiting.shift()?.(line);
    }
  });
  child.on('exit', () => {
    exited = true;
    live.delete(child);
    for (const w of waiting.splice(0)) w('');
  });
  const run = (code: string, timeoutMs = 20_000): Promise<NbdshResult> => {
    if (exited) return Promise.reject(new Error(`the nbdsh process has exited; its stderr:\n${stderr}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`python block did not finish within ${timeoutMs} ms:\n${code}\nstderr:\n${stderr}`));
      }, timeoutMs);
      waiting.push((line) => {
        clearTimeout(timer);
        if (line === '') reject(new Error(`the nbdsh process exited while running:\n${code}\nstderr:\n${stderr}`));
        else resolve(JSON.parse(line) as NbdshResult);
      });
      child.stdin.write(`${JSON.stringify(code)}\n`);
    });
  };
  return {
    run,
    async ok<T>(code: string, timeoutMs?: number): Promise<T> {
      const r = await run(code, timeoutMs);
      if (!r.ok) throw new Error(`python block failed (${r.errno ?? 'no errno'}): ${r.message}\n${code}`);
      return r.out as T;
    },
    close(): void {
      child.stdin.end();
      child.kill('SIGTERM');
    },
  };
}
