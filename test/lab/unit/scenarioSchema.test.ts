/**
 * The scenario keys of a lab file (emulator/lab/scenario/schema.ts), in process: a good scenario
 * parses to its steps and checks; every mistake is one line naming the file, the key path and
 * the fix, as the rest of the lab file's.
 */
import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { LabError, parseLab } from '../../../emulator/lab/schema.js';

const FILE = '/labs/backup.yaml';
const MiB = 2 ** 20;

const GOOD = `
title: OPC backups
description: |
  Take a **point-in-time** copy.
arrays: [{name: array0, start: true}]
volumes: [{name: tv1, size: 64MiB}, {name: bv1, size: 64MiB}]
steps:
  - title: Take a copy
    instructions: Start an OPC from \`tv1\` to \`bv1\`.
    setup: [arraylab volume create scratch --size 16MiB]
    check:
      - volume: {name: bv1, sizeAtLeast: 64MiB, allocatedAtLeast: 1MiB}
        message: bv1 does not exist yet
      - session: {source: tv1, destination: bv1, type: opc, state: [copying, tracking], progressAtLeast: 100}
        timeout: 30s
      - absent: {volume: scratch}
      - absent: {session: {source: tv1, destination: bv2}}
      - absent: {fault: {kind: error, target: volume:tv1}}
      - fault: {kind: error, target: volume:tv1}
      - event: {kind: copy.state, subject: tv1}
        timeout: 2m
      - data: {volume: bv1, sameAs: tv1, offset: 1MiB, length: 4MiB}
      - data: {volume: bv1, sha256: ${'A'.repeat(64)}}
      - shell: test -n "$ARRAYLAB_API"
        timeout: 500ms
    hints: [Use arraylab copy start]
    solve: [arraylab copy start --type opc --src tv1 --dst bv1]
  - title: Second
    instructions: Done.
    check: [{volume: {name: tv1}}]
    solve: []
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

// biome-ignore lint/suspicious/noExplicitAny: the tests edit the parsed YAML tree freely
type Doc = any;

/** GOOD with one change made to its parsed form. */
function edit(change: (doc: Doc) => void): string {
  const doc = parse(GOOD) as Doc;
  change(doc);
  return stringify(doc);
}

describe('a scenario file', () => {
  it('parses to its title, description, steps and checks, with durations and sizes', () => {
    const lab = parseLab(GOOD, FILE);
    expect(lab.scenario?.title).toBe('OPC backups');
    expect(lab.scenario?.description).toBe('Take a **point-in-time** copy.\n');
    const [s1, s2] = lab.scenario!.steps;
    expect(s1).toMatchObject({ title: 'Take a copy', setup: ['arraylab volume create scratch --size 16MiB'], hints: ['Use arraylab copy start'] });
    expect(s1!.check.map((c) => [c.spec.kind, c.timeoutMs])).toEqual([
      ['volume', 0],
      ['session', 30_000],
      ['absent', 0],
      ['absent', 0],
      ['absent', 0],
      ['fault', 0],
      ['event', 120_000],
      ['data', 0],
      ['data', 0],
      ['shell', 500],
    ]);
    expect(s1!.check[0]).toEqual({
      spec: { kind: 'volume', name: 'bv1', sizeAtLeast: 64 * MiB, allocatedAtLeast: MiB },
      message: 'bv1 does not exist yet',
      timeoutMs: 0,
      at: 'steps[0].check[0]',
    });
    expect(s1!.check[1]!.spec).toEqual({
      kind: 'session',
      source: 'tv1',
      destination: 'bv1',
      type: 'opc',
      state: ['copying', 'tracking'],
      progressAtLeast: 100,
    });
    expect(s1!.check[7]!.spec).toEqual({ kind: 'data', volume: 'bv1', sameAs: 'tv1', offset: MiB, length: 4 * MiB });
    expect(s1!.check[8]!.spec).toMatchObject({ sha256: 'a'.repeat(64), offset: 0 });
    expect(s2).toMatchObject({ setup: [], hints: [], solve: [] });
  });

  it('is a plain lab without steps (lab up/down/status work on both)', () => {
    const lab = parseLab('arrays: [{name: array0, start: true}]\n', FILE);
    expect(lab.scenario).toBeUndefined();
  });

  it.each([
    [
      'a step key that does not exist',
      (d: Doc) => (d.steps[0].checks = []),
      'steps[0].checks: unknown key; use one of title, instructions, setup, check, hints, solve',
    ],
    ['no title with steps', (d: Doc) => delete d.title, "title: is missing; give the scenario's title (a lab with steps is a scenario)"],
    ['a title without steps', (d: Doc) => delete d.steps, 'title: belongs to a scenario, and this lab has no steps; add steps: ['],
    ['no steps', (d: Doc) => (d.steps = []), 'steps: is empty; give at least one step'],
    [
      'a step without instructions',
      (d: Doc) => delete d.steps[0].instructions,
      'steps[0].instructions: is missing; give Markdown text saying what the trainee does',
    ],
    ['a step without checks', (d: Doc) => (d.steps[1].check = []), 'steps[1].check: is empty; give at least one check'],
    ['a step without solve', (d: Doc) => delete d.steps[1].solve, 'steps[1].solve: is missing; give the shell lines that make the checks pass'],
    [
      'two kinds in one check',
      (d: Doc) => (d.steps[1].check[0].shell = 'true'),
      'steps[1].check[0]: has volume and shell; give exactly one of volume, absent, session, fault, event, data, shell per check',
    ],
    [
      'an unknown check kind',
      (d: Doc) => (d.steps[1].check[0] = { file: {} }),
      'steps[1].check[0].file: unknown key; use one of volume, absent, session, fault, event, data, shell, message, timeout',
    ],
    [
      'a session state that does not exist',
      (d: Doc) => (d.steps[0].check[1].session.state = ['copying', 'done']),
      'steps[0].check[1].session.state[1]: "done" is not a session state; use copying, equivalent',
    ],
    [
      'a copy type that does not exist',
      (d: Doc) => (d.steps[0].check[1].session.type = 'snap'),
      'steps[0].check[1].session.type: "snap" is not a copy type; use opc, quickopc',
    ],
    [
      'a progress over 100',
      (d: Doc) => (d.steps[0].check[1].session.progressAtLeast = 101),
      'steps[0].check[1].session.progressAtLeast: 101 is not a percentage; give a number from 0 to 100',
    ],
    [
      'a timeout that is no duration',
      (d: Doc) => (d.steps[0].check[1].timeout = 'soon'),
      'steps[0].check[1].timeout: "soon" is not a duration; use e.g. 30s, 2m or 500ms',
    ],
    ['a size that is no size', (d: Doc) => (d.steps[0].check[0].volume.sizeAtLeast = 'big'), 'steps[0].check[0].volume.sizeAtLeast: '],
    [
      'absent with two things',
      (d: Doc) => (d.steps[0].check[2].absent.fault = { kind: 'error' }),
      'steps[0].check[2].absent: give one of volume, session or fault, not volume and fault',
    ],
    [
      'data with sameAs and sha256',
      (d: Doc) => (d.steps[0].check[7].data.sha256 = 'a'.repeat(64)),
      'steps[0].check[7].data: give either sameAs (another volume) or sha256 (of the bytes), not both',
    ],
    [
      'a sha256 that is not one',
      (d: Doc) => (d.steps[0].check[8].data.sha256 = 'abc'),
      'steps[0].check[8].data.sha256: "abc" is not a SHA-256; give 64 hex digits',
    ],
    [
      'an array the lab does not have',
      (d: Doc) => (d.steps[0].check[0].volume.array = 'array9'),
      'steps[0].check[0].volume.array: "array9" is not one of the lab\'s arrays (array0)',
    ],
    [
      'a volume name that is none',
      (d: Doc) => (d.steps[0].check[0].volume.name = 3),
      "steps[0].check[0].volume.name: 3 is not a volume name; give the volume's name, e.g. tv1",
    ],
    ['a setup that is no list of lines', (d: Doc) => (d.steps[0].setup = { run: 'x' }), 'steps[0].setup: must be a list of shell lines'],
    ['hints that are no list', (d: Doc) => (d.steps[0].hints = 'look'), 'steps[0].hints: must be a list of hints, revealed one by one'],
  ])('refuses %s, naming the key and the fix', (_what, change, message) => {
    expect(error(edit(change))).toContain(`lab ${FILE}: ${message}`);
  });
});
