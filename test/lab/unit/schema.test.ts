/**
 * The lab file's schema (emulator/lab/schema.ts), in process: a lab with several arrays, their
 * remotes and REC pairs parses to what lab up does; the one-array lab files of before parse as
 * they did; every mistake is one line naming the file, the key path and the fix.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LabError, parseLab } from '../../../emulator/lab/schema.js';

const FILE = '/labs/two-site.yaml';
const EXAMPLE = join(import.meta.dirname, '..', '..', '..', 'vm-images', 'labs', 'backup-restore.yaml');

const TWO_SITES = `
arrays:
  - name: site-a
    start: true
    volumes: [{name: vol1, size: 64MiB}]
    remotes: [{name: site-b, array: site-b}]
    copies: [{type: rec, src: vol1, dst: site-b:vol1, mode: sync}]
  - name: site-b
    start: true
    api: 127.0.0.1:7400
    volumes: [{name: vol1, size: 64MiB}]
    remotes: [site-a]
`;

function error(text: string): string {
  try {
    parseLab(text, FILE);
  } catch (err) {
    expect(err).toBeInstanceOf(LabError);
    return (err as Error).message;
  }
  throw new Error('the lab file parsed');
}

describe('a lab with several arrays', () => {
  it('gives each array its volumes, remotes and REC pairs, free ports and a data directory of its own', () => {
    const lab = parseLab(TWO_SITES, FILE);
    const [a, b] = lab.arrays;
    expect(a).toMatchObject({
      name: 'site-a',
      at: 'arrays[0]',
      api: '127.0.0.1:0',
      start: true,
      dataDir: '/labs/lab-data/site-a',
      nbd: '127.0.0.1:0',
      iscsi: '127.0.0.1:0',
      volumes: [{ name: 'vol1', sizeBytes: 64 * 2 ** 20, blockSize: 512, provisioning: 'thin' }],
      remotes: [{ name: 'site-b', array: 'site-b' }],
      copies: [{ type: 'rec', src: 'vol1', dst: 'site-b:vol1', remote: 'site-b', volume: 'vol1', mode: 'sync', split: 'auto', recovery: 'auto' }],
      faults: [],
      keys: { volumes: 'arrays[0].volumes', hosts: 'arrays[0].hosts', faults: 'arrays[0].faults' },
    });
    expect(b).toMatchObject({
      name: 'site-b',
      api: '127.0.0.1:7400',
      dataDir: '/labs/lab-data/site-b',
      remotes: [{ name: 'site-a', array: 'site-a' }],
      copies: [],
    });
  });

  it('takes remotes outside the lab, split and recovery modes, per-array faults on volumes and links, and VMs on any array', () => {
    const lab = parseLab(
      `
seed: 3
arrays:
  - name: a
    api: 127.0.0.1:7401
    volumes: [{name: v, size: 8MiB}]
    remotes: [{name: b, array: b}, {name: far, api: "10.0.0.5:7390"}]
    copies:
      - {src: v, dst: b:w, mode: stack, split: manual, recovery: manual}
      - {src: v, dst: far:v}
    faults:
      - {kind: link-down, target: "remote:b", window: 5s-20s}
      - {kind: delay, target: "volume:v", ms: 5}
  - name: b
    api: 127.0.0.1:7402
    volumes: [{name: w, size: 16MiB}]
    hosts: [{name: h, vms: [m], luns: [w]}]
vms: [{name: m, array: b, attach: [w]}]
`,
      FILE,
    );
    expect(lab.arrays[0]!.remotes).toEqual([
      { name: 'b', array: 'b' },
      { name: 'far', api: '10.0.0.5:7390' },
    ]);
    expect(lab.arrays[0]!.copies.map((c) => [c.dst, c.mode, c.split, c.recovery])).toEqual([
      ['b:w', 'stack', 'manual', 'manual'],
      ['far:v', 'sync', 'auto', 'auto'],
    ]);
    expect(lab.arrays[0]!.faults).toHaveLength(2);
    expect(lab.arrays[1]!.hosts).toEqual([{ name: 'h', initiators: [], vms: ['m'], luns: [{ volume: 'w' }] }]);
    expect(lab.vms).toEqual([{ name: 'm', array: 'b', memoryMiB: 1024, attach: [{ volume: 'w', via: 'nbd' }] }]);
    expect(lab.seed).toBe(3);
  });

  it.each([
    // Where each thing is declared.
    [
      'arrays: [{name: a, start: true}, {name: b, start: true}]\nvolumes: [{name: v, size: 8MiB}]\n',
      'volumes: a lab with several arrays declares volumes under each array; move them to arrays[N].volumes of the array they belong to',
    ],
    ['arrays: []\n', 'arrays: declares no array; a lab needs at least one, e.g. [{name: array0, api: 127.0.0.1:7390, start: true, dataDir: ./lab-data}]'],
    ['arrays: [{name: a, start: true}, {name: a, start: true}]\n', 'arrays[1].name: array a is declared twice (also arrays[0]); give each array its own name'],
    [
      'arrays: [{name: a, start: true}, {name: b}]\n',
      'arrays[1].api: is missing; give HOST:PORT of a running array such as 127.0.0.1:7390, or set start: true (lab up then starts one on a free port)',
    ],
    [
      'arrays: [{name: a, start: true}, {name: b, api: "127.0.0.1:0"}]\n',
      'arrays[1].api: 127.0.0.1:0: port 0 is a free port lab up picks for an array it starts; set start: true, or give the address of a running array',
    ],
    // Ports and data directories of their own.
    [
      'arrays: [{name: a, start: true, nbd: "127.0.0.1:10809"}, {name: b, start: true, nbd: "127.0.0.1:10809"}]\n',
      'arrays[1].nbd: 127.0.0.1:10809 is also arrays[0].nbd; give each array its own port (0: a free port)',
    ],
    [
      'arrays: [{name: a, start: true, api: "127.0.0.1:7390"}, {name: b, start: true, iscsi: "127.0.0.1:7390"}]\n',
      'arrays[1].iscsi: 127.0.0.1:7390 is also arrays[0].api; give each array its own port (0: a free port)',
    ],
    [
      'arrays: [{name: a, start: true, dataDir: ./d}, {name: b, start: true, dataDir: ./d}]\n',
      'arrays[1].dataDir: /labs/d is also the data directory of arrays[0]; give each array its own, e.g. ./lab-data/b',
    ],
    // Remotes.
    [
      'arrays: [{name: a, start: true, remotes: [{name: b, array: c}]}, {name: b, start: true}]\n',
      'arrays[0].remotes[0].array: array c is not declared in arrays (a, b); declare it there, or give api: HOST:PORT for an array outside the lab',
    ],
    [
      'arrays: [{name: a, start: true}, {name: b, start: true, remotes: [{name: x, array: a, api: "127.0.0.1:7390"}]}]\n',
      "arrays[1].remotes[0]: give either array (one of the lab's arrays: a, b) or api (HOST:PORT of an array outside the lab), not both",
    ],
    [
      'arrays: [{name: a, start: true}, {name: b, start: true, remotes: [{name: x, api: nowhere}]}]\n',
      'arrays[1].remotes[0].api: "nowhere" is not an address; use HOST:PORT such as 127.0.0.1:10809 (port 0 picks a free port)',
    ],
    [
      'arrays: [{name: a, api: "127.0.0.1:7390"}, {name: b, start: true, remotes: [{name: x, api: "127.0.0.1:7390"}]}]\n',
      "arrays[1].remotes[0].api: 127.0.0.1:7390 is the lab's array a; write array: a instead",
    ],
    [
      'arrays: [{name: a, start: true, remotes: [a]}, {name: b, start: true}]\n',
      'arrays[0].remotes[0].array: array a is this array; a remote is another array, e.g. one of b',
    ],
    [
      'arrays: [{name: a, start: true, remotes: [b, b]}, {name: b, start: true}]\n',
      'arrays[0].remotes[1].name: remote b is declared twice on array a; remove one',
    ],
    // REC pairs.
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], copies: [{src: v, dst: b:v}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      'arrays[0].copies[0].dst: remote b is not declared in arrays[0].remotes (there are none); declare it there, e.g. {name: b, array: b}',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: v}]}, {name: b, start: true}]\n',
      'arrays[0].copies[0].dst: "v" is not a remote volume; use REMOTE:VOLUME with REMOTE one of arrays[0].remotes, e.g. site-b:v',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: w, dst: b:v}]}, {name: b, start: true}]\n',
      'arrays[0].copies[0].src: volume w is not declared in arrays[0].volumes (v); declare it there',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v}]}, {name: b, start: true}]\n',
      'arrays[0].copies[0].dst: volume v is not declared in arrays[1].volumes (array b); declare it there',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 16MiB}], remotes: [b], copies: [{src: v, dst: b:v}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      "arrays[0].copies[0].dst: b's v (8388608 bytes) is smaller than v (16777216 bytes); declare it at least as large",
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB, blockSize: 4096}]}]\n',
      "arrays[0].copies[0].dst: b's v has 4096-byte blocks and v 512-byte blocks; declare them with one block size",
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}, {name: u, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v}, {src: u, dst: b:v}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      "arrays[0].copies[1].dst: b's v is already the destination of a pair of a (v -> b:v); a volume is the destination of one pair",
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{type: ec, src: v, dst: b:v}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      'arrays[0].copies[0].type: "ec" is not a copy type a lab starts; use rec (start local copies with arraylab copy start)',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v, mode: async}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      'arrays[0].copies[0].mode: "async" is not a REC mode; use sync, stack, consistency, through',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v, split: never}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      'arrays[0].copies[0].split: "never" is not a split mode; use auto, manual',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}], remotes: [b], copies: [{src: v, dst: b:v, colour: red}]}, {name: b, start: true, volumes: [{name: v, size: 8MiB}]}]\n',
      'arrays[0].copies[0].colour: unknown key; use one of type, src, dst, mode, split, recovery',
    ],
    // Faults and VMs refer to their own array's volumes and remotes.
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}]}, {name: b, start: true, faults: [{kind: error, target: "volume:v"}]}]\n',
      'arrays[1].faults[0].target: volume:v names no volume of array b; use one of (none declared)',
    ],
    [
      'arrays: [{name: a, start: true, remotes: [b], faults: [{kind: link-down, target: "remote:c"}]}, {name: b, start: true}]\n',
      'arrays[0].faults[0].target: remote:c names no remote of array a; use one of remote:b, declared in arrays[0].remotes',
    ],
    [
      'arrays: [{name: a, start: true, volumes: [{name: v, size: 8MiB}]}, {name: b, start: true}]\nvms: [{name: m, array: b, attach: [v]}]\n',
      'vms[0].attach[0]: volume v is not declared in arrays[1].volumes (there are none); declare it there',
    ],
    [
      'arrays: [{name: a, start: true}, {name: b, start: true}]\nvms: [{name: m, array: c}]\n',
      'vms[0].array: array c is not declared in arrays (a, b); use one of them',
    ],
  ])('refuses a mistake in one line naming the key and the fix: %#', (text, message) => {
    const got = error(text);
    expect(got).toBe(`lab ${FILE}: ${message}`);
    expect(got).not.toContain('\n');
  });
});

describe('a lab with one array', () => {
  it('parses the example lab as before: top-level volumes are its array’s, on the built-in ports', () => {
    const lab = parseLab(readFileSync(EXAMPLE, 'utf8'), FILE);
    expect(lab.arrays).toHaveLength(1);
    const [a] = lab.arrays;
    expect(a).toMatchObject({ name: 'array0', api: '127.0.0.1:7390', start: true, dataDir: '/labs/lab-data/backup-restore', nbd: '127.0.0.1:10809' });
    expect(a!.volumes.map((v) => v.name)).toEqual(['tv1', 'bv1', 'bv2']);
    expect(a!.keys).toEqual({ volumes: 'volumes', hosts: 'hosts', faults: 'faults' });
    expect(lab.vms).toEqual([{ name: 'backup-lab', array: 'array0', memoryMiB: 1024, attach: [{ volume: 'tv1', via: 'nbd' }] }]);
  });

  it('leaves nbd and iscsi to the built-in defaults and keeps ./lab-data, as before', () => {
    const lab = parseLab('arrays: [{name: a, api: "127.0.0.1:7390"}]\n', FILE);
    expect(lab.arrays[0]!.nbd).toBeUndefined();
    expect(lab.arrays[0]!.iscsi).toBeUndefined();
    expect(lab.arrays[0]!.dataDir).toBe('/labs/lab-data');
  });

  it('takes its volumes under the array too, and says so when they are in both places', () => {
    const lab = parseLab('arrays: [{name: a, api: "127.0.0.1:7390", volumes: [{name: v, size: 8MiB}]}]\nvms: [{name: m, attach: [v]}]\n', FILE);
    expect(lab.arrays[0]!.volumes.map((v) => v.name)).toEqual(['v']);
    expect(error('arrays: [{name: a, api: "127.0.0.1:7390", volumes: [{name: v, size: 8MiB}]}]\nvolumes: [{name: w, size: 8MiB}]\n')).toBe(
      `lab ${FILE}: arrays[0].volumes: the lab declares volumes at the top level too; declare them in one place (the top-level ones are this array's)`,
    );
  });

  it('names top-level keys in its messages, as before', () => {
    expect(error('arrays: [{name: a, api: "127.0.0.1:7390"}]\nvolumes: [{name: v, size: 1GiB, colour: red}]\n')).toBe(
      `lab ${FILE}: volumes[0].colour: unknown key; use one of name, size, blockSize, provisioning, seat`,
    );
    expect(error('arrays: [{name: a, api: "127.0.0.1:7390"}]\nvms: [{name: m, attach: [w]}]\n')).toBe(
      `lab ${FILE}: vms[0].attach[0]: volume w is not declared in volumes (there are none); declare it there`,
    );
    expect(error('arrays: [{name: a, api: "127.0.0.1:7390"}]\nvolumes: [{name: v, size: 8MiB}]\nfaults: [{kind: error, target: "volume:nope"}]\n')).toBe(
      `lab ${FILE}: faults[0].target: volume:nope names no volume of this lab; use one of volume:v`,
    );
  });
});
