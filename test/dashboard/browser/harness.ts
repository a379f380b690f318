/**
 * The real `arraylab serve` with its dashboard on a free loopback port, and the admin token to
 * log in with: what every dashboard browser test starts from.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Arraylab, type StartOptions, startArraylab } from '../../support/arraylab.js';

export interface DashboardLab {
  lab: Arraylab;
  /** http://127.0.0.1:PORT/ */
  url: string;
  /** The admin's token (<dataDir>/admin.token); null with --api-auth off. */
  adminToken: string | null;
}

export async function startDashboardLab(opts: StartOptions & { authOff?: boolean } = {}): Promise<DashboardLab> {
  const { authOff, ...start } = opts;
  const lab = await startArraylab({
    config: { volumes: [] },
    ...start,
    // Metrics on a free port (not the fixed default): the volumes page's I/O figures come from them.
    extraArgs: ['--dashboard', '127.0.0.1:0', '--metrics', '127.0.0.1:0', ...(authOff ? ['--api-auth', 'off'] : []), ...(start.extraArgs ?? [])],
  });
  const address = lab.info.dashboard;
  if (!address) throw new Error(`serve --json reported no dashboard address (field "dashboard") although --dashboard was given: ${JSON.stringify(lab.info)}`);
  if (lab.dataDir === null)
    throw new Error('the dashboard tests read the admin token from the data directory: start the array with a data directory, not --memory');
  const adminToken = authOff ? null : readFileSync(join(lab.dataDir, 'admin.token'), 'utf8').trim();
  return { lab, url: `http://${address.host}:${address.port}/`, adminToken };
}
