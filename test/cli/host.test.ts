/** `arraylab host ...` end to end: the real CLI against a spawned `arraylab serve` (no iSCSI portal needed). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliJson, cliOk, runCli, startArraylab, type Arraylab } from '../support/arraylab.js';

const WEB1 = 'iqn.1994-05.com.redhat:web1';
const WEB2 = 'iqn.1994-05.com.redhat:web2';
const DB1 = 'iqn.2026-01.lab.example:db1';

describe('arraylab host', () => {
  let lab: Arraylab;

  beforeAll(async () => {
    lab = await startArraylab({
      config: {
        volumes: [
          { name: 'vol0', size: '1MiB' },
          { name: 'vol1', size: '1MiB' },
          { name: 'vol2', size: '1MiB' },
        ],
      },
    });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  const ok = (args: string[]) => cliOk(lab, args);
  const json = (args: string[]) => cliJson(lab, args);
  const fails = async (args: string[], code: number) => {
    const r = await lab.cli(args);
    expect(r.code, r.stderr).toBe(code);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')).toHaveLength(2); // one line and its newline
    return r.stderr;
  };

  it('says every initiator sees every volume while no host is defined', async () => {
    expect(await ok(['host', 'list'])).toBe(
      'no hosts: host affinity is off, so every initiator sees every volume (LUN 0 vol0, LUN 1 vol1, LUN 2 vol2); add one with: arraylab host add NAME --initiator IQN\n',
    );
    const list = await json(['host', 'list']);
    expect(list).toEqual({
      hostAffinity: false,
      requireHostAffinity: false,
      hosts: [],
      defaultLuns: [
        { lun: 0, volume: 'vol0', volumeUuid: expect.any(String) },
        { lun: 1, volume: 'vol1', volumeUuid: expect.any(String) },
        { lun: 2, volume: 'vol2', volumeUuid: expect.any(String) },
      ],
      otherSessions: [],
    });
  });

  it('adds a host, maps and unmaps volumes, shows and lists it, and removes it (human output)', async () => {
    expect(await ok(['host', 'add', 'web', '--initiator', WEB1, '--initiator', 'IQN.1994-05.com.redhat:Web2'])).toBe(
      `added host web with initiators ${WEB1}, ${WEB2}; map volumes to it with: arraylab host map web VOLUME\n`,
    );
    expect(await ok(['host', 'map', 'web', 'vol2', '--lun', '5'])).toBe('mapped volume vol2 to host web at LUN 5\n');
    expect(await ok(['host', 'map', 'web', 'vol0'])).toBe('mapped volume vol0 to host web at LUN 0\n');

    const show = await ok(['host', 'show', 'web']);
    expect(show).toMatch(/^name:\s+web$/m);
    expect(show).toMatch(new RegExp(`^initiators:\\s+${WEB1}, ${WEB2}$`, 'm'));
    expect(show).toMatch(/^sessions:\s+none$/m);
    expect(show).toMatch(/^luns:\s+2$/m);
    expect(show).toMatch(/^LUN\s+VOLUME\s+UUID$/m);
    expect(show).toMatch(/^\s*0\s+vol0\s+[0-9a-f-]{36}$/m);
    expect(show).toMatch(/^\s*5\s+vol2\s+[0-9a-f-]{36}$/m);

    const list = (await ok(['host', 'list'])).trimEnd().split('\n');
    expect(list[0]).toMatch(/^HOST\s+INITIATORS\s+LUNS\s+SESSIONS\s+CREDENTIALS$/);
    expect(list[1]).toMatch(new RegExp(`^web\\s+${WEB1}\\s+2\\s+0\\s+-$`));
    expect(list[2]).toMatch(new RegExp(`^\\s+${WEB2}$`));
    expect(list[3]).toBe("host affinity on: an initiator sees only its host's LUNs; one in no host sees none");

    expect(await ok(['host', 'unmap', 'web', 'vol2'])).toBe('unmapped volume vol2 (LUN 5) from host web\n');
    expect(await ok(['host', 'add-initiator', 'web', DB1])).toBe(`added initiator ${DB1} to host web\n`);
    expect(await ok(['host', 'remove-initiator', 'web', DB1])).toBe(`removed initiator ${DB1} from host web\n`);
    expect(await ok(['host', 'remove', 'web', '--force'])).toBe(
      `removed host web and unmapped its LUN (LUN 0 vol0); no host is left, so host affinity is off: every initiator and NBD client sees every volume (set iscsi.requireHostAffinity to prevent this)\n`,
    );
    expect(await ok(['host', 'ls'])).toMatch(/^no hosts: host affinity is off/);
  });

  it('does the same with --json', async () => {
    const added = await json(['host', 'add', 'db', '--initiator', DB1]);
    expect(added).toEqual({ name: 'db', initiators: [DB1], luns: [], createdAt: expect.any(String), sessions: [], credentials: {} });
    expect(Date.parse(added.createdAt as string)).not.toBeNaN();
    expect(await json(['host', 'map', 'db', 'vol1', '--lun', '16383'])).toEqual({ host: 'db', volume: 'vol1', lun: 16383 });
    expect(await json(['host', 'map', 'db', 'vol0'])).toEqual({ host: 'db', volume: 'vol0', lun: 0 });
    const shown = await json(['host', 'show', 'db']);
    const vol0 = (await json(['volume', 'show', 'vol0'])).uuid;
    const vol1 = (await json(['volume', 'show', 'vol1'])).uuid;
    expect(shown).toEqual({
      ...added,
      luns: [
        { lun: 0, volume: 'vol0', volumeUuid: vol0 },
        { lun: 16383, volume: 'vol1', volumeUuid: vol1 },
      ],
    });
    expect(await json(['host', 'list'])).toMatchObject({ hostAffinity: true, requireHostAffinity: false, hosts: [shown], otherSessions: [] });
    expect(await json(['host', 'add-initiator', 'db', WEB1])).toMatchObject({ initiators: [DB1, WEB1] });
    expect(await json(['host', 'remove-initiator', 'db', WEB1])).toMatchObject({ initiators: [DB1] });
    expect(await json(['host', 'unmap', 'db', 'vol1'])).toEqual({ host: 'db', volume: 'vol1', lun: 16383 });
    expect(await json(['host', 'remove', 'db', '--force'])).toEqual({
      removed: 'db',
      unmapped: [{ lun: 0, volume: 'vol0', volumeUuid: vol0 }],
      hostAffinity: false,
    });
    expect(await json(['host', 'list'])).toMatchObject({ hostAffinity: false, hosts: [] });
  });

  it('follows volume renames and forgets deleted volumes', async () => {
    await ok(['volume', 'create', 'tmp', '--size', '1MiB']);
    await ok(['host', 'add', 'app', '--initiator', WEB1]);
    await ok(['host', 'map', 'app', 'tmp', '--lun', '3']);
    await ok(['volume', 'rename', 'tmp', 'tmp2']);
    expect((await json(['host', 'show', 'app'])).luns).toEqual([{ lun: 3, volume: 'tmp2', volumeUuid: expect.any(String) }]);
    await ok(['volume', 'delete', 'tmp2']);
    expect((await json(['host', 'show', 'app'])).luns).toEqual([]);
    expect(await ok(['host', 'show', 'app'])).toMatch(/^luns:\s+none; map one with: arraylab host map app VOLUME$/m);
    expect(await ok(['host', 'remove', 'app'])).toBe(
      `removed host app; no host is left, so host affinity is off: every initiator and NBD client sees every volume (set iscsi.requireHostAffinity to prevent this)\n`,
    );
  });

  it('refuses operations that would break the maps with one line and exit status 1', async () => {
    await ok(['host', 'add', 'h1', '--initiator', WEB1]);
    await ok(['host', 'map', 'h1', 'vol0', '--lun', '1']);
    expect(await fails(['host', 'add', 'h1', '--initiator', WEB2], 1)).toBe(
      'arraylab: host h1 already exists; choose another name, or add an initiator to it with "arraylab host add-initiator h1 IQN"\n',
    );
    expect(await fails(['host', 'add', 'h2', '--initiator', WEB1.toUpperCase()], 1)).toBe(
      `arraylab: initiator ${WEB1} already belongs to host h1; an initiator is in one host only: remove it there first ("arraylab host remove-initiator h1 ${WEB1}")\n`,
    );
    expect(await fails(['host', 'map', 'h1', 'vol1', '--lun', '1'], 1)).toBe(
      'arraylab: LUN 1 of host h1 already maps volume vol0; choose another --lun, or leave --lun out for the lowest free one\n',
    );
    expect(await fails(['host', 'map', 'h1', 'vol0'], 1)).toBe(
      'arraylab: volume vol0 is already mapped to host h1 at LUN 1; a volume appears once per host: unmap it first ("arraylab host unmap h1 vol0") to move it\n',
    );
    expect(await fails(['host', 'remove', 'h1'], 1)).toBe(
      'arraylab: cannot remove host h1: it has 1 LUN mapped (LUN 1 vol0); unmap it first with "arraylab host unmap h1 VOLUME", or pass --force\n',
    );
    expect(await fails(['host', 'map', 'h1', 'nope'], 1)).toBe('arraylab: no volume named "nope"; list volumes with "arraylab volume list"\n');
    expect(await fails(['host', 'show', 'nohost'], 1)).toBe('arraylab: no host named "nohost"; list hosts with "arraylab host list"\n');
    expect(await fails(['host', 'unmap', 'h1', 'vol2'], 1)).toBe('arraylab: volume vol2 is not mapped to host h1; see its LUNs with "arraylab host show h1"\n');
    expect(await fails(['host', 'remove-initiator', 'h1', WEB1], 1)).toMatch(
      /^arraylab: cannot remove .* it is the host's only initiator; add another first, or remove the host/,
    );
    // Nothing changed.
    expect(await json(['host', 'show', 'h1'])).toMatchObject({ initiators: [WEB1], luns: [{ lun: 1, volume: 'vol0' }] });
    await ok(['host', 'remove', 'h1', '--force']);
  });

  it('refuses bad command lines with one line and exit status 2, before asking the server', async () => {
    // No server needed: these never reach the API.
    const bad = async (args: string[]) => {
      const r = await runCli(args, { env: { ARRAYLAB_API: '127.0.0.1:1' } });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr.split('\n')).toHaveLength(2);
      return r.stderr;
    };
    expect(await bad(['host', 'add', 'web'])).toBe("arraylab: Missing required argument: initiator (see 'arraylab host add --help')\n");
    expect(await bad(['host', 'add', 'web', '--initiator', 'web1'])).toMatch(
      /^arraylab: --initiator: "web1" is not an iSCSI name; use iqn\.YYYY-MM\.reversed\.domain\[:name\]/,
    );
    expect(await bad(['host', 'add', 'bad/name', '--initiator', WEB1])).toMatch(/^arraylab: host name "bad\/name" is not valid; use 1 to 63 letters/);
    for (const lun of ['-1', '16384', 'two', '1.5']) {
      expect(await bad(['host', 'map', 'web', 'vol0', '--lun', lun])).toBe(
        `arraylab: --lun: "${lun}" is not a LUN; give a whole number from 0 to 16383, or leave --lun out for the lowest free one\n`,
      );
    }
    expect(await bad(['host', 'map', 'web'])).toMatch(/^arraylab: Not enough non-option arguments.*\(see 'arraylab host map --help'\)\n$/);
    expect(await bad(['host'])).toMatch(
      /^arraylab: host needs a subcommand: add, remove, map, unmap, list, show, set, add-initiator or remove-initiator \(see 'arraylab host --help'\)\n$/,
    );
    expect(await bad(['host', 'frob'])).toMatch(/^arraylab: Unknown argument: frob.*\(see 'arraylab host --help'\)\n$/);
    expect(await bad(['host', 'add-initiator', 'web', 'eui.123'])).toMatch(
      /^arraylab: initiator: "eui.123" is not an eui. name: it needs exactly 16 hex digits/,
    );
  });

  it('lists its commands in --help', async () => {
    const r = await runCli(['host', '--help']);
    expect(r.code).toBe(0);
    for (const sub of [
      'add <name>',
      'remove <name>',
      'map <name> <volume>',
      'unmap <name> <volume>',
      'list',
      'show <name>',
      'add-initiator',
      'remove-initiator',
    ]) {
      expect(r.stdout).toContain(`arraylab host ${sub}`);
    }
  });
});
