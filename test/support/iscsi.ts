/**
 * Real iSCSI peers for the tests: arraylab's portal as `serve --json` reports it, tgtd (the
 * reference target) on a private port, iscsi:// URLs for libiscsi and qemu, and a runner for
 * libiscsi's conformance suite (iscsi-test-cu) that counts what really passed.
 *
 *   const lab = await startArraylab({ config: { volumes: [...] }, extraArgs: ['--iscsi', '127.0.0.1:0'] });
 *   const portal = iscsiPortalOf(lab);
 *   await runTool('iscsi-ls', ['-s', portalUrl(portal)]);
 *
 *   const tgt = await startTgtd({ luns: [{ sizeBytes: 128 * MiB }] });   // LUN 1 (0 is tgt's controller)
 *   const result = await runConformance({ url: iscsiUrl(tgt.portal, tgt.luns[0]!) });
 *   await tgt.stop();
 *
 * tgtd runs isolated: its control socket lives in a private temp dir (TGT_IPC_SOCKET), it listens
 * on a free loopback port (never 3260, where a packaged tgt service may listen), and every tgtd
 * still running when a test file ends is killed in afterAll.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { Arraylab } from './arraylab.js';
import { parseConformance, parseListing, type ConformanceResult } from './conformanceParse.mjs';
import { requireTool } from './tools.js';
import { freePort } from './ports.js';
import { sleep } from './wait.js';

/** Debian packages of the iSCSI peers (tools.ts names the NBD ones). */
const ISCSI_PACKAGE_OF: Record<string, string> = {
  'iscsi-test-cu': 'libiscsi-bin',
  'iscsi-ls': 'libiscsi-bin',
  'iscsi-inq': 'libiscsi-bin',
  'iscsi-readcapacity16': 'libiscsi-bin',
  tgtd: 'tgt',
  tgtadm: 'tgt',
};

/** Absolute path of an iSCSI peer, or an error naming the Debian package to install. */
export function requireIscsiTool(name: string): string {
  try {
    return requireTool(name);
  } catch (err) {
    const pkg = ISCSI_PACKAGE_OF[name];
    if (pkg === undefined) throw err;
    throw new Error(`required tool ${name} is not installed; install Debian package ${pkg} (bash .ci/run does)`);
  }
}

// ---------------------------------------------------------------------------------------------
// Portals and URLs

/** Where a target listens and what it is called. */
export interface Portal {
  host: string;
  port: number;
  targetName: string;
}

/** CHAP as the initiator holds it: its own name and secret, and for mutual CHAP the target's. */
export interface InitiatorChap {
  username: string;
  secret: string;
  targetUsername?: string;
  targetSecret?: string;
}

/** The iSCSI portal `arraylab serve --json` reported (start it with --iscsi 127.0.0.1:0). */
export function iscsiPortalOf(lab: Arraylab): Portal {
  const reported = (lab.info as unknown as { iscsi?: { host: string; port: number; targetName: string } | null }).iscsi;
  if (!reported) throw new Error('arraylab serve reported no iSCSI portal; start it with extraArgs: ["--iscsi", "127.0.0.1:0"]');
  return { host: reported.host, port: reported.port, targetName: reported.targetName };
}

/** libiscsi's URL keeps user%secret@ literally: characters it splits on cannot be in them. */
function checkUrlSafe(what: string, value: string): string {
  if (/[%@/:?&=\s]/.test(value))
    throw new Error(
      `${what} ${JSON.stringify(value)} cannot go in an iscsi:// URL (it holds one of % @ / : ? & = or a space); use LIBISCSI_CHAP_* environment variables (chapEnv) instead`,
    );
  return value;
}

/** iscsi://host:port, for discovery (iscsi-ls). */
export function portalUrl(portal: Pick<Portal, 'host' | 'port'>, chap?: Pick<InitiatorChap, 'username' | 'secret'>): string {
  const auth = chap ? `${checkUrlSafe('CHAP user name', chap.username)}%${checkUrlSafe('CHAP secret', chap.secret)}@` : '';
  return `iscsi://${auth}${portal.host}:${portal.port}`;
}

export interface UrlOptions {
  chap?: InitiatorChap;
  /** libiscsi's header_digest URL argument: what the initiator offers. */
  headerDigest?: 'none' | 'crc32c' | 'none-crc32c' | 'crc32c-none';
}

/** iscsi://[user%secret@]host:port/target/lun[?header_digest=..&target_user=..&target_password=..] */
export function iscsiUrl(portal: Portal, lun: number, opts: UrlOptions = {}): string {
  const args: string[] = [];
  if (opts.headerDigest) args.push(`header_digest=${opts.headerDigest}`);
  if (opts.chap?.targetUsername !== undefined) {
    args.push(`target_user=${checkUrlSafe('mutual CHAP user name', opts.chap.targetUsername)}`);
    args.push(`target_password=${checkUrlSafe('mutual CHAP secret', opts.chap.targetSecret ?? '')}`);
  }
  return `${portalUrl(portal, opts.chap)}/${portal.targetName}/${lun}${args.length ? `?${args.join('&')}` : ''}`;
}

/** The same credentials as libiscsi's environment variables (honoured by every libiscsi tool). */
export function chapEnv(chap: InitiatorChap): NodeJS.ProcessEnv {
  return {
    LIBISCSI_CHAP_USERNAME: chap.username,
    LIBISCSI_CHAP_PASSWORD: chap.secret,
    ...(chap.targetUsername !== undefined
      ? { LIBISCSI_CHAP_TARGET_USERNAME: chap.targetUsername, LIBISCSI_CHAP_TARGET_PASSWORD: chap.targetSecret ?? '' }
      : {}),
  };
}

export interface QemuIscsiOptions {
  initiatorName?: string;
  headerDigest?: 'none' | 'crc32c' | 'none-crc32c' | 'crc32c-none';
  /** One-way CHAP user; the secret goes in a qemu secret object (qemuSecretArgs). */
  user?: string;
  passwordSecretId?: string;
}

/** qemu's iscsi driver options for --image-opts / --blockdev (qemu has no mutual CHAP). */
export function qemuIscsiOpts(portal: Portal, lun: number, opts: QemuIscsiOptions = {}): string {
  const parts = ['driver=iscsi', 'transport=tcp', `portal=${portal.host}:${portal.port}`, `target=${portal.targetName}`, `lun=${lun}`];
  if (opts.initiatorName) parts.push(`initiator-name=${opts.initiatorName}`);
  if (opts.headerDigest) parts.push(`header-digest=${opts.headerDigest}`);
  if (opts.user) parts.push(`user=${opts.user}`);
  if (opts.passwordSecretId) parts.push(`password-secret=${opts.passwordSecretId}`);
  for (const p of parts) if (p.includes(',')) throw new Error(`qemu option ${p} holds a comma; qemu would split it`);
  return parts.join(',');
}

/** `--object secret,id=ID,file=F`: the secret in a 0600 file, not on the command line. */
export function qemuSecretArgs(id: string, secret: string, dir: string): string[] {
  const file = join(dir, `${id}.secret`);
  writeFileSync(file, secret, { mode: 0o600 });
  return ['--object', `secret,id=${id},file=${file}`];
}

// ---------------------------------------------------------------------------------------------
// Running tools

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout then stderr, for messages. */
  output: string;
}

/**
 * Runs a peer to completion without blocking the event loop; never throws for a non-zero exit
 * (tests assert on code and output). A tool still running after timeoutMs is killed: code -1.
 */
export function runTool(
  tool: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; encoding?: 'utf8' | 'latin1' } = {},
): Promise<ToolResult> {
  const path = tool.startsWith('/') ? tool : requireIscsiTool(tool);
  return new Promise((resolvePromise) => {
    execFile(
      path,
      args,
      {
        env: { ...process.env, ...opts.env },
        timeout: opts.timeoutMs ?? 120_000,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        encoding: opts.encoding ?? 'utf8',
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; killed?: boolean }) | null;
        const code = e === null ? 0 : e.killed ? -1 : typeof e.code === 'number' ? e.code : 1;
        const extra = e && typeof e.code !== 'number' && !e.killed ? `\n${e.message}` : e?.killed ? `\n(killed after ${opts.timeoutMs ?? 120_000} ms)` : '';
        resolvePromise({ code, stdout, stderr: stderr + extra, output: `${stdout}${stderr}${extra}` });
      },
    );
  });
}

/** runTool that must exit 0; returns stdout. */
export async function runToolOk(tool: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<string> {
  const r = await runTool(tool, args, opts);
  if (r.code !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.code}:\n${r.output}`);
  return r.stdout;
}

/** What `iscsi-ls -s` printed: the targets at a portal and, per target, LUN → size in bytes. */
export interface IscsiLsEntry {
  targetName: string;
  portal: string;
  luns: Map<number, { type: string; sizeText: string | null }>;
}

export function parseIscsiLs(text: string): IscsiLsEntry[] {
  const out: IscsiLsEntry[] = [];
  for (const line of text.split('\n')) {
    const t = /^Target:(\S+) Portal:(\S+)/.exec(line);
    if (t) {
      out.push({ targetName: t[1]!, portal: t[2]!, luns: new Map() });
      continue;
    }
    const l = /^Lun:(\d+)\s+Type:(\S+)(?: \(Size:([^)]+)\))?/.exec(line);
    if (l && out.length) out[out.length - 1]!.luns.set(Number(l[1]), { type: l[2]!, sizeText: l[3] ?? null });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// tgtd, the reference target

export interface TgtdLun {
  sizeBytes: number;
  blockSize?: 512 | 4096;
}

export interface TgtdOptions {
  luns: TgtdLun[];
  /** Default: a fresh name per instance, so discovery proves we reached this tgtd. */
  targetName?: string;
  /** Incoming CHAP (and outgoing, for mutual) accounts bound to the target. */
  chap?: InitiatorChap;
  /** Only these initiators may log in; default ALL. */
  initiators?: string[];
  /** Where backing files go; default a temp dir removed on stop (must be on a real filesystem for benchmarks). */
  dir?: string;
}

export interface Tgtd {
  pid: number;
  portal: Portal;
  /** The LUN numbers of opts.luns, in order (tgt's LUN 0 is its controller). */
  luns: number[];
  backingFiles: string[];
  /** tgtadm against this tgtd (--lld iscsi and the control socket are added). */
  adm(args: string[]): Promise<string>;
  logs(): string;
  /** Deletes the target and the system (tgtd then exits; SIGKILL after 10 s), removes its files. */
  stop(): Promise<void>;
}

const tgtdRunning = new Set<ChildProcess>();
const tgtdDirs = new Set<string>();
afterAll(async () => {
  await Promise.all([...tgtdRunning].map((child) => stopChild(child, 'SIGKILL', 5_000)));
  for (const dir of tgtdDirs) rmSync(dir, { recursive: true, force: true });
  tgtdDirs.clear();
});
process.once('exit', () => {
  for (const child of tgtdRunning) child.kill('SIGKILL');
});

/** Sends signal (none: just waits), then SIGKILL after graceMs; resolves once it exited. */
async function stopChild(child: ChildProcess, signal: NodeJS.Signals | undefined, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  if (signal) child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

/** Starts tgtd in the foreground on a free loopback port, with one target and opts.luns. */
export async function startTgtd(opts: TgtdOptions): Promise<Tgtd> {
  const tgtd = requireIscsiTool('tgtd');
  const tgtadm = requireIscsiTool('tgtadm');
  const ctl = mkdtempSync(join(tmpdir(), 'arraylab-tgtd-'));
  tgtdDirs.add(ctl);
  const dataDir = opts.dir ?? ctl;
  const targetName = opts.targetName ?? `iqn.2026-11.lab.arraylab.test:tgtd-${randomBytes(4).toString('hex')}`;
  const backingFiles = opts.luns.map((lun, i) => {
    const file = join(dataDir, `tgtd-lun${i + 1}-${randomBytes(3).toString('hex')}.img`);
    writeFileSync(file, '');
    truncateSync(file, lun.sizeBytes);
    return file;
  });
  // TGT_IPC_SOCKET moves tgtd's control socket (default /var/run/tgtd/socket.N) into our temp
  // dir: no clash with a packaged tgt service or a parallel test, and -C 0 is always free.
  const env = { ...process.env, TGT_IPC_SOCKET: join(ctl, 'socket') };
  const adm = async (args: string[]): Promise<string> => {
    const r = await runTool(tgtadm, ['-C', '0', '--lld', 'iscsi', ...args], { env, timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`tgtadm ${args.join(' ')} exited ${r.code}: ${r.output.trim()}`);
    return r.stdout;
  };

  let lastError = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const child = spawn(tgtd, ['-f', '-C', '0', '--iscsi', `portal=127.0.0.1:${port}`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    tgtdRunning.add(child);
    child.once('exit', () => tgtdRunning.delete(child));
    let log = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
    try {
      for (let i = 0; !existsSync(join(ctl, 'socket.0')); i++) {
        if (child.exitCode !== null) throw new Error(`tgtd exited (${child.exitCode}) at start: ${log}`);
        if (i > 200) throw new Error(`tgtd did not create its control socket within 10 s: ${log}`);
        await sleep(50);
      }
      await adm(['--mode', 'target', '--op', 'new', '--tid', '1', '--targetname', targetName]);
      const luns: number[] = [];
      for (const [i, lun] of opts.luns.entries()) {
        await adm([
          '--mode',
          'logicalunit',
          '--op',
          'new',
          '--tid',
          '1',
          '--lun',
          String(i + 1),
          '--backing-store',
          backingFiles[i]!,
          ...(lun.blockSize ? ['--blocksize', String(lun.blockSize)] : []),
        ]);
        luns.push(i + 1);
      }
      if (opts.chap) {
        await adm(['--mode', 'account', '--op', 'new', '--user', opts.chap.username, '--password', opts.chap.secret]);
        await adm(['--mode', 'account', '--op', 'bind', '--tid', '1', '--user', opts.chap.username]);
        if (opts.chap.targetUsername !== undefined) {
          await adm(['--mode', 'account', '--op', 'new', '--user', opts.chap.targetUsername, '--password', opts.chap.targetSecret ?? '']);
          await adm(['--mode', 'account', '--op', 'bind', '--tid', '1', '--user', opts.chap.targetUsername, '--outgoing']);
        }
      }
      // "--initiator-name ALL" would admit an initiator literally named ALL: ALL is an address.
      if (opts.initiators === undefined) await adm(['--mode', 'target', '--op', 'bind', '--tid', '1', '--initiator-address', 'ALL']);
      for (const initiator of opts.initiators ?? []) {
        await adm(['--mode', 'target', '--op', 'bind', '--tid', '1', '--initiator-name', initiator]);
      }
      const portal: Portal = { host: '127.0.0.1', port, targetName };
      // Discovery must list our fresh target name: proof this port is ours, not another listener's.
      // (tgtd's accounts guard the target's Normal sessions, not discovery.)
      const ls = await runTool('iscsi-ls', [portalUrl(portal)], { timeoutMs: 20_000 });
      if (!parseIscsiLs(ls.stdout).some((t) => t.targetName === targetName))
        throw new Error(`port ${port} does not list target ${targetName}: ${ls.output}\ntgtd log: ${log}`);
      return {
        pid: child.pid!,
        portal,
        luns,
        backingFiles,
        adm,
        logs: () => log,
        async stop() {
          // tgtd shrugs off SIGTERM while it has targets; it exits about a second after its
          // targets are force-deleted and the system is deleted. SIGKILL only if that fails.
          if (child.exitCode === null) {
            try {
              await adm(['--mode', 'target', '--op', 'delete', '--force', '--tid', '1']);
              await adm(['--mode', 'system', '--op', 'delete']);
            } catch {
              // already on its way out; the wait below decides
            }
          }
          await stopChild(child, undefined, 10_000);
          for (const f of backingFiles) rmSync(f, { force: true });
          rmSync(ctl, { recursive: true, force: true });
          tgtdDirs.delete(ctl);
        },
      };
    } catch (err) {
      lastError = (err as Error).message;
      await stopChild(child, 'SIGKILL', 5_000);
      rmSync(join(ctl, 'socket.0'), { force: true });
      rmSync(join(ctl, 'socket.0.lock'), { force: true });
    }
  }
  throw new Error(`could not start tgtd after 5 attempts; last error: ${lastError}`);
}

// ---------------------------------------------------------------------------------------------
// iscsi-test-cu, libiscsi's conformance suite

export type { ConformanceResult, ConformanceTest, Outcome } from './conformanceParse.mjs';
export { formatConformance, parseConformance } from './conformanceParse.mjs';

/** `iscsi-test-cu -l`: FAMILY.Suite.Test names in run order, filtered like -t filters them. */
export async function listConformanceTests(filter?: string): Promise<string[]> {
  return parseListing(await runToolOk('iscsi-test-cu', ['-l'], { timeoutMs: 30_000 }), filter);
}

export interface ConformanceOptions {
  /** iscsi://host:port/target/lun of the LUN under test (its data is overwritten). */
  url: string;
  /** A second path to the same LUN: enables the MultipathIO suite. */
  multipathUrl?: string;
  initiatorName?: string;
  /** The second initiator the reservation tests log in as. */
  initiatorName2?: string;
  /** -t FAMILY[.Suite[.Test]]; default all families. */
  tests?: string;
  env?: NodeJS.ProcessEnv;
  /** Default 15 min; a hung target then fails the run with its partial output. */
  timeoutMs?: number;
}

export const CONFORMANCE_INITIATOR = 'iqn.2026-11.lab.arraylab.test:conformance-1';
export const CONFORMANCE_INITIATOR_2 = 'iqn.2026-11.lab.arraylab.test:conformance-2';

/** Runs iscsi-test-cu with --dataloss (it writes the LUN) and parses what it printed. */
export async function runConformance(opts: ConformanceOptions): Promise<ConformanceResult> {
  const listing = await listConformanceTests(opts.tests);
  const args = ['--dataloss', '-i', opts.initiatorName ?? CONFORMANCE_INITIATOR, '-I', opts.initiatorName2 ?? CONFORMANCE_INITIATOR_2];
  if (opts.tests) args.push('-t', opts.tests);
  args.push(opts.url);
  if (opts.multipathUrl) args.push(opts.multipathUrl);
  const started = Date.now();
  const timeoutMs = opts.timeoutMs ?? 15 * 60_000;
  // One stream, in the order it was written: a message belongs to the test it appears inside.
  const r = await runTool('/bin/sh', ['-c', 'exec "$0" "$@" 2>&1', requireIscsiTool('iscsi-test-cu'), ...args], {
    timeoutMs,
    ...(opts.env ? { env: opts.env } : {}),
  });
  if (r.code === -1)
    throw new Error(
      `iscsi-test-cu ${args.join(' ')} did not finish within ${timeoutMs} ms; the end of its output:\n${r.output.trim().split('\n').slice(-40).join('\n')}`,
    );
  return parseConformance(r.stdout, listing, Date.now() - started);
}
