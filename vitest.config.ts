import { configDefaults, defineConfig } from 'vitest/config';

/**
 * Three tiers, one vitest project each (npm run test:unit, test:integration, test:vm; npm test
 * runs all three, in that order, in one vitest run with one report):
 *
 *   unit         in-process only: no dist/, no root, no external tool, no spawned server
 *                (test/support refuses those here: tier.ts). Listed below by folder and file.
 *   integration  everything else: the real `arraylab serve` from dist/, real peers (qemu,
 *                libnbd, libiscsi, tgtd, mkfs and mount, fio), loop devices, kill -9.
 *   vm           qemu-system guests booted from vm-images/.
 *
 * A new test file is integration until it is listed as unit or vm. test/agent/backup runs in
 * both unit (the array in process) and integration (the real server): see its harness.ts.
 */
const UNIT = [
  'test/units/**/*.test.ts',
  'test/config/config.test.ts',
  'test/config/iscsiConfig.test.ts',
  'test/copy/**/*.test.ts',
  'test/block/**/*.test.ts',
  'test/array/**/*.test.ts',
  'test/api/**/*.test.ts',
  'test/auth/unit/**/*.test.ts',
  'test/events/unit/**/*.test.ts',
  'test/dashboard/{server,sessions}.test.ts',
  'test/metrics/unit/**/*.test.ts',
  'test/docs/roleMatrix.test.ts',
  'test/tape/library.test.ts',
  'test/net/**/*.test.ts',
  'test/fault/unit/**/*.test.ts',
  'test/remote/unit/**/*.test.ts',
  'test/lab/unit/**/*.test.ts',
  'test/nbd/{hostile,lifecycle,output}.test.ts',
  'test/iscsi/{chap,commandWindow,conformanceParse,negotiation,pdu,text,targetProtocol,hostChap,loginThrottle}.test.ts',
  'test/iscsi/scsi*.test.ts',
  'test/vm/{qemuArgs,nbdPsk}.test.ts',
  'test/agent/{cliUsage,config}.test.ts',
  'test/agent/host/hooks.test.ts',
  'test/agent/hardening.test.ts',
  'test/agent/backup/*.test.ts',
];
const VM = ['test/vm/**/*.test.ts', 'test/agent/guest/vm.test.ts', 'test/lab/lab.test.ts'];
/** Unit files that run in the integration tier too, against the real server. */
const BOTH = ['test/agent/backup/*.test.ts'];

interface Tier {
  include: string[];
  exclude: string[];
  /** Test files at a time. */
  maxWorkers: number;
  /** Tiers run one after the other, in this order. */
  groupOrder: number;
}

const tier = (name: 'unit' | 'integration' | 'vm', t: Tier) => ({
  extends: true as const,
  test: {
    name,
    include: t.include,
    exclude: [...configDefaults.exclude, ...t.exclude],
    maxWorkers: t.maxWorkers,
    sequence: { groupOrder: t.groupOrder },
    // ARRAYLAB_METRICS: every serve a test starts has no metrics unless it passes --metrics
    // (startArraylab: 127.0.0.1:0), so no test takes serve's default 127.0.0.1:9390.
    env: { ARRAYLAB_TEST_TIER: name, ARRAYLAB_METRICS: 'off' },
  },
});

export default defineConfig({
  test: {
    // Protocol and filesystem tests drive real clients (qemu, libnbd, fio, mkfs): give them time.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Workers per tier, for 2 cores: unit tests keep a core busy each; integration tests wait on
    // their peers and timers about half the time, yet some time their peers; a guest keeps a core
    // busy (TCG) and its tests time its boot.
    projects: [
      tier('unit', { include: UNIT, exclude: [], maxWorkers: 2, groupOrder: 0 }),
      tier('integration', { include: ['test/**/*.test.ts'], exclude: [...UNIT.filter((u) => !BOTH.includes(u)), ...VM], maxWorkers: 2, groupOrder: 1 }),
      tier('vm', { include: VM, exclude: UNIT, maxWorkers: 1, groupOrder: 2 }),
    ],
    reporters: process.env.CI ? ['default', 'json'] : ['default'],
    outputFile: process.env.CI ? { json: '.vitest-tmp/report.json' } : undefined,
  },
});
