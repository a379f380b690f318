/**
 * The lab file's trainee seats and its NBD rules under host affinity (emulator/lab/schema.ts),
 * in process: seats by count or by name with a role and quotas, volumes and hosts given to a
 * seat, and a VM's NBD disks mapped to the one host it is in; every mistake is one line naming
 * the file, the key path and the fix.
 */
import { describe, expect, it } from 'vitest';
import { LabError, parseLab } from '../../../emulator/lab/schema.js';

const FILE = '/labs/class.yaml';
const ARRAY = 'arrays: [{name: a, api: "127.0.0.1:7390"}]\n';

function error(text: string): string {
  try {
    parseLab(text, FILE);
  } catch (err) {
    expect(err).toBeInstanceOf(LabError);
    return (err as Error).message;
  }
  throw new Error('the lab file parsed');
}

describe('seats', () => {
  it('makes seat1..seatN from a count, with the role and quotas given', () => {
    const lab = parseLab(`${ARRAY}seats: {count: 3, role: backup-operator, maxCapacity: 1GiB, maxVolumes: 4, maxSessions: 8}\n`, FILE);
    expect(lab.seats).toEqual({
      names: ['seat1', 'seat2', 'seat3'],
      role: 'backup-operator',
      maxCapacityBytes: 1024 ** 3,
      maxVolumes: 4,
      maxSessions: 8,
    });
    expect(parseLab(`${ARRAY}seats: {count: 2, prefix: team}\n`, FILE).seats).toEqual({ names: ['team1', 'team2'], role: 'operator' });
  });

  it('takes names, as a list or under names:, and none by default', () => {
    expect(parseLab(`${ARRAY}seats: [alice, bob]\n`, FILE).seats).toEqual({ names: ['alice', 'bob'], role: 'operator' });
    expect(parseLab(`${ARRAY}seats: {names: [alice], role: monitor}\n`, FILE).seats).toEqual({ names: ['alice'], role: 'monitor' });
    expect(parseLab(ARRAY, FILE).seats).toEqual({ names: [], role: 'operator' });
  });

  it('gives volumes and hosts to a seat', () => {
    const lab = parseLab(
      `${ARRAY}seats: {count: 2}\nvolumes: [{name: v1, size: 8MiB, seat: seat1}, {name: v2, size: 8MiB}]\nhosts: [{name: h1, initiators: ["iqn.2026-01.x:h1"], luns: [v1], seat: seat2}]\n`,
      FILE,
    );
    expect(lab.arrays[0]!.volumes.map((v) => [v.name, v.seat])).toEqual([
      ['v1', 'seat1'],
      ['v2', undefined],
    ]);
    expect(lab.arrays[0]!.hosts[0]!.seat).toBe('seat2');
  });

  it.each([
    [
      'seats: {count: 2, names: [a]}',
      'seats: give either count (seats prefix1..prefixN) or names, not both; e.g. {count: 3, role: operator, prefix: seat} or {names: [alice, bob], role: operator}',
    ],
    [
      'seats: {role: operator}',
      'seats: give either count (seats prefix1..prefixN) or names, not neither; e.g. {count: 3, role: operator, prefix: seat} or {names: [alice, bob], role: operator}',
    ],
    ['seats: {count: 0}', 'seats.count: 0 is not a number of seats; give a whole number from 1 to 100'],
    ['seats: {count: 2, role: admin}', 'seats.role: "admin" is not a role a tenant user can have; use monitor, backup-operator, operator'],
    ['seats: {count: 2, colour: red}', 'seats.colour: unknown key; use one of count, prefix, names, role, maxCapacity, maxVolumes, maxSessions'],
    [
      'seats: {count: 2, prefix: "a b"}',
      `seats.prefix: "a b" is not a seat name; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a tenant and a user)`,
    ],
    ['seats: [alice, bob, alice]', 'seats.names[2]: seat alice is named twice; remove one'],
    ['seats: {names: [a], prefix: p}', 'seats.prefix: goes with count (prefix1..prefixN); with names, leave it out'],
    ['seats: {count: 1, maxCapacity: lots}', /^seats\.maxCapacity: .*; give a size such as 1GiB \(what each seat's volumes may hold in all\)$/],
    ['seats: {count: 1, maxVolumes: 0}', 'seats.maxVolumes: 0 is not a limit; give a whole number of at least 1'],
    ['seats: 3', 'seats: must be a mapping or a list of names, e.g. {count: 3, role: operator, prefix: seat} or {names: [alice, bob], role: operator}'],
    ['seats: {count: 1}\nvolumes: [{name: v, size: 8MiB, seat: seat2}]', 'volumes[0].seat: "seat2" is not one of the lab\'s seats (seat1); use one of them'],
    [
      'volumes: [{name: v, size: 8MiB, seat: seat1}]',
      'volumes[0].seat: "seat1" is not one of the lab\'s seats (it declares none); use one of them, after declaring seats: {count: 3, role: operator, prefix: seat} or {names: [alice, bob], role: operator}',
    ],
  ])('refuses %s', (yaml, message) => {
    const got = error(`${ARRAY}${yaml}\n`);
    expect(got).not.toContain('\n');
    if (typeof message === 'string') expect(got).toBe(`lab ${FILE}: ${message}`);
    else expect(got.slice(`lab ${FILE}: `.length)).toMatch(message);
  });
});

describe('VMs on NBD under host affinity', () => {
  const vols = 'volumes: [{name: tv1, size: 8MiB}, {name: tv2, size: 8MiB}]\n';

  it('takes a VM whose NBD volumes are mapped to its host (the README example), and any VM while the array has no hosts', () => {
    const lab = parseLab(
      `${ARRAY}${vols}hosts: [{name: h1, vms: [lab1], luns: [tv1, tv2]}]\nvms: [{name: lab1, attach: [tv1, {volume: tv2, via: nbd}]}]\n`,
      FILE,
    );
    expect(lab.arrays[0]!.hosts[0]!.vms).toEqual(['lab1']);
    expect(parseLab(`${ARRAY}${vols}vms: [{name: lab1, attach: [tv1]}]\n`, FILE).vms).toHaveLength(1);
    // iSCSI goes by initiator name: the array checks the LUN when the VM starts.
    expect(
      parseLab(`${ARRAY}${vols}hosts: [{name: h1, vms: [lab1], luns: [tv1]}]\nvms: [{name: lab1, attach: [{volume: tv2, via: iscsi}]}]\n`, FILE).vms,
    ).toHaveLength(1);
  });

  it('refuses a VM on NBD in no host, a volume its host does not map, and a VM in two hosts', () => {
    expect(error(`${ARRAY}${vols}hosts: [{name: h1, initiators: ["iqn.2026-01.x:h1"], luns: [tv1]}]\nvms: [{name: lab1, attach: [tv1]}]\n`)).toBe(
      `lab ${FILE}: vms[0].attach[0]: VM lab1 attaches tv1 via nbd, and array a has hosts (hosts), so NBD clients see only their host's volumes; list lab1 in the vms of one of them and map tv1 to it (luns)`,
    );
    expect(error(`${ARRAY}${vols}hosts: [{name: h1, vms: [lab1], luns: [tv1]}]\nvms: [{name: lab1, attach: [tv1, tv2]}]\n`)).toBe(
      `lab ${FILE}: vms[0].attach[1]: volume tv2 is not mapped to host h1 (hosts[0]), VM lab1's host, and over NBD a VM sees only its host's volumes; add tv2 to hosts[0].luns`,
    );
    expect(error(`${ARRAY}${vols}hosts: [{name: h1, vms: [lab1]}, {name: h2, vms: [lab1]}]\nvms: [{name: lab1}]\n`)).toBe(
      `lab ${FILE}: hosts[1].vms[0]: VM lab1 is also in hosts[0] (host h1); a VM belongs to one host`,
    );
  });
});
