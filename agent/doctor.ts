/**
 * `arraylab-agent doctor`: checks what the agent needs on this host and says what to fix. Each
 * check stands alone, so one failure (an unreachable array, say) does not hide the others.
 */
import { accessSync, constants, mkdirSync, readdirSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { VolumeInfo } from '../proto/views.js';
import type { AgentSettings } from './config.js';
import { agentUid, ownershipProblem } from './host/trust.js';
import { HOOK_PHASES, type AgentStatus, type DoctorCheck, type HostSide } from './types.js';

export interface DoctorDeps {
  settings: AgentSettings;
  array: { getStatus(): Promise<{ version: string }>; listVolumes(): Promise<VolumeInfo[]> };
  host: Pick<HostSide, 'devices'>;
  /** The agent's records; undefined when the store cannot be opened (reported by its own check). */
  status?: () => Promise<AgentStatus>;
  env?: NodeJS.ProcessEnv;
  /**
   * With --guest the host side is the agent in a guest: root, tools and hooks are checked there
   * (its hostChecks), not here.
   */
  guest?: { doctor(): Promise<DoctorCheck[]>; socketPath: string };
}

/** Commands the host side runs, and the Debian package of each. */
const TOOLS: Array<[string, string]> = [
  ['fsfreeze', 'util-linux'],
  ['mount', 'mount'],
  ['umount', 'mount'],
  ['blockdev', 'util-linux'],
  ['sync', 'coreutils'],
  ['dd', 'coreutils'],
];

export function findOnPath(command: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, command);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** What the host side itself needs where it runs: root, its tools, its hooks directory. */
export function hostChecks(o: { hooksDir?: string; env?: NodeJS.ProcessEnv }): DoctorCheck[] {
  const checks: DoctorCheck[] = [];
  const add = (name: string, ok: boolean, detail: string, fix = '') => checks.push({ name, ok, detail, fix: ok ? '' : fix });
  const uid = process.getuid?.() ?? -1;
  add(
    'root',
    uid === 0,
    uid === 0 ? 'running as root' : `running as uid ${uid}`,
    'run arraylab-agent as root: unmounting, freezing and holding block devices need it',
  );

  const missing = TOOLS.filter(([t]) => findOnPath(t, o.env) === undefined);
  add(
    'tools',
    missing.length === 0,
    missing.length === 0 ? `found ${TOOLS.map(([t]) => t).join(', ')}` : `not found: ${missing.map(([t]) => t).join(', ')}`,
    `install them: apt-get install ${[...new Set(missing.map(([, p]) => p))].join(' ')}`,
  );
  if (o.hooksDir !== undefined) add(...hooksCheck(o.hooksDir));
  return checks;
}

export async function runDoctor(d: DoctorDeps): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const add = (name: string, ok: boolean, detail: string, fix = '') => checks.push({ name, ok, detail, fix: ok ? '' : fix });

  if (d.guest) {
    try {
      for (const c of await d.guest.doctor()) checks.push({ ...c, name: `guest ${c.name}` });
    } catch (err) {
      add(
        'guest agent',
        false,
        (err as Error).message,
        `start \`arraylab-agent guest-serve\` in the guest (arraylab vm start does) and check the socket ${d.guest.socketPath}`,
      );
    }
  } else {
    checks.push(...hostChecks({ ...(d.env ? { env: d.env } : {}) }));
  }

  try {
    mkdirSync(d.settings.stateDir, { recursive: true, mode: 0o700 });
    accessSync(d.settings.stateDir, constants.W_OK);
    add('state directory', true, `${d.settings.stateDir} is writable`);
  } catch (err) {
    add(
      'state directory',
      false,
      `${d.settings.stateDir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      'make it writable by the agent, or choose another with --state-dir',
    );
  }

  let volumes: VolumeInfo[] | undefined;
  try {
    const s = await d.array.getStatus();
    volumes = await d.array.listVolumes();
    add('array', true, `arraylab ${s.version} at ${d.settings.array}, ${volumes.length} volumes`);
  } catch (err) {
    add(
      'array',
      false,
      (err as Error).message,
      `start the array (arraylab serve) or point the agent at it with --array HOST:PORT or "array:" in ${d.settings.configFile || 'the config file'}`,
    );
  }

  if (volumes) {
    try {
      const mapped = await d.host.devices(volumes);
      add(
        'devices',
        true,
        mapped.length === 0 ? 'no array volume has a block device on this host' : mapped.map((m) => `${m.volume}=${m.device} (${m.how})`).join(', '),
      );
    } catch (err) {
      add('devices', false, (err as Error).message, 'fix the device map file (lines of "VOLUME DEVICE")');
    }
  }

  if (!d.guest) add(...hooksCheck(d.settings.hooksDir));

  if (d.status) {
    try {
      const st = await d.status();
      // --lock none needs no device here: it does nothing on the host by choice.
      const noDevice = st.transactionVolumes.filter((t) => t.device === '' && (t.lock !== 'none' || t.flushOnly));
      add(
        'transaction volumes',
        noDevice.length === 0,
        noDevice.length === 0
          ? `${st.transactionVolumes.length} registered, each with a device here`
          : `no block device on this host for: ${noDevice.map((t) => t.volume).join(', ')}`,
        'attach the volume (iSCSI login, nbd-client) or add "VOLUME DEVICE" to the device map (--device-map)',
      );
      const unhealthy = st.transactionVolumes.flatMap((t) => t.unhealthy.map((u) => `${t.volume} ${u}`));
      add(
        'generations',
        unhealthy.length === 0,
        unhealthy.length === 0 ? 'every held generation is intact on the array' : unhealthy.join('; '),
        'run: arraylab-agent resource-match (records them), then back those volumes up again',
      );
      // A sync pair the next synchronized backup would refuse: error-suspended by the array (its
      // copy failed), gone, or suspended or split out of band. Copying is on its way.
      const pairs = st.transactionVolumes.filter((t) => t.sync !== null);
      const stuck = pairs.filter((t) => !['copying', 'equivalent', 'unknown'].includes(t.sync!.state));
      add(
        'sync pairs',
        stuck.length === 0,
        stuck.length === 0
          ? pairs.length === 0
            ? 'no synchronized backups'
            : `${pairs.length} sync pair${pairs.length === 1 ? '' : 's'}, each copying or equivalent${pairs.some((t) => t.sync!.state === 'unknown') ? ' (or not checked: the array did not answer)' : ''}`
          : stuck
              .map(
                (t) =>
                  `${t.volume} -> ${t.sync!.backupVolume} is ${t.sync!.state}${t.sync!.state === 'gone' ? '' : ` (arraylab copy show ${t.sync!.sessionId} says why)`}`,
              )
              .join('; '),
        'error-suspended: fix the cause, then arraylab copy resume SESSION; otherwise (or gone): arraylab-agent cancel-sync VOLUME (gone: resource-match) and start-sync again',
      );
      const flagged = [...st.transactionVolumes, ...st.backupVolumes].filter((v) => v.needsResourceMatch !== '');
      const pending = st.outstandingLocks.length + flagged.length;
      add(
        'resource match',
        pending === 0,
        pending === 0
          ? 'records agree: no lock left behind, no volume flagged'
          : [
              ...st.outstandingLocks.map((l) => `${l.volume} still ${l.action} since ${l.at}`),
              ...flagged.map((v) => `${v.volume}: ${v.needsResourceMatch}`),
            ].join('; '),
        'run: arraylab-agent resource-match',
      );
    } catch (err) {
      add('records', false, (err as Error).message, `check the state directory ${d.settings.stateDir}`);
    }
  }
  return checks;
}

/**
 * The hooks directory: scripts named after a phase, executable, and (the agent runs them as
 * root) owned by root or the agent's user and not writable by group or others, the directory
 * too. uid: the agent's (tests give another).
 */
export function hooksCheck(dir: string, uid: number = agentUid()): [string, boolean, string, string] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return ['hooks', true, `no hooks directory ${dir} (default processing only)`, ''];
  }
  const problems: string[] = [];
  const untrusted: string[] = [];
  const found: string[] = [];
  const dirProblem = ownershipProblem(dir, statSync(dir), uid);
  if (dirProblem) untrusted.push(dirProblem);
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const path = join(dir, name);
    if (!(HOOK_PHASES as readonly string[]).includes(name)) {
      problems.push(`${name} is not a phase (${HOOK_PHASES.join(', ')})`);
      continue;
    }
    try {
      accessSync(path, constants.X_OK);
    } catch {
      problems.push(`${name} is not executable (chmod +x ${path})`);
      continue;
    }
    const trust = ownershipProblem(path, statSync(path), uid);
    if (trust) untrusted.push(trust);
    else found.push(name);
  }
  if (untrusted.length > 0)
    return [
      'hooks',
      false,
      `${dir}: hooks that others could change are not run as root: ${[...untrusted, ...problems].join('; ')}`,
      `chown root and chmod go-w the scripts and the directory as said${problems.length ? '; rename or chmod +x the others' : ''}`,
    ];
  if (problems.length > 0)
    return ['hooks', false, `${dir}: ${problems.join('; ')}`, 'rename or chmod the scripts as said; a hook must be named after its phase'];
  return ['hooks', true, found.length ? `${dir}: ${found.join(', ')}` : `${dir} holds no scripts`, ''];
}
