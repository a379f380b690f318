/**
 * The agent as a deployable artifact (scripts/package-agent.sh): its .deb is reproducible and
 * says what it needs; dpkg installs it into a fresh root that has nothing of the emulator; run
 * from there on the host's Node, with a clean environment (no NODE_PATH) and from a directory
 * outside the repository, it answers --version and doctor and makes a real backup against a
 * running `arraylab serve`. And the guest image's stamp hashes the package, not dist/: a change
 * to the emulator's compiled files alone changes neither.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, REPO_ROOT, startArraylab } from '../support/arraylab.js';
import { runProcess } from '../support/process.js';
import { requireTool } from '../support/tools.js';

const run = promisify(execFile);
const PACKAGE_SCRIPT = join(REPO_ROOT, 'scripts', 'package-agent.sh');
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

let deb: string;

beforeAll(async () => {
  const started = performance.now();
  const { stdout, stderr } = await run('bash', [PACKAGE_SCRIPT], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
  deb = stdout.trim().split('\n').at(-1)!;
  console.log(`${stderr.trim()}\n(scripts/package-agent.sh took ${((performance.now() - started) / 1000).toFixed(1)} s)`);
}, 600_000);

async function dpkgDeb(...args: string[]): Promise<string> {
  return (await run('dpkg-deb', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
}

/** A fresh root with an empty dpkg database, outside the repository. */
function freshRoot(): string {
  const root = makeTempDir('arraylab-agent-root-');
  expect(relative(REPO_ROOT, root).startsWith('..'), `${root} must be outside ${REPO_ROOT}`).toBe(true);
  for (const d of ['var/lib/dpkg/info', 'var/lib/dpkg/updates', 'var/lib/dpkg/triggers', 'var/log']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'var/lib/dpkg/status'), '');
  return root;
}

/** dpkg on that root; maintainer scripts run with DPKG_ROOT set (and do nothing to this host). */
async function dpkg(root: string, ...args: string[]): Promise<string> {
  return (await run('dpkg', [`--root=${root}`, '--force-script-chrootless', '--force-depends', ...args], { maxBuffer: 16 * 1024 * 1024 })).stdout;
}

describe('the arraylab-agent Debian package', () => {
  it('is reproducible, and its control file says what it needs: the host Node of the build major, no emulator', async () => {
    // Built again from scratch elsewhere: the same bytes.
    const out = makeTempDir('arraylab-agent-deb-');
    const again = (await run('bash', [PACKAGE_SCRIPT, '--force', '--out', out], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 })).stdout.trim();
    expect(again).toBe(join(out, `arraylab-agent_${VERSION}_amd64.deb`));
    expect(readFileSync(again).equals(readFileSync(deb)), `${again} differs from ${deb}`).toBe(true);

    expect(deb).toBe(join(REPO_ROOT, 'build', 'agent', `arraylab-agent_${VERSION}_amd64.deb`));
    const [pkg, version, arch, depends] = (await dpkgDeb('-f', deb, 'Package', 'Version', 'Architecture', 'Depends'))
      .trim()
      .split('\n')
      .map((l) => l.replace(/^\w+: /, ''));
    expect([pkg, version, arch]).toEqual(['arraylab-agent', VERSION, 'amd64']);
    // better-sqlite3 is native: built for this Node's ABI, so the same major version only.
    expect(depends).toMatch(
      new RegExp(
        `^nodejs \\(>= ${NODE_MAJOR}(\\.\\d+)?\\), nodejs \\(<< ${NODE_MAJOR + 1}\\), libc6 \\(>= [\\d.]+\\), libstdc\\+\\+6 \\(>= \\d+\\), util-linux, mount, coreutils$`,
      ),
    );
    const description = await dpkgDeb('-f', deb, 'Description');
    expect(description).toMatch(/runs on the host's Node\.js, which this package does not include/);
    expect(description).toContain(`NODE_MODULE_VERSION ${process.versions.modules}`);
    expect((await dpkgDeb('-I', deb, 'conffiles')).trim()).toBe('/etc/arraylab-agent/agent.yaml');

    // This host satisfies it: apt would install the package and nothing else.
    const sim = (await run('apt-get', ['install', '-s', '--no-install-recommends', deb], { maxBuffer: 16 * 1024 * 1024 })).stdout;
    expect(sim.split('\n').filter((l) => l.startsWith('Inst '))).toEqual([expect.stringMatching(/^Inst arraylab-agent \(/)]);
  });

  it('installs with dpkg into a fresh root, with nothing of the emulator and only the agent’s npm packages', async () => {
    const root = freshRoot();
    await dpkg(root, '-i', deb);
    const files = (await dpkg(root, '-L', 'arraylab-agent')).trim().split('\n');
    expect(files.filter((f) => /\/(emulator|dist|test)(\/|$)/.test(f) && !f.includes('/node_modules/'))).toEqual([]);
    expect(files).toEqual(
      expect.arrayContaining([
        '/usr/bin/arraylab-agent',
        '/usr/lib/arraylab-agent/package.json',
        '/usr/lib/arraylab-agent/agent/cli/arraylab-agent.js',
        '/usr/lib/arraylab-agent/agent/host/freezeGuardMain.js',
        '/usr/lib/arraylab-agent/proto/arraylab/v1/agent.proto',
        '/usr/lib/arraylab-agent/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
        '/usr/lib/systemd/system/arraylab-agent.service',
        '/etc/arraylab-agent/agent.yaml',
        '/usr/share/man/man8/arraylab-agent.8.gz',
        '/usr/share/doc/arraylab-agent/copyright',
      ]),
    );
    expect(readlinkSync(join(root, 'usr/bin/arraylab-agent'))).toBe('../lib/arraylab-agent/agent/cli/arraylab-agent.js');
    // No development packages, no native sources; every npm package is in the copyright file.
    const topPackages = files.map((f) => /^\/usr\/lib\/arraylab-agent\/node_modules\/(@[^/]+\/[^/]+|[^@/][^/]*)$/.exec(f)?.[1]).filter((p) => p !== undefined);
    for (const dev of ['typescript', 'vitest', '@types/node', 'prebuild-install']) expect(topPackages).not.toContain(dev);
    expect(topPackages).toEqual(expect.arrayContaining(['@grpc/grpc-js', '@grpc/proto-loader', 'better-sqlite3', 'pino', 'yaml', 'yargs']));
    expect(files.filter((f) => /node_modules\/better-sqlite3\/(src|deps)\//.test(f))).toEqual([]);
    const copyright = readFileSync(join(root, 'usr/share/doc/arraylab-agent/copyright'), 'utf8');
    for (const p of topPackages) expect(copyright).toContain(`Files: usr/lib/arraylab-agent/node_modules/${p}/*`);
    // The man page, from agent/README.md.
    const man = gunzipSync(readFileSync(join(root, 'usr/share/man/man8/arraylab-agent.8.gz'))).toString('utf8');
    expect(man).toMatch(/^\.TH "ARRAYLAB-AGENT" "8" "\d{4}-\d\d-\d\d" "arraylab-agent [\d.]+" "arraylab"$/m);
    expect(man).toMatch(/^\.SH NAME\n\.PP\narraylab-agent - the host side of arraylab backups$/m);
    // The unit runs the installed command; the default config is a registered conffile.
    expect(readFileSync(join(root, 'usr/lib/systemd/system/arraylab-agent.service'), 'utf8')).toMatch(
      /^ExecStart=\/usr\/bin\/arraylab-agent serve --config \/etc\/arraylab-agent\/agent\.yaml$/m,
    );
    expect(await dpkg(root, '-s', 'arraylab-agent')).toMatch(/^Conffiles:\n \/etc\/arraylab-agent\/agent\.yaml [0-9a-f]{32}$/m);

    // Remove keeps the conffile, purge takes it; nothing else is left.
    await dpkg(root, '-r', 'arraylab-agent');
    expect(existsSync(join(root, 'usr/lib/arraylab-agent'))).toBe(false);
    expect(existsSync(join(root, 'etc/arraylab-agent/agent.yaml'))).toBe(true);
    await dpkg(root, '-P', 'arraylab-agent');
    expect(existsSync(join(root, 'etc/arraylab-agent'))).toBe(false);
  });

  it('runs from the installed root with a clean environment: --version, doctor and a real backup against a running array', async () => {
    requireTool('qemu-io');
    const root = freshRoot();
    await dpkg(root, '-i', deb);
    const lab = await startArraylab();
    try {
      for (const v of ['tv', 'bv']) await lab.cli(['volume', 'create', v, '--size', '16MiB']);
      const work = makeTempDir('arraylab-agent-cwd-'); // the cwd, outside the repository
      const state = join(work, 'state');
      // Exactly this environment: no NODE_PATH, no ARRAYLAB_*; node is the host's /usr/bin/node.
      const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: work, LANG: 'C.UTF-8' };
      // As deployed: the array's admin made the agent a user, and its token is in a 0600 file.
      const user = JSON.parse((await lab.cli(['user', 'add', 'agent-web1', '--role', 'operator', '--json'])).stdout) as { token: string };
      const tokenFile = join(work, 'array.token');
      writeFileSync(tokenFile, `${user.token}\n`, { mode: 0o600 });
      const common = [
        '--config',
        join(root, 'etc/arraylab-agent/agent.yaml'),
        '--array',
        lab.apiAddress,
        '--token-file',
        tokenFile,
        '--state-dir',
        state,
        '--hooks-dir',
        join(work, 'hooks'),
      ];
      const agent = async (args: string[]) => {
        const r = await runProcess(join(root, 'usr/bin/arraylab-agent'), args, { env, cwd: work, timeoutMs: 60_000 });
        expect(r.code, `arraylab-agent ${args.join(' ')}:\n${r.output}`).toBe(0);
        return r.stdout;
      };

      // The version comes from the package's own package.json: the repository's is out of reach.
      expect((await agent(['--version'])).trim()).toBe(VERSION);

      const doctor = JSON.parse(await agent(['doctor', ...common, '--json'])) as Array<{ name: string; ok: boolean; detail: string }>;
      expect(doctor.filter((c) => !c.ok)).toEqual([]);
      expect(doctor.find((c) => c.name === 'array')?.detail).toMatch(
        new RegExp(`^arraylab ${VERSION.replace(/\./g, '\\.')} at ${lab.apiAddress}, \\d+ volumes$`),
      );
      expect(doctor.find((c) => c.name === 'tools')?.detail).toMatch(/^found fsfreeze, mount, umount, blockdev, sync, dd$/);

      // A real backup: what was written to tv is on bv, and history records it.
      const pattern = `0x${randomBytes(1).toString('hex')}`;
      await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} 0 1M`, lab.nbdUri('tv')]);
      await agent(['register', 'transaction', 'tv', '--lock', 'none', '--generations', '1', ...common]);
      await agent(['register', 'backup', 'bv', ...common]);
      const report = JSON.parse(await agent(['backup', 'tv', ...common, '--json']));
      expect(report).toMatchObject({
        ok: true,
        volumes: [{ volume: 'tv', ok: true, generation: { number: 1, generation: 1, backupVolume: 'bv', status: 'held' } }],
      });
      const history = JSON.parse(await agent(['history', 'tv', ...common, '--json'])) as Array<Record<string, unknown>>;
      expect(history).toEqual([expect.objectContaining({ number: 1, generation: 1, backupVolume: 'bv', status: 'held', prep: 'none' })]);
      await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P ${pattern} 0 1M`, lab.nbdUri('bv')]);
      // The records are the agent's own SQLite file, made by the package's better-sqlite3.
      expect(existsSync(state)).toBe(true);
    } finally {
      await lab.stop();
    }
  });
});

describe('the guest image (vm-images/build.sh)', () => {
  it('hashes the agent package, not dist/: a change to the emulator’s compiled files alone changes neither', async () => {
    const stamp = async () => {
      const { stdout } = await run('bash', [join(REPO_ROOT, 'vm-images', 'build.sh'), '--stamp'], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
      return stdout.trim().split('\n').at(-1)!;
    };
    const before = await stamp();
    expect(before).toMatch(/^[0-9a-f]{64}$/);
    const probe = join(REPO_ROOT, 'dist', 'emulator', `stamp-probe-${randomBytes(4).toString('hex')}.js`);
    writeFileSync(probe, `export const probe = ${Date.now()};\n`);
    try {
      expect(await stamp()).toBe(before);
      const r = await run('bash', [PACKAGE_SCRIPT], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 });
      expect(r.stderr).toMatch(/^package-agent: up to date: /m);
    } finally {
      rmSync(probe, { force: true });
    }
  });
});
