/** README "Access control": its role table says what emulator/auth/permissions.ts enforces. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ALL_PERMISSIONS, ROLE_PERMISSIONS, ROLES } from '../../emulator/auth/permissions.js';

const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');

describe('README role matrix', () => {
  it('has one row per permission (but self) and one column per role, matching the code', () => {
    const header = readme.split('\n').find((l) => l.startsWith('| permission | what it covers |'));
    expect(header, 'the role table of "Access control"').toBeDefined();
    const roles = header!
      .split('|')
      .map((c) => c.trim())
      .filter((c) => c !== '')
      .slice(2);
    expect(roles).toEqual([...ROLES]);
    const rows = readme
      .split('\n')
      .filter((l) => /^\| [a-z.]+ \| /.test(l) && !l.startsWith('| permission |'))
      .map((l) =>
        l
          .split('|')
          .map((c) => c.trim())
          .filter((c) => c !== ''),
      );
    const inTable = rows.filter((r) => (ALL_PERMISSIONS as readonly string[]).includes(r[0]!));
    expect(inTable.map((r) => r[0])).toEqual(ALL_PERMISSIONS.filter((p) => p !== 'self'));
    for (const r of inTable) {
      roles.forEach((role, i) => {
        const says = r[2 + i] === 'yes';
        expect(says, `${r[0]} for ${role}`).toBe(ROLE_PERMISSIONS[role as (typeof ROLES)[number]].has(r[0] as never));
      });
    }
  });
});
