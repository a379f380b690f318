/**
 * One array calling another with a token of the other's: `arraylab remote add NAME --api B
 * --token-file FILE` between two real `arraylab serve` processes. Array A runs with a config
 * directory of its own, so it cannot borrow B's admin token from the link B made for this
 * user: only the token it is given gets it in. What users rely on: a replication user's token
 * on B lets A register B and run a REC pair to it; a monitor's token lets A see B but the pair
 * is refused, with B's refusal in the error; without a token B is not added at all.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEntryView, CopySessionView, RemoteView } from '../../proto/views.js';
import { type Arraylab, type CliResult, makeTempDir, startArraylab } from '../support/arraylab.js';
import { waitFor } from '../support/wait.js';

let a: Arraylab;
let b: Arraylab;
/** A's own config directory: its admin token link, and no link to B's. */
let aConfig: string;
let files: string;

beforeAll(async () => {
  aConfig = makeTempDir('arraylab-a-config-');
  files = makeTempDir('arraylab-remote-tokens-');
  [a, b] = await Promise.all([
    startArraylab({ config: { volumes: [] }, iscsi: false, env: { XDG_CONFIG_HOME: aConfig } }),
    startArraylab({ config: { volumes: [] }, iscsi: false }),
  ]);
});
afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

const onA = (args: string[]): Promise<CliResult> => a.cli(args, { env: { XDG_CONFIG_HOME: aConfig } });

async function json<T>(r: Promise<CliResult>, what: string): Promise<T> {
  const res = await r;
  if (res.code !== 0) throw new Error(`${what} exited ${res.code}: ${res.stderr}`);
  return JSON.parse(res.stdout) as T;
}

/** A user on B; returns the file holding its token. */
async function userOnB(name: string, role: string): Promise<string> {
  const made = await json<{ token: string }>(b.cli(['user', 'add', name, '--role', role, '--json']), `user add ${name} on B`);
  const file = join(files, `${name}.tok`);
  writeFileSync(file, `${made.token}\n`, { mode: 0o600 });
  return file;
}

describe('remote add --token-file', () => {
  it('without a token of B, B is not added, and the error says why', async () => {
    const r = await onA(['remote', 'add', 'b', '--api', b.apiAddress]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot add remote b: .*needs a credential/);
  });

  it("with a replication user's token, A reaches B and mirrors a volume to it", async () => {
    const repl = await userOnB('repl', 'replication');
    const added = await json<RemoteView>(onA(['remote', 'add', 'b', '--api', b.apiAddress, '--token-file', repl, '--json']), 'remote add b');
    expect(added).toMatchObject({ name: 'b', reachable: true, nbd: `127.0.0.1:${b.nbdPort}` });
    const shown = await json<RemoteView>(onA(['remote', 'show', 'b', '--json']), 'remote show b');
    expect(shown).toMatchObject({ reachable: true, arrayId: added.arrayId });

    await json(onA(['volume', 'create', 'vol1', '--size', '4MiB', '--json']), 'volume create on A');
    await json(b.cli(['volume', 'create', 'vol1', '--size', '4MiB', '--json']), 'volume create on B');
    const s = await json<CopySessionView>(
      onA(['copy', 'start', '--type', 'rec', '--src', 'vol1', '--dst', 'b:vol1', '--mode', 'sync', '--json']),
      'copy start',
    );
    const last = await waitFor(
      () => json<CopySessionView>(onA(['copy', 'show', s.id, '--json']), 'copy show'),
      (v) => v.state === 'equivalent',
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    expect(last.state).toBe('equivalent');
    // B knows who did it: the replication user, not an admin.
    const audit = (await json<{ entries: AuditEntryView[] }>(b.cli(['audit', '--json']), 'audit on B')).entries;
    const opened = audit.filter((e) => e.rpc.endsWith('/OpenRemoteEnd'));
    expect(opened.length).toBeGreaterThan(0);
    expect(opened.every((e) => e.user === 'repl' && e.result === 'ok')).toBe(true);
    const cancel = await onA(['copy', 'cancel', s.id]);
    expect(cancel.code, cancel.stderr).toBe(0);
  });

  it("with a monitor's token, B answers but refuses the pair, and the error says so", async () => {
    const monitor = await userOnB('watcher', 'monitor');
    // Added again with another token: that token from now on.
    const added = await json<RemoteView>(onA(['remote', 'add', 'b', '--api', b.apiAddress, '--token-file', monitor, '--json']), 'remote add b again');
    expect(added.reachable).toBe(true);
    await json(onA(['volume', 'create', 'vol2', '--size', '4MiB', '--json']), 'volume create on A');
    await json(b.cli(['volume', 'create', 'vol2', '--size', '4MiB', '--json']), 'volume create on B');
    const r = await onA(['copy', 'start', '--type', 'rec', '--src', 'vol2', '--dst', 'b:vol2', '--mode', 'sync']);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    // Whose refusal it is (remote b), and what it was: a user of role monitor there may not.
    expect(r.stderr).toMatch(/\bb\b/);
    expect(r.stderr).toMatch(/PERMISSION_DENIED|may not call OpenRemoteEnd/);
    expect(r.stderr).toMatch(/user watcher \(role monitor\)/);
    const sessions = await json<{ sessions: CopySessionView[] }>(onA(['copy', 'list', '--json']), 'copy list');
    expect(sessions.sessions.filter((x) => x.source === 'vol2')).toEqual([]);
  });
});
